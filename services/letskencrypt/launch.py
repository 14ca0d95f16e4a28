"""How a role process is started natively: by the supervisor, by
`sandbox-check` for its probes, and by the tests.

Either way a role has a clean environment, "/" for its directory, a session
of its own with pipes for its stdio (it never holds the operator's
terminal), and its configuration as one JSON document on its standard input
(nothing of it shows in `ps` or the environment), written by `hand_over`.

The supervisor forks its roles (`fork_role`), as the seed's supervisor does:
it has imported every role's code once, holds no secret when it forks, and
each child becomes its role.  `spawn_role` starts
`python -m letskencrypt.roles ROLE` (or a probe, or an attacker) instead.
"""

import fcntl
import gc
import importlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, NoReturn

from letskencrypt import interrupts, settings
from letskencrypt.constants import EXIT_FAILED, ROLE_ENVIRONMENT
from letskencrypt.linux import PR_SET_PDEATHSIG, prctl
from letskencrypt.roles import spec_of
from letskencrypt.rpc import EDGES

# gRPC's own log lines (a peer's GOAWAY when the run stops, a failed bind)
# are not for the operator: every failure reaches them as the role's one
# line.  GRPC_VERBOSITY=ERROR (or DEBUG) in our environment brings them back.
GRPC_QUIET = "NONE"
# Where this package is imported from: the one entry of a role's PYTHONPATH
# (a role mirrors and may read every entry of its sys.path, so the caller's
# PYTHONPATH is not passed on).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def role_environment() -> dict[str, str]:
    """The whole environment of a role process (and of sandbox-check's probes)."""
    environment = {k: os.environ[k] for k in ROLE_ENVIRONMENT if k in os.environ}
    environment["PYTHONPATH"] = PACKAGE_ROOT
    environment.setdefault("GRPC_VERBOSITY", GRPC_QUIET)
    return environment


def role_command(role: str) -> list[str]:
    return [sys.executable, "-m", "letskencrypt.roles", role]


def role_document(
    role: str,
    run_dir: str,
    role_settings: settings.RoleSettings,
    *,
    verbosity: int = 0,
    run_user: tuple[int, int] | None = None,
    supervisor_pid: int | None = None,
    edge_tokens: Mapping[str, str] | None = None,
    server_tokens: Mapping[str, str] | None = None,
    instance: int | None = None,
) -> dict[str, Any]:
    """What a role is told on its stdin: its own settings, and the tokens of
    its own edges only.  `run_user` (uid, gid): started as root, the role
    drops to it unless its spec says it keeps root."""
    spec = spec_of(role)
    if not isinstance(role_settings, spec.settings):
        raise TypeError(f"{role} takes {spec.settings.__name__}")

    def own(tokens: Mapping[str, str] | None) -> dict[str, str]:
        return {
            name: token
            for name, token in (tokens or {}).items()
            if role in (EDGES[name].client, EDGES[name].server)
        }

    document: dict[str, Any] = {
        "run_dir": run_dir,
        "verbosity": verbosity,
        "settings": settings.encode(role_settings),
        "edge_tokens": own(edge_tokens),
        "server_tokens": own(server_tokens),
    }
    if supervisor_pid is not None:
        document["supervisor_pid"] = supervisor_pid
    if instance is not None:
        # keyproc in a run of many certificates: its sockets are its own.
        document["instance"] = instance
    if run_user is not None and spec.keeps_root is None:
        document["uid"], document["gid"] = run_user
    return document


def dies_with(supervisor: int) -> Callable[[], None]:
    """A child's pre-exec step: get SIGKILL when `supervisor` dies, from birth.

    The role sets its parent-death signal again once it has confined itself
    (a change of credentials clears it), but it takes a second or two to get
    there, and its check for a dead parent then (`getppid() == 1`) misses an
    orphan adopted by a subreaper (systemd, tini -s, ...): a supervisor
    killed during that time would leave the roles to do the run on their own.
    """

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != supervisor:
            os._exit(EXIT_FAILED)

    return preexec


def start_role(
    role: str,
    document: Mapping[str, Any],
    *,
    argv: Sequence[str] | None = None,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    pass_fds: Sequence[int] = (),
    dies_with_us: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `role` (or `argv` in its place: a probe, an attacker) and hand it
    `document` (see role_document)."""
    process = spawn_role(
        role, argv=argv, stdout=stdout, stderr=stderr, pass_fds=pass_fds,
        dies_with_us=dies_with_us,
    )  # fmt: skip
    hand_over(process, document)
    return process


def spawn_role(
    role: str,
    *,
    argv: Sequence[str] | None = None,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    pass_fds: Sequence[int] = (),
    dies_with_us: bool = False,
) -> subprocess.Popen[bytes]:
    """`python -m letskencrypt.roles ROLE` (or `argv`), waiting for its document."""
    return subprocess.Popen(
        list(argv or role_command(role)),
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=stderr,
        env=role_environment(),
        close_fds=True,
        pass_fds=tuple(pass_fds),
        cwd="/",
        start_new_session=True,
        preexec_fn=dies_with(os.getpid()) if dies_with_us else None,
    )


@dataclass
class ForkedRole:
    """A role forked from this process: what the supervisor uses of a Popen."""

    pid: int
    stdin: IO[bytes] | None
    stdout: IO[bytes]
    stderr: IO[bytes]
    returncode: int | None = None


def hand_over(process: "subprocess.Popen[bytes] | ForkedRole", document: Mapping[str, Any]) -> None:
    """Write the role's configuration to its stdin and close it."""
    assert process.stdin is not None
    try:
        process.stdin.write(json.dumps(document).encode())
        process.stdin.close()
    except BrokenPipeError:
        # It died before reading: its status and stderr say why.
        pass
    process.stdin = None


# What the roles load only once they run (found by comparing sys.modules
# before and after each role's run): loaded here, they are loaded once.
LOADED_LATE = (
    "concurrent.futures.thread",
    "cryptography.hazmat.backends.openssl",
    "grpc._channel",
    "grpc._interceptor",
    "grpc._server",
    "grpc._simple_stubs",
    "grpc.experimental",
)


def prepare_to_fork() -> None:
    """Load every role's code now, once, and keep the garbage collector off
    it: the roles forked afterwards share those pages rather than copy them."""
    # process: every role's start; host: the roles of a run of many certificates.
    from letskencrypt import host, process, sandbox  # noqa: F401
    from letskencrypt.roles import specs

    specs()
    for module in LOADED_LATE:
        importlib.import_module(module)
    sandbox.import_pyseccomp()
    sandbox.library_paths()  # parses the interpreter's build settings, once
    gc.collect()
    gc.freeze()


def fork_role(role: str, *, dies_with_us: bool = True, shared: bool = False) -> ForkedRole:
    """`role` in a child of this process, waiting for its document (hand_over).

    The child inherits this process's memory: call it before anything secret
    exists here (the supervisor makes the edge tokens only once every role is
    forked, and reads no key).  It keeps none of our open files but its
    three pipes.  `shared`: the role serves every certificate of a run
    (host.py), its stdin stays open for each certificate's tokens."""
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    environment = role_environment()
    parent = os.getpid() if dies_with_us else None
    sys.stdout.flush()
    sys.stderr.flush()
    # Blocked from before the fork until the child has its own handlers: a
    # stop signal that comes meanwhile is not lost in the child's copy of our
    # handlers (see become_role); ours, we get when they are unblocked.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, interrupts.STOP_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            stdio = (stdin_read, stdout_write, stderr_write)
            become_role(role, parent, environment, stdio, mask, shared)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for fd in (stdin_read, stdout_write, stderr_write):
        os.close(fd)
    return ForkedRole(
        pid,
        os.fdopen(stdin_write, "wb"),
        os.fdopen(stdout_read, "rb", buffering=0),
        os.fdopen(stderr_read, "rb", buffering=0),
    )


# The lowest descriptor the child moves its pipes to before it makes them
# 0, 1 and 2, so that one of them being 0, 1 or 2 already does not matter.
HIGH_FD = 10


# Stop signals that, pending in a newly forked role, came to the terminal's
# process group before the role left it: the supervisor has them too.
GROUP_SIGNALS = (signal.SIGINT, signal.SIGHUP)


def become_role(
    role: str,
    parent: int | None,
    environment: Mapping[str, str],
    stdio: tuple[int, int, int],
    mask: Iterable[int] = (),
    shared: bool = False,
) -> NoReturn:
    """In the forked child: what `spawn_role`'s exec would have given it,
    then the role itself; never returns.

    It starts with the stop signals blocked (fork_role), and `mask` is the
    signal mask to restore once its handlers are its own.  One that came
    meanwhile: a SIGTERM is the supervisor stopping this role (caught by the
    supervisor's handler in our copy, it would be lost: the role would run
    on, waiting for peers that never start), and ends it now; a SIGINT or
    SIGHUP was the terminal's, to the process group, and is the supervisor's
    to act on."""
    try:
        # Out of the terminal's process group: Ctrl-C is the supervisor's to
        # act on, and a role ignores it (process.start does too).
        os.setsid()
        if parent is not None:
            dies_with(parent)()
        # The supervisor's handlers remember signals for it; a role dies of them.
        for signum in interrupts.STOP_SIGNALS:
            if signum == signal.SIGINT:
                signal.signal(signum, signal.SIG_IGN)
            elif callable(signal.getsignal(signum)):
                signal.signal(signum, signal.SIG_DFL)
        for signum in signal.sigpending() & set(GROUP_SIGNALS):
            signal.sigwait({signum})
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, HIGH_FD) for fd in stdio]
        for target, fd in enumerate(moved):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.chdir("/")
        os.environ.clear()
        os.environ.update(environment)
        if shared:
            from letskencrypt import host

            host.run_host(role)
        from letskencrypt import process

        process.run_role(role)
    finally:
        os._exit(EXIT_FAILED)

