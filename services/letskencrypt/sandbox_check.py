"""`letskencrypt sandbox-check [--strict]`: show that the sandbox holds here.

For each of the eight roles it starts a probe process that sets up what it
will attack (a file outside the role's paths, fake keys, a process of the same
user, sockets), tries every forbidden action once without the sandbox, applies
the role's real profile through `process.confine`, and tries them all again;
then it checks that what the role needs still works (its sockets and a gRPC
call, its directories).  Each attack is tried for real, against targets the
probe's own user could otherwise reach, so a denial is the sandbox's doing.

The table says, for each role and restriction, `enforced`, `NOT ENFORCED` (the
layer was applied and the action went through anyway), `not available` (the
kernel lacks the layer) or `allowed` (the role's profile permits it).  A star
marks an action that was denied even before the sandbox (the probe's user
lacks the privilege), so the denial shows little.

Exit status: 1 if anything applied did not hold, or a role's own paths broke;
with --strict also if anything is not enforced; else 0.
"""

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from letskencrypt import anchors, cli, filestore, launch, linux, options, process, rpc, sandbox
from letskencrypt.constants import EXIT_FAILED
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import InputError, LetskencryptError
from letskencrypt.roles import ROLES, spec_of
from letskencrypt.sandbox import (
    LANDLOCK,
    LANDLOCK_NETWORK,
    LANDLOCK_SCOPES,
    NAMESPACES,
    SECCOMP,
    SECCOMP_SOCKETS,
    TIOCSTI,
)
from letskencrypt.settings import RoleSettings
from letskencrypt.spec import Fs, Grant, Network
from letskencrypt.v1 import lifecycle_pb2, lifecycle_pb2_grpc

NAME = "sandbox-check.example"
WATCHED_STATUS = ("Seccomp", "NoNewPrivs", "Seccomp_filters")
PROBE_TIMEOUT = 60.0

ENFORCED = "enforced"
NOT_ENFORCED = "NOT ENFORCED"
NOT_AVAILABLE = "not available"
ALLOWED = "allowed"
WORKS = "works"
BY_THE_RUNTIME = "container's"

# The layout of one role's probe directory.
RUN = "run"
CHALLENGE = "challenge"
CERTS = "certs"
DOMAIN_KEY = "domain/privkey.pem"
ACCOUNT_KEY = "account/privkey.pem"
OUTSIDE_FILE = "outside/outside.txt"
OUTSIDE_DIR = "outside"
MOUNT_POINT = "outside/mnt"
NAMED_SOCKET = "outside/named.sock"
# Not a layer of the sandbox: the supervisor starts each role in a session
# of its own, without a terminal (and so does this check).
SESSION = "session"
# A role whose wheels this image does not carry (a container image holds one role's).
ABSENT = "not in this image"
FAKE_KEY = b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
# Self-signed for NAME, valid 2026-2126: what revokeproc reads (a fixed one,
# as images without cryptography run this check too).
CERTIFICATE = b"""-----BEGIN CERTIFICATE-----
MIIBVTCB+6ADAgECAgEBMAoGCCqGSM49BAMCMCAxHjAcBgNVBAMMFXNhbmRib3gt
Y2hlY2suZXhhbXBsZTAgFw0yNjAxMDEwMDAwMDBaGA8yMTI2MDEwMTAwMDAwMFow
IDEeMBwGA1UEAwwVc2FuZGJveC1jaGVjay5leGFtcGxlMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAEt0PtMKGDiP3P2f4kGIvzP5svWCMFGPEooZ47zRcrriKpnZHB
TfujM/MCLF1W/u2KSjdM42oxcnajRlK3c4Zk86MkMCIwIAYDVR0RBBkwF4IVc2Fu
ZGJveC1jaGVjay5leGFtcGxlMAoGCCqGSM49BAMCA0kAMEYCIQCKEPNX5ZZtFGVN
JTqmWhjEvsMtk6Vrn+rNUASkQyyCUQIhALN9gMDVr4rHMlVeNXKQT11GplEXqtKs
YaxZ4nJHIUkK
-----END CERTIFICATE-----
"""

_libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MNT_DETACH = 2

SYS_IO_URING_SETUP = 425


def _libc_call(result: int) -> int:
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return result


# --- what a probe attacks ------------------------------------------------------


@dataclass
class World:
    """Targets set up before the sandbox, while the probe may still reach them."""

    base: Path
    victim: int
    victim_lifeline: int
    victim_address: int | None
    abstract_name: bytes
    abstract_listener: socket.socket
    tcp_listener: socket.socket
    # Made before the sandbox: Landlock's network rules bind connect(), not socket().
    tcp_sockets: list[socket.socket]
    named_path: str
    named_listener: socket.socket
    # A pseudo-terminal (not ours: we have none) to push input into.
    terminal: int
    serial: Iterator[int] = dataclasses.field(default_factory=itertools.count)
    # Set once the probe has applied the sandbox.
    confined: bool = False


def start_victim() -> tuple[int, int]:
    """A process of the probe's user, outside its sandbox, that allows ptrace.

    It lives until the probe's end of a pipe closes: a parent-death signal
    would not reach it, Landlock's signal scope stops that too.
    """
    read_end, write_end = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(write_end)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            # Dropping privileges made the probe, and so us, not dumpable.
            linux.prctl(linux.PR_SET_DUMPABLE, 1)
            os.write(ready_write, b".")
            os.read(read_end, 1)
        finally:
            os._exit(0)
    os.close(read_end)
    os.close(ready_write)
    os.read(ready_read, 1)
    os.close(ready_read)
    return pid, write_end


def first_mapping(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            addresses, permissions = line.split()[:2]
            if permissions.startswith("r"):
                return int(addresses.split("-")[0], 16)
    return None


def build_world(base: Path) -> World:
    victim, lifeline = start_victim()
    abstract_name = f"\0letskencrypt-sandbox-check-{os.getpid()}".encode()
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(abstract_name)
    abstract.listen(8)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    spares = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(3)]
    # Like a D-Bus, systemd or container engine socket: a path any user may connect to.
    named_path = str(base / NAMED_SOCKET)
    named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    named.bind(named_path)
    os.chmod(named_path, 0o777)  # noqa: S103 - the bait, by design
    named.listen(8)
    _controller, terminal = os.openpty()
    return World(
        base, victim, lifeline, first_mapping(victim), abstract_name, abstract, listener, spares,
        named_path, named, terminal,
    )  # fmt: skip


def read_file(path: Path) -> None:
    with open(path, "rb") as file:
        file.read(64)


def open_for_writing(world: World) -> None:
    os.close(os.open(world.base / OUTSIDE_FILE, os.O_WRONLY | os.O_CLOEXEC))


def create_file(world: World) -> None:
    path = world.base / OUTSIDE_DIR / f"created-{next(world.serial)}"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    os.unlink(path)


def change_mode(world: World) -> None:
    os.chmod(world.base / OUTSIDE_FILE, 0o640)


def make_socket(family: int, kind: int, protocol: int = 0) -> Callable[[World], None]:
    def attempt(_world: World) -> None:
        socket.socket(family, kind, protocol).close()

    return attempt


def tcp_connect(world: World) -> None:
    with world.tcp_sockets.pop() as client:
        client.settimeout(5)
        client.connect(world.tcp_listener.getsockname())


def in_child(body: Callable[[], None]) -> None:
    """Run `body` in a forked child (it would change or replace this process)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            body()
        except OSError as error:
            code = error.errno or 255
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 255 or code < 0:
        raise RuntimeError(f"child failed ({code})")
    if code:
        raise OSError(code, os.strerror(code))


def execute(_world: World) -> None:
    program = "/bin/true" if os.path.exists("/bin/true") else sys.executable
    arguments = [program] if program == "/bin/true" else [program, "-I", "-S", "-c", ""]
    devnull = os.open(os.devnull, os.O_RDWR)

    def body() -> None:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.execv(program, arguments)  # noqa: S606 - the forbidden action itself

    try:
        in_child(body)
    finally:
        os.close(devnull)


def ptrace_attach(world: World) -> None:
    args = (ctypes.c_long(PTRACE_ATTACH), ctypes.c_long(world.victim), None, None)
    _libc_call(_libc.ptrace(*args))
    os.waitpid(world.victim, 0x40000000)  # __WALL: the stop that attaching causes
    _libc.ptrace(ctypes.c_long(PTRACE_DETACH), ctypes.c_long(world.victim), None, None)


def read_memory(world: World) -> None:
    fd = os.open(f"/proc/{world.victim}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if world.victim_address is not None:
            os.pread(fd, 16, world.victim_address)
    finally:
        os.close(fd)


def read_environ(world: World) -> None:
    read_file(Path(f"/proc/{world.victim}/environ"))


def send_signal(world: World) -> None:
    """SIGTERM to another process of the same user (a peer role), once confined;
    signal 0 (a check of permission only) before."""
    os.kill(world.victim, signal.SIGTERM if world.confined else 0)


def signal_parent(_world: World) -> None:
    os.kill(os.getppid(), 0)


def signal_init(_world: World) -> None:
    os.kill(1, 0)


def signal_everyone(world: World) -> None:
    """kill(-1, SIGTERM) once confined, and only when kill(-1, 0) is denied
    already: the check must never take down the machine.  Signal 0 before."""
    os.kill(-1, 0)
    if world.confined:
        os.kill(-1, signal.SIGTERM)


def open_terminal(_world: World) -> None:
    os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC))


def push_input(world: World) -> None:
    """TIOCSTI (a keystroke into the terminal's input) on a pseudo-terminal
    and on stdin, stdout and stderr; fails unless one of them went through."""
    error: OSError | None = None
    for fd in (world.terminal, 0, 1, 2):
        try:
            fcntl.ioctl(fd, TIOCSTI, b" ")
            return
        except OSError as failure:
            if error is None or error.errno == errno.ENOTTY:
                error = failure
    assert error is not None
    raise error


def connect_abstract(world: World) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(world.abstract_name)


def connect_named(world: World) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(world.named_path)


def mount_tmpfs(world: World) -> None:
    target = str(world.base / MOUNT_POINT).encode()
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    _libc_call(_libc.mount(b"tmpfs", target, b"tmpfs", ctypes.c_ulong(flags), b"size=4k"))
    _libc.umount2(target, MNT_DETACH)


def unshare_user(_world: World) -> None:
    def body() -> None:
        _libc_call(_libc.unshare(CLONE_NEWUSER))

    in_child(body)


def io_uring(_world: World) -> None:
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    fd = _libc_call(_libc.syscall(ctypes.c_long(SYS_IO_URING_SETUP), 1, params))
    os.close(fd)


@dataclass(frozen=True)
class Attempt:
    key: str
    label: str
    action: Callable[[World], None]
    # Applied, any of these layers denies the action, with one of `errnos`.
    layers: frozenset[str]
    errnos: frozenset[int]
    # The networks (spec.Network) of the roles whose profile permits the action.
    allowed_for: frozenset[str] = frozenset()


NETWORKED = frozenset({Network.DNS.value, Network.ANY.value})
# A role's own network namespace (namespace.py): only the roles without network get one.
NETWORK_NAMESPACE = "network namespace"
# The second stage denies connect() itself only to the roles without network.
SEALED_CONNECT = "second stage, connect"
# Paths: Landlock refuses them (EACCES), the role's mount namespace does not have them (ENOENT).
FS = frozenset({LANDLOCK, NAMESPACES})
HIDDEN = frozenset({errno.EACCES, errno.ENOENT})
EPERM = frozenset({errno.EPERM})
EITHER = frozenset({errno.EPERM, errno.EACCES, errno.ENOENT})
BY_SECCOMP = frozenset({SECCOMP})
SIGNALS = frozenset({SECCOMP, LANDLOCK_SCOPES})
# No controlling terminal; or Landlock, which has no rule for /dev/tty; or
# the role's mount namespace, which has no /dev/tty.
NO_TERMINAL = frozenset({errno.ENXIO, errno.EACCES, errno.ENOENT})

ATTEMPTS = (
    Attempt("read", "read a file outside", lambda w: read_file(w.base / OUTSIDE_FILE), FS, HIDDEN),
    Attempt(
        "account_key", "read the account key", lambda w: read_file(w.base / ACCOUNT_KEY), FS, HIDDEN
    ),
    # The default domain key lies beneath the certificate directory; revokeproc
    # reads only the certificate sets there (.sets), fileproc only writes.
    Attempt(
        "domain_key", "read the domain key", lambda w: read_file(w.base / DOMAIN_KEY), FS, HIDDEN
    ),
    Attempt("write", "open a file outside for writing", open_for_writing, FS, HIDDEN),
    Attempt("create", "create a file outside", create_file, FS, HIDDEN),
    Attempt("chmod", "chmod a file outside", change_mode, BY_SECCOMP, EPERM),
    Attempt(
        "inet_tcp",
        "socket AF_INET TCP",
        make_socket(socket.AF_INET, socket.SOCK_STREAM),
        BY_SECCOMP,
        EPERM,
        NETWORKED,
    ),
    Attempt(
        "inet_udp",
        "socket AF_INET UDP",
        make_socket(socket.AF_INET, socket.SOCK_DGRAM),
        BY_SECCOMP,
        EPERM,
        NETWORKED,
    ),
    Attempt(
        "inet6_tcp",
        "socket AF_INET6 TCP",
        make_socket(socket.AF_INET6, socket.SOCK_STREAM),
        BY_SECCOMP,
        EPERM,
        NETWORKED,
    ),
    Attempt(
        "inet6_udp",
        "socket AF_INET6 UDP",
        make_socket(socket.AF_INET6, socket.SOCK_DGRAM),
        BY_SECCOMP,
        EPERM,
        NETWORKED,
    ),
    Attempt(
        "netlink",
        "socket AF_NETLINK",
        make_socket(socket.AF_NETLINK, socket.SOCK_RAW, 0),
        BY_SECCOMP,
        EPERM,
        NETWORKED,
    ),
    Attempt(
        "packet",
        "socket AF_PACKET",
        make_socket(socket.AF_PACKET, socket.SOCK_DGRAM),
        BY_SECCOMP,
        EPERM,
    ),
    Attempt(
        "tcp_connect",
        "TCP connect (socket made before)",
        tcp_connect,
        # Made before the sandbox, the socket belongs to the host's network
        # namespace: Landlock's EACCES (dnsproc: port 53 only), or the second
        # stage's EPERM (no connect() at all).
        frozenset({LANDLOCK_NETWORK, SEALED_CONNECT}),
        EITHER,
        frozenset({Network.ANY.value}),
    ),
    Attempt("execve", "execve /bin/true", execute, frozenset({SECCOMP, LANDLOCK}), EITHER),
    Attempt(
        "ptrace", "ptrace attach (same user)", ptrace_attach, frozenset({SECCOMP, LANDLOCK}), EPERM
    ),
    Attempt("mem", "read /proc/<pid>/mem", read_memory, FS, EITHER),
    Attempt("environ", "read /proc/<pid>/environ", read_environ, FS, EITHER),
    Attempt("tty", "open /dev/tty", open_terminal, frozenset({SESSION}), NO_TERMINAL),
    Attempt("tiocsti", "ioctl TIOCSTI (any terminal)", push_input, BY_SECCOMP, EPERM),
    Attempt("signal_parent", "kill(supervisor, 0)", signal_parent, SIGNALS, EPERM),
    Attempt("signal_init", "kill(1, 0)", signal_init, SIGNALS, EPERM),
    Attempt(
        "abstract",
        "connect an abstract unix socket",
        connect_abstract,
        # Landlock's scope or the second stage (EPERM); abstract names
        # belong to a network namespace, and a new one has none.
        frozenset({LANDLOCK_SCOPES, SECCOMP_SOCKETS, NETWORK_NAMESPACE}),
        frozenset({errno.EPERM, errno.ECONNREFUSED}),
    ),
    # Landlock does not govern connect() to a named socket: the second stage
    # (no connect() at all, for the roles that only serve) or the role's
    # mount namespace, where the path does not exist, stops it.
    Attempt(
        "named",
        "connect a foreign named unix socket",
        connect_named,
        frozenset({SECCOMP_SOCKETS, NAMESPACES}),
        frozenset({errno.EPERM, errno.ENOENT}),
    ),
    Attempt("mount", "mount tmpfs", mount_tmpfs, BY_SECCOMP, EPERM),
    Attempt("unshare", "unshare a user namespace", unshare_user, BY_SECCOMP, EPERM),
    Attempt("io_uring", "io_uring_setup", io_uring, BY_SECCOMP, EPERM),
    # Last: if the sandbox failed, the victim is gone.
    Attempt("signal", "kill(peer, SIGTERM)", send_signal, SIGNALS, EPERM),
    Attempt("signal_all", "kill(-1, SIGTERM)", signal_everyone, SIGNALS, EPERM),
)


def outcome(attempt: Attempt, world: World) -> str:
    """"ok", or the name of the errno the action failed with."""
    try:
        attempt.action(world)
    except OSError as error:
        return errno.errorcode.get(error.errno or 0, f"errno {error.errno}")
    except Exception as error:
        return f"error: {error!r}"[:200]
    return "ok"


# --- what a role needs, after the sandbox -----------------------------------------


def serve_and_call(config: RoleConfig) -> None:
    """Bind each of the role's sockets and make a gRPC call through it."""
    for edge in spec_of(config.role).serves:
        stopper = rpc.Stopper()
        server = rpc.serve(config.run_dir, edge, [], stopper)
        try:
            with rpc.connect(config.run_dir, edge) as channel:
                stub = lifecycle_pb2_grpc.LifecycleStub(channel)
                stub.Stop(lifecycle_pb2.StopRequest(), timeout=10, wait_for_ready=True)
            if not stopper.wait(5):
                raise LetskencryptError(f"{edge}: the call did not arrive")
        finally:
            server.stop(grace=None).wait(5)


MAX_SAMPLES = 8


def readable_samples(grant: Grant) -> list[str]:
    """Files beneath a readable grant, found before the sandbox (a grant may
    allow reading files but not listing directories)."""
    if os.path.isfile(grant.path):
        return [grant.path]
    samples: list[str] = []
    for top, _directories, files in os.walk(grant.path):
        samples += [os.path.join(top, name) for name in sorted(files)]
        if len(samples) >= MAX_SAMPLES:
            break
    return [path for path in samples[:MAX_SAMPLES] if os.path.isfile(path)]


def exercise(grant: Grant, samples: list[str]) -> None:
    """Do once what each right of `grant` allows, as the confined role."""
    access = grant.access
    for path in samples if access & Fs.READ_FILE else []:
        with open(path, "rb") as sample:
            sample.read(1)
    if not os.path.isdir(grant.path):
        return
    if access & Fs.READ_DIR:
        os.listdir(grant.path)
    made = os.path.join(grant.path, f".sandbox-check-{os.getpid()}")
    if access & Fs.MAKE_REG and access & Fs.WRITE_FILE:
        with open(made, "xb") as probe_file:
            probe_file.write(b"probe\n")
        if access & Fs.REMOVE_FILE:
            os.unlink(made)
    if access & Fs.MAKE_SYM:
        os.symlink("target", made + ".link")
        if access & Fs.REMOVE_FILE:
            os.unlink(made + ".link")
    if access & Fs.MAKE_DIR:
        os.mkdir(made + ".dir")
        # Landlock ABI 1 refuses every rename across directories (EXDEV).
        if access & Fs.REFER and access & Fs.MAKE_REG and sandbox.landlock_abi() != 1:
            with open(os.path.join(made + ".dir", "moved"), "xb"):
                pass
            os.rename(os.path.join(made + ".dir", "moved"), made + ".moved")
            os.unlink(made + ".moved")
        if access & Fs.REMOVE_DIR:
            os.rmdir(made + ".dir")


def role_works(
    config: RoleConfig, grants: list[tuple[Grant, list[str]]], world: World
) -> str:
    """What the role needs still works: its sockets, its network, every right
    its spec grants."""
    try:
        serve_and_call(config)
        network = spec_of(config.role).network
        if network is Network.ANY:
            ssl.create_default_context()
            with socket.create_connection(world.tcp_listener.getsockname(), timeout=5):
                pass
        elif network is Network.DNS:
            socket.getaddrinfo("localhost", 443, type=socket.SOCK_STREAM)
        for grant, samples in grants:
            exercise(grant, samples)
    except Exception as error:
        return f"FAILED: {error!r}"[:300]
    return WORKS


def own_state() -> dict[str, Any]:
    # The sandbox hides /proc/self: the parent reads the threads' status.
    return {
        "dumpable": linux.prctl(linux.PR_GET_DUMPABLE),
        "no_new_privs": linux.prctl(linux.PR_GET_NO_NEW_PRIVS),
    }


def probe(role: str, base: Path) -> dict[str, Any]:
    """In the probe process: attack, confine as the role, attack again."""
    config = process.read_config(role)
    os.umask(0o007)
    # Drop first, so the victim and the files are the probe's own user's.
    process.drop_privileges(config)
    # A check run as a container's PID 1 probes roles as a container runs them.
    config = dataclasses.replace(config, uid=None, gid=None, supervised=os.getppid() != 1)
    spec = spec_of(role)
    grants = [(grant, readable_samples(grant)) for grant in spec.grants(config.settings)]
    world = build_world(base)
    before = {attempt.key: outcome(attempt, world) for attempt in ATTEMPTS}
    gaps = process.confine(config)
    works = role_works(config, grants, world)
    # As a role does: serve, then the second stage (sandbox.seal).  The
    # sandbox-check calls these servers from outside once it has our report.
    for edge in spec.serves:
        rpc.serve(config.run_dir, edge, [], rpc.Stopper())
    gaps += sandbox.seal(config, Logger(config.role, config.verbosity), strict=False)
    world.confined = True
    after = {attempt.key: outcome(attempt, world) for attempt in ATTEMPTS}
    return {
        "role": role,
        "network": spec.network.value,
        "serves_only": spec.serves_only,
        "uid": os.getuid(),
        "gaps": gaps,
        "supervised": config.supervised,
        "before": before,
        "after": after,
        "works": works,
        "state": own_state(),
    }


def probe_main(role: str, base: str, hold: int) -> None:
    """Report on one line, then live (threads and all) until the parent has
    looked at us and closes `hold`."""
    process.set_process_name(f"probe-{role}"[:15])
    result = probe(role, Path(base))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os.read(hold, 1)
    os._exit(0)  # gRPC's threads need no teardown


# --- setting up and running the probes -------------------------------------------


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int


def role_settings(base: Path) -> dict[str, RoleSettings]:
    """Every role's settings exactly as the command line makes them."""
    argv = [
        "--server", f"https://{NAME}/directory",
        "-C", str(base / CHALLENGE),
        "-c", str(base / CERTS),
        "-f", str(base / ACCOUNT_KEY),
        "-k", str(base / DOMAIN_KEY),
        NAME,
    ]  # fmt: skip
    # The CA here is no real one: any anchors do for the roles that hold them.
    # The certificate it writes is no real one either: no ARI id is taken
    # from it (and an image without cryptography could not).
    settings = options.role_settings(
        options.build_parser().parse_args(argv), trust_anchors=False, knows_certificate=False
    )
    pem_text = anchors.built_in("letsencrypt-production.pem").decode("ascii")
    return {
        role: dataclasses.replace(role_settings, trust_anchors=pem_text)  # type: ignore[call-arg]
        if hasattr(role_settings, "trust_anchors")
        else role_settings
        for role, role_settings in settings.items()
    }


def write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def make_base(top: Path, role: str, identity: Identity) -> Path:
    base = top / role
    base.mkdir(mode=0o700)
    for edge in rpc.EDGES:
        (base / RUN / edge).mkdir(parents=True, mode=0o700)
    (base / CHALLENGE).mkdir(mode=0o755)
    (base / CERTS).mkdir(mode=0o755)
    (base / MOUNT_POINT).mkdir(parents=True, mode=0o700)
    write(base / OUTSIDE_FILE, b"outside the role's paths\n", 0o600)
    write(base / ACCOUNT_KEY, FAKE_KEY, 0o400)
    write(base / DOMAIN_KEY, FAKE_KEY, 0o400)
    filestore.install(str(base / CERTS), CERTIFICATE, b"")
    if (identity.uid, identity.gid) != (os.getuid(), os.getgid()):
        for path in (base, *base.rglob("*")):
            os.chown(path, identity.uid, identity.gid, follow_symlinks=False)
    return base


def run_probe(
    role: str, base: Path, settings: RoleSettings, user: cli.RunUser | None
) -> dict[str, Any]:
    """Start the probe as the supervisor starts a role, and read its report."""
    document = launch.role_document(
        role, str(base / RUN), settings, run_user=(user.uid, user.gid) if user else None
    )
    hold, release = os.pipe()
    argv = [sys.executable, "-m", "letskencrypt.sandbox_check", "--probe", role, str(base)]
    with tempfile.TemporaryFile() as stderr:
        child = launch.start_role(
            role, document, argv=[*argv, str(hold)], stderr=stderr, pass_fds=(hold,)
        )
        os.close(hold)
        watchdog = threading.Timer(PROBE_TIMEOUT, child.kill)
        watchdog.start()
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            threads = thread_status(child.pid) if line else []
            outside = outside_view(child.pid, role, base) if line else {}
        finally:
            os.close(release)
            child.wait()
            watchdog.cancel()
        stderr.seek(0)
        log = stderr.read().decode(errors="replace")
    try:
        result: dict[str, Any] = json.loads(line)
    except ValueError:
        lines = log.strip().splitlines()
        why = lines[-1] if lines else f"exit status {child.returncode}"
        return {"role": role, "crashed": why[:300]}
    result["state"]["threads"] = threads
    result["state"].update(outside)
    if result["works"] == WORKS and outside.get("serves") != WORKS:
        result["works"] = outside.get("serves", "FAILED")
    result["stderr"] = log
    return result


def outside_view(pid: int, role: str, base: Path) -> dict[str, Any]:
    """What the probe cannot see of itself: its capability sets, its session
    and terminal, and whether its sockets still serve under the second stage."""
    view: dict[str, Any] = {}
    with contextlib.suppress(OSError):
        view["capabilities"] = process.capability_sets(pid)
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        view["session"] = int(fields[3]) != os.getsid(0) and int(fields[3]) == pid
        view["tty_nr"] = int(fields[4])
    links = []
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    view["stdio"] = links
    try:
        for edge in spec_of(role).serves:
            path = rpc.socket_path(str(base / RUN), edge)
            with grpc.insecure_channel(f"unix:{path}") as channel:
                lifecycle_pb2_grpc.LifecycleStub(channel).Stop(
                    lifecycle_pb2.StopRequest(), timeout=10, wait_for_ready=True
                )
        view["serves"] = WORKS
    except grpc.RpcError as error:
        view["serves"] = f"FAILED after the second stage: {error.code()}"
    return view


def is_terminal(link: str) -> bool:
    return link.startswith(("/dev/pts/", "/dev/tty", "/dev/console"))


def thread_status(pid: int) -> list[dict[str, str]]:
    """The `Seccomp` and `NoNewPrivs` lines of each of the process's threads."""
    threads = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/task/{task}/status").read_text()
                fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
                threads.append({key: fields.get(key, "").strip() for key in WATCHED_STATUS})
    return threads


def run_probes(user: cli.RunUser | None, roles: tuple[str, ...] = ROLES) -> dict[str, Any]:
    """Probe each role with its real profile; role -> the probe's report."""
    own = Identity(os.getuid(), os.getgid())
    top = Path(tempfile.mkdtemp(prefix="letskencrypt-sandbox-check-"))
    try:
        top.chmod(0o711)  # the probes that drop privileges must get to their own
        jobs = []
        absent = {}
        for role in roles:
            try:
                spec = spec_of(role)
            except ImportError:
                absent[role] = {"role": role, "absent": ABSENT}
                continue
            drops = user is not None and spec.keeps_root is None
            base = make_base(top, role, Identity(user.uid, user.gid) if drops and user else own)
            jobs.append((role, base, role_settings(base)[role], user))
        with ThreadPoolExecutor(max_workers=max(len(jobs), 1)) as pool:
            reports = {report["role"]: report for report in pool.map(lambda j: run_probe(*j), jobs)}
        return {role: reports.get(role) or absent[role] for role in roles}
    finally:
        shutil.rmtree(top, ignore_errors=True)


# --- judging and the table ---------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    text: str
    # Something applied did not hold, or the role's own paths broke.
    broken: bool = False
    # Not enforced, for whatever reason: fails --strict.
    weak: bool = False


def missing_layers(report: dict[str, Any]) -> set[str]:
    """The layers not in force for the probe's role."""
    missing = {sandbox.feature_of(gap) for gap in report["gaps"]}
    if LANDLOCK in missing:  # no Landlock at all: none of its refinements either
        missing |= LANDLOCK_LAYERS
    if not report["serves_only"]:
        missing.add(SECCOMP_SOCKETS)  # no second stage for a client (sandbox.seal)
    if SECCOMP_SOCKETS in missing or report["network"] in NETWORKED:
        missing.add(SEALED_CONNECT)
    if not report.get("supervised", True):
        # In a container the runtime's namespaces hold: the probe, inside
        # them, cannot set up anything outside them to try.
        missing.add(NAMESPACES)
    if NAMESPACES in missing or report["network"] in NETWORKED:
        missing.add(NETWORK_NAMESPACE)
    return missing


def judge(attempt: Attempt, report: dict[str, Any]) -> Cell:
    missing = missing_layers(report)
    applied = bool(attempt.layers - missing)
    after = report["after"][attempt.key]
    star = "*" if report["before"][attempt.key] != "ok" else ""
    if report["network"] in attempt.allowed_for:
        return Cell(ALLOWED if after == "ok" else f"denied ({after})")
    if after == "ok":
        if applied:
            return Cell(NOT_ENFORCED, broken=True, weak=True)
        if NAMESPACES in attempt.layers and not report.get("supervised", True):
            return Cell(BY_THE_RUNTIME)
        return Cell(NOT_AVAILABLE, weak=True)
    if after in {errno.errorcode[code] for code in attempt.errnos}:
        return Cell(ENFORCED + star) if applied else Cell(NOT_AVAILABLE + star, weak=True)
    return Cell(f"? {after}"[:24], weak=True)


BOUNDING_KEPT = "†"
LANDLOCK_LAYERS = frozenset(
    {LANDLOCK, sandbox.LANDLOCK_TRUNCATE, sandbox.LANDLOCK_IOCTL, LANDLOCK_NETWORK, LANDLOCK_SCOPES}
)


def judge_state(key: str, report: dict[str, Any]) -> Cell:
    state = report["state"]
    threads = state["threads"]
    if key == "capabilities":
        sets = state.get("capabilities", {})
        if sets and not any(sets.values()):
            return Cell(ENFORCED)
        # Only root can empty the bounding set; without execve it is of no use.
        held = bool(sets) and report["uid"] != 0 and not any(
            value for name, value in sets.items() if name != "CapBnd"
        )
        return Cell(ENFORCED + BOUNDING_KEPT) if held else Cell(NOT_ENFORCED, True, True)
    if key == "session":
        held = (
            state.get("session") is True
            and state.get("tty_nr") == 0
            and not any(map(is_terminal, state.get("stdio", [])))
        )
        return Cell(ENFORCED) if held else Cell(NOT_ENFORCED, broken=True, weak=True)
    if key == "dumpable":
        held = state["dumpable"] == 0
    elif key == "no_new_privs":
        held = state["no_new_privs"] == 1 and all(t["NoNewPrivs"] == "1" for t in threads)
    else:
        if SECCOMP in {sandbox.feature_of(gap) for gap in report["gaps"]}:
            return Cell(NOT_AVAILABLE, weak=True)
        held = bool(threads) and all(t["Seccomp"] == "2" for t in threads)
        if held:
            return Cell(f"{ENFORCED} ({len(threads)})")
    return Cell(ENFORCED) if held else Cell(NOT_ENFORCED, broken=True, weak=True)


STATE_ROWS = (
    ("dumpable", "not dumpable"),
    ("no_new_privs", "no_new_privs (every thread)"),
    ("seccomp", "seccomp filter (threads)"),
    ("capabilities", "no capabilities (5 sets)"),
    ("session", "own session, no terminal"),
)


def table(reports: dict[str, Any]) -> tuple[list[list[str]], bool, bool]:
    """Rows of cells, whether anything broke, whether anything is weak."""
    rows: list[list[str]] = [["", *reports]]
    broken = weak = False

    def add(label: str, cells: list[Cell]) -> None:
        nonlocal broken, weak
        rows.append([label, *(cell.text for cell in cells)])
        broken = broken or any(cell.broken for cell in cells)
        weak = weak or any(cell.weak for cell in cells)

    crashed = [report for report in reports.values() if "crashed" in report]
    if crashed:
        add("probe", [Cell("CRASHED", broken=True) if "crashed" in r else Cell("ran")
                      for r in reports.values()])  # fmt: skip
    usable = {
        role: report
        for role, report in reports.items()
        if "crashed" not in report and "absent" not in report
    }

    def cells(judge_one: Callable[[dict[str, Any]], Cell]) -> list[Cell]:
        return [judge_one(usable[role]) if role in usable else Cell("-") for role in reports]

    for attempt in ATTEMPTS:
        add(attempt.label, cells(lambda report, a=attempt: judge(a, report)))
    for key, label in STATE_ROWS:
        add(label, cells(lambda report, k=key: judge_state(k, report)))
    add(
        "own sockets and paths work",
        cells(lambda r: Cell(r["works"], broken=r["works"] != WORKS, weak=r["works"] != WORKS)),
    )
    return rows, broken, weak


def render(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def headline(reports: dict[str, Any], user: cli.RunUser | None) -> str:
    seccomp_state = "libseccomp " + ("usable" if sandbox_has_seccomp(reports) else "NOT usable")
    abi = sandbox.landlock_abi()
    landlock_state = f"Landlock ABI {abi}" if abi else "no Landlock"
    kernel = sandbox.kernel_landlock_abi()
    if abi != kernel:
        landlock_state += f" ({sandbox.ABI_VARIABLE}; the kernel has {kernel})"
    if user is None:
        who = f"as uid {os.getuid()}"
    else:
        keep = sorted(role for role in reports if "absent" not in reports[role]
                      and spec_of(role).keeps_root is not None)  # fmt: skip
        who = f"as root ({', '.join(keep)}) and uid {user.uid} (the others)"
    return f"Linux {platform.release()}, {landlock_state}, {seccomp_state}; probes {who}"


def sandbox_has_seccomp(reports: dict[str, Any]) -> bool:
    return any(
        "gaps" in report and SECCOMP not in {sandbox.feature_of(g) for g in report["gaps"]}
        for report in reports.values()
    )


def footnotes(reports: dict[str, Any], verbose: bool) -> list[str]:
    notes = []
    if any(
        "capabilities" in report.get("state", {}) and report["uid"] != 0
        and report["state"]["capabilities"].get("CapBnd")
        for report in reports.values()
    ):  # fmt: skip
        notes.append(
            f"{BOUNDING_KEPT} all but the bounding set empty: only root can empty that, and "
            "with no_new_privs and no execve it gives nothing"
        )
    notes.append(
        "* denied before the sandbox too (the probe's user lacks the privilege): shows little"
    )
    for role, report in reports.items():
        if "absent" in report:
            notes.append(f"{role}: {ABSENT}: not probed")
            continue
        if "crashed" in report:
            notes.append(f"{role}: probe crashed: {report['crashed']}")
            continue
        for gap in report["gaps"]:
            notes.append(f"{role}: not applied: {gap}")
        if verbose and report.get("stderr"):
            notes += [f"{role}: {line}" for line in report["stderr"].splitlines()]
    return notes


def check(strict: bool, user_name: str, verbose: bool = False) -> int:
    try:
        user = cli.run_user(user_name)
    except InputError as error:
        sys.stderr.write(f"letskencrypt: {error}\n")
        return EXIT_FAILED
    reports = run_probes(user)
    rows, broken, weak = table(reports)
    print(headline(reports, user))
    print()
    print(render(rows))
    print()
    for note in footnotes(reports, verbose):
        print(note)
    if broken:
        print("FAILED: a restriction that was applied did not hold, or a role's own paths broke")
        return EXIT_FAILED
    if weak and strict:
        print("FAILED (--strict): not everything is enforced")
        return EXIT_FAILED
    return 0


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--probe"] and len(arguments) == 4:
        probe_main(arguments[1], arguments[2], int(arguments[3]))
    parser = options.Parser(
        prog="letskencrypt sandbox-check",
        description="Try, for each role, what its sandbox forbids, and show what held.",
    )
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 unless every restriction is enforced")  # fmt: skip
    parser.add_argument("--user", default="nobody",
                        help="user the probes of the unprivileged roles run as when root "
                        "(default nobody)")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="show the probes' logs")
    args = parser.parse_args(arguments)
    sys.exit(check(args.strict, args.user, args.verbose))


if __name__ == "__main__":
    main()
