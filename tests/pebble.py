"""Run a throwaway Pebble ACME test CA (plus pebble-challtestsrv) on loopback.

Usage::

    with Pebble() as p:                      # Debian 12's pebble 2.4
    with Pebble(generation="2.10") as p:     # Debian unstable's, from build/pebble-sid
        p.directory_url      # https://localhost:<port>/dir
        p.ca_bundle          # PEM file to trust for pebble's HTTPS API
        p.trust_anchors      # PEM file of pebble's issuing roots (--trust-anchors)
        p.challenge_dir      # files named <token> here are served for http-01
                             # (on 127.0.0.1 and ::1, port p.http_port)

Everything lives in a private temporary directory that ``stop()`` removes.
Only loopback addresses are ever bound or contacted.

By default pebble resolves every name to 127.0.0.1 through pebble-challtestsrv.
``Pebble(dns_server="127.0.0.1:PORT")`` points pebble's ``-dnsserver`` at
another server on loopback instead (e.g. ``tests.dnsserver.AuthoritativeDns``,
whose ``dns_server`` is that string) and starts no pebble-challtestsrv: the CA
then resolves names, and reads dns-01 TXT records, from that server only.

``python -m tests.pebble`` runs one instance until SIGTERM/SIGINT and prints
``KEY=value`` lines (``DIRECTORY_URL``, ``CA_BUNDLE``, ``TRUST_ANCHORS``, ...);
``--sid`` runs the 2.10 one.

Two generations: ``"2.4"`` is Debian 12's ``pebble`` package (on PATH);
``"2.10"`` is Debian unstable's, which ``make pebble-sid`` (part of ``make
setup``; see tools/fetch_pebble.py) unpacks into build/pebble-sid/.  2.10 adds
profiles, ``retryAfter``, ARI (``renewalInfo`` in the directory, and
``POST /set-renewal-info/`` on the management port).  External account binding
works with both.

Pebble issues certificates valid for CERTIFICATE_VALIDITY (90 days, as Let's
Encrypt's), not its default of five years, which the client refuses.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import errno
import http.server
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Literal

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests import tlsfactory

__all__ = ["Pebble", "PebbleError", "ari_cert_id", "main"]

Generation = Literal["2.4", "2.10"]
GENERATIONS: tuple[Generation, ...] = ("2.4", "2.10")

PEBBLE_BIN = os.environ.get("LETSKENCRYPT_PEBBLE_BIN", "pebble")
CHALLTESTSRV_BIN = os.environ.get("LETSKENCRYPT_CHALLTESTSRV_BIN", "pebble-challtestsrv")
# Debian unstable's pebble package, unpacked by tools/fetch_pebble.py.
PEBBLE_SID_DIR = Path(
    os.environ.get(
        "LETSKENCRYPT_PEBBLE_SID_DIR",
        Path(__file__).resolve().parent.parent / "build" / "pebble-sid",
    )
)
PEBBLE_SID_BIN = PEBBLE_SID_DIR / "usr" / "bin" / "pebble"
CHALLTESTSRV_SID_BIN = PEBBLE_SID_DIR / "usr" / "bin" / "pebble-challtestsrv"

# The profiles of pebble 2.10's own example configuration
# (/usr/share/doc/pebble/examples/pebble-config.json), with 90 days for
# "default" as CERTIFICATE_VALIDITY.  ``profiles=`` adds to or replaces these.
DEFAULT_PROFILES: dict[str, dict[str, object]] = {
    "default": {"description": "The profile you know and love", "validityPeriod": 90 * 86400},
    "shortlived": {
        "description": "A short-lived cert profile, without actual enforcement",
        "validityPeriod": 518400,
    },
}
# Requests pebble 2.10 logs like ACME ones although they reach its management
# interface; request_lines() leaves them out.
MANAGEMENT_LOGGED = frozenset({"/set-renewal-info/"})

LOOPBACK = "127.0.0.1"
# The challenge server listens here too: pebble validates http-01 for an IP
# identifier (RFC 8738) at that address, on the same httpPort.
LOOPBACK6 = "::1"
# Tries at a port free on both loopback addresses.
_HTTP_PORT_ATTEMPTS = 20
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
# RFC 8555 tokens are base64url; this also rules out "..", "/", "%" etc.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")

# Pebble's WFE logs one line per ACME request that reaches a handler, e.g.
#   "Pebble 2026/11/26 18:01:49 GET /dir -> calling handler()"
#   "Pebble 2026/11/26 18:01:49 POST /authZ/<id> -> calling handler()"
# (wfe.go: log.Printf("%s %s -> calling handler()", method, endpoint)).
# Not logged: unknown paths (404 from the mux), disallowed methods (405) and
# anything on the management interface.
REQUEST_LINE_RE = re.compile(
    r"^Pebble \d{4}/\d\d/\d\d \d\d:\d\d:\d\d ([A-Z]+) (/\S*) -> calling handler\(\)$",
    re.MULTILINE,
)

START_TIMEOUT = 15.0
CERTIFICATE_VALIDITY = 90 * 86400
assert DEFAULT_PROFILES["default"]["validityPeriod"] == CERTIFICATE_VALIDITY
# Pebble makes one root, plus PEBBLE_ALTERNATE_ROOTS more.
MAX_ROOTS = 8
STOP_TIMEOUT = 5.0
_START_ATTEMPTS = 3

_live: set[Pebble] = set()
_live_lock = threading.Lock()


class PebbleError(RuntimeError):
    """Pebble could not be started or queried."""


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        instances = list(_live)
    for inst in instances:
        inst.stop()


def _pdeathsig() -> None:
    """In the child: get SIGTERM if the parent (thread) dies (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_ports(count: int, udp_too: int = 0) -> list[int]:
    """Return ``count`` distinct free TCP ports on 127.0.0.1.

    The first ``udp_too`` of them are also free for UDP.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.bind((LOOPBACK, 0))
            held.append(tcp)
            port = tcp.getsockname()[1]
            if len(ports) < udp_too:
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    udp.bind((LOOPBACK, port))
                except OSError:
                    udp.close()
                    continue
                held.append(udp)
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def _write_tls_material(workdir: Path) -> tuple[Path, Path, Path]:
    """Create a throwaway CA and a localhost server cert; return (ca, cert, key)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = tlsfactory.ca_certificate("letskencrypt test pebble CA", ca_key, path_length=0)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = tlsfactory.server_certificate((ca_cert, ca_key), key)
    return (
        tlsfactory.write_certificate(workdir / "ca.pem", ca_cert),
        tlsfactory.write_certificate(workdir / "server-cert.pem", cert),
        tlsfactory.write_key(workdir / "server-key.pem", key),
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ari_cert_id(certificate: x509.Certificate) -> str:
    """The ARI CertID of ``certificate``: base64url(AKI keyIdentifier).base64url(serial)."""
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if aki.key_identifier is None:
        raise ValueError("certificate has no authority key identifier")
    serial = certificate.serial_number
    # DER INTEGER contents: big-endian, with a leading zero byte if the top bit is set.
    serial_bytes = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
    return f"{_b64url(aki.key_identifier)}.{_b64url(serial_bytes)}"


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("renewal window times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _ChallengeServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    challenge_dir: Path


class _ChallengeServer6(_ChallengeServer):
    address_family = socket.AF_INET6


class _ChallengeHandler(http.server.BaseHTTPRequestHandler):
    """Serve ``GET /.well-known/acme-challenge/<token>`` from a directory."""

    server: _ChallengeServer
    server_version = "letskencrypt-test-http01"
    sys_version = ""

    def _lookup(self) -> bytes | None:
        path = self.path.split("?", 1)[0]
        if not path.startswith(CHALLENGE_PREFIX):
            return None
        token = path[len(CHALLENGE_PREFIX) :]
        if not _TOKEN_RE.match(token):
            return None
        file = self.server.challenge_dir / token
        try:
            return file.read_bytes() if file.is_file() else None
        except OSError:
            return None

    def _respond(self, with_body: bool) -> None:
        body = self._lookup()
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._respond(True)

    def do_HEAD(self) -> None:
        self._respond(False)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Pebble:
    """A pebble + pebble-challtestsrv pair bound to loopback, owned by a temp dir.

    ``env`` adds environment variables for pebble (e.g.
    ``{"PEBBLE_WFE_NONCEREJECT": "0"}``).  ``PEBBLE_VA_NOSLEEP=1`` is always
    set; other ``PEBBLE_*`` variables inherited from the caller are dropped so
    runs are reproducible.  A caller-supplied ``challenge_dir`` is never deleted.

    ``generation`` picks the binaries: ``"2.4"`` (Debian 12's, on PATH) or
    ``"2.10"`` (Debian unstable's, in PEBBLE_SID_DIR); ``binary`` and
    ``challtestsrv_binary`` override them.  Configuration:

    - ``eab_keys``: key ID -> base64url HMAC key; when given, pebble requires
      external account binding (``externalAccountBindingRequired``,
      ``externalAccountMACKeys``).  Both generations.
    - ``alternate_roots``: that many more issuance hierarchies
      (``PEBBLE_ALTERNATE_ROOTS``); all roots go into ``trust_anchors``.
    - ``profiles`` (2.10): name -> ``{"description", "validityPeriod"}``
      merged over DEFAULT_PROFILES; listed in the directory's ``meta.profiles``.
    - ``retry_after`` (2.10): ``{"authz": s, "order": s}``, the ``Retry-After``
      pebble sends with pending authorizations and processing orders.

    ARI cannot be switched: 2.10 always has it (see ``ari``), 2.4 never.

    ``dns_server`` (``"127.0.0.1:PORT"``, a loopback address) replaces
    pebble-challtestsrv as the DNS server pebble asks.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        challenge_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = START_TIMEOUT,
        *,
        generation: Generation = "2.4",
        binary: str | os.PathLike[str] | None = None,
        challtestsrv_binary: str | os.PathLike[str] | None = None,
        eab_keys: Mapping[str, str] | None = None,
        profiles: Mapping[str, Mapping[str, object]] | None = None,
        retry_after: Mapping[str, int] | None = None,
        alternate_roots: int = 0,
        dns_server: str | None = None,
    ) -> None:
        if generation not in GENERATIONS:
            raise ValueError(f"generation must be one of {GENERATIONS}, not {generation!r}")
        if generation == "2.4" and (profiles is not None or retry_after is not None):
            raise ValueError("profiles and retry_after need pebble 2.10 (generation='2.10')")
        if not 0 <= alternate_roots < MAX_ROOTS:
            raise ValueError(f"alternate_roots must be in 0..{MAX_ROOTS - 1}")
        if retry_after is not None and (
            set(retry_after) - {"authz", "order"}
            or not all(isinstance(v, int) and v >= 0 for v in retry_after.values())
        ):
            raise ValueError("retry_after takes 'authz' and 'order', seconds >= 0")
        self.generation: Generation = generation
        sid = generation == "2.10"
        self.binary = str(binary or (PEBBLE_SID_BIN if sid else PEBBLE_BIN))
        self.challtestsrv_binary = str(
            challtestsrv_binary or (CHALLTESTSRV_SID_BIN if sid else CHALLTESTSRV_BIN)
        )
        self.eab_keys: dict[str, str] = dict(eab_keys or {})
        self.profiles: dict[str, dict[str, object]] | None = None
        if sid:
            self.profiles = {name: dict(p) for name, p in DEFAULT_PROFILES.items()}
            for name, profile in (profiles or {}).items():
                self.profiles[name] = dict(profile)
        self.retry_after: dict[str, int] | None = dict(retry_after) if retry_after else None
        self.alternate_roots = alternate_roots
        self.env: dict[str, str] = dict(env or {})
        self.dns_server: tuple[str, int] | None = (
            _loopback_endpoint(dns_server) if dns_server is not None else None
        )
        self._requested_challenge_dir = Path(challenge_dir) if challenge_dir else None
        self.start_timeout = start_timeout

        self.workdir: Path | None = None
        self.challenge_dir: Path = Path()
        self.ca_bundle: str = ""
        self.trust_anchors: str = ""
        self.config_path: Path | None = None
        self.log_path: Path | None = None
        self.api_port = self.management_port = self.http_port = self.tls_port = 0
        # dns_port: the port of the DNS server pebble asks (challtestsrv's or dns_server's).
        self.dns_port = self.challtestsrv_management_port = 0
        self.dns_address = LOOPBACK
        self.directory_url = ""
        self.management_url = ""
        self.challtestsrv_management_url = ""

        self._pebble: subprocess.Popen[bytes] | None = None
        self._challtestsrv: subprocess.Popen[bytes] | None = None
        # The challenge servers (on 127.0.0.1 and ::1) and their threads.
        self._http_servers: list[tuple[_ChallengeServer, threading.Thread]] = []
        self._session: requests.Session | None = None
        self._baseline_requests = 0
        self._final_log: str | None = None
        self._lock = threading.RLock()

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Pebble:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while pebble's process is alive."""
        return self._pebble is not None and self._pebble.poll() is None

    @property
    def pids(self) -> list[int]:
        """PIDs of the child processes (pebble, challtestsrv if any) currently started."""
        return [p.pid for p in (self._pebble, self._challtestsrv) if p is not None]

    def start(self) -> Pebble:
        """Start everything and wait until the ACME directory answers."""
        with self._lock:
            if self.workdir is not None:
                raise PebbleError("Pebble instance already started")
            for program in (self.binary, self.challtestsrv_binary):
                if shutil.which(program) is None:
                    hint = " (run `make pebble-sid`)" if self.generation == "2.10" else ""
                    raise PebbleError(f"pebble {self.generation}: {program} not found{hint}")
            with _live_lock:
                _live.add(self)
            try:
                self.workdir = Path(tempfile.mkdtemp(prefix="letskencrypt-pebble-"))
                self._final_log = None
                self._setup_files()
                self._start_http_server()
                last_error: PebbleError | None = None
                for _ in range(_START_ATTEMPTS):
                    try:
                        self._start_processes()
                        break
                    except PebbleError as e:  # port race: retry with fresh ports
                        last_error = e
                        self._kill_processes()
                        if "address already in use" not in str(e):
                            raise
                else:
                    assert last_error is not None
                    raise last_error
            except BaseException:
                self.stop()
                raise
            return self

    def stop(self) -> None:
        """Stop processes and HTTP server, delete the temp dir. Idempotent."""
        with self._lock:
            self._kill_processes()
            for httpd, thread in self._http_servers:
                httpd.shutdown()
                httpd.server_close()
                thread.join(STOP_TIMEOUT)
            self._http_servers = []
            if self._session is not None:
                self._session.close()
                self._session = None
            if self.workdir is not None:
                if self._final_log is None:
                    self._final_log = self._read_log()
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None
            with _live_lock:
                _live.discard(self)

    # -- queries -----------------------------------------------------------

    def log_text(self) -> str:
        """Pebble's combined stdout/stderr so far (kept after stop())."""
        if self._final_log is not None and self.workdir is None:
            return self._final_log
        return self._read_log()

    def request_lines(self) -> list[tuple[str, str]]:
        """(method, endpoint) of every ACME request since the fixture became ready."""
        return self._request_lines(self.log_text())[self._baseline_requests :]

    @staticmethod
    def _request_lines(log: str) -> list[tuple[str, str]]:
        found = [(m.group(1), m.group(2)) for m in REQUEST_LINE_RE.finditer(log)]
        return [(method, path) for method, path in found if path not in MANAGEMENT_LOGGED]

    def request_count(self) -> int:
        """Number of ACME API requests pebble handled since the fixture became ready.

        Counts log lines matching ``REQUEST_LINE_RE``; excludes the readiness
        probe and management-interface requests.
        """
        return len(self.request_lines())

    def cert_info(self, serial: int) -> dict[str, object]:
        """Management ``/cert-status-by-serial/<hex>`` JSON; KeyError if unknown.

        Fields: ``Status`` ("Valid"/"Revoked"), ``Serial`` (hex), ``Certificate``
        (PEM), and for revoked certs ``Reason`` (int) and ``RevokedAt``.
        """
        resp = self._mgmt_get(f"/cert-status-by-serial/{serial:x}")
        if resp.status_code == 404:
            raise KeyError(serial)
        self._raise_for(resp)
        data: dict[str, object] = resp.json()
        return data

    def cert_status(self, serial: int) -> str:
        """``"Valid"`` or ``"Revoked"`` for an issued cert; KeyError if unknown."""
        return str(self.cert_info(serial)["Status"])

    def root_pem(self, index: int = 0) -> str:
        """PEM of pebble's issuing root ``index`` (regenerated every start)."""
        resp = self._mgmt_get(f"/roots/{index}")
        self._raise_for(resp)
        return resp.text

    def intermediate_pem(self, index: int = 0) -> str:
        """PEM of pebble's intermediate ``index``."""
        resp = self._mgmt_get(f"/intermediates/{index}")
        self._raise_for(resp)
        return resp.text

    def directory(self) -> dict[str, object]:
        """The ACME directory (a GET that counts in request_count())."""
        if self._session is None:
            raise PebbleError("Pebble is not running")
        resp = self._session.get(self.directory_url, timeout=10)
        self._raise_for(resp)
        data: dict[str, object] = resp.json()
        return data

    @property
    def ari(self) -> bool:
        """Whether this generation speaks ARI (2.10 lists ``renewalInfo``; 2.4 has none)."""
        return self.generation == "2.10"

    def _certificate_pem(self, certificate: str | bytes | int | x509.Certificate) -> str:
        """PEM of a certificate given as PEM, an x509 object or a serial pebble issued."""
        if isinstance(certificate, int):
            return str(self.cert_info(certificate)["Certificate"])
        if isinstance(certificate, x509.Certificate):
            return certificate.public_bytes(serialization.Encoding.PEM).decode()
        pem = certificate.decode() if isinstance(certificate, bytes) else certificate
        # Only the first certificate: a leaf out of a fullchain.pem.
        return x509.load_pem_x509_certificates(pem.encode())[0].public_bytes(
            serialization.Encoding.PEM
        ).decode()

    def set_renewal_info(
        self,
        certificate: str | bytes | int | x509.Certificate,
        start: datetime,
        end: datetime,
        explanation_url: str | None = None,
    ) -> None:
        """Make ARI suggest the window ``start``..``end`` for a certificate (2.10).

        ``certificate``: its PEM (the first of a chain), an x509 object, or
        the serial of one pebble issued.  Management ``POST /set-renewal-info/``
        with ``{"Certificate": PEM, "ARIResponse": "<renewalInfo JSON>"}``.
        """
        if not self.ari:
            raise PebbleError(f"pebble {self.generation} has no ARI")
        if end < start:
            raise ValueError("renewal window ends before it starts")
        response: dict[str, object] = {
            "suggestedWindow": {"start": _rfc3339(start), "end": _rfc3339(end)}
        }
        if explanation_url is not None:
            response["explanationURL"] = explanation_url
        body = {
            "Certificate": self._certificate_pem(certificate),
            "ARIResponse": json.dumps(response),
        }
        resp = self._mgmt_post("/set-renewal-info/", body)
        self._raise_for(resp)

    def renewal_info(
        self, certificate: str | bytes | int | x509.Certificate
    ) -> tuple[dict[str, object], int | None]:
        """GET the ACME renewalInfo for a certificate (2.10): (JSON, Retry-After or None)."""
        if not self.ari or self._session is None:
            raise PebbleError(f"pebble {self.generation} has no ARI, or is not running")
        cert = x509.load_pem_x509_certificate(self._certificate_pem(certificate).encode())
        base = str(self.directory()["renewalInfo"]).rstrip("/")
        resp = self._session.get(f"{base}/{ari_cert_id(cert)}", timeout=10)
        self._raise_for(resp)
        retry_after = resp.headers.get("Retry-After")
        data: dict[str, object] = resp.json()
        return data, int(retry_after) if retry_after and retry_after.isdigit() else None

    def put_challenge(self, token: str, content: str | bytes) -> Path:
        """Write an http-01 response file for ``token`` into challenge_dir."""
        if not _TOKEN_RE.match(token):
            raise ValueError(f"invalid token {token!r}")
        data = content.encode() if isinstance(content, str) else content
        path = self.challenge_dir / token
        path.write_bytes(data)
        return path

    def state_lines(self) -> list[str]:
        """``KEY=value`` lines describing this instance."""
        return [
            f"DIRECTORY_URL={self.directory_url}",
            f"CA_BUNDLE={self.ca_bundle}",
            f"TRUST_ANCHORS={self.trust_anchors}",
            f"CHALLENGE_DIR={self.challenge_dir}",
            f"MANAGEMENT_URL={self.management_url}",
            f"HTTP_PORT={self.http_port}",
            f"PEBBLE_GENERATION={self.generation}",
            f"PEBBLE_LOG={self.log_path}",
            *([f"DNS_SERVER={self.dns_address}:{self.dns_port}"] if self.dns_server else []),
        ]

    # -- internals ---------------------------------------------------------

    def _setup_files(self) -> None:
        assert self.workdir is not None
        ca, _, _ = _write_tls_material(self.workdir)
        self.ca_bundle = str(ca)
        if self._requested_challenge_dir is not None:
            self.challenge_dir = self._requested_challenge_dir.resolve()
            self.challenge_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.challenge_dir = self.workdir / "challenges"
            self.challenge_dir.mkdir()
        self.log_path = self.workdir / "pebble.log"
        self._session = requests.Session()
        self._session.trust_env = False  # never go through a proxy
        self._session.verify = self.ca_bundle

    def _start_http_server(self) -> None:
        """The challenge directory over HTTP on 127.0.0.1 and ::1, one port."""
        for _ in range(_HTTP_PORT_ATTEMPTS):
            httpd = _ChallengeServer((LOOPBACK, 0), _ChallengeHandler)
            try:
                httpd6 = _ChallengeServer6((LOOPBACK6, httpd.server_address[1]), _ChallengeHandler)
            except OSError as error:
                httpd.server_close()
                if error.errno != errno.EADDRINUSE:
                    raise
                continue
            break
        else:
            raise PebbleError(f"no port free on both {LOOPBACK} and {LOOPBACK6} for http-01")
        self.http_port = httpd.server_address[1]
        for server in (httpd, httpd6):
            server.challenge_dir = self.challenge_dir
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"pebble-http01-{server.server_address[0]}-{self.http_port}",
                daemon=True,
            )
            thread.start()
            self._http_servers.append((server, thread))

    def _popen(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        assert self.workdir is not None
        # PDEATHSIG tracks the creating *thread*; only safe from the main thread.
        main_thread = threading.current_thread() is threading.main_thread()
        preexec = _pdeathsig if main_thread else None
        with open(log, "ab") as out:
            return subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
            )

    def _start_processes(self) -> None:
        assert self.workdir is not None and self.log_path is not None
        (
            self.dns_port,
            self.api_port,
            self.management_port,
            self.tls_port,
            self.challtestsrv_management_port,
        ) = _free_ports(5, udp_too=1)
        self.directory_url = f"https://localhost:{self.api_port}/dir"
        self.management_url = f"https://localhost:{self.management_port}"
        self.challtestsrv_management_url = f"http://{LOOPBACK}:{self.challtestsrv_management_port}"
        if self.dns_server is not None:  # no challtestsrv
            self.dns_address, self.dns_port = self.dns_server
            self.challtestsrv_management_port = 0
            self.challtestsrv_management_url = ""

        cert = self.workdir / "server-cert.pem"
        key = self.workdir / "server-key.pem"
        config = {
            "pebble": {
                "listenAddress": f"{LOOPBACK}:{self.api_port}",
                "managementListenAddress": f"{LOOPBACK}:{self.management_port}",
                "certificate": str(cert),
                "privateKey": str(key),
                "httpPort": self.http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": bool(self.eab_keys),
                "certificateValidityPeriod": CERTIFICATE_VALIDITY,
            }
        }
        if self.eab_keys:
            config["pebble"]["externalAccountMACKeys"] = dict(self.eab_keys)
        if self.profiles is not None:
            config["pebble"]["profiles"] = self.profiles
        if self.retry_after is not None:
            config["pebble"]["retryAfter"] = self.retry_after
        self.config_path = self.workdir / "pebble-config.json"
        self.config_path.write_text(json.dumps(config, indent=2))

        base_env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
        cts_log = self.workdir / "challtestsrv.log"
        if self.dns_server is None:
            self._start_challtestsrv(base_env, cts_log)
        pebble_env = {**base_env, "PEBBLE_VA_NOSLEEP": "1", **self.env}
        if self.alternate_roots:
            pebble_env["PEBBLE_ALTERNATE_ROOTS"] = str(self.alternate_roots)
        dns_host = f"[{self.dns_address}]" if ":" in self.dns_address else self.dns_address
        self._pebble = self._popen(
            [
                self.binary,
                "-config",
                str(self.config_path),
                "-dnsserver",
                f"{dns_host}:{self.dns_port}",
            ],
            pebble_env,
            self.log_path,
        )
        self._wait_ready(cts_log)

    def _start_challtestsrv(self, base_env: dict[str, str], cts_log: Path) -> None:
        """pebble-challtestsrv: DNS on dns_port answering 127.0.0.1 for every name."""
        # 2.10's challtestsrv renamed -dns01 to -dnsserver and added DoH (off here).
        dns_flags = (
            ["-dnsserver", f"{LOOPBACK}:{self.dns_port}", "-doh", ""]
            if self.generation == "2.10"
            else ["-dns01", f"{LOOPBACK}:{self.dns_port}"]
        )
        self._challtestsrv = self._popen(
            [
                self.challtestsrv_binary,
                *dns_flags,
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                LOOPBACK,
                "-defaultIPv6",
                "",
                "-management",
                f"{LOOPBACK}:{self.challtestsrv_management_port}",
            ],
            base_env,
            cts_log,
        )

    def _wait_ready(self, cts_log: Path) -> None:
        assert self._session is not None and self._pebble
        deadline = time.monotonic() + self.start_timeout
        dns_up = pebble_up = False
        while time.monotonic() < deadline:
            if self._challtestsrv is not None and self._challtestsrv.poll() is not None:
                raise PebbleError(
                    f"pebble-challtestsrv exited with {self._challtestsrv.returncode}:\n"
                    + _tail(cts_log.read_text(errors="replace"))
                )
            if self._pebble.poll() is not None:
                raise PebbleError(
                    f"pebble exited with {self._pebble.returncode}:\n" + _tail(self._read_log())
                )
            if not dns_up:
                try:
                    socket.create_connection((self.dns_address, self.dns_port), 0.5).close()
                    dns_up = True
                except OSError:
                    pass
            if not pebble_up:
                with contextlib.suppress(requests.RequestException):
                    resp = self._session.get(self.directory_url, timeout=2)
                    pebble_up = resp.status_code == 200
            if dns_up and pebble_up:
                self._write_trust_anchors()
                self._baseline_requests = len(self._request_lines(self._read_log()))
                return
            time.sleep(0.05)
        raise PebbleError(
            f"pebble did not come up within {self.start_timeout}s "
            f"(directory {'up' if pebble_up else 'down'}, dns {'up' if dns_up else 'down'}); "
            f"pebble log tail:\n{_tail(self._read_log())}"
        )

    def _write_trust_anchors(self) -> None:
        """Pebble's issuing roots (new at every start), from its management API."""
        assert self.workdir is not None
        roots = []
        for index in range(MAX_ROOTS):
            resp = self._mgmt_get(f"/roots/{index}")
            if resp.status_code != 200:
                break
            roots.append(resp.text.strip() + "\n")
        if not roots:
            raise PebbleError("pebble serves no root at /roots/0")
        path = self.workdir / "trust-anchors.pem"
        path.write_text("".join(roots))
        path.chmod(0o644)
        self.trust_anchors = str(path)

    def _kill_processes(self) -> None:
        procs = [p for p in (self._pebble, self._challtestsrv) if p is not None]
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()
        for p in procs:
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._pebble = self._challtestsrv = None

    def _read_log(self) -> str:
        if self.log_path is None or self.workdir is None:
            return self._final_log or ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _mgmt_get(self, path: str) -> requests.Response:
        if self._session is None or not self.management_url:
            raise PebbleError("Pebble is not running")
        return self._session.get(self.management_url + path, timeout=10)

    def _mgmt_post(self, path: str, body: object) -> requests.Response:
        if self._session is None or not self.management_url:
            raise PebbleError("Pebble is not running")
        return self._session.post(self.management_url + path, json=body, timeout=10)

    @staticmethod
    def _raise_for(resp: requests.Response) -> None:
        if resp.status_code != 200:
            raise PebbleError(
                f"{resp.request.method} {resp.url} -> HTTP {resp.status_code}: {resp.text[:500]}"
            )


def _loopback_endpoint(server: str) -> tuple[str, int]:
    """``(address, port)`` of ``"127.0.0.1:53"`` or ``"[::1]:53"``; loopback only."""
    host, sep, port = server.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"dns_server {server!r} is not ADDRESS:PORT") from None
    if not sep or not address.is_loopback or not 0 < number < 65536:
        raise ValueError(f"dns_server {server!r} is not a loopback ADDRESS:PORT")
    return str(address), number


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    """Run pebble until SIGTERM/SIGINT, printing ``KEY=value`` state lines."""
    parser = argparse.ArgumentParser(prog="python -m tests.pebble", description=main.__doc__)
    parser.add_argument("--challenge-dir", help="serve http-01 responses from this directory")
    parser.add_argument(
        "--state-file", help="also write the KEY=value lines here (removed on exit)"
    )
    parser.add_argument(
        "--dns-server",
        metavar="ADDRESS:PORT",
        help="resolve through this loopback DNS server (e.g. python -m tests.dnsserver's), "
        "not pebble-challtestsrv",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra pebble environment, e.g. PEBBLE_WFE_NONCEREJECT=0 (repeatable)",
    )
    parser.add_argument(
        "--sid",
        action="store_const",
        const="2.10",
        default="2.4",
        dest="generation",
        help="run Debian unstable's pebble 2.10 (make pebble-sid) instead of Debian 12's 2.4",
    )
    parser.add_argument(
        "--eab",
        action="append",
        default=[],
        metavar="KID=HMACKEY",
        help="require external account binding; accept this key (base64url; repeatable)",
    )
    parser.add_argument(
        "--alternate-roots", type=int, default=0, metavar="N", help="N more issuance roots"
    )
    parser.add_argument(
        "--retry-after",
        type=int,
        nargs=2,
        metavar=("AUTHZ", "ORDER"),
        help="Retry-After seconds for pending authorizations and processing orders (--sid)",
    )
    args = parser.parse_args(argv)
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value
    eab_keys: dict[str, str] = {}
    for item in args.eab:
        kid, sep, hmac_key = item.partition("=")
        if not sep or not kid or not hmac_key:
            parser.error(f"--eab expects KID=HMACKEY, got {item!r}")
        eab_keys[kid] = hmac_key
    if args.retry_after and args.generation != "2.10":
        parser.error("--retry-after needs --sid")
    retry_after = (
        {"authz": args.retry_after[0], "order": args.retry_after[1]} if args.retry_after else None
    )

    stop_event = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    state_file = Path(args.state_file) if args.state_file else None
    try:
        server = Pebble(
            env=env,
            challenge_dir=args.challenge_dir,
            generation=args.generation,
            eab_keys=eab_keys,
            retry_after=retry_after,
            alternate_roots=args.alternate_roots,
            dns_server=args.dns_server,
        )
    except ValueError as e:
        parser.error(str(e))
    with server as pebble:
        text = "\n".join(pebble.state_lines()) + "\n"
        if state_file is not None:
            tmp = state_file.with_name(state_file.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(state_file)
        sys.stdout.write(text)
        sys.stdout.flush()
        try:
            while not stop_event.wait(0.5):
                if not pebble.running:
                    tail = _tail(pebble.log_text())
                    sys.stderr.write(f"pebble exited unexpectedly:\n{tail}\n")
                    return 1
        finally:
            if state_file is not None:
                state_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
