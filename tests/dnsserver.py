"""Run a throwaway authoritative DNS server (BIND 9's ``named``) on loopback.

Usage::

    with AuthoritativeDns() as dns:
        dns.address, dns.port      # 127.0.0.1 and a free port (UDP and TCP)
        dns.zone                   # "example.test", primary here, no recursion
        dns.tsig_key_file          # the BIND `key` statement tsig-keygen wrote
        dns.add_txt("_acme-challenge.web.example.test", "token")
        dns.txt("_acme-challenge.web.example.test")   # ["token"]

``named`` runs in the foreground (``-g``) with everything it reads or writes
(configuration, zone files, journals, TSIG key, log) in a private temporary
directory that ``stop()`` removes.  It binds 127.0.0.1 (and ::1 when the host
has it) only, answers authoritatively for its zones, refuses recursion, and
accepts RFC 2136 updates only when signed with the zone's TSIG key.  Run as
root, it is started as Debian's ``bind`` user (``nobody`` failing that), from
the first instruction, never as root; it gets SIGTERM when the thread that
started it dies.

``python -m tests.dnsserver`` runs one instance until SIGTERM/SIGINT and prints
``KEY=value`` lines (``ADDRESS``, ``PORT``, ``ZONE``, ``TSIG_KEY_FILE``, ...).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import errno
import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.tsigkeyring
import dns.update

__all__ = ["AuthoritativeDns", "DnsServerError", "DnsUpdateError", "main"]

NAMED_BIN = os.environ.get("LETSKENCRYPT_NAMED_BIN", "named")
TSIG_KEYGEN_BIN = os.environ.get("LETSKENCRYPT_TSIG_KEYGEN_BIN", "tsig-keygen")

LOOPBACK = "127.0.0.1"
LOOPBACK6 = "::1"
ZONE = "example.test"
TSIG_KEY_NAME = "letskencrypt-test"
ALGORITHM = "hmac-sha256"
TTL = 60
# Names (relative to each zone) and their addresses, besides ns1 (the glue).
DEFAULT_A_RECORDS: Mapping[str, str] = {"web": LOOPBACK, "www": LOOPBACK}
# Who runs named when the tests run as root: Debian's bind9 makes this user.
SERVICE_USERS = ("bind", "nobody")

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
QUERY_TIMEOUT = 2.0
_START_ATTEMPTS = 3
# named goes on without a listener it cannot bind; these in its log mean the
# port was taken between our check and its bind: try again with another.
_BIND_FAILURE_RE = re.compile(r"address in use|could not listen|binding TCP socket", re.I)
# The `key` statement as tsig-keygen writes it.
_KEY_RE = re.compile(
    r'key\s+"(?P<name>[^"]+)"\s*\{\s*algorithm\s+(?P<algorithm>[\w-]+)\s*;'
    r'\s*secret\s+"(?P<secret>[A-Za-z0-9+/=]+)"\s*;\s*\}\s*;'
)

_live: set[AuthoritativeDns] = set()
_live_lock = threading.Lock()


class DnsServerError(RuntimeError):
    """named could not be started or set up."""


class DnsUpdateError(RuntimeError):
    """The server refused an RFC 2136 update."""

    def __init__(self, rcode: dns.rcode.Rcode, message: str) -> None:
        super().__init__(message)
        self.rcode = rcode


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        instances = list(_live)
    for inst in instances:
        inst.stop()


def _pdeathsig() -> None:
    """In the child, after the change of user: SIGTERM when the parent thread dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def ipv6_loopback() -> bool:
    """True if this host can bind ::1."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind((LOOPBACK6, 0))
    except OSError:
        return False
    return True


def _free_port(addresses: Sequence[str]) -> int:
    """A port free for both UDP and TCP on every one of ``addresses``."""
    for _ in range(100):
        held: list[socket.socket] = []
        try:
            first = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(first)
            first.bind((addresses[0], 0))
            port = int(first.getsockname()[1])
            for address in addresses:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    if address == addresses[0] and kind == socket.SOCK_STREAM:
                        continue
                    s = socket.socket(family, kind)
                    held.append(s)
                    s.bind((address, port))
            return port
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
        finally:
            for s in held:
                s.close()
    raise DnsServerError(f"no port free for UDP and TCP on {', '.join(addresses)}")


def _service_user() -> pwd.struct_passwd | None:
    """The user named runs as: None (ours) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in SERVICE_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise DnsServerError(f"running as root and none of the users {SERVICE_USERS} exists")


def read_tsig_key(path: str | os.PathLike[str]) -> tuple[str, str, str]:
    """(name, algorithm, base64 secret) of the first BIND ``key`` statement in a file."""
    text = Path(path).read_text()
    match = _KEY_RE.search(text)
    if match is None:
        raise DnsServerError(f"{path}: no BIND key statement")
    return match["name"], match["algorithm"], match["secret"]


def _txt_rdata(value: str) -> dns.rdtypes.ANY.TXT.TXT:
    """A TXT record holding ``value``, in strings of at most 255 octets."""
    data = value.encode()
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)


class AuthoritativeDns:
    """BIND 9's ``named``, authoritative for ``zones`` on loopback, owned by a temp dir.

    Each zone holds an SOA, ``NS ns1.<zone>`` with its glue ``A 127.0.0.1``,
    and the A records of ``a_records`` (names relative to the zone).  The
    first zone is ``zone``.  Updates are allowed to the holder of the TSIG key
    only; queries to anyone (on loopback); recursion to no one.
    """

    def __init__(
        self,
        zones: Sequence[str] = (ZONE,),
        a_records: Mapping[str, str] | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        if not zones:
            raise ValueError("at least one zone")
        self.zones: list[str] = [z.rstrip(".").lower() for z in zones]
        self.zone: str = self.zones[0]
        self.a_records: dict[str, str] = dict(DEFAULT_A_RECORDS if a_records is None else a_records)
        for address in self.a_records.values():
            ipaddress.IPv4Address(address)
        self.start_timeout = start_timeout

        self.workdir: Path | None = None
        self.address: str = LOOPBACK
        self.addresses: list[str] = []
        self.port: int = 0
        self.tsig_key_file: str = ""
        self.tsig_key_name: str = ""
        self.tsig_secret: str = ""
        self.algorithm: str = ""
        self.config_path: Path | None = None
        self.log_path: Path | None = None
        self.argv: list[str] = []
        self.user: str = ""

        self._named: subprocess.Popen[bytes] | None = None
        self._final_log: str | None = None
        self._lock = threading.RLock()

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> AuthoritativeDns:
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
        """True while named's process is alive."""
        return self._named is not None and self._named.poll() is None

    @property
    def pid(self) -> int:
        """named's process id (0 when not started)."""
        return self._named.pid if self._named is not None else 0

    @property
    def dns_server(self) -> str:
        """``address:port``, as pebble's ``-dnsserver`` takes it."""
        return f"{self.address}:{self.port}"

    def start(self) -> AuthoritativeDns:
        """Write the files, start named and wait until it answers SOA over UDP."""
        with self._lock:
            if self.workdir is not None:
                raise DnsServerError("AuthoritativeDns instance already started")
            with _live_lock:
                _live.add(self)
            try:
                self.workdir = Path(tempfile.mkdtemp(prefix="letskencrypt-named-"))
                self.workdir.chmod(0o755)
                self._final_log = None
                self.addresses = [LOOPBACK, *([LOOPBACK6] if ipv6_loopback() else [])]
                self._write_key()
                self._write_zones()
                for attempt in range(_START_ATTEMPTS):
                    try:
                        self._start_named()
                        break
                    except DnsServerError as e:  # port race: retry with a fresh port
                        self._kill()
                        if attempt == _START_ATTEMPTS - 1 or not _BIND_FAILURE_RE.search(str(e)):
                            raise
            except BaseException:
                self.stop()
                raise
            return self

    def stop(self) -> None:
        """Stop named (SIGTERM, then SIGKILL) and delete the temp dir. Idempotent."""
        with self._lock:
            self._kill()
            if self.workdir is not None:
                if self._final_log is None:
                    self._final_log = self._read_log()
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None
            with _live_lock:
                _live.discard(self)

    # -- queries and updates -----------------------------------------------

    def log_text(self) -> str:
        """named's stderr so far (kept after stop())."""
        if self._final_log is not None and self.workdir is None:
            return self._final_log
        return self._read_log()

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        """The TSIG key as a dnspython keyring."""
        return dns.tsigkeyring.from_text({self.tsig_key_name: (self.algorithm, self.tsig_secret)})

    def query(
        self,
        name: str,
        rdtype: str | dns.rdatatype.RdataType,
        *,
        tcp: bool = False,
        address: str | None = None,
    ) -> dns.message.Message:
        """Ask the server (not a resolver) for ``name``/``rdtype``; the whole response."""
        request = dns.message.make_query(name, rdtype, use_edns=True)
        where = address or self.address
        if tcp:
            return dns.query.tcp(request, where, port=self.port, timeout=QUERY_TIMEOUT)
        response, _ = dns.query.udp_with_fallback(
            request, where, port=self.port, timeout=QUERY_TIMEOUT
        )
        return response

    def records(self, name: str, rdtype: str | dns.rdatatype.RdataType) -> list[str]:
        """The records of ``name``/``rdtype`` in presentation format ([] if none)."""
        response = self.query(name, rdtype)
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return []
        if rcode != dns.rcode.NOERROR:
            raise DnsServerError(f"{name} {rdtype}: {dns.rcode.to_text(rcode)}")
        qname = dns.name.from_text(name)
        wanted = dns.rdatatype.RdataType.make(rdtype)
        return [
            rdata.to_text()
            for rrset in response.answer
            if rrset.name == qname and rrset.rdtype == wanted
            for rdata in rrset
        ]

    def txt(self, name: str) -> list[str]:
        """The TXT records of ``name``, each one's strings joined; [] if none."""
        response = self.query(name, dns.rdatatype.TXT)
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return []
        if rcode != dns.rcode.NOERROR:
            raise DnsServerError(f"{name} TXT: {dns.rcode.to_text(rcode)}")
        qname = dns.name.from_text(name)
        return [
            b"".join(rdata.strings).decode()
            for rrset in response.answer
            if rrset.name == qname and rrset.rdtype == dns.rdatatype.TXT
            for rdata in rrset
        ]

    def zone_of(self, name: str) -> str:
        """The longest of our zones that holds ``name``."""
        qname = dns.name.from_text(name)
        candidates = [z for z in self.zones if qname.is_subdomain(dns.name.from_text(z))]
        if not candidates:
            raise ValueError(f"{name} is in none of the zones {self.zones}")
        return max(candidates, key=len)

    def update_message(
        self,
        name: str,
        keyring: Mapping[dns.name.Name, dns.tsig.Key] | None = None,
    ) -> dns.update.UpdateMessage:
        """An empty update for ``name``'s zone, signed with ``keyring`` (default:
        the server's own key; pass ``{}`` for an unsigned one)."""
        ring = self.keyring() if keyring is None else dict(keyring)
        return dns.update.UpdateMessage(self.zone_of(name), keyring=ring or None)

    def send_update(self, update: dns.update.UpdateMessage) -> dns.message.Message:
        """Send an update over TCP; the response (its TSIG checked if the update is signed)."""
        return dns.query.tcp(update, self.address, port=self.port, timeout=QUERY_TIMEOUT)

    def add_txt(self, name: str, value: str, ttl: int = TTL) -> None:
        """Add a TXT record by an RFC 2136 update signed with the TSIG key."""
        update = self.update_message(name)
        update.add(dns.name.from_text(name), ttl, _txt_rdata(value))
        self._check(update, f"add TXT {value!r} at {name}")

    def delete_txt(self, name: str, value: str | None = None) -> None:
        """Delete one TXT record of ``name`` (all of them if ``value`` is None), signed."""
        update = self.update_message(name)
        if value is None:
            update.delete(dns.name.from_text(name), dns.rdatatype.TXT)
        else:
            update.delete(dns.name.from_text(name), _txt_rdata(value))
        self._check(update, f"delete TXT {value!r} at {name}")

    def state_lines(self) -> list[str]:
        """``KEY=value`` lines describing this instance."""
        return [
            f"ADDRESS={self.address}",
            f"PORT={self.port}",
            f"ZONE={self.zone}",
            f"TSIG_KEY_FILE={self.tsig_key_file}",
            f"TSIG_KEY_NAME={self.tsig_key_name}",
            f"TSIG_ALGORITHM={self.algorithm}",
            f"NAMED_LOG={self.log_path}",
        ]

    # -- internals ---------------------------------------------------------

    def _check(self, update: dns.update.UpdateMessage, what: str) -> None:
        response = self.send_update(update)
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            raise DnsUpdateError(rcode, f"{what}: {dns.rcode.to_text(rcode)}")

    def _write_key(self) -> None:
        assert self.workdir is not None
        path = self.workdir / "tsig.key"
        try:
            completed = subprocess.run(
                [TSIG_KEYGEN_BIN, "-a", ALGORITHM, TSIG_KEY_NAME],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except FileNotFoundError as e:
            raise DnsServerError(f"{TSIG_KEYGEN_BIN} not found (Debian package bind9)") from e
        if completed.returncode != 0:
            raise DnsServerError(f"{TSIG_KEYGEN_BIN} failed: {completed.stderr.strip()}")
        path.write_text(completed.stdout)
        # A throwaway secret of a server on loopback: readable by a client
        # under test that has dropped root (the directory is 0755 too).
        path.chmod(0o644)
        self.tsig_key_file = str(path)
        self.tsig_key_name, self.algorithm, self.tsig_secret = read_tsig_key(path)
        if len(base64.b64decode(self.tsig_secret)) < 32:
            raise DnsServerError(f"{TSIG_KEYGEN_BIN} made a key shorter than 256 bits")

    def _zone_text(self, zone: str) -> str:
        lines = [
            f"$ORIGIN {zone}.",
            f"$TTL {TTL}",
            f"@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 {TTL}",
            f"@ IN NS ns1.{zone}.",
            f"ns1 IN A {LOOPBACK}",
            *(f"{name} IN A {address}" for name, address in sorted(self.a_records.items())),
        ]
        return "\n".join(lines) + "\n"

    def _write_zones(self) -> None:
        assert self.workdir is not None
        for zone in self.zones:
            (self.workdir / f"{zone}.zone").write_text(self._zone_text(zone))

    def _write_config(self) -> None:
        assert self.workdir is not None
        d = self.workdir
        v4 = f"listen-on port {self.port} {{ {LOOPBACK}; }};"
        v6 = (
            f"listen-on-v6 port {self.port} {{ {LOOPBACK6}; }};"
            if LOOPBACK6 in self.addresses
            else "listen-on-v6 { none; };"
        )
        source6 = f"query-source-v6 address {LOOPBACK6};" if LOOPBACK6 in self.addresses else ""
        zones = "\n".join(
            f'zone "{zone}" {{\n'
            f"    type primary;\n"
            f'    file "{d}/{zone}.zone";\n'
            f'    journal "{d}/{zone}.zone.jnl";\n'
            f'    allow-update {{ key "{self.tsig_key_name}"; }};\n'
            f"}};"
            for zone in self.zones
        )
        text = f"""\
// Written by tests/dnsserver.py: an authoritative server on loopback only.
include "{self.tsig_key_file}";
controls {{ }};
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    {v4}
    {v6}
    reuseport no;
    query-source address {LOOPBACK};
    {source6}
    recursion no;
    allow-recursion {{ none; }};
    allow-query {{ any; }};
    allow-transfer {{ none; }};
    notify no;
    dnssec-validation no;
    // Every query in the log (named -g logs to stderr): who asked what.
    querylog yes;
}};
{zones}
"""
        self.config_path = d / "named.conf"
        self.config_path.write_text(text)

    def _start_named(self) -> None:
        assert self.workdir is not None
        self.port = _free_port(self.addresses)
        self._write_config()
        assert self.config_path is not None
        self.log_path = self.workdir / "named.log"
        self.log_path.write_bytes(b"")

        account = _service_user()
        if account is not None:
            for path in [self.workdir, *self.workdir.iterdir()]:
                os.chown(path, account.pw_uid, account.pw_gid)
        self.user = account.pw_name if account else pwd.getpwuid(os.geteuid()).pw_name
        self.argv = [NAMED_BIN, "-g", "-c", str(self.config_path), "-p", str(self.port), "-n", "1"]
        # PDEATHSIG tracks the creating *thread*; only safe from the main thread.
        # Popen changes the user before preexec_fn, and a change of user clears
        # the parent-death signal: so it is set after, and named (started as its
        # final user, no -u) keeps it.
        main_thread = threading.current_thread() is threading.main_thread()
        with open(self.log_path, "ab") as out:
            try:
                self._named = subprocess.Popen(
                    self.argv,
                    cwd=self.workdir,
                    env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    user=account.pw_uid if account else None,
                    group=account.pw_gid if account else None,
                    extra_groups=[] if account else None,
                    preexec_fn=_pdeathsig if main_thread else None,
                )
            except FileNotFoundError as e:
                raise DnsServerError(f"{NAMED_BIN} not found (Debian package bind9)") from e
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._named is not None
        deadline = time.monotonic() + self.start_timeout
        pending = list(self.addresses)
        while time.monotonic() < deadline:
            log = self._read_log()
            if self._named.poll() is not None:
                code = self._named.returncode
                raise DnsServerError(
                    f"named exited with {code}:\n{_tail(log)}{_apparmor_hint(log)}"
                )
            if _BIND_FAILURE_RE.search(log):
                raise DnsServerError(f"named could not bind port {self.port}:\n" + _tail(log))
            for address in list(pending):
                with contextlib.suppress(dns.exception.DNSException, OSError):
                    request = dns.message.make_query(self.zone, dns.rdatatype.SOA)
                    response = dns.query.udp(request, address, port=self.port, timeout=0.2)
                    if response.rcode() == dns.rcode.NOERROR and response.answer:
                        pending.remove(address)
            if not pending:
                return
            time.sleep(0.02)
        raise DnsServerError(
            f"named did not answer SOA {self.zone} on {pending} port {self.port} within "
            f"{self.start_timeout}s; log tail:\n{_tail(self._read_log())}"
        )

    def _kill(self) -> None:
        proc, self._named = self._named, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _read_log(self) -> str:
        if self.log_path is None or self.workdir is None:
            return self._final_log or ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _apparmor_hint(log: str) -> str:
    """Debian's AppArmor profile for /usr/sbin/named keeps it out of /tmp."""
    try:
        profiles = Path("/sys/kernel/security/apparmor/profiles").read_text()
    except OSError:
        return ""
    if "permission denied" in log.lower() and re.search(r"^named \(enforce\)", profiles, re.M):
        return "\n(AppArmor enforces the named profile: `aa-complain /usr/sbin/named`)"
    return ""


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    """Run named until SIGTERM/SIGINT, printing ``KEY=value`` state lines."""
    parser = argparse.ArgumentParser(prog="python -m tests.dnsserver", description=main.__doc__)
    parser.add_argument(
        "--state-file", help="also write the KEY=value lines here (removed on exit)"
    )
    parser.add_argument(
        "--zone",
        action="append",
        default=[],
        help=f"a zone to serve (repeatable; default {ZONE})",
    )
    args = parser.parse_args(argv)

    stop_event = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    state_file = Path(args.state_file) if args.state_file else None
    with AuthoritativeDns(zones=args.zone or (ZONE,)) as server:
        text = "\n".join(server.state_lines()) + "\n"
        if state_file is not None:
            tmp = state_file.with_name(state_file.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(state_file)
        sys.stdout.write(text)
        sys.stdout.flush()
        try:
            while not stop_event.wait(0.5):
                if not server.running:
                    sys.stderr.write(f"named exited unexpectedly:\n{_tail(server.log_text())}\n")
                    return 1
        finally:
            if state_file is not None:
                state_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
