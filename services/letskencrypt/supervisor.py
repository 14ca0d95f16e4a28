"""Native mode: start the eight roles as eight OS processes and see the run through.

The supervisor holds nothing: it makes a private socket directory with one
sub-directory per edge, starts each role with only the settings it needs
(written to the role's stdin), and waits.  netproc's exit status is the
run's; if any other role dies first, every role is stopped and the run
fails naming it.  No role outlives the supervisor (each has a parent-death
signal from birth, and the supervisor kills what is left on the way out);
chngproc's is SIGTERM, so that it removes its files first.

One run at a time per certificate: fileproc holds the certificate
directory's lock for the whole run (see roles/fileproc.py).  The supervisor
takes that lock for a moment first, waiting as fileproc would: a second run
is then refused before any of its roles starts, and, not being sandboxed,
the supervisor can name the holder's pid.
"""

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from letskencrypt import namespace
from letskencrypt.constants import EXIT_CODES, EXIT_FAILED
from letskencrypt.errors import InputError
from letskencrypt.filestore import CertDir
from letskencrypt.fsutil import make_directories
from letskencrypt.process import PR_SET_PDEATHSIG, prctl
from letskencrypt.relay import Relay
from letskencrypt.rpc import EDGES, ROLES, socket_path

# Roles that must keep root to write into root-owned directories; every
# other role drops to the run user when started as root.
KEEPS_ROOT = frozenset({"chngproc", "fileproc"})
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
PASSED_ENVIRONMENT = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "SSL_CERT_FILE",
    "LETSKENCRYPT_LANDLOCK_ABI",
    namespace.DISABLE_VARIABLE,
)
# Where this package is imported from: the one entry of a role's PYTHONPATH
# (a role mirrors and may read every entry of its sys.path, so the caller's
# PYTHONPATH is not passed on).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def role_environment() -> dict[str, str]:
    """The whole environment of a role process (and of sandbox-check's probes)."""
    environment = {k: os.environ[k] for k in PASSED_ENVIRONMENT if k in os.environ}
    environment["PYTHONPATH"] = PACKAGE_ROOT
    return environment


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


@dataclass
class RunUser:
    uid: int
    gid: int


@dataclass
class Supervisor:
    settings: dict[str, dict[str, Any]]
    verbosity: int = 0
    run_user: RunUser | None = None
    run_dir: str = ""
    children: dict[int, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    interrupted: bool = False
    # The roles' stdout and stderr come here; see relay.py.
    relay: Relay = field(default_factory=Relay)
    # One secret per edge, given only to its two roles (see rpc.py).
    edge_tokens: dict[str, str] = field(
        default_factory=lambda: {name: secrets.token_urlsafe(32) for name in EDGES}
    )
    # And one by which each edge's server proves itself to its client.
    server_tokens: dict[str, str] = field(
        default_factory=lambda: {name: secrets.token_urlsafe(32) for name in EDGES}
    )

    def run(self) -> int:
        # revokeproc holds the certificate directory open from the start, so it
        # must exist before fileproc gets to create it.
        cert_dir = self.settings["fileproc"]["cert_dir"]
        made = not os.path.lexists(cert_dir)
        make_directories(cert_dir, CERT_DIR_MODE)
        with CertDir(cert_dir) as directory:
            directory.lock()
        self.run_dir = self.make_run_dir()
        previous = {
            signum: signal.signal(signum, self.on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            for role in ROLES:
                self.start(role)
            return self.wait()
        finally:
            self.kill_all(signal.SIGKILL)
            self.reap(timeout=KILL_GRACE)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            if made:
                # Empty unless a certificate was installed: a failed run leaves no trace.
                with contextlib.suppress(OSError):
                    os.rmdir(cert_dir)
            self.relay.close()

    def make_run_dir(self) -> str:
        run_dir = tempfile.mkdtemp(prefix="letskencrypt-")
        longest = max(len(socket_path(run_dir, edge).encode()) for edge in EDGES)
        if longest > MAX_SOCKET_PATH:
            os.rmdir(run_dir)
            raise InputError(
                f"socket paths under {run_dir} would be {longest} bytes, more than unix "
                f"sockets allow ({MAX_SOCKET_PATH}): set TMPDIR to a shorter directory"
            )
        group = self.run_user.gid if self.run_user else None
        if group is not None and namespace.available() is not None:
            # Without namespaces of their own (see namespace.py) the
            # unprivileged roles get in through the group.  With them, each
            # role mounts its own edges while still root, and the directory
            # stays closed to everyone else in that group.
            os.chown(run_dir, 0, group)
            os.chmod(run_dir, 0o710)  # noqa: S103 - group only, see above
        for edge in EDGES:
            path = os.path.join(run_dir, edge)
            os.mkdir(path, 0o700)
            if group is not None:
                os.chown(path, 0, group)
                # setgid: a socket made by a role that kept root still gets
                # the run group, so its unprivileged peer can connect.
                os.chmod(path, 0o2770)  # noqa: S103 - group only, see above
        return run_dir

    def start(self, role: str) -> None:
        environment = role_environment()
        # Its own session, and pipes for stdio: a role never holds the operator's
        # terminal (no TIOCSTI into the shell, no Ctrl-C of its own), and
        # whatever it prints reaches the terminal only through the relay.
        process = subprocess.Popen(
            self.role_argv(role),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            close_fds=True,
            cwd="/",
            start_new_session=True,
            preexec_fn=dies_with(os.getpid()),
        )
        assert process.stdin and process.stdout and process.stderr
        process.stdin.write(json.dumps(self.role_document(role)).encode())
        process.stdin.close()
        self.relay.add(role, process.stdout)
        self.relay.add(role, process.stderr)
        self.processes[role] = process
        self.children[process.pid] = role

    def role_argv(self, role: str) -> list[str]:
        """The command line that starts `role` (the compromised-role tests swap one)."""
        return [sys.executable, "-m", f"letskencrypt.roles.{role}"]

    def role_document(self, role: str) -> dict[str, Any]:
        """What a role is told on its stdin: its own settings and edges only."""
        document: dict[str, Any] = {
            "run_dir": self.run_dir,
            "supervisor_pid": os.getpid(),
            "verbosity": self.verbosity,
            "settings": self.settings.get(role, {}),
            "edge_tokens": {
                name: token
                for name, token in self.edge_tokens.items()
                if role in (EDGES[name].client, EDGES[name].server)
            },
            "server_tokens": {
                name: token
                for name, token in self.server_tokens.items()
                if role in (EDGES[name].client, EDGES[name].server)
            },
        }
        if self.run_user is not None and role not in KEEPS_ROOT:
            document["uid"] = self.run_user.uid
            document["gid"] = self.run_user.gid
        return document

    def wait(self) -> int:
        """Wait for netproc; stop everything early if another role dies first."""
        netproc_status: int | None = None
        stop_deadline: float | None = None
        while self.children:
            if self.interrupted and netproc_status is None and stop_deadline is None:
                # netproc stops the others itself (a daemon exits 0); a
                # one-shot netproc dies of the signal and the run fails.
                self.interrupted = False
                self.kill_all(signal.SIGTERM, only="netproc")
                stop_deadline = time.monotonic() + STOP_GRACE
            elif self.interrupted:
                self.report("interrupted")
                return self.abort()
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
            if role == "netproc":
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
        return EXIT_FAILED if netproc_status is None else netproc_status

    def abort(self) -> int:
        # netproc first, so it does not go on to report the consequences.
        netproc = self.processes.get("netproc")
        if netproc is not None and netproc.pid in self.children:
            os.kill(netproc.pid, signal.SIGKILL)
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

    def on_signal(self, signum: int, _frame: object) -> None:
        self.interrupted = True
