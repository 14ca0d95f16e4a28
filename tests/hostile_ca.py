"""A hostile ACME server on loopback: real enough to lead a client to any stage
of an issuance or a revocation, and then to misbehave there in a chosen way.

    material = Material.create(workdir)      # TLS CA + issuing CA, made once
    bad = Misbehaviour("authz", "fields", {"challenges.1.token": "../x"})
    with HostileCA(material, bad, challenge_dir=path) as ca:
        ca.directory_url                     # https://127.0.0.1:<port>/dir
        material.ca_bundle                   # give this to --ca-bundle
        material.trust_anchors               # and this to --trust-anchors

It listens on 127.0.0.1 only, over HTTPS with a throwaway TLS CA, in threads
of the calling process.  Every POST must be a flattened JWS: its protected
header is parsed and checked as an ACME server would (alg, a nonce this
server issued and nobody used yet, `url` equal to the request's URL, exactly
one of `jwk` / `kid`, the `kid` of a known account, `jwk` only for
newAccount) and its signature is verified.  http-01 is checked by reading
`<challenge_dir>/<token>` directly (the server shares the file system; nothing
listens on port 80) against the account key's thumbprint.  Finalize checks
the CSR and issues a real certificate for the CSR's key and names from the
server's own issuing CA (root -> intermediate -> leaf): each bad chain below
differs from a good one in exactly one way.

Stages (one per kind of request): directory, nonce, newAccount, newOrder,
order, authz, challenge, finalize, certificate, revokeCert.  A
`Misbehaviour(stage, action, value, times)` fires on requests of that stage
(`times` of them, or all) once the request itself has been checked.

Actions on the answer (any stage):
  drip-headers        status line, then one header byte per second, forever
  drip-body           complete headers, then one body byte per second
  silent              read the request, never answer
  endless-chunked     a chunked body that never ends
  oversized-declared  Content-Length of 2 MiB (and the body)
  oversized-streamed  2 MiB of valid JSON, no length, ended by closing
  body                the normal status and headers, `value` (bytes) as body
  problem             `value` = (status, problem document or raw bytes, headers)
  redirect            `value` = (status, Location template)
  redirect-endless    a 302 to `value` (template) whose body never ends
  nonce               the normal answer with `value` as Replay-Nonce
  location            the normal answer with `value` (template) as Location,
                      or without one (DELETE)
  header              the normal answer with `value` = (name, new value or DELETE)
  raw                 `value` (bytes) as the whole answer, then the connection closes
  fields              the normal JSON with `value` = {dotted.path: new value
                      (templates in strings) or DELETE}
Actions that change what the server does:
  chain               (certificate) a bad chain, `value` one of CHAIN_VARIANTS
  never-finish        (finalize) the order stays "processing" for ever
  slow-finish         (finalize) `value` = (Retry-After or None, polls): the
                      finalize and that many polls of the order after it
                      answer "processing" (with that Retry-After), then "valid"
  fail-challenge      (challenge) the challenge fails with `value` as error
  extra-authorizations (newOrder) `value` more authorizations, for names
                      nobody asked for
Actions on the TLS handshake of new connections (give stage "directory"):
  tls-untrusted       a server certificate from a CA the client does not trust
  tls-silent          accept the connection, never say a word

Templates: "{origin}" becomes https://127.0.0.1:<port>, "{port}" the port.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import json
import re
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests import tlsfactory

__all__ = ["CHAIN_VARIANTS", "DELETE", "STAGES", "HostileCA", "Material", "Misbehaviour"]

LOOPBACK = "127.0.0.1"
STAGES = (
    "directory",
    "nonce",
    "newAccount",
    "newOrder",
    "order",
    "authz",
    "challenge",
    "finalize",
    "certificate",
    "revokeCert",
)
CHAIN_VARIANTS = (
    "other-key",  # a good chain, but the leaf is for a key that is not the CSR's
    "other-names",  # the CSR's key, other names
    "unlinked",  # the leaf, then a CA certificate that did not issue it
    "forged-issuer",  # the leaf, then a CA with the issuer's name but another key
    "expired",  # the leaf's validity ended yesterday
    "ca-leaf",  # the "leaf" is a CA certificate
    "garbage",  # a CERTIFICATE block that is not base64
    "binary",  # no PEM at all
    "private-key",  # a good chain followed by a PRIVATE KEY block
    "empty",  # nothing
    "too-long",  # eleven certificates
    "oversized",  # a good chain padded with whitespace beyond 256 KiB
    "malformed-issuer",  # certificate-shaped DER whose issuer name does not parse
    "x509v2",  # the leaf claims version 2, which cryptography refuses to load
    # Right key, right names, signatures that check: but not from this CA.
    "self-signed",  # a leaf that names itself as its issuer, alone
    "unknown-ca",  # a leaf from another CA, then that CA's certificate
    "leaf-only",  # our intermediate's leaf without the intermediate
    "century",  # from our intermediate, valid for 100 years
    "not-yet-valid",  # from our intermediate, valid from tomorrow
)
MAX_REQUEST_BODY = 128 * 1024
OVERSIZE = 2 * 1024 * 1024
DRIP_INTERVAL = 1.0
# Nothing a hostile handler does lasts longer than this, whatever the client does.
MAX_HOSTILITY = 600.0
MAX_ENDLESS_BYTES = 256 * 1024 * 1024
DNS_NAME = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)+$")
_OBJECT_PATH = re.compile(r"^/(order|authz|chall|finalize|cert|acct)/(\d+)$")
_OBJECT_STAGES = {
    "order": "order",
    "authz": "authz",
    "chall": "challenge",
    "finalize": "finalize",
    "cert": "certificate",
    "acct": "account",
}


# Actions that need the real answer (and its effects), and of those, the ones
# that change what the server does rather than what it sends.
_CHANGES_THE_SERVER = frozenset(
    {"chain", "never-finish", "slow-finish", "fail-challenge", "extra-authorizations"}
)
_CHANGES_THE_ANSWER = _CHANGES_THE_SERVER | {"body", "nonce", "location", "header", "fields"}


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE: Any = _Delete()


@dataclass(frozen=True)
class Misbehaviour:
    """What goes wrong, and where: see the module docstring for the actions."""

    stage: str
    action: str
    value: Any = None
    times: int | None = None  # None: every request of the stage

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}")


# --- key material -------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _server_context(
    stem: Path, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> ssl.SSLContext:
    """A TLS server context for 127.0.0.1, 127.0.0.2 and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = tlsfactory.server_certificate(issuer, key, ("127.0.0.1", "127.0.0.2"))
    cert_path = tlsfactory.write_certificate(stem.with_suffix(".pem"), certificate)
    key_path = tlsfactory.write_key(stem.with_suffix(".key"), key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


@dataclass
class Material:
    """Keys and certificates shared by every HostileCA of a test session."""

    workdir: Path
    ca_bundle: Path  # the TLS trust anchor the client is given
    trust_anchors: Path  # the root of the issuing CA, for --trust-anchors
    tls_context: ssl.SSLContext
    untrusted_tls_context: ssl.SSLContext  # a server certificate from another CA
    root: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    # Another CA, and one impersonating our intermediate (same name, other key).
    stranger: x509.Certificate
    stranger_key: ec.EllipticCurvePrivateKey
    impostor: x509.Certificate
    other_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, workdir: Path) -> Material:
        workdir.mkdir(parents=True, exist_ok=True)
        tls_key = ec.generate_private_key(ec.SECP256R1())
        tls_ca = tlsfactory.ca_certificate("hostile CA TLS root", tls_key)
        ca_bundle = workdir / "tls-ca.pem"
        ca_bundle.write_bytes(tls_ca.public_bytes(serialization.Encoding.PEM))
        context = _server_context(workdir / "tls-server", (tls_ca, tls_key))
        # Right names, but from a CA the client was not given.
        stranger_tls_key = ec.generate_private_key(ec.SECP256R1())
        stranger_tls = tlsfactory.ca_certificate("hostile CA TLS root", stranger_tls_key)
        untrusted = _server_context(workdir / "tls-untrusted", (stranger_tls, stranger_tls_key))

        root_key = ec.generate_private_key(ec.SECP384R1())
        root = tlsfactory.ca_certificate("hostile ACME root", root_key)
        trust_anchors = workdir / "trust-anchors.pem"
        trust_anchors.write_bytes(root.public_bytes(serialization.Encoding.PEM))
        intermediate_key = ec.generate_private_key(ec.SECP256R1())
        intermediate = tlsfactory.ca_certificate(
            "hostile ACME issuer", intermediate_key, (root, root_key)
        )
        stranger_key = ec.generate_private_key(ec.SECP256R1())
        impostor_key = ec.generate_private_key(ec.SECP256R1())
        return cls(
            workdir=workdir,
            ca_bundle=ca_bundle,
            trust_anchors=trust_anchors,
            tls_context=context,
            untrusted_tls_context=untrusted,
            root=root,
            intermediate=intermediate,
            intermediate_key=intermediate_key,
            stranger=tlsfactory.ca_certificate("somebody else's CA", stranger_key),
            stranger_key=stranger_key,
            impostor=tlsfactory.ca_certificate(
                "hostile ACME issuer", impostor_key, (root, root_key)
            ),
            other_key=ec.generate_private_key(ec.SECP256R1()),
        )

    def issue(
        self,
        public_key: Any,
        names: list[str],
        *,
        expired: bool = False,
        ca: bool = False,
        starts: datetime.timedelta = datetime.timedelta(minutes=-1),
        days: float = 90,
        issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
    ) -> x509.Certificate:
        """A leaf from our intermediate (or a broken variant of one): valid
        from now + `starts` for `days`, or signed by `issuer` (name, key)."""
        now = _now()
        if expired:
            not_before, not_after = now - datetime.timedelta(days=91), now - datetime.timedelta(1)
        else:
            not_before = now + starts
            not_after = not_before + datetime.timedelta(days)
        issuer_name, issuer_key = issuer or (self.intermediate.subject, self.intermediate_key)
        return (
            x509.CertificateBuilder()
            .subject_name(tlsfactory.name(names[0]))
            .issuer_name(issuer_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
            .sign(issuer_key, hashes.SHA256())
        )


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _pem_der(der: bytes) -> bytes:
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode()


# --- JWS ------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: object) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise _Problem(400, "malformed", "not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int(text: object) -> int:
    return int.from_bytes(b64url_decode(text), "big")


_CURVES: dict[str, tuple[ec.EllipticCurve, str, int, hashes.HashAlgorithm]] = {
    "P-256": (ec.SECP256R1(), "ES256", 32, hashes.SHA256()),
    "P-384": (ec.SECP384R1(), "ES384", 48, hashes.SHA384()),
}


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638, computed here rather than with the client's code."""
    members = ("crv", "kty", "x", "y") if jwk.get("kty") == "EC" else ("e", "kty", "n")
    canonical = json.dumps({k: jwk[k] for k in members}, sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode()).digest())


def _verify_signature(alg: object, jwk: object, signing_input: bytes, signature: bytes) -> None:
    if not isinstance(jwk, dict):
        raise _Problem(400, "malformed", "jwk is not an object")
    try:
        if jwk.get("kty") == "EC" and jwk.get("crv") in _CURVES:
            curve, expected_alg, size, digest = _CURVES[jwk["crv"]]
            if alg != expected_alg or len(signature) != 2 * size:
                raise _Problem(400, "badSignatureAlgorithm", f"{alg!r} for {jwk['crv']}")
            public = ec.EllipticCurvePublicNumbers(_int(jwk["x"]), _int(jwk["y"]), curve)
            der = encode_dss_signature(
                int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            )
            public.public_key().verify(der, signing_input, ec.ECDSA(digest))
        elif jwk.get("kty") == "RSA":
            if alg != "RS256":
                raise _Problem(400, "badSignatureAlgorithm", f"{alg!r} for RSA")
            rsa_key = rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
            rsa_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise _Problem(400, "badPublicKey", "unsupported key")
    except InvalidSignature:
        raise _Problem(400, "malformed", "JWS signature is invalid") from None
    except (KeyError, ValueError) as error:
        raise _Problem(400, "malformed", f"unusable jwk: {error}") from None


@dataclass
class Jws:
    protected: dict[str, Any]
    payload: bytes  # b"" for POST-as-GET
    account: _Account | None  # None for a jwk-signed (newAccount) request
    jwk: dict[str, Any]

    def document(self) -> dict[str, Any]:
        try:
            document = json.loads(self.payload)
        except ValueError:
            raise _Problem(400, "malformed", "payload is not JSON") from None
        if not isinstance(document, dict):
            raise _Problem(400, "malformed", "payload is not a JSON object")
        return document


# --- server state -----------------------------------------------------------------


class _Problem(Exception):
    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail


@dataclass
class _Account:
    id: int
    url: str
    jwk: dict[str, Any]
    thumbprint: str
    contact: list[str]


@dataclass
class _Challenge:
    id: int
    authz: _Authz
    token: str
    status: str = "pending"
    error: dict[str, Any] | None = None


@dataclass
class _Authz:
    id: int
    order: _Order
    name: str
    status: str = "pending"
    challenge: _Challenge | None = None


@dataclass
class _Order:
    id: int
    account: _Account
    names: list[str]
    status: str = "pending"
    authzs: list[_Authz] = field(default_factory=list)
    certificate: int | None = None
    # slow-finish: valid, but shown as "processing" for this many more polls.
    held_polls: int | None = None
    held_retry_after: str | None = None


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    document: Any = None  # the JSON the body was made from, if any

    @classmethod
    def json(cls, status: int, document: Any, **headers: str) -> Reply:
        reply = cls(status, headers={"Content-Type": "application/json", **headers})
        reply.document = document
        return reply

    @classmethod
    def problem(cls, status: int, kind: str, detail: str) -> Reply:
        document = {"type": f"urn:ietf:params:acme:error:{kind}", "detail": detail}
        reply = cls(status, headers={"Content-Type": "application/problem+json"})
        reply.document = document
        return reply

    def encoded(self) -> bytes:
        if self.document is not None:
            return json.dumps(self.document, indent=1).encode()
        return self.body


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    ca: HostileCA

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's thread.
        context = self.ca.material.tls_context
        bad = self.ca.take_connection()
        if bad is not None and bad.action == "tls-silent":
            self.ca.stopping.wait(MAX_HOSTILITY)
            return
        if bad is not None and bad.action == "tls-untrusted":
            context = self.ca.material.untrusted_tls_context
        try:
            tls = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up on us mid-answer are the point


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hostile-acme"
    sys_version = ""
    timeout = 60  # an idle kept-alive connection
    server: _Server

    def do_GET(self) -> None:
        self.server.ca.handle(self)

    do_HEAD = do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


class HostileCA:
    """The server: see the module docstring."""

    def __init__(
        self,
        material: Material,
        misbehaviour: Misbehaviour | None = None,
        *,
        challenge_dir: Path | None = None,
    ) -> None:
        self.material = material
        self.misbehaviour = misbehaviour
        self.challenge_dir = challenge_dir
        self.triggered = 0  # how many times the misbehaviour fired
        self.raw_bytes = 0  # body bytes of the endless answers written so far
        # (time.monotonic() at arrival, method, stage) of every request
        self.seen: list[tuple[float, str, str]] = []
        self.revoked: list[int] = []  # serial numbers
        self.stopping = threading.Event()
        self._lock = threading.RLock()
        self._nonces: set[str] = set()
        self._accounts: dict[str, _Account] = {}  # by thumbprint
        self._orders: dict[int, _Order] = {}
        self._authzs: dict[int, _Authz] = {}
        self._challenges: dict[int, _Challenge] = {}
        self._certificates: dict[int, bytes] = {}
        self._ids = iter(range(1, 1 << 30))
        self.httpd = _Server((LOOPBACK, 0), _Handler)
        self.httpd.ca = self
        self.port: int = self.httpd.server_address[1]
        self.origin = f"https://{LOOPBACK}:{self.port}"
        self.directory_url = f"{self.origin}/dir"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.05,), name=f"hostile-ca-{self.port}"
        )
        self._thread.daemon = True
        self._thread.start()

    def __enter__(self) -> HostileCA:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def stages_seen(self) -> list[str]:
        with self._lock:
            return [stage for _time, _method, stage in self.seen]

    def arrivals(self, stage: str) -> list[float]:
        """When the requests of `stage` arrived (time.monotonic())."""
        with self._lock:
            return [when for when, _method, seen in self.seen if seen == stage]

    # -- helpers --

    def template(self, text: str) -> str:
        return text.replace("{origin}", self.origin).replace("{port}", str(self.port))

    def _next_id(self) -> int:
        return next(self._ids)

    def _new_nonce(self) -> str:
        nonce = secrets.token_urlsafe(16)
        with self._lock:
            self._nonces.add(nonce)
        return nonce

    def take_connection(self) -> Misbehaviour | None:
        """The misbehaviour, if it is one of a new connection's TLS handshake."""
        bad = self.misbehaviour
        if bad is None or not bad.action.startswith("tls-"):
            return None
        return self._take(bad.stage)

    def _take(self, stage: str) -> Misbehaviour | None:
        bad = self.misbehaviour
        with self._lock:
            if bad is None or bad.stage != stage:
                return None
            if bad.times is not None and self.triggered >= bad.times:
                return None
            self.triggered += 1
            return bad

    # -- dispatch --

    def handle(self, handler: _Handler) -> None:
        path = handler.path.split("?", 1)[0]
        method = handler.command
        stage, object_id = self._route(method, path)
        body = b""
        if method == "POST":
            length = handler.headers.get("Content-Length", "")
            if not length.isdigit() or int(length) > MAX_REQUEST_BODY:
                self._send(handler, Reply.problem(413, "malformed", "bad Content-Length"))
                handler.close_connection = True
                return
            body = handler.rfile.read(int(length))
        with self._lock:
            self.seen.append((time.monotonic(), method, stage or path))
        try:
            if stage is None:
                raise _Problem(404, "malformed", "no such resource")
            jws = self._check_jws(handler, path, body, stage) if method == "POST" else None
            bad = self._take(stage)
            if bad is None or bad.action in _CHANGES_THE_ANSWER:
                reply = self._answer(stage, object_id, method, jws, bad)
            else:  # an answer in place of the real one: the request has no effect
                reply = Reply(200, headers={"Content-Type": "application/json"})
        except _Problem as problem:
            self._send(handler, Reply.problem(problem.status, problem.kind, problem.detail))
            return
        if bad is None or bad.action in _CHANGES_THE_SERVER:
            self._send(handler, reply)
        else:
            self._misbehave(handler, bad, reply)

    def _route(self, method: str, path: str) -> tuple[str | None, int | None]:
        if path == "/dir" and method == "GET":
            return "directory", None
        if path == "/nonce" and method in ("HEAD", "GET"):
            return "nonce", None
        if method != "POST":
            return None, None
        fixed = {"/new-acct": "newAccount", "/new-order": "newOrder", "/revoke": "revokeCert"}
        if path in fixed:
            return fixed[path], None
        match = _OBJECT_PATH.match(path)
        if match is None or match.group(1) == "acct":
            return None, None
        return _OBJECT_STAGES[match.group(1)], int(match.group(2))

    def _check_jws(self, handler: _Handler, path: str, body: bytes, stage: str) -> Jws:
        if handler.headers.get("Content-Type") != "application/jose+json":
            raise _Problem(415, "malformed", "Content-Type must be application/jose+json")
        try:
            flattened = json.loads(body)
        except ValueError:
            raise _Problem(400, "malformed", "body is not JSON") from None
        if not isinstance(flattened, dict) or set(flattened) != {
            "protected",
            "payload",
            "signature",
        }:
            raise _Problem(400, "malformed", "not a flattened JWS")
        try:
            protected = json.loads(b64url_decode(flattened["protected"]))
        except ValueError:
            raise _Problem(400, "malformed", "protected header is not JSON") from None
        if not isinstance(protected, dict):
            raise _Problem(400, "malformed", "protected header is not an object")
        payload = b64url_decode(flattened["payload"])
        signature = b64url_decode(flattened["signature"])
        nonce = protected.get("nonce")
        with self._lock:
            fresh = isinstance(nonce, str) and nonce in self._nonces
            self._nonces.discard(nonce if isinstance(nonce, str) else "")
        if not fresh:
            raise _Problem(400, "badNonce", "unknown or reused nonce")
        if protected.get("url") != self.origin + path:
            raise _Problem(401, "unauthorized", f"url {protected.get('url')!r} is not this one")
        if ("jwk" in protected) == ("kid" in protected):
            raise _Problem(400, "malformed", "exactly one of jwk and kid")
        account = None
        if stage == "newAccount" or (stage == "revokeCert" and "jwk" in protected):
            if "jwk" not in protected:
                raise _Problem(400, "malformed", "newAccount is signed with a jwk")
            jwk = protected["jwk"]
        else:
            if "kid" not in protected:
                raise _Problem(400, "malformed", "requests are signed with a kid")
            with self._lock:
                account = next(
                    (a for a in self._accounts.values() if a.url == protected["kid"]), None
                )
            if account is None:
                raise _Problem(400, "accountDoesNotExist", "no such account")
            jwk = account.jwk
        signing_input = f"{flattened['protected']}.{flattened['payload']}".encode()
        _verify_signature(protected.get("alg"), jwk, signing_input, signature)
        return Jws(protected, payload, account, jwk)

    # -- the ACME resources --

    def _answer(
        self,
        stage: str,
        object_id: int | None,
        method: str,
        jws: Jws | None,
        bad: Misbehaviour | None,
    ) -> Reply:
        if stage == "directory":
            return Reply.json(200, self._directory())
        if stage == "nonce":
            return Reply(200 if method == "HEAD" else 204)
        assert jws is not None
        if stage == "newAccount":
            return self._new_account(jws)
        if stage == "newOrder":
            return self._new_order(jws, bad)
        if stage == "revokeCert":
            return self._revoke(jws)
        assert object_id is not None and jws.account is not None
        with self._lock:
            if stage == "order":
                order = self._own(self._orders, object_id, jws.account)
                if order.held_polls == 0:
                    order.held_polls = None
                reply = self._order_reply(order)
                if order.held_polls is not None:
                    order.held_polls -= 1
                return reply
            if stage == "authz":
                authz = self._own(self._authzs, object_id, jws.account, lambda a: a.order)
                return Reply.json(200, self._authz_document(authz))
            if stage == "challenge":
                challenge = self._own(
                    self._challenges, object_id, jws.account, lambda c: c.authz.order
                )
                return self._respond(challenge, jws, bad)
            if stage == "finalize":
                order = self._own(self._orders, object_id, jws.account)
                return self._finalize(order, jws, bad)
            if object_id not in self._certificates:
                raise _Problem(404, "malformed", "no such certificate")
            return Reply(
                200,
                self._chain(object_id, bad),
                {"Content-Type": "application/pem-certificate-chain"},
            )

    def _own(self, table: dict[int, Any], key: int, account: _Account, order: Any = None) -> Any:
        item = table.get(key)
        if item is None:
            raise _Problem(404, "malformed", "no such resource")
        owner = (order(item) if order else item).account
        if owner is not account:
            raise _Problem(403, "unauthorized", "not your resource")
        return item

    def _directory(self) -> dict[str, Any]:
        return {
            "newNonce": f"{self.origin}/nonce",
            "newAccount": f"{self.origin}/new-acct",
            "newOrder": f"{self.origin}/new-order",
            "revokeCert": f"{self.origin}/revoke",
            "keyChange": f"{self.origin}/key-change",
            "meta": {"termsOfService": f"{self.origin}/terms"},
        }

    def _new_account(self, jws: Jws) -> Reply:
        request = jws.document()
        thumbprint = jwk_thumbprint(jws.jwk)
        with self._lock:
            account = self._accounts.get(thumbprint)
            status = 200
            if account is None:
                if request.get("onlyReturnExisting") is True:
                    raise _Problem(400, "accountDoesNotExist", "no account for this key")
                if request.get("termsOfServiceAgreed") is not True:
                    raise _Problem(403, "userActionRequired", "agree to the terms of service")
                contact = request.get("contact", [])
                if not isinstance(contact, list) or not all(isinstance(c, str) for c in contact):
                    raise _Problem(400, "invalidContact", "contact is a list of strings")
                number = self._next_id()
                account = _Account(
                    number, f"{self.origin}/acct/{number}", jws.jwk, thumbprint, contact
                )
                self._accounts[thumbprint] = account
                status = 201
        document = {"status": "valid", "contact": account.contact, "orders": account.url + "/o"}
        return Reply.json(status, document, Location=account.url)

    def _new_order(self, jws: Jws, bad: Misbehaviour | None) -> Reply:
        assert jws.account is not None
        identifiers = jws.document().get("identifiers")
        if not isinstance(identifiers, list) or not 0 < len(identifiers) <= 100:
            raise _Problem(400, "malformed", "identifiers must be a list of 1 to 100")
        names = []
        for identifier in identifiers:
            value = identifier.get("value") if isinstance(identifier, dict) else None
            if (
                not isinstance(identifier, dict)
                or identifier.get("type") != "dns"
                or not isinstance(value, str)
                or not DNS_NAME.match(value)
                or value in names
            ):
                raise _Problem(400, "rejectedIdentifier", f"bad identifier {identifier!r}")
            names.append(value)
        with self._lock:
            order = _Order(self._next_id(), jws.account, names)
            self._orders[order.id] = order
            extra = []
            if bad is not None and bad.action == "extra-authorizations":
                extra = [f"extra{i}.hostile.example.org" for i in range(bad.value)]
            for name in [*names, *extra]:
                authz = _Authz(self._next_id(), order, name)
                authz.challenge = _Challenge(
                    self._next_id(), authz, b64url(secrets.token_bytes(32))
                )
                order.authzs.append(authz)
                self._authzs[authz.id] = authz
                self._challenges[authz.challenge.id] = authz.challenge
            document = self._order_document(order)
        return Reply.json(201, document, Location=f"{self.origin}/order/{order.id}")

    def _order_reply(self, order: _Order) -> Reply:
        if order.held_polls is None:
            return Reply.json(200, self._order_document(order))
        document = {**self._order_document(order), "status": "processing"}
        document.pop("certificate")
        reply = Reply.json(200, document)
        if order.held_retry_after is not None:
            reply.headers["Retry-After"] = order.held_retry_after
        return reply

    def _order_document(self, order: _Order) -> dict[str, Any]:
        document: dict[str, Any] = {
            "status": order.status,
            "expires": (_now() + datetime.timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "identifiers": [{"type": "dns", "value": name} for name in order.names],
            "authorizations": [f"{self.origin}/authz/{a.id}" for a in order.authzs],
            "finalize": f"{self.origin}/finalize/{order.id}",
        }
        if order.certificate is not None:
            document["certificate"] = f"{self.origin}/cert/{order.certificate}"
        return document

    def _challenge_document(self, challenge: _Challenge) -> dict[str, Any]:
        document: dict[str, Any] = {
            "type": "http-01",
            "url": f"{self.origin}/chall/{challenge.id}",
            "token": challenge.token,
            "status": challenge.status,
        }
        if challenge.error is not None:
            document["error"] = challenge.error
        return document

    def _authz_document(self, authz: _Authz) -> dict[str, Any]:
        assert authz.challenge is not None
        decoy = {
            "type": "dns-01",
            "url": f"{self.origin}/chall/0",
            "token": authz.challenge.token,
            "status": "pending",
        }
        return {
            "identifier": {"type": "dns", "value": authz.name},
            "status": authz.status,
            "expires": (_now() + datetime.timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "challenges": [decoy, self._challenge_document(authz.challenge)],
        }

    def _respond(self, challenge: _Challenge, jws: Jws, bad: Misbehaviour | None) -> Reply:
        if jws.document() != {}:
            raise _Problem(400, "malformed", "a challenge response is {}")
        authz = challenge.authz
        if challenge.status == "pending":
            if bad is not None and bad.action == "fail-challenge":
                error: dict[str, Any] | None = bad.value
            else:
                error = self._validate_http01(challenge, authz.order.account)
            challenge.status = "invalid" if error else "valid"
            challenge.error = error
            authz.status = challenge.status
            order = authz.order
            if error:
                order.status = "invalid"
            elif all(a.status == "valid" for a in order.authzs):
                order.status = "ready"
        document = self._challenge_document(challenge)
        return Reply.json(200, document, Link=f'<{self.origin}/authz/{authz.id}>;rel="up"')

    def _validate_http01(self, challenge: _Challenge, account: _Account) -> dict[str, Any] | None:
        if self.challenge_dir is None:
            return None
        expected = f"{challenge.token}.{account.thumbprint}".encode()
        try:
            found = (self.challenge_dir / challenge.token).read_bytes()
        except OSError as error:
            found = f"({error.strerror})".encode()
        if found.strip() == expected:
            return None
        return {
            "type": "urn:ietf:params:acme:error:unauthorized",
            "detail": f"key authorization {found[:100]!r} is not {expected!r}",
            "status": 403,
        }

    def _finalize(self, order: _Order, jws: Jws, bad: Misbehaviour | None) -> Reply:
        if order.status != "ready":
            raise _Problem(403, "orderNotReady", f"order is {order.status}")
        csr_text = jws.document().get("csr")
        try:
            csr = x509.load_der_x509_csr(b64url_decode(csr_text))
        except ValueError:
            raise _Problem(400, "badCSR", "not a DER CSR") from None
        if not csr.is_signature_valid:
            raise _Problem(400, "badCSR", "CSR signature is invalid")
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = sorted(san.value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            names = []
        if names != sorted(order.names):
            raise _Problem(400, "badCSR", f"CSR names {names} are not the order's")
        if bad is not None and bad.action == "never-finish":
            order.status = "processing"
            return Reply.json(200, self._order_document(order), **{"Retry-After": "1"})
        certificate = self.material.issue(csr.public_key(), order.names)
        number = self._next_id()
        self._certificates[number] = _pem(certificate, self.material.intermediate)
        order.certificate = number
        order.status = "valid"
        if bad is not None and bad.action == "slow-finish":
            order.held_retry_after, order.held_polls = bad.value
        return self._order_reply(order)

    def _chain(self, number: int, bad: Misbehaviour | None) -> bytes:
        good = self._certificates[number]
        if bad is None or bad.action != "chain":
            return good
        leaf = x509.load_pem_x509_certificate(good)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = names.get_values_for_type(x509.DNSName)
        material = self.material
        intermediate = material.intermediate
        variant = bad.value
        if variant == "other-key":
            return _pem(material.issue(material.other_key.public_key(), dns_names), intermediate)
        if variant == "other-names":
            return _pem(
                material.issue(leaf.public_key(), ["evil.example.net", *dns_names[1:]]),
                intermediate,
            )
        if variant == "unlinked":
            return _pem(leaf, material.stranger)
        if variant == "forged-issuer":
            return _pem(leaf, material.impostor)
        if variant == "expired":
            return _pem(material.issue(leaf.public_key(), dns_names, expired=True), intermediate)
        if variant == "ca-leaf":
            return _pem(material.issue(leaf.public_key(), dns_names, ca=True), intermediate)
        if variant == "garbage":
            return (
                b"-----BEGIN CERTIFICATE-----\n"
                b"this is !not! base64 \x1b[2J\x1b]52;c;aGk=\x07\n"
                b"-----END CERTIFICATE-----\n"
            )
        if variant == "binary":
            return bytes(range(256)) * 8
        if variant == "private-key":
            key_pem = material.other_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            return good + key_pem
        if variant == "empty":
            return b""
        if variant == "too-long":
            return _pem(leaf, *[intermediate] * 9, material.root)
        if variant == "malformed-issuer":
            der = leaf.public_bytes(serialization.Encoding.DER)
            issuer = leaf.issuer.public_bytes()
            # SEQUENCE, SET, SEQUENCE, OID (3 bytes of value), then the tag of
            # the common name's string, at offset 11: make it tag 0.
            at = der.index(issuer) + 11  # the issuer comes before the subject
            assert der[at] == 0x0C  # UTF8String
            broken = der[:at] + b"\x00" + der[at + 1 :]
            return _pem_der(broken) + _pem(intermediate)
        if variant == "x509v2":
            der = leaf.public_bytes(serialization.Encoding.DER)
            version = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2 (v3)
            at = der.index(version) + len(version) - 1
            return _pem_der(der[:at] + b"\x01" + der[at + 1 :]) + _pem(intermediate)
        if variant == "oversized":
            return good + b"\n" * (300 * 1024)
        if variant == "self-signed":
            itself = (tlsfactory.name(dns_names[0]), material.other_key)
            return _pem(material.issue(leaf.public_key(), dns_names, issuer=itself))
        if variant == "unknown-ca":
            stranger = (material.stranger.subject, material.stranger_key)
            foreign = material.issue(leaf.public_key(), dns_names, issuer=stranger)
            return _pem(foreign, material.stranger)
        if variant == "leaf-only":
            return _pem(leaf)
        if variant == "century":
            return _pem(material.issue(leaf.public_key(), dns_names, days=36525), intermediate)
        if variant == "not-yet-valid":
            tomorrow = datetime.timedelta(days=1)
            return _pem(material.issue(leaf.public_key(), dns_names, starts=tomorrow), intermediate)
        raise ValueError(f"unknown chain variant {variant!r}")

    def _revoke(self, jws: Jws) -> Reply:
        document = jws.document()
        try:
            certificate = x509.load_der_x509_certificate(b64url_decode(document.get("certificate")))
            certificate.verify_directly_issued_by(self.material.intermediate)
        except (ValueError, TypeError, InvalidSignature):
            raise _Problem(404, "malformed", "this CA did not issue that certificate") from None
        with self._lock:
            if certificate.serial_number in self.revoked:
                raise _Problem(400, "alreadyRevoked", "already revoked")
            self.revoked.append(certificate.serial_number)
        return Reply(200)

    # -- sending --

    def _headers(self, reply: Reply) -> dict[str, str]:
        headers = {"Cache-Control": "no-store", **reply.headers}
        headers.setdefault("Replay-Nonce", self._new_nonce())
        return headers

    def _send(self, handler: _Handler, reply: Reply) -> None:
        body = reply.encoded()
        handler.send_response(reply.status)
        headers = self._headers(reply)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _misbehave(self, handler: _Handler, bad: Misbehaviour, reply: Reply) -> None:
        action, value = bad.action, bad.value
        if action == "body":
            reply.document = None
            reply.body = value
            self._send(handler, reply)
        elif action == "problem":
            status, document, extra = value
            if isinstance(document, bytes):
                sent = Reply(status, document, {"Content-Type": "text/html"})
            else:
                sent = Reply.json(status, document)
                sent.headers["Content-Type"] = "application/problem+json"
            sent.headers.update(extra)
            self._send(handler, sent)
        elif action == "redirect":
            status, location = value
            self._send(handler, Reply(status, b"", {"Location": self.template(location)}))
        elif action == "nonce":
            reply.headers["Replay-Nonce"] = value
            self._send(handler, reply)
        elif action == "location":
            if value is DELETE:
                reply.headers.pop("Location", None)
            else:
                reply.headers["Location"] = self.template(value)
            self._send(handler, reply)
        elif action == "header":
            name, new = value
            if new is DELETE:
                reply.headers.pop(name, None)
            else:
                reply.headers[name] = new
            self._send(handler, reply)
        elif action == "fields":
            document = json.loads(reply.encoded())
            for path, new in value.items():
                _set_path(document, path, self.template(new) if isinstance(new, str) else new)
            reply.document = document
            self._send(handler, reply)
        else:
            handler.close_connection = True
            with contextlib.suppress(OSError, ValueError):
                self._raw(handler, bad, reply)

    def _endless(self, give_up: float) -> bool:
        """Go on writing an endless body?  Not past MAX_ENDLESS_BYTES: a client
        that reads what it should not must not take the test machine down."""
        return (
            not self.stopping.is_set()
            and time.monotonic() < give_up
            and self.raw_bytes < MAX_ENDLESS_BYTES
        )

    def _raw(self, handler: _Handler, bad: Misbehaviour, reply: Reply) -> None:
        """Answers that http.server cannot give: written to the socket by hand."""
        action = bad.action
        out = handler.wfile
        headers = self._headers(reply)
        headers.pop("Content-Length", None)
        header_lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        status_line = f"HTTP/1.1 {reply.status} Hostile\r\n"
        give_up = time.monotonic() + MAX_HOSTILITY
        if action == "raw":
            out.write(bad.value)
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
        elif action == "drip-headers":
            out.write(status_line.encode() + b"X-Drip: ")
            while not self.stopping.wait(DRIP_INTERVAL) and time.monotonic() < give_up:
                out.write(b"a")
        elif action == "drip-body":
            out.write(f"{status_line}{header_lines}Content-Length: 1000\r\n\r\n".encode())
            out.write(b'{"drip": "')
            while not self.stopping.wait(DRIP_INTERVAL) and time.monotonic() < give_up:
                out.write(b"a")
        elif action == "silent":
            self.stopping.wait(MAX_HOSTILITY)
        elif action == "endless-chunked":
            out.write(f"{status_line}{header_lines}Transfer-Encoding: chunked\r\n\r\n".encode())
            chunk = b"4000\r\n" + b"[" * 0x4000 + b"\r\n"
            while self._endless(give_up):
                out.write(chunk)
                self.raw_bytes += len(chunk)
        elif action == "redirect-endless":
            location = self.template(bad.value)
            out.write(
                f"HTTP/1.1 302 Found\r\nLocation: {location}\r\n{header_lines}"
                "Transfer-Encoding: chunked\r\n\r\n".encode("latin-1")
            )
            chunk = b"4000\r\n" + b"<" * 0x4000 + b"\r\n"
            while self._endless(give_up):
                out.write(chunk)
                self.raw_bytes += len(chunk)
        elif action == "oversized-declared":
            out.write(f"{status_line}{header_lines}Content-Length: {OVERSIZE}\r\n\r\n".encode())
            out.write(b" " * OVERSIZE)
        elif action == "oversized-streamed":
            out.write(f"{status_line}{header_lines}Connection: close\r\n\r\n".encode())
            out.write(b'{"padding": "' + b"a" * OVERSIZE + b'"}')
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
        else:
            raise ValueError(f"unknown action {action!r}")


def _set_path(document: Any, path: str, value: Any) -> None:
    """Set (or, with DELETE, remove) `a.0.b` in nested dicts and lists."""
    *parents, last = path.split(".")
    node = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
