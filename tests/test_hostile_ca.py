"""The real `letskencrypt` binary against a hostile ACME server (tests/hostile_ca.py).

Every case starts from the same prepared state: an account key, a domain key
and a valid certificate installed by an earlier good run against the same
kind of server.  The client runs with -n -N -F (a forced renewal; -r for the
revocation cases), the server leads it to one stage and misbehaves there.
Each case must end with exit status 1 and exactly one terminal-safe line on
stderr naming what was wrong, within a bounded time, with the keys and the
installed certificate byte-identical, the challenge directory empty, no file
new, gone or changed anywhere in the case's directory (but for acctproc's
audit log, which may only grow, and only by requests to the CA's origin), no
run directory left in TMPDIR and no process of the run left.

The cases run in worker threads, started when the module starts: the slow
ones (they meet the client's real limits: 10 s to connect and shake hands,
30 s per read, 60 s per request, three retries of a busy CA) all at once,
the others a few at a time; each test then waits for its own result.

One limit is shortened: an order that stays "processing" for ever meets
netproc's default budget per order only after 90 s.  That case runs with the
client's own `--poll-timeout` set to POLL_TIMEOUT; HOSTILE_CA_REAL_LIMITS=1
runs it with the default instead.

Some cases end well (the CA is slow, but within the budget): those are run
by their own tests, which look at when each request reached the server.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from letskencrypt.acme import AcmeError, Transport

from tests.conftest import LETSKENCRYPT, without_terms
from tests.hostile_ca import DELETE, HostileCA, Material, Misbehaviour

NAMES = ("hostile.example.org", "www.hostile.example.org")
FAST = 20.0  # seconds: a case that fails at once (the client itself takes ~1.5 s)
REAL_LIMITS = os.environ.get("HOSTILE_CA_REAL_LIMITS") == "1"
POLL_TIMEOUT = 90 if REAL_LIMITS else 20
FAST_WORKERS = int(os.environ.get("HOSTILE_CA_WORKERS", 0)) or min(6, (os.cpu_count() or 2) + 1)
KILL_AFTER = 60.0  # beyond a case's bound, before the run is killed

# acctproc's audit log, next to the account key: one JSON line per request it
# was asked to sign, appended to on every run.
APPEND_ONLY = ("account/audit.log",)
PROTECTED = (
    "account/privkey.pem",
    "domain/privkey.pem",
    "certs/cert.pem",
    "certs/chain.pem",
    "certs/fullchain.pem",
)


# Everything a terminal might act on: CSI, OSC 52 (clipboard), OSC 8 (links),
# DCS, C1 controls (CSI, OSC, ST, NEL), bidi overrides and isolates, line
# and paragraph separators, BEL, BS, DEL, a BOM and a zero-width space.
HOSTILE_TEXT = (
    "\x1b[2J\x1b[H"
    "\x1b]52;c;cm0gLXJmIH4=\x07"
    "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\"
    "\u202egnp.exe\u202c \u2066isolated\u2069 \u200f"
    "\x9b31m\x9d0;title\x9c"
    "\x85NEL\u2028LS\u2029PS\r\nsecond line\x07\x08\x7f"
    "\x1bP+q\x1b\\ \ufeff\u200b end"
)
HOSTILE_PROBLEM = {
    "type": "urn:ietf:params:acme:error:unauthorized\x1b[5m",
    "detail": HOSTILE_TEXT,
    "subproblems": [
        {
            "type": "urn:ietf:params:acme:error:caa\x9b2J",
            "detail": HOSTILE_TEXT,
            "identifier": {"type": "dns", "value": "hostile.example.org\x1b[8m\u202e"},
        }
    ],
}
HOSTILE_BYTES = (
    b"<html>\x1b[2J\x1b]52;c;aGk=\x07\xc2\x9b31m\x9b\xe2\x80\xae evil\r\n"
    b"\xc2\x85second line\x00</html>"
)


def problem(kind: str, detail: str = "go away") -> dict[str, Any]:
    return {"type": f"urn:ietf:params:acme:error:{kind}", "detail": detail}


@dataclass(frozen=True)
class Case:
    id: str
    misbehaviour: Misbehaviour
    expect: str  # a regular expression the one stderr line must match
    bound: float = FAST  # wall-time limit of the whole run, in seconds
    revoke: bool = False
    knob: bool = False  # needs the shortened poll limit

    @property
    def slow(self) -> bool:
        return self.bound > FAST

    @property
    def args(self) -> tuple[str, ...]:
        return ("-n", "-N", "-r") if self.revoke else ("-n", "-N", "-F")


def fields(stage: str, **changes: Any) -> Misbehaviour:
    return Misbehaviour(stage, "fields", {k.replace("__", "."): v for k, v in changes.items()})


def token(value: object) -> Misbehaviour:
    return Misbehaviour("authz", "fields", {"challenges.1.token": value})


def chain(variant: str) -> Misbehaviour:
    return Misbehaviour("certificate", "chain", variant)


RETRY_AFTER_DATE = "Fri, 31 Dec 9999 23:59:59 GMT"
JSON = "application/json"

CASES = [
    # -- challenge tokens: never a file name outside the challenge directory --
    Case(
        "token-dotdot",
        token("../x"),
        r"unusable http-01 challenge: invalid challenge token '\.\./x'",
    ),
    Case(
        "token-encoded-slash", token("..%2f..%2fetc%2fpasswd"), r"invalid challenge token '\.\.%2f"
    ),
    Case("token-absolute", token("/etc/passwd"), r"invalid challenge token '/etc/passwd'"),
    Case("token-empty", token(""), r"invalid challenge token: empty"),
    Case("token-not-base64url", token("tok+en/=="), r"invalid challenge token 'tok\+en/=='"),
    Case("token-10kib", token("A" * 10240), r"invalid challenge token: 10240 characters"),
    Case("token-escapes", token("\x1b[2J\x1b]52;c;aGk=\x07\u202e"), r"invalid challenge token"),
    Case(
        "token-not-a-string",
        token(12345),
        r"CA sent an http-01 challenge whose token is not a string$",
    ),
    # -- bodies: too big, never ending, dripping, missing, not JSON --
    Case(
        "directory-oversized-declared",
        Misbehaviour("directory", "oversized-declared"),
        r"GET https://127\.0\.0\.1:\d+/dir: response of 2097152 bytes exceeds the 1048576-byte",
    ),
    Case(
        "authz-oversized-streamed",
        Misbehaviour("authz", "oversized-streamed"),
        r"POST https://127\.0\.0\.1:\d+/authz/\d+: response exceeds the 1048576-byte limit",
    ),
    Case(
        "order-endless-chunked",
        Misbehaviour("newOrder", "endless-chunked"),
        r"POST https://127\.0\.0\.1:\d+/new-order: response exceeds the 1048576-byte limit",
    ),
    Case(
        "order-drip-headers",
        Misbehaviour("newOrder", "drip-headers"),
        r"POST https://127\.0\.0\.1:\d+/new-order: no answer within 60 s",
        bound=80,
    ),
    Case(
        "authz-drip-body",
        Misbehaviour("authz", "drip-body"),
        r"POST https://127\.0\.0\.1:\d+/authz/\d+: no answer within 60 s",
        bound=80,
    ),
    Case(
        "challenge-silent",
        Misbehaviour("challenge", "silent"),
        r"POST https://127\.0\.0\.1:\d+/chall/\d+: read timed out after 30 s$",
        bound=50,
    ),
    Case(
        "order-invalid-json",
        Misbehaviour("newOrder", "body", b'{"status": "pending", '),
        r"CA sent an? order that is not JSON",
    ),
    Case(
        "order-deeply-nested-json",
        Misbehaviour("order", "body", b"[" * 200_000),
        r"CA sent an order that is not JSON",
    ),
    Case(
        "authz-json-array",
        Misbehaviour("authz", "body", b"[]"),
        r"CA sent an? authorization that is not a JSON object",
    ),
    Case(
        "order-json-5000-digit-number",
        Misbehaviour("newOrder", "body", b'{"status": ' + b"7" * 5000 + b"}"),
        r"CA sent an? order that is not JSON",
    ),
    # -- HTTP itself: garbage status lines, endless headers, broken chunking --
    Case(
        "raw-garbage-status-line",
        Misbehaviour("newAccount", "raw", b"\x1b[2J\x1b]52;c;aGk=\x07 HELLO\r\n\r\n"),
        r"POST https://127\.0\.0\.1:\d+/new-acct: the answer is not HTTP \(bad status line\)$",
    ),
    Case(
        "raw-thousand-headers",
        Misbehaviour(
            "newOrder", "raw", b"HTTP/1.1 201 Created\r\n" + b"X-A: b\r\n" * 1000 + b"\r\n"
        ),
        r"POST https://127\.0\.0\.1:\d+/new-order: got more than 100 headers$",
    ),
    Case(
        "raw-100kib-header-line",
        Misbehaviour("newOrder", "raw", b"HTTP/1.1 201 Created\r\nX-A: " + b"b" * 102400),
        r"POST https://127\.0\.0\.1:\d+/new-order: got more than 65536 bytes when reading "
        r"header line$",
    ),
    Case(
        "raw-broken-chunking",
        Misbehaviour(
            "authz",
            "raw",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\x1b[2J\r\n{}\r\n",
        ),
        r"POST https://127\.0\.0\.1:\d+/authz/\d+: the answer's chunked encoding is broken$",
    ),
    Case(
        "raw-gzip-body",
        Misbehaviour(
            "directory",
            "raw",
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n"
            b"\x1f\x8b\x08\x00",
        ),
        r"GET https://127\.0\.0\.1:\d+/dir: unrequested Content-Encoding 'gzip'",
    ),
    Case(
        "tls-untrusted-certificate",
        Misbehaviour("directory", "tls-untrusted"),
        r"GET https://127\.0\.0\.1:\d+/dir: TLS certificate verification failed",
    ),
    Case(
        "tls-silent",
        Misbehaviour("directory", "tls-silent"),
        r"GET https://127\.0\.0\.1:\d+/dir: (read timed out after 10 s|no answer within 60 s)$",
        bound=45,
    ),
    # -- time: orders that never finish, absurd Retry-After, endless retries --
    Case(
        "order-processing-forever",
        Misbehaviour("finalize", "never-finish"),
        rf"order https://\S+/order/\d+ is still processing after {POLL_TIMEOUT} s "
        r"\(--poll-timeout\); giving up$",
        bound=POLL_TIMEOUT + 25,
        knob=True,
    ),
    Case(
        "retry-after-1e9-seconds",
        Misbehaviour(
            "newOrder", "problem", (503, problem("serverInternal"), {"Retry-After": "1000000000"})
        ),
        r"HTTP 503: serverInternal: go away; the CA asks to retry in 1000000000 s, beyond the "
        r"(89|90) s budget left \(--poll-timeout\)$",
    ),
    Case(
        "retry-after-far-future-date",
        Misbehaviour(
            "newOrder", "problem", (429, problem("rateLimited"), {"Retry-After": RETRY_AFTER_DATE})
        ),
        r"HTTP 429: rateLimited: go away; the CA asks to retry in \d{12} s, beyond the "
        r"(89|90) s budget left \(--poll-timeout\)$",
    ),
    Case(
        "retry-after-beyond-the-budget",
        Misbehaviour("finalize", "slow-finish", ("120", 0)),
        r"order https://127\.0\.0\.1:\d+/order/\d+: the CA asks to poll again in 120 s, "
        r"beyond the \d\d s budget left \(--poll-timeout\)$",
    ),
    Case(
        "bad-nonce-forever",
        Misbehaviour("newAccount", "problem", (400, problem("badNonce", "stale"), {})),
        r"HTTP 400: badNonce: stale$",
    ),
    Case(
        "server-error-forever",
        Misbehaviour("newOrder", "problem", (500, problem("serverInternal", "oops"), {})),
        r"HTTP 500: serverInternal: oops$",
        bound=35,
    ),
    Case(
        "nonce-header-garbage",
        Misbehaviour("nonce", "nonce", "abc/+=\x1b[2J\x9b"),
        r"CA sent an invalid Replay-Nonce",
    ),
    # -- media types (RFC 8555): JSON, problems, PEM chains, and nothing else --
    Case(
        "directory-as-html",
        Misbehaviour("directory", "header", ("Content-Type", "text/html; charset=utf-8")),
        r"https://127\.0\.0\.1:\d+/dir: expected application/json, the CA sent text/html$",
    ),
    Case(
        "directory-not-acme",
        Misbehaviour("directory", "body", b'{"status": "ok", "version": "2.1", "uptime": 7}'),
        r"https://127\.0\.0\.1:\d+/dir: not an ACME directory "
        r"\(no newNonce, newAccount, newOrder URLs\)$",
    ),
    Case(
        "order-without-content-type",
        Misbehaviour("newOrder", "header", ("Content-Type", DELETE)),
        r"https://\S+/new-order: expected application/json, the CA sent no Content-Type$",
    ),
    Case(
        "order-poll-as-text",
        Misbehaviour("order", "header", ("Content-Type", "text/plain")),
        r"https://\S+/order/\d+: expected application/json, the CA sent text/plain$",
    ),
    Case(
        "authz-as-problem",
        Misbehaviour("authz", "header", ("Content-Type", "application/problem+json")),
        r"https://\S+/authz/\d+: expected application/json, "
        r"the CA sent application/problem\+json$",
    ),
    Case(
        "problem-as-plain-json",
        Misbehaviour("newOrder", "problem", (403, problem("unauthorized"), {"Content-Type": JSON})),
        r"HTTP 403 Forbidden: the CA sent application/json, not a problem document$",
    ),
    Case(
        "bad-nonce-as-html",
        Misbehaviour(
            "newAccount", "problem", (400, problem("badNonce"), {"Content-Type": "text/html"})
        ),
        r"HTTP 400 Bad Request: the CA sent text/html, not a problem document$",
    ),
    Case(
        "certificate-as-json",
        Misbehaviour("certificate", "header", ("Content-Type", JSON)),
        r"https://\S+/cert/\d+: expected application/pem-certificate-chain, "
        r"the CA sent application/json$",
    ),
    # -- URLs: other origins, plain http, credentials, redirects --
    Case(
        "directory-url-other-host",
        fields("directory", newOrder="https://localhost:{port}/new-order"),
        r"directory newOrder URL 'https://localhost:\d+/new-order' is not on the CA's origin",
    ),
    Case(
        "directory-url-plain-http",
        fields("directory", newNonce="http://127.0.0.1:{port}/nonce"),
        r"unusable directory newNonce URL: URL 'http://127\.0\.0\.1:\d+/nonce' is not https",
    ),
    Case(
        "directory-redirect",
        Misbehaviour("directory", "redirect", (301, "https://127.0.0.2:{port}/dir")),
        r"CA redirects \(301\) to 'https://127\.0\.0\.2:\d+/dir'; redirects are not followed",
    ),
    Case(
        "account-location-other-host",
        Misbehaviour("newAccount", "location", "https://127.0.0.2:{port}/acct/1"),
        r"account URL 'https://127\.0\.0\.2:\d+/acct/1' is not on the CA's origin",
    ),
    Case(
        "order-location-plain-http",
        Misbehaviour("newOrder", "location", "http://127.0.0.1:{port}/order/1"),
        r"unusable order URL: URL 'http://127\.0\.0\.1:\d+/order/1' is not https",
    ),
    Case(
        "order-location-scheme-relative",
        Misbehaviour("newOrder", "location", "//127.0.0.2:{port}/order/1"),
        r"order URL 'https://127\.0\.0\.2:\d+/order/1' is not on the CA's origin",
    ),
    Case(
        "account-without-location",
        Misbehaviour("newAccount", "location", DELETE),
        r"CA sent no Location for the account",
    ),
    Case(
        "authorization-url-backslash",
        fields("newOrder", authorizations__0="https://127.0.0.1:{port}\\@127.0.0.2/authz/1"),
        r"CA sent a malformed authorization URL",
    ),
    Case(
        "order-authorization-other-port",
        fields("newOrder", authorizations__0="https://127.0.0.1:1/authz/1"),
        r"authorization URL 'https://127\.0\.0\.1:1/authz/1' is not on the CA's origin",
    ),
    Case(
        "order-finalize-with-credentials",
        fields("newOrder", finalize="https://evil:pw@127.0.0.1:{port}/finalize/1"),
        r"unusable finalize URL: .* has no host or carries credentials",
    ),
    Case(
        "order-redirect",
        Misbehaviour("newOrder", "redirect", (307, "https://127.0.0.2:{port}/new-order")),
        r"CA redirects \(307\) to 'https://127\.0\.0\.2:\d+/new-order'; redirects are not",
    ),
    Case(
        "order-redirect-endless-body",
        Misbehaviour("newOrder", "redirect-endless", "https://127.0.0.2:{port}/new-order"),
        r"CA redirects \(302\) to 'https://127\.0\.0\.2:\d+/new-order'; redirects are not",
    ),
    Case(
        "certificate-url-other-host",
        fields("finalize", certificate="https://localhost:{port}/cert/9"),
        r"certificate URL 'https://localhost:\d+/cert/9' is not on the CA's origin",
    ),
    Case(
        "certificate-redirect-with-escapes",
        Misbehaviour(
            "certificate", "redirect", (302, "https://127.0.0.2:{port}/c\x1b]52;c;aGk=\x07")
        ),
        r"CA redirects \(302\) to 'https://127\.0\.0\.2:\d+/c\?",
    ),
    # -- certificates: not ours, not for our names, not a chain, not PEM --
    Case("certificate-other-key", chain("other-key"), r"certproc: certificate is not for our"),
    Case(
        "certificate-other-names",
        chain("other-names"),
        r"certproc: certificate names \['evil\.example\.net', .*\] differ from the requested",
    ),
    Case(
        "chain-does-not-link",
        chain("unlinked"),
        r"certproc: certificate 0 issuer 'CN=hostile ACME issuer' does not match certificate 1",
    ),
    Case(
        "chain-forged-issuer",
        chain("forged-issuer"),
        r"certproc: certificate 0 is not signed by certificate 1",
    ),
    Case(
        "certificate-malformed-issuer",
        chain("malformed-issuer"),
        r"certproc: certificate 0: malformed issuer$",
    ),
    Case(
        "certificate-x509v2",
        chain("x509v2"),
        r"certproc: certificate 0: not a valid DER certificate$",
    ),
    Case("certificate-expired", chain("expired"), r"certproc: certificate has expired"),
    Case("certificate-is-a-ca", chain("ca-leaf"), r"certproc: certificate is a CA certificate"),
    # -- the right key and names, but not a certificate of this CA's --
    Case(
        "certificate-self-signed",
        chain("self-signed"),
        r"certproc: certificate does not chain to a trust anchor: no anchor issued "
        r"certificate 0 \(issuer 'CN=hostile\.example\.org'\)$",
    ),
    Case(
        "certificate-from-an-unknown-ca",
        chain("unknown-ca"),
        r"certproc: certificate does not chain to a trust anchor: no anchor issued "
        r"certificate 1 \(issuer \"CN=somebody else's CA\"\)$",
    ),
    Case(
        "certificate-without-its-chain",
        chain("leaf-only"),
        r"certproc: certificate does not chain to a trust anchor: no anchor issued "
        r"certificate 0 \(issuer 'CN=hostile ACME issuer'\)$",
    ),
    Case(
        "certificate-valid-for-a-century",
        chain("century"),
        r"certproc: certificate lifetime of 36525 days exceeds 398 days$",
    ),
    Case(
        "certificate-not-yet-valid",
        chain("not-yet-valid"),
        r"certproc: certificate is not valid yet \(notBefore ",
    ),
    Case(
        "chain-of-eleven",
        chain("too-long"),
        r"not PEM certificates|PEM chain has more than 10 certificates",
    ),
    Case(
        "chain-over-256kib",
        chain("oversized"),
        r"POST https://127\.0\.0\.1:\d+/cert/\d+: response of \d+ bytes exceeds the 262144-byte",
    ),
    Case("pem-garbage", chain("garbage"), r"CA sent an unusable certificate chain"),
    Case("pem-binary", chain("binary"), r"CA sent an unusable certificate chain"),
    Case("pem-empty", chain("empty"), r"CA sent an unusable certificate chain"),
    Case(
        "pem-with-private-key",
        chain("private-key"),
        r"CA sent an unusable certificate chain|certproc: unexpected PEM block 'PRIVATE",
    ),
    # -- status documents: hostile problems, odd states --
    Case(
        "problem-terminal-escapes",
        Misbehaviour("newOrder", "problem", (403, HOSTILE_PROBLEM, {})),
        r"HTTP 403: unauthorized\?.*second line.*\[dns:hostile\.example\.org\?",
    ),
    Case(
        "problem-raw-bytes",
        Misbehaviour("newOrder", "problem", (403, HOSTILE_BYTES, {})),
        r"HTTP 403 Forbidden: the CA sent text/html, not a problem document$",
    ),
    Case(
        "problem-100k-subproblems",
        Misbehaviour(
            "newOrder",
            "problem",
            (400, {**problem("rejectedIdentifier"), "subproblems": [{}] * 100_000}, {}),
        ),
        r"HTTP 400: rejectedIdentifier: go away; (\[\(no identifier\)\] \(no type\); ){9}"
        r"\[\(no identifier\)\] \(no type\); \(\+99990 more subproblems\)$",
    ),
    Case(
        "challenge-invalid-hostile-error",
        Misbehaviour("challenge", "fail-challenge", HOSTILE_PROBLEM),
        r"dns:hostile\.example\.org: https://\S+/authz/\d+ is invalid; http-01 challenge: "
        r"unauthorized\?",
    ),
    Case(
        "order-valid-without-certificate-url",
        fields("finalize", certificate=DELETE),
        r"order https://\S+/order/\d+ is valid but has no certificate URL",
    ),
    Case(
        "order-unknown-status",
        fields("newOrder", status="\x1b[32mpwned\u202e"),
        r"CA sent an order with unknown status '\?\[32mpwned\?'|unknown status",
    ),
    Case(
        "order-too-many-authorizations",
        fields("newOrder", authorizations=["{origin}/authz/1"] * 101),
        r"CA sent an order without 1 to 100 authorization URLs$",
    ),
    Case(
        "order-authorizations-for-other-names",
        Misbehaviour("newOrder", "extra-authorizations", 2),
        r"CA sent an order with 4 authorizations for 2 names",
    ),
    # An authorization for a name nobody ordered: nothing is published for it.
    Case(
        "authz-for-another-name",
        fields("authz", identifier__value="evil.example.net"),
        r"CA sent an authorization for dns:evil\.example\.net, which the order did not ask for$",
    ),
    Case(
        "authz-for-our-name-as-an-ip-identifier",
        fields("authz", identifier__type="ip"),
        r"CA sent an authorization for ip:hostile\.example\.org, which the order did not ask "
        r"for$",
    ),
    Case(
        "authz-without-http01",
        fields("authz", challenges__1=DELETE),
        r"the CA offers no http-01 challenge for dns:hostile\.example\.org",
    ),
    Case(
        "account-deactivated",
        fields("newAccount", status="deactivated"),
        r"account https://\S+/acct/\d+ is deactivated",
    ),
    # -- revocation --
    Case(
        "revoke-refused-with-escapes",
        Misbehaviour("revokeCert", "problem", (403, HOSTILE_PROBLEM, {})),
        r"HTTP 403: unauthorized\?",
        revoke=True,
    ),
    Case(
        "revoke-redirect",
        Misbehaviour("revokeCert", "redirect", (308, "https://127.0.0.2:{port}/revoke")),
        r"CA redirects \(308\)",
        revoke=True,
    ),
]


# --- running one case -----------------------------------------------------------


@dataclass
class Outcome:
    code: int | None  # None: still running after the bound, killed
    stdout: str
    stderr: str
    seconds: float
    leftovers: dict[int, str]  # pid -> name of processes left in the run's session
    before: dict[str, str]
    after: dict[str, str]
    protected_before: dict[str, bytes]
    protected_after: dict[str, bytes]
    challenges: list[str]
    stages: list[str] = field(default_factory=list)
    triggered: int = 0
    origin: str = ""
    raw_bytes: int = 0
    run_dirs_left: list[str] = field(default_factory=list)
    logs_before: dict[str, bytes] = field(default_factory=dict)
    logs_after: dict[str, bytes] = field(default_factory=dict)


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root (not following links): type, mode and content."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            info = path.lstat()
            mode = f"{stat.S_IMODE(info.st_mode):o}"
            if stat.S_ISLNK(info.st_mode):
                found[str(path.relative_to(root))] = "link " + os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[str(path.relative_to(root))] = f"file {mode} {digest}"
            else:
                found[str(path.relative_to(root))] = f"{stat.S_IFMT(info.st_mode):o} {mode}"
    return found


def protected(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in PROTECTED}


def logs(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in APPEND_ONLY if (root / name).exists()}


def session_members(session: int) -> dict[int, str]:
    """Processes (not zombies) whose session is `session`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        state, _ppid, _pgrp, sid = text[text.rindex(")") + 2 :].split()[:4]
        if int(sid) == session and state != "Z":
            found[int(entry)] = name
    return found


def client_argv(ca: HostileCA, material: Material, root: Path, *args: str) -> list[str]:
    return [
        LETSKENCRYPT,
        "--server",
        ca.directory_url,
        "--ca-bundle",
        str(material.ca_bundle),
        "--trust-anchors",
        str(material.trust_anchors),
        "-C",
        str(root / "challenges"),
        "-c",
        str(root / "certs"),
        "-f",
        str(root / "account" / "privkey.pem"),
        "-k",
        str(root / "domain" / "privkey.pem"),
        *args,
        *NAMES,
    ]


def run_client(
    argv: list[str], bound: float, env: dict[str, str] | None = None
) -> tuple[int | None, str, str, float, dict[int, str]]:
    started = time.monotonic()
    client = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="backslashreplace",
        start_new_session=True,
        env=env,
    )
    code: int | None
    try:
        stdout, stderr = client.communicate(timeout=bound + KILL_AFTER)
        code = client.returncode
    except subprocess.TimeoutExpired:
        os.killpg(client.pid, signal.SIGKILL)
        stdout, stderr = client.communicate()
        code = None
    seconds = time.monotonic() - started
    leftovers = session_members(client.pid)
    for _ in range(20):  # a role may take a moment to notice its parent is gone
        if not leftovers:
            break
        time.sleep(0.05)
        leftovers = session_members(client.pid)
    if leftovers:
        os.killpg(client.pid, signal.SIGKILL)
    return code, stdout, stderr, seconds, leftovers


def run_case(case: Case, material: Material, template: Path, root: Path) -> Outcome:
    shutil.copytree(template, root, symlinks=True, dirs_exist_ok=True)
    before, protected_before, logs_before = snapshot(root), protected(root), logs(root)
    # The supervisor's run directory (sockets) goes to TMPDIR: a private one
    # shows whether it is removed.
    # (Short: a unix socket's path has room for 107 bytes.)
    run_tmp = Path(tempfile.mkdtemp(prefix="t", dir=root.parent))
    run_tmp.chmod(0o755)
    env = dict(os.environ)
    env["TMPDIR"] = str(run_tmp)
    with HostileCA(material, case.misbehaviour, challenge_dir=root / "challenges") as ca:
        knob = ("--poll-timeout", str(POLL_TIMEOUT)) if case.knob else ()
        argv = client_argv(ca, material, root, *knob, *case.args)
        code, stdout, stderr, seconds, leftovers = run_client(argv, case.bound, env)
    return Outcome(
        code=code,
        stdout=stdout,
        stderr=stderr,
        seconds=seconds,
        leftovers=leftovers,
        before=before,
        after=snapshot(root),
        protected_before=protected_before,
        protected_after=protected(root),
        challenges=sorted(os.listdir(root / "challenges")),
        stages=ca.stages_seen(),
        triggered=ca.triggered,
        origin=ca.origin,
        raw_bytes=ca.raw_bytes,
        logs_before=logs_before,
        logs_after=logs(root),
        run_dirs_left=sorted(os.listdir(run_tmp)),
    )


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    """A directory every role can reach: started as root, the roles that drop
    to `nobody` open the certificate by path (pytest's own tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="letskencrypt-hostile-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def private_dir(workspace: Path, name: str) -> Path:
    path = workspace / name
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def material(workspace: Path) -> Material:
    return Material.create(workspace / "material")


@pytest.fixture(scope="module")
def template(material: Material, workspace: Path) -> Path:
    """Keys and a valid certificate, installed by a good run."""
    root = private_dir(workspace, "template")
    (root / "challenges").mkdir(mode=0o755)
    with HostileCA(material, challenge_dir=root / "challenges") as ca:
        code, _out, stderr, _seconds, _left = run_client(
            client_argv(ca, material, root, "-n", "-N"), FAST
        )
    assert code == 0, stderr
    leaf = x509.load_pem_x509_certificate((root / "certs" / "cert.pem").read_bytes())
    leaf.verify_directly_issued_by(material.intermediate)
    return root


class Runs:
    """Cases running in worker threads; `result` waits for one."""

    def __init__(self, material: Material, template: Path, workspace: Path) -> None:
        self.material = material
        self.template = template
        self.workspace = workspace
        self.slow = concurrent.futures.ThreadPoolExecutor(max_workers=8)
        self.fast = concurrent.futures.ThreadPoolExecutor(max_workers=FAST_WORKERS)
        self.futures: dict[str, concurrent.futures.Future[Outcome]] = {}
        self.roots: dict[str, Path] = {}

    def start(self, case: Case) -> None:
        root = private_dir(self.workspace, f"case-{case.id}")
        self.roots[case.id] = root
        pool = self.slow if case.slow else self.fast
        self.futures[case.id] = pool.submit(run_case, case, self.material, self.template, root)

    def result(self, case: Case) -> tuple[Outcome, Path]:
        if case.id not in self.futures:
            self.start(case)
        return self.futures[case.id].result(), self.roots[case.id]

    def close(self) -> None:
        for pool in (self.fast, self.slow):
            pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest,
    material: Material,
    template: Path,
    workspace: Path,
) -> Iterator[Runs]:
    selected = {
        item.callspec.params["case"].id
        for item in request.session.items
        if item.module is request.module
        and hasattr(item, "callspec")
        and isinstance(item.callspec.params.get("case"), Case)
    }
    pool = Runs(material, template, workspace)
    wanted = [case for case in CASES if case.id in selected]
    for case in sorted(wanted, key=lambda c: not c.slow):
        pool.start(case)
    yield pool
    pool.close()


# --- the cases ----------------------------------------------------------------------

UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def unsafe_characters(text: str) -> list[str]:
    return sorted(
        {
            f"U+{ord(c):04X}"
            for c in text
            if c != "\n" and unicodedata.category(c) in UNSAFE_CATEGORIES
        }
    )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_ca(case: Case, runs: Runs) -> None:
    outcome, root = runs.result(case)
    print(
        f"{case.id}: exit {outcome.code} in {outcome.seconds:.1f} s "
        f"({outcome.raw_bytes} endless bytes): {outcome.stderr!r}"
    )
    assert outcome.code is not None, f"still running after {case.bound + KILL_AFTER:.0f} s"
    assert outcome.triggered > 0, f"the misbehaviour never fired; stages {outcome.stages}"
    assert outcome.code == 1, outcome.stderr
    assert outcome.seconds < case.bound, f"{outcome.seconds:.1f} s > {case.bound} s"

    assert "Traceback" not in outcome.stderr + outcome.stdout
    assert unsafe_characters(outcome.stderr) == [], outcome.stderr
    # One line, besides the one that says the run created the account.
    stderr = without_terms(outcome.stderr)
    assert stderr.endswith("\n") and stderr.count("\n") == 1, outcome.stderr
    line = stderr.rstrip("\n")
    assert line.startswith("letskencrypt: netproc: "), line
    assert re.search(case.expect, line), line

    assert outcome.protected_after == outcome.protected_before
    assert outcome.challenges == []
    assert outcome.after.keys() == outcome.before.keys(), "files appeared or vanished"
    changed = {name for name in outcome.after if outcome.after[name] != outcome.before[name]}
    assert changed <= set(APPEND_ONLY), f"changed: {sorted(changed)}"
    for name, old in outcome.logs_before.items():
        new = outcome.logs_after[name]
        assert new.startswith(old), f"{name} was rewritten, not appended to"
        for entry in new[len(old) :].splitlines():
            assert json.loads(entry)["url"].startswith(outcome.origin + "/"), entry
    assert outcome.leftovers == {}, f"processes left behind: {outcome.leftovers}"
    assert outcome.run_dirs_left == [], "the supervisor left its run directory"
    # What the client will not use, it does not read (socket buffers aside).
    assert outcome.raw_bytes < 16 * 1024 * 1024, outcome.raw_bytes
    assert not list(root.glob("**/*.tmp*"))


def test_transport_reads_no_redirect_body(material: Material) -> None:
    """requests reads a 3xx body whole, uncapped, unless told not to look."""

    class Loopback:
        def resolve(self, host: str) -> list[str]:
            return ["127.0.0.1"]

    redirect = Misbehaviour("directory", "redirect-endless", "https://127.0.0.2:{port}/")
    with HostileCA(material, redirect) as ca:
        transport = Transport(Loopback(), material.ca_bundle.read_bytes(), deadline=10)
        with pytest.raises(AcmeError, match=r"CA redirects \(302\)"):
            transport.request("GET", ca.directory_url)
    assert ca.raw_bytes < 16 * 1024 * 1024


CASE = {case.id: case for case in CASES}


def test_retry_after_beyond_the_budget_is_not_polled(runs: Runs) -> None:
    """Asked to come back in 120 s with 90 s of budget, the client gives up at
    once: no poll of the order after the finalize reached the server."""
    outcome, _root = runs.result(CASE["retry-after-beyond-the-budget"])
    assert outcome.code == 1
    assert outcome.stages[-1] == "finalize", outcome.stages


def test_bad_nonce_of_another_media_type_is_not_retried(runs: Runs) -> None:
    outcome, _root = runs.result(CASE["bad-nonce-as-html"])
    assert outcome.code == 1
    assert outcome.triggered == 1
    assert outcome.stages.count("newAccount") == 1


def test_cases_are_many_and_distinct() -> None:
    assert len(CASES) >= 20
    assert len({case.id for case in CASES}) == len(CASES)
    assert len({repr(case.misbehaviour) for case in CASES}) == len(CASES)


# --- the same server, well behaved: the harness is real enough to succeed ------------


def fresh_copy(template: Path, workspace: Path, name: str) -> Path:
    root = private_dir(workspace, name)
    shutil.copytree(template, root, symlinks=True, dirs_exist_ok=True)
    return root


def test_good_server_renews(material: Material, template: Path, workspace: Path) -> None:
    root = fresh_copy(template, workspace, "good-renewal")
    old = (root / "certs" / "cert.pem").read_bytes()
    keys_before = {name: (root / name).read_bytes() for name in PROTECTED[:2]}
    with HostileCA(material, challenge_dir=root / "challenges") as ca:
        code, _out, stderr, seconds, leftovers = run_client(
            client_argv(ca, material, root, "-n", "-N", "-F"), FAST
        )
    assert code == 0, stderr
    assert without_terms(stderr) == ""
    assert seconds < FAST and leftovers == {}
    assert "challenge" in ca.stages_seen() and "certificate" in ca.stages_seen()
    new = x509.load_pem_x509_certificate((root / "certs" / "cert.pem").read_bytes())
    assert (root / "certs" / "cert.pem").read_bytes() != old
    new.verify_directly_issued_by(material.intermediate)
    assert {name: (root / name).read_bytes() for name in PROTECTED[:2]} == keys_before
    assert os.listdir(root / "challenges") == []


def test_good_server_revokes(material: Material, template: Path, workspace: Path) -> None:
    root = fresh_copy(template, workspace, "good-revocation")
    serial = x509.load_pem_x509_certificate((root / "certs" / "cert.pem").read_bytes())
    with HostileCA(material, challenge_dir=root / "challenges") as ca:
        code, _out, stderr, _seconds, leftovers = run_client(
            client_argv(ca, material, root, "-r"), FAST
        )
    assert code == 0, stderr
    assert ca.revoked == [serial.serial_number]
    assert not (root / "certs" / "cert.pem").exists()
    assert leftovers == {}


def run_slow_finish(
    material: Material,
    template: Path,
    workspace: Path,
    name: str,
    retry_after: str | None,
    polls: int,
) -> list[float]:
    """A good run against a CA whose order answers "processing" to the finalize
    and `polls` polls after it: the seconds between the finalize and each poll."""
    root = fresh_copy(template, workspace, name)
    slow = Misbehaviour("finalize", "slow-finish", (retry_after, polls))
    with HostileCA(material, slow, challenge_dir=root / "challenges") as ca:
        code, _out, stderr, _seconds, leftovers = run_client(
            client_argv(ca, material, root, "-F"), FAST
        )
    assert code == 0, stderr
    assert leftovers == {}
    assert ca.stages_seen()[-1] == "certificate"
    (finalized,) = ca.arrivals("finalize")
    return [when - finalized for when in ca.arrivals("order") if when > finalized]


def test_poll_waits_exactly_as_long_as_the_ca_asks(
    material: Material, template: Path, workspace: Path
) -> None:
    polls = run_slow_finish(material, template, workspace, "retry-after-3", "3", 0)
    assert len(polls) == 1, polls  # one poll, at the time asked for, and the order is valid
    assert 3.0 <= polls[0] < 4.5, polls


def test_poll_backs_off_without_retry_after(
    material: Material, template: Path, workspace: Path
) -> None:
    polls = run_slow_finish(material, template, workspace, "backoff", None, 2)
    assert len(polls) == 3, polls
    gaps = [polls[0], polls[1] - polls[0], polls[2] - polls[1]]
    # 25 ms first (acme/client.py POLL_BACKOFF), doubling: never sooner.  (Each
    # gap also holds a request's round trip, which under load can be longer
    # than these waits: the order of the gaps proves nothing.)
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05 and gaps[2] >= 0.1, gaps


@pytest.mark.parametrize(
    "misbehaviour",
    [
        Misbehaviour("newOrder", "problem", (400, problem("badNonce"), {}), times=2),
        Misbehaviour("finalize", "problem", (503, problem("serverInternal"), {}), times=1),
        Misbehaviour(
            "authz", "problem", (429, problem("rateLimited"), {"Retry-After": "1"}), times=1
        ),
        Misbehaviour(
            "directory", "header", ("Content-Type", "APPLICATION/JSON ; charset=utf-8"), times=1
        ),
        Misbehaviour(
            "certificate",
            "header",
            ("Content-Type", "Application/PEM-Certificate-Chain; charset=UTF-8"),
            times=1,
        ),
    ],
    ids=[
        "bad-nonce-twice",
        "finalize-503-once",
        "authz-429-retry-after-1",
        "directory-type-in-capitals",
        "certificate-type-with-parameters",
    ],
)
def test_good_server_with_passing_trouble(
    material: Material,
    template: Path,
    workspace: Path,
    misbehaviour: Misbehaviour,
    request: pytest.FixtureRequest,
) -> None:
    root = fresh_copy(template, workspace, f"recovers-{request.node.callspec.id}")
    with HostileCA(material, misbehaviour, challenge_dir=root / "challenges") as ca:
        code, _out, stderr, _seconds, leftovers = run_client(
            client_argv(ca, material, root, "-F"), FAST
        )
    assert code == 0, stderr
    assert ca.triggered == misbehaviour.times
    assert leftovers == {}
