"""Native mode: start the eight roles as eight OS processes and see the run through.

The supervisor holds nothing: it makes a private socket directory with one
sub-directory per edge, forks each role from its own interpreter (launch.py:
the roles' code is imported once), then makes the edge tokens and writes
each role only its own settings and tokens (on the role's stdin), and
waits.  netproc's exit status is the run's; if any other role dies first,
every role is stopped and the run fails naming it.  No role outlives the
supervisor (each has a parent-death signal from birth, and the supervisor
kills what is left on the way out); chngproc's is SIGTERM, so that it
removes its files first.

One run at a time per certificate: fileproc holds the certificate
directory's lock for the whole run (see roles/fileproc.py).  The supervisor
takes that lock for a moment first, waiting as fileproc would: a second run
is then refused before any of its roles starts, and, not being sandboxed,
the supervisor can name the holder's pid.

SIGINT, SIGTERM and SIGHUP are remembered (interrupts.py) and handled here,
whenever they come: before any role starts, nothing starts; later, netproc
gets SIGTERM and decides (a daemon stops the others and exits 0, a one-shot
run dies of it), every other role is stopped, and one line says what became
of the certificate directory.
"""

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from letskencrypt import interrupts, launch, namespace
from letskencrypt.constants import EXIT_CODES, EXIT_FAILED
from letskencrypt.errors import InputError
from letskencrypt.filestore import CertDir, installed_set
from letskencrypt.fsutil import make_directories
from letskencrypt.relay import Relay
from letskencrypt.roles import ROLES, spec_of
from letskencrypt.rpc import EDGES, socket_path
from letskencrypt.settings import RoleSettings

# How long the roles get to stop by themselves once netproc is done.
STOP_GRACE = 5.0
CERT_DIR_MODE = 0o755
# sun_path holds 108 bytes, the last one a NUL.
MAX_SOCKET_PATH = 107
KILL_GRACE = 3.0
POLL_INTERVAL = 0.02
# Only what Python and the C library need; nothing of the caller's environment
# (proxies, credentials, PYTHONPATH) reaches a role.
# LETSKENCRYPT_LANDLOCK_ABI: see sandbox.ABI_VARIABLE.
@dataclass
class RunUser:
    uid: int
    gid: int


@dataclass
class Supervisor:
    settings: dict[str, RoleSettings]
    # Made before the roles start: revokeproc holds it open from the start,
    # so it must exist before fileproc gets to create it.
    cert_dir: str | None = None
    verbosity: int = 0
    run_user: RunUser | None = None
    run_dir: str = ""
    children: dict[int, str] = field(default_factory=dict)
    processes: dict[str, "subprocess.Popen[bytes] | launch.ForkedRole"] = field(
        default_factory=dict
    )
    # The stop signal that cut the run short, if one did.
    interrupted: signal.Signals | None = None
    # launch.prepare_to_fork has run.
    prepared: bool = False
    # The roles' stdout and stderr come here; see relay.py.
    relay: Relay = field(default_factory=Relay)
    # One secret per edge, given only to its two roles (see rpc.py), and
    # one by which each edge's server proves itself to its client: made by
    # make_tokens once every role is forked, so that no role inherits them.
    edge_tokens: dict[str, str] = field(default_factory=dict)
    server_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def driver(self) -> str:
        """The role whose exit status is the run's (netproc)."""
        (role,) = [role for role in ROLES if spec_of(role).drives]
        return role

    def run(self) -> int:
        """The run's exit status: netproc's, EXIT_FAILED, or for a run cut
        short by a stop signal, interrupts.exit_status of it."""
        with stop_signals_caught():
            before = installed_set(self.cert_dir)
            made = self.cert_dir is not None and not os.path.lexists(self.cert_dir)
            try:
                status = self.see_through()
                if status is None:
                    assert self.interrupted is not None
                    self.report(interruption(self.interrupted, self.cert_dir, before))
                    status = interrupts.exit_status(self.interrupted)
                return status
            finally:
                self.kill_all(signal.SIGKILL)
                self.reap(timeout=KILL_GRACE)
                if self.run_dir:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                if made and self.cert_dir is not None:
                    # Empty unless a certificate was installed: a failed run leaves no trace.
                    with contextlib.suppress(OSError):
                        os.rmdir(self.cert_dir)
                self.relay.close()

    def see_through(self) -> int | None:
        """Take the certificate directory's lock for a moment, start the
        roles and wait for the run's status; None if a stop signal cut it short."""
        if self.notice_interrupt():
            return None
        if self.cert_dir is not None:
            make_directories(self.cert_dir, CERT_DIR_MODE)
            with CertDir(self.cert_dir) as directory:
                if not directory.lock(give_up=self.notice_interrupt):
                    return None
        self.run_dir = self.make_run_dir()
        for role in ROLES:
            if self.notice_interrupt():
                break
            self.start(role)
        self.make_tokens()
        for role, process in self.processes.items():
            launch.hand_over(process, self.role_document(role))
        return self.wait()

    def make_tokens(self) -> None:
        self.edge_tokens = {name: secrets.token_urlsafe(32) for name in EDGES}
        self.server_tokens = {name: secrets.token_urlsafe(32) for name in EDGES}

    def notice_interrupt(self) -> bool:
        """Whether a stop signal has come (and remember the first in `interrupted`)."""
        if self.interrupted is None:
            self.interrupted = interrupts.received()
        return self.interrupted is not None

    def make_run_dir(self) -> str:
        return make_run_dir(self.run_user)


    def start(self, role: str) -> None:
        """Fork `role` (or spawn it: see role_argv); it waits for its document."""
        argv = self.role_argv(role)
        process: subprocess.Popen[bytes] | launch.ForkedRole
        if argv is None:
            if not self.prepared:
                launch.prepare_to_fork()
                self.prepared = True
            process = launch.fork_role(role)
        else:
            process = launch.spawn_role(role, argv=argv, dies_with_us=True)
        # Whatever it prints reaches the terminal only through the relay.
        assert process.stdout and process.stderr
        counts = role == self.driver
        self.relay.add(role, process.stdout, counts=counts)
        self.relay.add(role, process.stderr, counts=counts)
        self.processes[role] = process
        self.children[process.pid] = role

    def role_argv(self, role: str) -> list[str] | None:
        """None: `role` is forked from this process.  A command line (the
        compromised-role tests give one) starts that in its place."""
        return None

    def role_document(self, role: str) -> dict[str, Any]:
        return launch.role_document(
            role,
            self.run_dir,
            self.settings[role],
            verbosity=self.verbosity,
            run_user=(self.run_user.uid, self.run_user.gid) if self.run_user else None,
            supervisor_pid=os.getpid(),
            edge_tokens=self.edge_tokens,
            server_tokens=self.server_tokens,
        )

    def wait(self) -> int | None:
        """Wait for netproc; stop everything early if another role dies first.
        None: a stop signal cut the run short."""
        netproc_status: int | None = None
        stop_deadline: float | None = None
        signalled = False
        while self.children:
            if not signalled and self.notice_interrupt():
                signalled = True
                # Once netproc is done the run is over: the others are only hurried.
                only = None if netproc_status is not None else self.driver
                self.kill_all(signal.SIGTERM, only=only)
                stop_deadline = time.monotonic() + STOP_GRACE
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                if stop_deadline is not None and time.monotonic() > stop_deadline:
                    self.report(f"{', '.join(self.children.values())} did not stop; terminating")
                    self.kill_all(signal.SIGTERM)
                    self.reap(timeout=KILL_GRACE)
                    break
                self.relay.pump(POLL_INTERVAL)
                continue
            role = self.children.pop(pid, None)
            if role is None:
                continue
            # Its last words before ours about its death.
            self.relay.drain(role)
            code = os.waitstatus_to_exitcode(status)
            self.processes[role].returncode = code
            if role == self.driver:
                if signalled and code == -signal.SIGTERM:
                    self.abort()
                    return None
                if code not in EXIT_CODES:
                    self.report_death(role, code)
                    return self.abort()
                netproc_status = code
                stop_deadline = time.monotonic() + STOP_GRACE
            elif code != 0 and netproc_status is None:
                self.report_death(role, code)
                return self.abort()
            elif code != 0:
                self.report_death(role, code)
                netproc_status = EXIT_FAILED
        if netproc_status is not None:
            return netproc_status
        return None if self.interrupted is not None else EXIT_FAILED

    def abort(self) -> int:
        # netproc first, so it does not go on to report the consequences.
        driver = self.processes.get(self.driver)
        if driver is not None and driver.pid in self.children:
            os.kill(driver.pid, signal.SIGKILL)
        # The others get SIGTERM: chngproc removes its files on the way out.
        self.kill_all(signal.SIGTERM)
        self.reap(timeout=STOP_GRACE)
        return EXIT_FAILED

    def report_death(self, role: str, code: int) -> None:
        if code < 0:
            self.report(f"{role} was killed by signal {signal.Signals(-code).name}")
        elif self.verbosity >= 1 or code != 1:
            # Status 1 comes with the role's own one-line message.
            self.report(f"{role} exited with status {code}")

    def report(self, message: str) -> None:
        # Through the relay's queue: in order with the roles' lines, never blocking.
        self.relay.write(f"letskencrypt: {message}")

    def kill_all(self, signum: int, only: str | None = None) -> None:
        for pid, role in list(self.children.items()):
            if only is not None and role != only:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def reap(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.children and time.monotonic() < deadline:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                self.relay.pump(POLL_INTERVAL)
                continue
            role = self.children.pop(pid, None)
            if role is not None:
                self.relay.drain(role)
                self.processes[role].returncode = os.waitstatus_to_exitcode(status)
        if self.children:
            self.kill_all(signal.SIGKILL)
            for pid in list(self.children):
                os.waitpid(pid, 0)
                self.children.pop(pid)


def make_run_dir(
    run_user: RunUser | None, instances: int = 0, parts: Mapping[str, int] | None = None
) -> str:
    """A private directory for the run's sockets, one sub-directory per
    edge; `instances`: the certificates of a run (fleet.py) whose keyprocs
    each have a directory of their own for their sockets in the edges they
    serve; `parts`: for an edge, the processes of its role that each serve
    part of the certificates, each with a directory of its own (rpc.socket_path)."""
    parts = parts or {}
    run_dir = tempfile.mkdtemp(prefix="letskencrypt-")
    each_certificate = [edge for edge in EDGES if spec_of(EDGES[edge].server).per_certificate]
    sockets = [socket_path(run_dir, edge) for edge in EDGES]
    sockets += [
        socket_path(run_dir, edge, instance)
        for edge in each_certificate
        for instance in range(instances)
    ]
    sockets += [
        socket_path(run_dir, edge, part=part)
        for edge, count in parts.items()
        for part in range(count)
    ]
    longest = max(len(path.encode()) for path in sockets)
    if longest > MAX_SOCKET_PATH:
        os.rmdir(run_dir)
        raise InputError(
            f"socket paths under {run_dir} would be {longest} bytes, more than unix "
            f"sockets allow ({MAX_SOCKET_PATH}): set TMPDIR to a shorter directory"
        )
    group = run_user.gid if run_user else None
    if group is not None and namespace.available() is not None:
        # Without namespaces of their own (see namespace.py) the
        # unprivileged roles get in through the group.  With them, each
        # role mounts its own edges while still root, and the directory
        # stays closed to everyone else in that group.
        os.chown(run_dir, 0, group)
        os.chmod(run_dir, 0o710)  # noqa: S103 - group only, see above
    for path in (os.path.dirname(socket) for socket in sockets):
        os.mkdir(path, 0o700)
        if group is not None:
            os.chown(path, 0, group)
            # setgid: a socket made by a role that kept root still gets
            # the run group, so its unprivileged peer can connect.
            os.chmod(path, 0o2770)  # noqa: S103 - group only, see above
    return run_dir


@contextlib.contextmanager
def stop_signals_caught() -> Iterator[None]:
    """interrupts.catch() for the run (the command line has caught them
    already; a test's own run has not); the handlers before come back after."""
    previous = {signum: signal.getsignal(signum) for signum in interrupts.STOP_SIGNALS}
    interrupts.catch()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interruption(signum: signal.Signals, cert_dir: str | None, before: str | None) -> str:
    """The one line for a run that `signum` cut short: what became of the
    certificates (fileproc may have finished its work before it stopped)."""
    after = installed_set(cert_dir)
    what = f"interrupted by {signum.name}"
    if after == before:
        return f"{what}; no certificate was installed or removed"
    if after is None:
        return f"{what}, after the certificate files in {cert_dir} were removed"
    return f"{what}, after a new certificate was installed in {cert_dir}"
