"""A compromised role: attacker code in place of one role of a real run.

tests/compromised_run.py starts a real run whose supervisor starts this file,
`python tests/attacker_role.py ROLE TARGET_JSON`, instead of `python -m
letskencrypt.roles ROLE`.  It then runs the real role's own code: the same
configuration on stdin, the same files opened, the same `process.confine`
(namespaces, privilege drop, Landlock, seccomp) and the same edge tokens.
Right after confine (netproc: right after its real issuance, when there is
most to attack), it runs every attack of `cases(ROLE)` from inside that
sandbox, one line per attack on stderr:

    ATTACK {"role": ..., "name": ..., "outcome": "refused"|"succeeded"|"error", ...}

and finally `ATTACK-DONE {...}`; then it goes on as the real role, so the
run completes if the attacks changed nothing.

`TARGET_JSON` is what the test knows and an attacker could guess or learn:
the paths of the keys, the certificate and challenge directories, a unix
socket the test listens on (named, in /tmp, mode 0777, and abstract) and
pebble's address.

Every attack is a real attempt.  Two stand-ins: SIGKILL is never sent (a
success would end the run, not show it): SIGSTOP, which passes the same
permission checks, is sent instead and followed by SIGCONT; and pid 1 (the
machine's init) gets only signal 0.
"""

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import sys
import termios
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from letskencrypt import keys, process, rpc
from letskencrypt.b64 import b64url
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.roles import module_of, spec_of
from letskencrypt.v1 import (
    account_pb2,
    certificate_pb2,
    challenge_pb2,
    domainkey_pb2,
    files_pb2,
    files_pb2_grpc,
    keyinfo_pb2,
    keyinfo_pb2_grpc,
    renewal_pb2,
)

REFUSED = "refused"
SUCCEEDED = "succeeded"
ERROR = "error"
# What a case must come to: refused; allowed (a control: the role's own
# right, which shows the attacker really holds the role's edges); or an
# accepted risk of the design (reported, not judged).
EXPECT_REFUSED = "refused"
EXPECT_ALLOWED = "allowed"
EXPECT_ACCEPTED_RISK = "accepted-risk"

NETWORK_ROLES = frozenset({"netproc", "dnsproc"})
REPORT_PREFIX = "ATTACK "
DONE_PREFIX = "ATTACK-DONE "
MAX_DETAIL = 400
PID_WINDOW = 200
CALL_TIMEOUT = 15.0
NONCE = "QUJDREVGR0hJSktMTU5PUA"
OTHER_NAMES = ["evil.example.net"]
EVIL_CONTACT = ["mailto:evil@example.net"]
ATTACKER_KEY = ec.generate_private_key(ec.SECP256R1())

# Syscall numbers (x86_64 / aarch64 share none of these; x86_64 first).
SYSCALLS = {
    "x86_64": {"ptrace": 101, "process_vm_readv": 310, "capset": 126, "capget": 125, "tgkill": 234},
    "aarch64": {"ptrace": 117, "process_vm_readv": 270, "capset": 91, "capget": 90, "tgkill": 131},
}
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class Refused(Exception):
    """The attempt failed, for the reason given."""


@dataclass(frozen=True)
class Target:
    """What the attacker knows of the host (from the test, on the command line)."""

    account_key: str
    domain_key: str
    audit_log: str
    cert_dir: str
    challenge_dir: str
    base: str
    bait_socket: str
    abstract_socket: str
    pebble_host: str
    pebble_port: int


@dataclass
class Attacker:
    role: str
    config: RoleConfig
    target: Target
    # netproc only: the real role's peers, settings and CA trust store (after
    # its issuance).
    peers: Any = None
    settings: Any = None
    ca_pem: bytes = b""
    channels: dict[str, grpc.Channel] = field(default_factory=dict)
    # Filled by one netproc attack for the next: a certificate pebble issued.
    stolen_chain: bytes = b""
    kid: str = ""

    @property
    def supervisor(self) -> int:
        return self.config.supervisor_pid or os.getppid()


@dataclass(frozen=True)
class Case:
    name: str
    expect: str
    attempt: Callable[[Attacker], str]


# --- helpers ----------------------------------------------------------------------


def _errno_text(error: OSError) -> str:
    name = errno.errorcode.get(error.errno or 0, str(error.errno))
    return f"{name}: {error.strerror}"


def _syscall(name: str, *args: Any) -> int:
    number = SYSCALLS[os.uname().machine][name]
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(result)


def _own_thread(tid: int) -> bool:
    """Whether `tid` is a thread of ours (gRPC's threads are pids too, and
    Landlock keeps /proc/self/task from us): tgkill with signal 0 tells."""
    try:
        _syscall("tgkill", ctypes.c_long(os.getpid()), ctypes.c_long(tid), ctypes.c_long(0))
    except OSError:
        return False
    return True


def _grpc_refusal(error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    return f"{code.name if code else 'error'}: {details}"


def _call(method: Callable[..., Any], request: Any) -> Any:
    try:
        return method(request, timeout=CALL_TIMEOUT, wait_for_ready=True)
    except grpc.RpcError as error:
        raise Refused(_grpc_refusal(error)) from None


# --- files --------------------------------------------------------------------------


def read_file(path: str) -> str:
    with open(path, "rb") as handle:
        data = handle.read()
    return f"read {len(data)} bytes of {path}"


def open_for_writing(path: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    os.close(fd)
    return f"opened {path} for writing"


def rename_and_restore(path: str) -> str:
    aside = f"{path}.attack"
    os.rename(path, aside)
    with contextlib.suppress(OSError):
        os.rename(aside, path)
    return f"renamed {path} (and back)"


def replace_file(path: str, role: str) -> str:
    planted = os.path.join(os.path.dirname(path), f".attack-{role}-replacement")
    fd = os.open(planted, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
    try:
        os.write(fd, b"-----BEGIN PRIVATE KEY-----\nattacker\n-----END PRIVATE KEY-----\n")
    finally:
        os.close(fd)
    os.rename(planted, path)
    return f"replaced {path}"


def remove_file(path: str) -> str:
    os.unlink(path)
    return f"removed {path}"


def truncate_file(path: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    os.close(fd)
    return f"truncated {path}"


def plant(directory: str, role: str) -> str:
    path = os.path.join(directory, f"attack-{role}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    os.close(fd)
    return f"created {path}"


def symlink_into(directory: str, target: str, role: str) -> str:
    path = os.path.join(directory, f"attack-{role}-link")
    os.symlink(target, path)
    return f"{path} -> {target}"


def hardlink_into(directory: str, target: str, role: str) -> str:
    path = os.path.join(directory, f"attack-{role}-hardlink")
    os.link(target, path)
    return f"hard link {path} to {target}"


def _key_cases(what: str, path: Callable[[Attacker], str]) -> list[Case]:
    return [
        Case(f"read-{what}", EXPECT_REFUSED, lambda a: read_file(path(a))),
        Case(f"write-{what}", EXPECT_REFUSED, lambda a: open_for_writing(path(a))),
        Case(f"rename-{what}", EXPECT_REFUSED, lambda a: rename_and_restore(path(a))),
        Case(f"replace-{what}", EXPECT_REFUSED, lambda a: replace_file(path(a), a.role)),
        Case(f"remove-{what}", EXPECT_REFUSED, lambda a: remove_file(path(a))),
    ]


def file_cases(role: str) -> list[Case]:
    cases = [
        *_key_cases("account-key", lambda a: a.target.account_key),
        *_key_cases("domain-key", lambda a: a.target.domain_key),
        Case("truncate-audit-log", EXPECT_REFUSED, lambda a: truncate_file(a.target.audit_log)),
    ]
    live_cert = lambda a: os.path.join(a.target.cert_dir, ".live", "cert.pem")  # noqa: E731
    if role != "fileproc":  # fileproc's own directory
        cases += [
            Case("plant-in-cert-dir", EXPECT_REFUSED, lambda a: plant(a.target.cert_dir, a.role)),
            Case("write-cert", EXPECT_REFUSED, lambda a: open_for_writing(live_cert(a))),
            Case(
                "rename-cert",
                EXPECT_REFUSED,
                lambda a: rename_and_restore(os.path.join(a.target.cert_dir, "cert.pem")),
            ),
            Case(
                "remove-cert",
                EXPECT_REFUSED,
                lambda a: remove_file(os.path.join(a.target.cert_dir, "fullchain.pem")),
            ),
            Case(
                "symlink-domain-key-into-cert-dir",
                EXPECT_REFUSED,
                lambda a: symlink_into(a.target.cert_dir, a.target.domain_key, a.role),
            ),
        ]
    if role != "chngproc":  # chngproc's own directory
        cases.append(
            Case(
                "plant-in-challenge-dir",
                EXPECT_REFUSED,
                lambda a: plant(a.target.challenge_dir, a.role),
            )
        )
    cases += [
        # A file there is served to the world by the web server (pebble here).
        Case(
            "symlink-domain-key-into-challenge-dir",
            EXPECT_REFUSED,
            lambda a: symlink_into(a.target.challenge_dir, a.target.domain_key, a.role),
        ),
        Case(
            "hardlink-domain-key-into-challenge-dir",
            EXPECT_REFUSED,
            lambda a: hardlink_into(a.target.challenge_dir, a.target.domain_key, a.role),
        ),
        Case("plant-in-tmp", EXPECT_REFUSED, lambda a: plant("/tmp", a.role)),
        Case("plant-in-run-dir", EXPECT_REFUSED, lambda a: plant(a.config.run_dir, a.role)),
        Case("plant-in-base-dir", EXPECT_REFUSED, lambda a: plant(a.target.base, a.role)),
    ]
    return cases


# --- the terminal -----------------------------------------------------------------------


def open_tty(_attacker: Attacker) -> str:
    fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    os.close(fd)
    return "opened /dev/tty"


def tiocsti(fd: int) -> Callable[[Attacker], str]:
    def attempt(_attacker: Attacker) -> str:
        # A harmless character: nobody reads the test's terminal.
        fcntl.ioctl(fd, termios.TIOCSTI, b"#")
        return f"pushed a character into the input of the terminal on fd {fd}"

    return attempt




def terminal_cases() -> list[Case]:
    return [
        Case("open-dev-tty", EXPECT_REFUSED, open_tty),
        *(
            Case(f"tiocsti-fd{fd}", EXPECT_REFUSED, tiocsti(fd))
            for fd in (0, 1, 2)
        ),
    ]


# --- sockets ----------------------------------------------------------------------------


def unix_connect(address: str) -> str:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(3.0)
        sock.connect(address)
    finally:
        sock.close()
    return f"connected to {address!r}"


def edge_connect(edge: str) -> Callable[[Attacker], str]:
    return lambda a: unix_connect(rpc.socket_path(a.config.run_dir, edge))


def tcp_connect(attacker: Attacker) -> str:
    address = (attacker.target.pebble_host, attacker.target.pebble_port)
    with socket.create_connection(address, timeout=3.0):
        pass
    return f"TCP connection to pebble at {address[0]}:{address[1]}"


def make_socket(family: int, kind: int) -> Callable[[Attacker], str]:
    def attempt(_attacker: Attacker) -> str:
        socket.socket(family, kind).close()
        return f"created a socket of family {family}"

    return attempt


def socket_cases(role: str) -> list[Case]:
    cases = [
        Case("connect-unix-socket-in-tmp", EXPECT_REFUSED,
             lambda a: unix_connect(a.target.bait_socket)),
        Case("connect-abstract-unix-socket", EXPECT_REFUSED,
             lambda a: unix_connect("\0" + a.target.abstract_socket)),
    ]  # fmt: skip
    for edge in rpc.EDGES.values():
        if role not in (edge.client, edge.server):
            cases.append(Case(f"connect-edge-{edge.name}", EXPECT_REFUSED, edge_connect(edge.name)))
    if role == "netproc":
        cases.append(Case("tcp-connect-pebble", EXPECT_ALLOWED, tcp_connect))
    else:
        # dnsproc has the network for DNS only (DESIGN.md).
        cases.append(Case("tcp-connect-pebble", EXPECT_REFUSED, tcp_connect))
    if role not in NETWORK_ROLES:
        cases += [
            Case("socket-af-inet", EXPECT_REFUSED, make_socket(socket.AF_INET, socket.SOCK_DGRAM)),
            Case("socket-af-netlink", EXPECT_REFUSED,
                 make_socket(socket.AF_NETLINK, socket.SOCK_RAW)),
        ]  # fmt: skip
    cases.append(
        Case("socket-af-packet", EXPECT_REFUSED, make_socket(socket.AF_PACKET, socket.SOCK_RAW))
    )
    return cases


# --- signals and other processes -------------------------------------------------------


def _signal(pid: int, signum: int) -> None:
    os.kill(pid, signum)
    if signum == signal.SIGSTOP:
        os.kill(pid, signal.SIGCONT)


def signal_supervisor(signum: int) -> Callable[[Attacker], str]:
    def attempt(attacker: Attacker) -> str:
        _signal(attacker.supervisor, signum)
        return f"signal {signum} delivered to the supervisor ({attacker.supervisor})"

    return attempt


def signal_init(_attacker: Attacker) -> str:
    os.kill(1, 0)
    return "signal 0 delivered to pid 1"


def _reachable(candidates: range) -> list[int]:
    """Pids of other processes that accept signal 0 from us."""
    found = []
    for pid in candidates:
        if pid <= 1 or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except OSError:
            continue
        if not _own_thread(pid):
            found.append(pid)
    return found


def _window(attacker: Attacker) -> range:
    """The supervisor's pid, ours and PID_WINDOW either side: where the other
    roles are (/proc shows no other process), and some more."""
    me = os.getpid()
    return range(min(me, attacker.supervisor) - PID_WINDOW, max(me, attacker.supervisor)
                 + PID_WINDOW + 1)  # fmt: skip


def signal_nearby(attacker: Attacker) -> str:
    window = _window(attacker)
    found = _reachable(window)
    if not found:
        raise Refused(f"no pid in {window.start}..{window.stop - 1} accepts signal 0")
    return f"signal 0 delivered to pids {found[:20]}"


def stop_siblings(attacker: Attacker) -> str:
    """The other roles: started by the supervisor after it, before or after us."""
    window = range(attacker.supervisor + 1, max(os.getpid(), attacker.supervisor) + PID_WINDOW)
    stopped = []
    for pid in _reachable(window):
        with contextlib.suppress(OSError):
            _signal(pid, signal.SIGSTOP)
            stopped.append(pid)
    if not stopped:
        raise Refused(f"no pid in {window.start}..{window.stop - 1} could be signalled")
    return f"SIGSTOP (then SIGCONT) delivered to {stopped}"


def ptrace_supervisor(attacker: Attacker) -> str:
    pid = attacker.supervisor
    _syscall("ptrace", ctypes.c_long(PTRACE_ATTACH), ctypes.c_long(pid), None, None)
    with contextlib.suppress(OSError):
        os.waitpid(pid, 0x40000000)  # __WALL
    with contextlib.suppress(OSError):
        _syscall("ptrace", ctypes.c_long(PTRACE_DETACH), ctypes.c_long(pid), None, None)
    return f"attached to the supervisor ({pid}) with ptrace"


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("length", ctypes.c_size_t))


def vm_read_supervisor(attacker: Attacker) -> str:
    buffer = ctypes.create_string_buffer(64)
    local = _IoVec(ctypes.cast(buffer, ctypes.c_void_p), 64)
    # Our own buffer's address: mapped in a fork-exec'd sibling or not, the
    # kernel checks access to the process before it touches an address.
    remote = _IoVec(ctypes.cast(buffer, ctypes.c_void_p), 64)
    try:
        _syscall("process_vm_readv", ctypes.c_long(attacker.supervisor), ctypes.byref(local),
                 ctypes.c_ulong(1), ctypes.byref(remote), ctypes.c_ulong(1), ctypes.c_ulong(0))
    except OSError as error:
        if error.errno == errno.EFAULT:
            return "process_vm_readv allowed on the supervisor (EFAULT: address not mapped)"
        raise
    return "read 64 bytes of the supervisor's memory"  # fmt: skip


def read_proc(name: str) -> Callable[[Attacker], str]:
    return lambda a: read_file(f"/proc/{a.supervisor}/{name}")


def execute(_attacker: Attacker) -> str:
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], {})
    _pid, status = os.waitpid(pid, 0)
    return f"spawned {sys.executable} (status {os.waitstatus_to_exitcode(status)})"


def mount_tmpfs(_attacker: Attacker) -> str:
    result = _libc.mount(b"none", b"/tmp", b"tmpfs", ctypes.c_ulong(0), None)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return "mounted a tmpfs on /tmp"


def unshare(flag: int) -> Callable[[Attacker], str]:
    def attempt(_attacker: Attacker) -> str:
        if _libc.unshare(ctypes.c_int(flag)) < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return f"unshare({flag:#x}) succeeded"

    return attempt


def become_root(_attacker: Attacker) -> str:
    os.setuid(0)
    return f"setuid(0) succeeded (euid {os.geteuid()})"


# Capabilities 0..40 (CAP_CHECKPOINT_RESTORE, the last one of Linux 5.9 to 6.x).
ALL_CAPABILITIES = (1 << 41) - 1


def raise_capabilities(_attacker: Attacker) -> str:
    """capset: every capability effective and permitted."""
    process.set_capabilities(ALL_CAPABILITIES, ALL_CAPABILITIES)
    effective, permitted = process.get_capabilities()
    return f"capset: effective {effective:#x}, permitted {permitted:#x}"


def capabilities_held(_attacker: Attacker) -> str:
    effective, permitted = process.get_capabilities()
    if effective == permitted == 0:
        raise Refused("no effective or permitted capability")
    return f"capabilities held: effective {effective:#x}, permitted {permitted:#x}"




def process_cases(role: str) -> list[Case]:
    cases = [
        Case("signal-0-supervisor", EXPECT_REFUSED, signal_supervisor(0)),
        Case("sigstop-supervisor", EXPECT_REFUSED, signal_supervisor(signal.SIGSTOP)),
        Case("signal-0-pid-1", EXPECT_REFUSED, signal_init),
        Case("signal-0-nearby-pids", EXPECT_REFUSED, signal_nearby),
        Case("sigstop-other-roles", EXPECT_REFUSED, stop_siblings),
        Case("ptrace-supervisor", EXPECT_REFUSED, ptrace_supervisor),
        Case("process-vm-readv-supervisor", EXPECT_REFUSED, vm_read_supervisor),
        Case("read-supervisor-environ", EXPECT_REFUSED, read_proc("environ")),
        Case("read-supervisor-mem", EXPECT_REFUSED, read_proc("mem")),
        Case("execve", EXPECT_REFUSED, execute),
        Case("mount", EXPECT_REFUSED, mount_tmpfs),
        Case("unshare-user-namespace", EXPECT_REFUSED, unshare(CLONE_NEWUSER)),
        Case("unshare-network-namespace", EXPECT_REFUSED, unshare(CLONE_NEWNET)),
    ]
    if spec_of(role).keeps_root is None:
        cases.append(Case("setuid-0", EXPECT_REFUSED, become_root))
    cases += [
        Case("capset-raise-all", EXPECT_REFUSED, raise_capabilities),
        Case("capabilities-held", EXPECT_REFUSED, capabilities_held),
    ]
    return cases


# --- netproc: the peers it drives --------------------------------------------------------


def _origin(attacker: Attacker) -> str:
    parts = urlsplit(attacker.settings.directory_url)
    return f"{parts.scheme}://{parts.netloc}"


def _client(attacker: Attacker) -> Any:
    from letskencrypt.roles import netproc

    log = Logger("netproc", 0)
    client = netproc.connect_ca(attacker.peers, attacker.settings, attacker.ca_pem, log)
    client.account(list(attacker.settings.contact))
    return client


def _sign(attacker: Attacker, url: str, payload: bytes | None, kid: str | None) -> str:
    request = account_pb2.SignRequest(
        url=url, nonce=NONCE, kid=kid or "", payload=payload or b"", post_as_get=payload is None
    )
    reply = _call(attacker.peers.signer.stub.Sign, request)
    return f"acctproc signed it: protected={reply.protected[:60]}..."


def _kid(attacker: Attacker) -> str:
    if not attacker.kid:
        attacker.kid = str(_client(attacker).kid)
    return attacker.kid


def _current_der(attacker: Attacker) -> bytes:
    reply = _call(attacker.peers.renewal.Current, renewal_pb2.CurrentRequest())
    return bytes(reply.certificate_der)


def sign_payload(build: Callable[[Attacker], tuple[str, dict | None, bool]]) -> Callable[
    [Attacker], str
]:
    def attempt(attacker: Attacker) -> str:
        url, document, with_kid = build(attacker)
        payload = None if document is None else json.dumps(document).encode()
        return _sign(attacker, url, payload, _kid(attacker) if with_kid else None)

    return attempt


def _identifiers(names: list[str]) -> dict:
    return {"identifiers": [{"type": "dns", "value": name} for name in names]}


def _key_change(attacker: Attacker) -> tuple[str, dict, bool]:
    url = _origin(attacker) + "/rollover-account-key"
    described = _call(attacker.peers.signer.stub.Describe, account_pb2.DescribeRequest())
    inner = keys.sign_jws(
        ATTACKER_KEY,
        {"jwk": keys.jwk(ATTACKER_KEY.public_key()), "url": url},
        json.dumps({"account": _kid(attacker), "oldKey": json.loads(described.jwk_json)}).encode(),
    )
    return url, inner, True


def own_certificate(attacker: Attacker) -> str:
    """A real order through the real peers, finalized with netproc's own key."""
    client = _client(attacker)
    names = list(attacker.settings.names)
    csr = keys.build_csr(ATTACKER_KEY, names)
    try:
        chain = client.issue(
            names,
            csr_provider=lambda: csr,
            publish=attacker.peers.publish,
            withdraw=attacker.peers.withdraw,
            thumbprint=attacker.peers.signer.thumbprint(),
        ).default
    except rpc.RpcError as error:
        raise Refused(str(error)) from None
    attacker.stolen_chain = chain
    leaf = x509.load_pem_x509_certificate(chain)
    return f"pebble issued serial {leaf.serial_number:x} for {names} to netproc's own key"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, issuer: str, public_key: Any, signer: Any, names: list[str] | None,
                 ca: bool) -> x509.Certificate:  # fmt: skip
    """Valid for 100 years from an hour ago.  (Not tests.certfactory's: this
    file runs as a script inside the role's sandbox, with only the package on
    its path.)"""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=36500))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _domain_public_key(attacker: Attacker) -> Any:
    csr = x509.load_der_x509_csr(attacker.peers.csr())
    return csr.public_key()


def _submit(attacker: Attacker, chain: bytes) -> str:
    reply = _call(attacker.peers.certificate.Submit, certificate_pb2.SubmitRequest(pem_chain=chain))
    return f"certproc installed serial {reply.serial_hex} (valid until {reply.not_after})"


def submit_forged_leaf(attacker: Attacker) -> str:
    """For the real domain key and names, issued by nobody, valid 100 years."""
    names = list(attacker.settings.names)
    leaf = _certificate(names[0], "Attacker", _domain_public_key(attacker), ATTACKER_KEY, names,
                        ca=False)  # fmt: skip
    return _submit(attacker, _pem(leaf))


def submit_attacker_ca_chain(attacker: Attacker) -> str:
    names = list(attacker.settings.names)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Attacker CA", "Attacker CA", ca_key.public_key(), ca_key, None, ca=True)
    leaf = _certificate(names[0], "Attacker CA", _domain_public_key(attacker), ca_key, names,
                        ca=False)  # fmt: skip
    return _submit(attacker, _pem(leaf, ca))


def submit_own_key_certificate(attacker: Attacker) -> str:
    """Pebble's certificate for netproc's key (from own-certificate), or one of our own."""
    chain = attacker.stolen_chain
    if not chain:
        names = list(attacker.settings.names)
        chain = _pem(_certificate(names[0], names[0], ATTACKER_KEY.public_key(), ATTACKER_KEY,
                                  names, ca=False))  # fmt: skip
    return _submit(attacker, chain)


def sign_revocation_with_domain_key(attacker: Attacker) -> str:
    """keyproc's revokeCert signature, for its own certificate, in an issue run."""
    request = domainkey_pb2.SignRevocationRequest(
        url=_origin(attacker) + "/revoke-cert", nonce=NONCE,
        certificate_der=_current_der(attacker), reason=1,
    )  # fmt: skip
    reply = _call(attacker.peers.domain_key.SignRevocation, request)
    return f"keyproc signed a revocation: protected={reply.protected[:60]}..."


def retire(attacker: Attacker) -> str:
    _call(attacker.peers.certificate.Retire, certificate_pb2.RetireRequest())
    return "certproc retired (removed) the installed certificate in an issue run"


def publish(token: str, key_authorization: str) -> Callable[[Attacker], str]:
    def attempt(attacker: Attacker) -> str:
        request = challenge_pb2.PublishRequest(token=token, key_authorization=key_authorization)
        _call(attacker.peers.challenge.Publish, request)
        return f"chngproc published {token!r}"

    return attempt


def withdraw_unwritten(attacker: Attacker) -> str:
    _call(attacker.peers.challenge.Withdraw, challenge_pb2.WithdrawRequest(token="index"))
    return "chngproc removed a file it had not written"


def control(what: str, call: Callable[[Attacker], Any]) -> Callable[[Attacker], str]:
    def attempt(attacker: Attacker) -> str:
        reply = call(attacker)
        return f"{what}: {str(reply).strip()[:120]}"

    return attempt




def netproc_cases() -> list[Case]:
    acct = lambda a: a.peers.signer.stub  # noqa: E731
    return [
        Case("acct-describe", EXPECT_ALLOWED,
             control("Describe", lambda a: _call(acct(a).Describe, account_pb2.DescribeRequest()))),
        Case("key-csr", EXPECT_ALLOWED, control("Csr", lambda a: len(a.peers.csr()))),
        Case("rvk-current", EXPECT_ALLOWED, control("Current", lambda a: len(_current_der(a)))),
        Case("rvk-check", EXPECT_ALLOWED, control("Check", lambda a: _call(
            a.peers.renewal.Check, renewal_pb2.CheckRequest()).reason)),
        Case("dns-resolve", EXPECT_ALLOWED, control("Resolve", lambda a: a.peers.resolver.resolve(
            a.target.pebble_host))),
        Case("acct-finalize-own-key", EXPECT_REFUSED, own_certificate),
        Case("cert-submit-own-key-certificate", EXPECT_REFUSED, submit_own_key_certificate),
        Case("cert-submit-forged-leaf", EXPECT_REFUSED, submit_forged_leaf),
        Case("cert-submit-attacker-ca-chain", EXPECT_REFUSED, submit_attacker_ca_chain),
        Case("cert-retire-in-issue-run", EXPECT_REFUSED, retire),
        Case("acct-sign-revocation", EXPECT_REFUSED, sign_payload(
            lambda a: (_origin(a) + "/revoke-cert",
                       {"certificate": b64url(_current_der(a))}, True))),
        Case("key-sign-revocation-in-issue-run", EXPECT_REFUSED,
             sign_revocation_with_domain_key),
        Case("acct-sign-key-change", EXPECT_REFUSED, sign_payload(_key_change)),
        Case("acct-sign-deactivation", EXPECT_REFUSED, sign_payload(
            lambda a: (_kid(a), {"status": "deactivated"}, True))),
        Case("acct-sign-new-order-other-names", EXPECT_REFUSED, sign_payload(
            lambda a: (_origin(a) + "/order-plz", _identifiers(OTHER_NAMES), True))),
        Case("acct-sign-new-order-extra-name", EXPECT_REFUSED, sign_payload(
            lambda a: (_origin(a) + "/order-plz",
                       _identifiers([*a.settings.names, *OTHER_NAMES]), True))),
        Case("acct-sign-other-origin", EXPECT_REFUSED, sign_payload(
            lambda a: ("https://evil.example.net/acme/new-order",
                       _identifiers(list(a.settings.names)), True))),
        Case("acct-sign-post-as-get-other-origin", EXPECT_REFUSED, sign_payload(
            lambda a: ("https://evil.example.net/anything", None, True))),
        Case("acct-sign-contact-update", EXPECT_REFUSED, sign_payload(
            lambda a: (_kid(a), {"contact": EVIL_CONTACT}, True))),
        Case("acct-sign-new-account-other-contact", EXPECT_REFUSED, sign_payload(
            lambda a: (_origin(a) + "/sign-me-up",
                       {"termsOfServiceAgreed": True, "contact": EVIL_CONTACT}, False))),
        Case("chng-publish-path-traversal", EXPECT_REFUSED,
             publish("../../../tmp/attack", "x.y")),
        Case("chng-publish-foreign-content", EXPECT_REFUSED,
             publish("attacktoken", "attacktoken.<script>alert(1)</script>")),
        Case("chng-withdraw-unwritten-file", EXPECT_REFUSED, withdraw_unwritten),
    ]  # fmt: skip


# --- certproc and acctproc: the peers they call --------------------------------------------


def _channel(attacker: Attacker, edge: str) -> grpc.Channel:
    channels = attacker.channels
    if edge not in channels:
        path = rpc.socket_path(attacker.config.run_dir, edge)
        if not os.path.exists(path) and edge not in rpc.EDGES:
            raise Refused(f"no edge {edge!r} in this version (no {path})")
        if edge in rpc.EDGES:
            channels[edge] = rpc.connect(attacker.config.run_dir, edge)
            rpc.wait_ready({edge: channels[edge]}, timeout=CALL_TIMEOUT)
        else:
            channels[edge] = grpc.insecure_channel(f"unix:{path}")
    return channels[edge]


def _looks_private(*values: bytes) -> bool:
    for value in values:
        if b"PRIVATE KEY" in value:
            return True
        with contextlib.suppress(ValueError, TypeError):
            serialization.load_der_private_key(value, None)
            return True
    return False


def key_info(edge: str) -> Callable[[Attacker], Any]:
    def call(attacker: Attacker) -> Any:
        stub = keyinfo_pb2_grpc.KeyInfoStub(_channel(attacker, edge))
        return _call(stub.Describe, keyinfo_pb2.KeyInfoRequest())

    return call


def private_key_from(edge: str) -> Callable[[Attacker], str]:
    def attempt(attacker: Attacker) -> str:
        reply = key_info(edge)(attacker)
        fields = [value for _desc, value in reply.ListFields() if isinstance(value, bytes)]
        if not _looks_private(*fields):
            raise Refused(f"only public data on {edge}: {[d.name for d, _ in reply.ListFields()]}")
        return f"keyproc handed out private key material on {edge}"

    return attempt


def remove_files(attacker: Attacker) -> str:
    stub = files_pb2_grpc.FilesStub(_channel(attacker, "file"))
    _call(stub.Remove, files_pb2.RemoveRequest())
    return "fileproc removed the installed certificate in an issue run"


def install_forged(attacker: Attacker) -> str:
    """fileproc writes what certproc hands it: the design trusts certproc here."""
    names = list(getattr(attacker.config.settings, "names", ()) or ["forged.example"])
    key_reply = key_info("keyinfo")(attacker)
    public_key = serialization.load_der_public_key(key_reply.public_key_der)
    names = list(key_reply.names) or names
    leaf = _certificate(names[0], "Attacker", public_key, ATTACKER_KEY, names, ca=False)
    stub = files_pb2_grpc.FilesStub(_channel(attacker, "file"))
    _call(stub.Install, files_pb2.InstallRequest(certificate_pem=_pem(leaf), chain_pem=b""))
    return "fileproc installed a forged certificate from certproc (trusted by design)"


def certproc_cases() -> list[Case]:
    return [
        Case("keyinfo-describe", EXPECT_ALLOWED, control("KeyInfo", key_info("keyinfo"))),
        Case("keyinfo-private-key", EXPECT_REFUSED, private_key_from("keyinfo")),
        Case("file-remove-in-issue-run", EXPECT_REFUSED, remove_files),
        Case("file-install-forged-set", EXPECT_ACCEPTED_RISK, install_forged),
    ]


def acctproc_cases() -> list[Case]:
    return [Case("keyacct-private-key", EXPECT_REFUSED, private_key_from("keyacct"))]


# --- all together -----------------------------------------------------------------------


def cases(role: str) -> list[Case]:
    """Every attack of a compromised `role`, in the order they run."""
    specific = {
        "netproc": netproc_cases,
        "certproc": certproc_cases,
        "acctproc": acctproc_cases,
    }.get(role, list)()
    return [
        *specific,
        *file_cases(role),
        *terminal_cases(),
        *socket_cases(role),
        *process_cases(role),
    ]


def _emit(prefix: str, entry: dict[str, Any]) -> None:
    line = prefix + json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n"
    os.write(2, line.encode())


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def attack(attacker: Attacker) -> None:
    """Run every case; one report line each (stderr is the only way out)."""
    _emit(DONE_PREFIX.replace("DONE", "INFO"), {
        "role": attacker.role, "pid": os.getpid(), "uid": os.getuid(), "euid": os.geteuid(),
        "supervisor": attacker.supervisor,
    })  # fmt: skip
    count = 0
    for case in cases(attacker.role):
        try:
            outcome, detail = SUCCEEDED, case.attempt(attacker)
        except Refused as refusal:
            outcome, detail = REFUSED, str(refusal)
        except OSError as error:
            outcome, detail = REFUSED, _errno_text(error)
        except rpc.RpcError as error:
            outcome, detail = REFUSED, str(error)
        except Exception as error:  # an attack that could not be tried is a test bug
            outcome, detail = ERROR, repr(error)
        count += 1
        _emit(REPORT_PREFIX, {
            "role": attacker.role, "name": case.name, "expect": case.expect,
            "outcome": outcome, "detail": _shorten(detail),
        })  # fmt: skip
    _emit(DONE_PREFIX, {"role": attacker.role, "count": count})


def main() -> None:
    role, target_json = sys.argv[1], sys.argv[2]
    target = Target(**json.loads(target_json))
    module = module_of(role)
    real_confine = process.confine
    held: dict[str, RoleConfig] = {}

    def confine_then_attack(config: RoleConfig) -> list[str]:
        gaps = real_confine(config)
        held["config"] = config
        if role != "netproc":
            attack(Attacker(role, config, target, settings=config.settings))
        return gaps

    process.confine = confine_then_attack  # type: ignore[assignment]
    if role == "netproc":
        real_obtain = module.obtain

        def obtain_then_attack(
            peers: Any, settings: Any, ca_pem: bytes, log: Logger, *rest: Any
        ) -> int:
            try:
                return int(real_obtain(peers, settings, ca_pem, log, *rest))
            finally:
                attack(Attacker(role, held["config"], target, peers, settings, ca_pem))

        module.obtain = obtain_then_attack
    process.run_role(role)


if __name__ == "__main__":
    main()
