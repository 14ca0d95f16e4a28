"""Run a throwaway Pebble ACME test CA (plus pebble-challtestsrv) on loopback.

Usage::

    with Pebble() as p:
        p.directory_url      # https://localhost:<port>/dir
        p.ca_bundle          # PEM file to trust for pebble's HTTPS API
        p.trust_anchors      # PEM file of pebble's issuing roots (--trust-anchors)
        p.challenge_dir      # files named <token> here are served for http-01

Everything lives in a private temporary directory that ``stop()`` removes.
Only loopback addresses are ever bound or contacted.

By default pebble resolves every name to 127.0.0.1 through pebble-challtestsrv.
``Pebble(dns_server="127.0.0.1:PORT")`` points pebble's ``-dnsserver`` at
another server on loopback instead (e.g. ``tests.dnsserver.AuthoritativeDns``,
whose ``dns_server`` is that string) and starts no pebble-challtestsrv: the CA
then resolves names, and reads dns-01 TXT records, from that server only.

``python -m tests.pebble`` runs one instance until SIGTERM/SIGINT and prints
``KEY=value`` lines (``DIRECTORY_URL``, ``CA_BUNDLE``, ``TRUST_ANCHORS``, ...).

Pebble issues certificates valid for CERTIFICATE_VALIDITY (90 days, as Let's
Encrypt's), not its default of five years, which the client refuses.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
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
from pathlib import Path
from types import TracebackType

import requests
from cryptography.hazmat.primitives.asymmetric import ec

from tests import tlsfactory

__all__ = ["Pebble", "PebbleError", "main"]

PEBBLE_BIN = os.environ.get("LETSKENCRYPT_PEBBLE_BIN", "pebble")
CHALLTESTSRV_BIN = os.environ.get("LETSKENCRYPT_CHALLTESTSRV_BIN", "pebble-challtestsrv")

LOOPBACK = "127.0.0.1"
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


class _ChallengeServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    challenge_dir: Path


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
    ``dns_server`` (``"127.0.0.1:PORT"``, a loopback address) replaces
    pebble-challtestsrv as the DNS server pebble asks.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        challenge_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = START_TIMEOUT,
        dns_server: str | None = None,
    ) -> None:
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
        self._httpd: _ChallengeServer | None = None
        self._http_thread: threading.Thread | None = None
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
            if self._httpd is not None:
                self._httpd.shutdown()
                self._httpd.server_close()
                self._httpd = None
            if self._http_thread is not None:
                self._http_thread.join(STOP_TIMEOUT)
                self._http_thread = None
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
        found = [(m.group(1), m.group(2)) for m in REQUEST_LINE_RE.finditer(self.log_text())]
        return found[self._baseline_requests :]

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
        httpd = _ChallengeServer((LOOPBACK, 0), _ChallengeHandler)
        httpd.challenge_dir = self.challenge_dir
        self.http_port = httpd.server_address[1]
        self._httpd = httpd
        self._http_thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"pebble-http01-{self.http_port}",
            daemon=True,
        )
        self._http_thread.start()

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
                "externalAccountBindingRequired": False,
                "certificateValidityPeriod": CERTIFICATE_VALIDITY,
            }
        }
        self.config_path = self.workdir / "pebble-config.json"
        self.config_path.write_text(json.dumps(config, indent=2))

        base_env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
        cts_log = self.workdir / "challtestsrv.log"
        if self.dns_server is None:
            self._start_challtestsrv(base_env, cts_log)
        pebble_env = {**base_env, "PEBBLE_VA_NOSLEEP": "1", **self.env}
        dns_host = f"[{self.dns_address}]" if ":" in self.dns_address else self.dns_address
        self._pebble = self._popen(
            [
                PEBBLE_BIN,
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
        self._challtestsrv = self._popen(
            [
                CHALLTESTSRV_BIN,
                "-dns01",
                f"{LOOPBACK}:{self.dns_port}",
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
                self._baseline_requests = len(REQUEST_LINE_RE.findall(self._read_log()))
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

    @staticmethod
    def _raise_for(resp: requests.Response) -> None:
        if resp.status_code != 200:
            raise PebbleError(f"GET {resp.url} -> HTTP {resp.status_code}: {resp.text[:500]}")


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
    args = parser.parse_args(argv)
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value

    stop_event = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    state_file = Path(args.state_file) if args.state_file else None
    with Pebble(env=env, challenge_dir=args.challenge_dir, dns_server=args.dns_server) as pebble:
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
