"""Crash-consistency harness: SIGKILL a role (or the whole run) at a chosen step.

No hook in the product: the steps are recognised from the outside.

* "account" / "finalize": the request line pebble logs for POST /sign-me-up
  (newAccount) or POST /finalize-order/ (pebble's own endpoint names);
* "published": a token file appears in the challenge directory;
* "files": fileproc is inside CertDir.install.  That window is a few
  milliseconds, so fileproc is held there with strace: either strace kills
  it on entry to its n-th fsync/renameat/... (the syscall does not run), or
  strace delays that syscall for a few seconds while another target is
  killed.

For the first three steps the whole run (supervisor and the eight roles) is
frozen with SIGSTOP the moment the step is seen, the target is SIGKILLed, and
the others are continued: the kill lands exactly at the observed state, however
loaded the machine is.

Every lane has its own pebble (so its request log and challenge directory
are its own), its own keys and certificate directory, and its own TMPDIR (so
a run directory the supervisor could not remove is seen).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from letskencrypt.roles import ROLES

from tests.conftest import LETSKENCRYPT, Paths
from tests.pebble import REQUEST_LINE_RE, Pebble

SUPERVISOR = "supervisor"
TARGETS = (*ROLES, SUPERVISOR)
CERT_FILES = ("cert.pem", "chain.pem", "fullchain.pem")
SET_ID_RE = re.compile(r"(?:legacy-|kept-)?\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{4}")

RUN_TIMEOUT = 120.0
STEP_TIMEOUT = 90.0
# How long strace holds fileproc in a syscall while another target is killed.
PAUSE_MICROSECONDS = 2_500_000

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_CHILD_SUBREAPER = 36
IN_MODIFY = 0x002
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000


# --- processes ----------------------------------------------------------------


def set_subreaper(on: bool) -> None:
    """Orphans of our runs become our children, so a surviving role is seen
    (and reaped) instead of vanishing into init."""
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def stat_fields(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class Proc:
    pid: int
    start: int
    name: str

    def state(self) -> str | None:
        """The process's state letter, or None if it (this very process) is gone."""
        fields = stat_fields(self.pid)
        if fields is None or fields[1] != self.start:
            return None
        return fields[0]

    def alive(self) -> bool:
        state = self.state()
        return state is not None and state not in ("Z", "X")


def roles_of(supervisor: int) -> dict[str, Proc]:
    found = {}
    for pid in children(supervisor):
        fields = stat_fields(pid)
        name = comm(pid)
        if fields is not None and name is not None:
            found[name] = Proc(pid, fields[1], name)
    return found


def wait_for(predicate, timeout: float, what: str, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(interval)


def reap_adopted(procs: list[Proc], timeout: float) -> dict[str, str]:
    """Reap role processes adopted by us (their supervisor died). Returns
    name -> how it ended; kills and reports any role still running at the end."""
    ended: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending:
        for proc in list(pending):
            try:
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:
                # Not ours (reaped by someone else, or never adopted).
                ended[proc.name] = "gone" if not proc.alive() else "alive, not adopted"
                pending.remove(proc)
                continue
            if pid:
                code = os.waitstatus_to_exitcode(status)
                ended[proc.name] = (
                    f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
                )
                pending.remove(proc)
        if pending and time.monotonic() > deadline:
            for proc in pending:
                ended[proc.name] = "SURVIVED"
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(proc.pid, 0)
            break
        time.sleep(0.01)
    return ended


def processes_using(paths: list[Path]) -> list[str]:
    """Processes named like a role or the CLI that hold one of `paths` (an
    open file or directory, or in their command line): what a crash could
    have left running, found without knowing its pid."""
    prefixes = tuple(str(path) for path in paths)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        name = comm(int(entry.name))
        if name not in (*ROLES, "letskencrypt"):
            continue
        held = []
        with contextlib.suppress(OSError):
            held.append(" ".join((entry / "cmdline").read_text().split("\0")))
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    held.append(os.readlink(fd))
        state = stat_fields(int(entry.name))
        if state is not None and state[0] != "Z" and any(p in h for h in held for p in prefixes):
            found.append(f"{name}[{entry.name}]")
    return found


class Inotify:
    """Wake up as soon as a watched file or directory changes."""

    def __init__(self) -> None:
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def add(self, path: Path, mask: int) -> None:
        if _libc.inotify_add_watch(self.fd, str(path).encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")

    def wait(self, timeout: float) -> None:
        readable, _, _ = select.select([self.fd], [], [], timeout)
        if readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.fd, 65536):
                    pass

    def close(self) -> None:
        os.close(self.fd)


# --- the certificate directory -----------------------------------------------


@dataclass(frozen=True)
class Trio:
    live: str | None
    cert: bytes
    chain: bytes
    fullchain: bytes

    def same_bytes(self, other: Trio) -> bool:
        return (self.cert, self.chain, self.fullchain) == (
            other.cert,
            other.chain,
            other.fullchain,
        )

    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert).serial_number


def read_trio(cert_dir: Path) -> Trio:
    """The set a reader sees: the three stable names, through their symlinks."""
    live = None
    with contextlib.suppress(OSError):
        live = os.readlink(cert_dir / ".live").removeprefix(".sets/")
    return Trio(
        live,
        *((cert_dir / name).read_bytes() for name in CERT_FILES),
    )


def trio_problems(cert_dir: Path, trio: Trio, domain_key: bytes, names: list[str]) -> list[str]:
    """Everything that makes `trio` not one complete, consistent set for our key."""
    problems = []
    for name in CERT_FILES:
        link = cert_dir / name
        if os.readlink(link) != f".live/{name}":
            problems.append(f"{name} is not the symlink .live/{name}")
        if stat.S_IMODE(link.stat().st_mode) != 0o444:
            problems.append(f"{name} is not mode 0444")
    try:
        leaf = x509.load_pem_x509_certificates(trio.cert)
        chain = x509.load_pem_x509_certificates(trio.chain)
        full = x509.load_pem_x509_certificates(trio.fullchain)
    except ValueError as error:
        return [*problems, f"a file does not parse (truncated?): {error}"]
    if len(leaf) != 1:
        problems.append(f"cert.pem holds {len(leaf)} certificates")
    if not chain:
        problems.append("chain.pem is empty")
    separator = b"" if trio.cert.endswith(b"\n") else b"\n"
    if trio.fullchain != trio.cert + separator + trio.chain:
        problems.append("fullchain.pem is not cert.pem + chain.pem (a mix of two sets?)")
    if full != [*leaf, *chain]:
        problems.append("fullchain.pem's certificates differ from cert.pem and chain.pem")
    if leaf and chain:
        try:
            leaf[0].verify_directly_issued_by(chain[0])
        except Exception as error:
            problems.append(f"cert.pem is not issued by chain.pem's first certificate: {error}")
    if leaf:
        key = load_pem_private_key(domain_key, None)
        if leaf[0].public_key() != key.public_key():
            problems.append("cert.pem is not for the domain key")
        san = leaf[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if sorted(san.get_values_for_type(x509.DNSName)) != sorted(names):
            problems.append("cert.pem is for other names")
    return problems


@dataclass
class DirState:
    live: str | None
    generation: str | None
    temp_entries: list[str]
    incomplete_sets: list[str]
    other_sets: list[str]

    def leftovers(self) -> list[str]:
        return [*self.temp_entries, *self.incomplete_sets]


KNOWN_TOP = {*CERT_FILES, ".live", ".sets", ".generation"}


def dir_state(cert_dir: Path) -> DirState:
    live = None
    with contextlib.suppress(OSError):
        live = os.readlink(cert_dir / ".live").removeprefix(".sets/")
    generation = None
    with contextlib.suppress(OSError):
        generation = (cert_dir / ".generation").read_text().strip()
    temp = sorted(name for name in os.listdir(cert_dir) if name not in KNOWN_TOP)
    incomplete, others = [], []
    sets = cert_dir / ".sets"
    for name in sorted(os.listdir(sets)) if sets.is_dir() else []:
        if not SET_ID_RE.fullmatch(name):
            temp.append(f".sets/{name}")
        elif {p.name for p in (sets / name).iterdir() if p.is_file()} != set(CERT_FILES):
            incomplete.append(f".sets/{name}")
        elif name != live:
            others.append(f".sets/{name}")
    return DirState(live, generation, temp, incomplete, others)


# --- one client, its pebble and its files ------------------------------------


@dataclass
class Result:
    code: int
    stderr: str


class Lane:
    """A pebble of its own and a client state that crashes and recovers in turn."""

    def __init__(self, index: int, root: Path) -> None:
        self.index = index
        self.pebble = Pebble(env={"PEBBLE_AUTHZREUSE": "0"})
        self.pebble.start()
        os.chmod(self.pebble.challenge_dir, 0o755)
        root.chmod(0o755)
        self.paths = Paths(base=root, challenge_dir=self.pebble.challenge_dir)
        # The supervisor's TMPDIR, where it makes its run directory: in the
        # system's temporary directory, as the roles (run as nobody when we
        # are root) must reach their sockets in it, which pytest's 0700
        # base directory would prevent.
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"letskencrypt-crash{index}-"))
        self.tmpdir.chmod(0o755)
        self.names = [f"crash{index}.example.org", f"www.crash{index}.example.org"]
        self.log_offset = 0

    def close(self) -> None:
        self.pebble.stop()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def argv(self, *args: str) -> list[str]:
        p = self.paths
        return [
            LETSKENCRYPT,
            "--server", self.pebble.directory_url,
            "--ca-bundle", self.pebble.ca_bundle,
            "--trust-anchors", self.pebble.trust_anchors,
            "-C", str(p.challenge_dir),
            "-c", str(p.cert_dir),
            "-f", str(p.account_key),
            "-k", str(p.domain_key),
            *args,
            *self.names,
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return {**os.environ, "TMPDIR": str(self.tmpdir)}

    def run(self, *args: str) -> Result:
        done = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=RUN_TIMEOUT,
            check=False,
        )
        return Result(done.returncode, done.stderr)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
        )

    def keys(self) -> dict[str, bytes]:
        return {
            "account key": self.paths.account_key.read_bytes(),
            "domain key": self.paths.domain_key.read_bytes(),
        }

    def trio(self) -> Trio:
        return read_trio(self.paths.cert_dir)

    def problems(self, trio: Trio) -> list[str]:
        return trio_problems(
            self.paths.cert_dir, trio, self.paths.domain_key.read_bytes(), self.names
        )

    def challenge_files(self) -> set[str]:
        return set(os.listdir(self.paths.challenge_dir))

    def run_dirs(self) -> list[str]:
        return sorted(os.listdir(self.tmpdir))

    def new_requests(self) -> list[tuple[str, str]]:
        """Requests pebble logged since the last call to mark()."""
        assert self.pebble.log_path is not None
        with open(self.pebble.log_path, "rb") as log:
            log.seek(self.log_offset)
            text = log.read().decode(errors="replace")
        return [(m[1], m[2]) for m in REQUEST_LINE_RE.finditer(text)]

    def mark(self) -> None:
        assert self.pebble.log_path is not None
        self.log_offset = self.pebble.log_path.stat().st_size


# --- kill points ---------------------------------------------------------------


@dataclass(frozen=True)
class Strace:
    """What strace does to fileproc: `action` on entry to the `when`-th `syscall`."""

    syscall: str
    when: int
    action: str  # "kill" or "pause"
    # For "pause": a test on the certificate directory that is true once
    # fileproc is held in that syscall.
    paused: str = ""

    def args(self) -> list[str]:
        how = "signal=SIGKILL" if self.action == "kill" else f"delay_enter={PAUSE_MICROSECONDS}"
        return [f"inject={self.syscall}:{how}:when={self.when}"]

    def label(self) -> str:
        return f"{self.action} at {self.syscall}#{self.when}"


@dataclass(frozen=True)
class KillPoint:
    target: str
    step: str  # account, published, finalize, files
    strace: Strace | None = None
    # For fileproc killed by strace: which set must be visible afterwards.
    expect: str | None = None
    note: str = ""

    @property
    def id(self) -> str:
        extra = f"-{self.strace.syscall}{self.strace.when}" if self.strace else ""
        return f"{self.step}-{self.target}{extra}"


@dataclass
class Outcome:
    point: KillPoint
    lane: int
    attempts: int = 1
    observed: str = ""
    code: int | None = None
    visible: str = ""  # old / new / BROKEN
    roles_after_supervisor: dict[str, str] = field(default_factory=dict)
    leftovers_after_kill: list[str] = field(default_factory=list)
    challenge_left: list[str] = field(default_factory=list)
    run_dir_left: list[str] = field(default_factory=list)
    recovery: str = ""
    orphan_sets: list[str] = field(default_factory=list)
    generation_stale_after_kill: bool = False
    generation_stale_after_exit2: bool | None = None
    violations: list[str] = field(default_factory=list)
    stderr: str = ""
    seconds: float = 0.0
    # From the SIGKILL to the end of the last process of the run.
    lasted: float = 0.0

    def line(self) -> str:
        parts = [
            f"{self.point.id:<34}",
            f"lane {self.lane}",
            f"exit {self.code}",
            f"visible={self.visible}",
        ]
        if self.observed:
            parts.append(f"at [{self.observed}]")
        if self.leftovers_after_kill:
            parts.append(f"left {len(self.leftovers_after_kill)} temp entries")
        if self.challenge_left:
            parts.append(f"token files left: {len(self.challenge_left)}")
        if self.run_dir_left:
            parts.append("run dir left")
        if self.orphan_sets:
            parts.append(f"orphan sets: {len(self.orphan_sets)}")
        if self.generation_stale_after_kill:
            parts.append(
                "STALE .generation"
                + (" (still after exit 2)" if self.generation_stale_after_exit2 else "")
            )
        if self.roles_after_supervisor:
            ends = sorted(set(self.roles_after_supervisor.values()))
            parts.append(f"roles ended within {self.lasted:.1f}s: {', '.join(ends)}")
        parts.append(f"recovery {self.recovery}")
        if self.attempts > 1:
            parts.append(f"attempts {self.attempts}")
        parts.append(f"{self.seconds:.1f}s")
        if self.violations:
            parts.append("VIOLATIONS: " + "; ".join(self.violations))
        return "  ".join(parts)


class Missed(Exception):
    """The run got past the step before it could be caught (timing); retried."""


# The supervisor polls for a dead role every 20 ms.
SUPERVISOR_HEAD_START = 0.3


def _freeze(procs: list[Proc]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGSTOP)
    wait_for(
        lambda: all(p.state() in (None, "T", "t", "Z") for p in procs),
        10,
        "the run did not stop on SIGSTOP",
        interval=0.001,
    )


def _thaw(procs: list[Proc]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)


def _summary(requests: list[tuple[str, str]]) -> str:
    return " ".join(endpoint.strip("/").split("/")[0] for _, endpoint in requests)


class Crash:
    """One killed run on a lane, then the checks and the recovery run."""

    def __init__(self, lane: Lane, point: KillPoint) -> None:
        self.lane = lane
        self.point = point
        self.outcome = Outcome(point, lane.index)
        self.killed_at = 0.0

    # -- the killed run --

    def kill_run(self, old: Trio) -> tuple[Result, list[Proc], Proc]:
        lane, point = self.lane, self.point
        lane.mark()
        tokens_before = lane.challenge_files()
        client = lane.start("-F", "-v")
        supervisor = Proc(client.pid, stat_fields(client.pid)[1], SUPERVISOR)
        watch = Inotify()
        watch.add(lane.paths.challenge_dir, IN_MOVED_TO | IN_CREATE)
        assert lane.pebble.log_path is not None
        watch.add(lane.pebble.log_path, IN_MODIFY)
        strace: subprocess.Popen[str] | None = None
        roles: dict[str, Proc] = {}
        all_roles: list[Proc] = []
        missed: Missed | None = None
        try:
            deadline = time.monotonic() + STEP_TIMEOUT
            while True:
                if client.poll() is not None:
                    if point.strace is not None and point.strace.action == "kill":
                        break  # strace killed fileproc: the run is over
                    missed = Missed(f"the run ended (exit {client.returncode}) before the step")
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{point.id}: step not reached")
                if set(roles) != set(ROLES):
                    roles = {n: p for n, p in roles_of(client.pid).items() if n in ROLES}
                    all_roles = list(roles.values())
                if point.strace is not None and strace is None and "fileproc" in roles:
                    strace = self.attach(roles["fileproc"])
                if self.reached(old, tokens_before, strace):
                    self.kill_now(old, tokens_before, supervisor, roles)
                    break
                # inotify wakes us for pebble's log and the challenge directory.
                watch.wait(0.02)
        except Missed as error:
            missed = error
        except BaseException:
            # A broken harness: leave nothing running.
            with contextlib.suppress(ProcessLookupError):
                client.kill()
            client.communicate(timeout=RUN_TIMEOUT)
            for proc in all_roles:
                if proc.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
            raise
        finally:
            watch.close()
        # Missed or not, the run goes on undisturbed to its end.
        _, stderr = client.communicate(timeout=RUN_TIMEOUT)
        # stderr ends once every role has exited (they all write to it).
        self.outcome.lasted = time.monotonic() - self.killed_at if self.killed_at else 0.0
        if strace is not None:
            try:
                strace.wait(15)
            except subprocess.TimeoutExpired:
                self.outcome.violations.append("strace still running (fileproc survived?)")
                strace.kill()
                strace.wait()
            if point.strace is not None and point.strace.action == "kill":
                syscall = self.killed_syscall()
                if syscall is None and missed is None:
                    # Attached too late: the install went through untouched.
                    missed = Missed(f"strace did not kill fileproc (exit {client.returncode})")
                self.outcome.observed = syscall or ""
        elif point.strace is not None and missed is None:
            missed = Missed("the run ended before strace could attach to fileproc")
        if missed is not None:
            self.settle(all_roles)
            raise missed
        return Result(client.returncode, stderr), all_roles, supervisor

    def kill_now(
        self, old: Trio, tokens_before: set[str], supervisor: Proc, roles: dict[str, Proc]
    ) -> None:
        point = self.point
        victim = supervisor if point.target == SUPERVISOR else roles[point.target]
        if point.step == "files":
            # fileproc is held in a syscall by strace; the others wait for it.
            time.sleep(0.1)
            self.outcome.observed = self.describe_files(old)
            os.kill(victim.pid, signal.SIGKILL)
            self.killed_at = time.monotonic()
            return
        roles = list(roles_of(supervisor.pid).values())
        _freeze([supervisor, *roles])
        try:
            self.outcome.observed = self.describe(old, tokens_before)
            self.check_precision(old, tokens_before)
            os.kill(victim.pid, signal.SIGKILL)
            self.killed_at = time.monotonic()
            wait_for(lambda: not victim.alive(), 10, f"{point.target} did not die")
        finally:
            # The supervisor first, and a moment to see the death while the
            # roles are still stopped: what is tested is how the run reacts to
            # a role dying at this step, not whether the supervisor or netproc
            # gets the CPU first on a loaded machine.
            _thaw([supervisor])
            if victim is not supervisor:
                time.sleep(SUPERVISOR_HEAD_START)
            _thaw(roles)

    def killed_syscall(self) -> str | None:
        """The syscall strace killed fileproc in, from its log."""
        log = self.lane.paths.base / f"strace-{self.point.id}.log"
        lines = log.read_text().splitlines() if log.exists() else []
        # The thread in the injected syscall: its call never returned ("= ?").
        killed = [line for line in lines if line.rstrip().endswith("= ?")]
        if not killed:
            return None
        tid = killed[0].split()[0]
        calls = [
            line.split(None, 1)[1].replace(" <unfinished ...>", ")").split(" = ")[0]
            for line in lines
            if line.startswith(tid + " ") and "(" in line and "resumed>" not in line
        ]
        last = calls[-1] if calls else "?"
        return "SIGKILL on entry to " + re.sub(r"\d{8}T[\d.]+Z-[0-9a-f]{4}", "<id>", last.strip())

    def attach(self, fileproc: Proc) -> subprocess.Popen[str]:
        assert self.point.strace is not None
        log = self.lane.paths.base / f"strace-{self.point.id}.log"
        strace = subprocess.Popen(
            [
                "strace", "-f", "-p", str(fileproc.pid), "-o", str(log),
                "-e", "trace=fsync,renameat,renameat2,unlinkat,symlinkat,mkdirat",
                "-e", *self.point.strace.args(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert strace.stderr is not None
        line = strace.stderr.readline()
        if "attached" not in line:
            strace.wait(5)
            raise RuntimeError(f"strace could not attach to fileproc: {line.strip()}")
        # Drain the rest, so strace never blocks on a full pipe.
        threading.Thread(target=strace.stderr.read, daemon=True).start()
        return strace

    def reached(self, old: Trio, tokens_before: set[str], strace: object) -> bool:
        step = self.point.step
        lane = self.lane
        if step == "account":
            return ("POST", "/sign-me-up") in lane.new_requests()
        if step == "finalize":
            return ("POST", "/finalize-order/") in lane.new_requests()
        if step == "published":
            return any(not n.startswith(".") for n in lane.challenge_files() - tokens_before)
        assert step == "files" and self.point.strace is not None
        if strace is None:
            return False
        if self.point.strace.action == "kill":
            # strace does the killing: wait for the run to end.
            return False
        return self.paused(old)

    def paused(self, old: Trio) -> bool:
        assert self.point.strace is not None
        cert_dir = self.lane.paths.cert_dir
        sets = cert_dir / ".sets"
        test = self.point.strace.paused
        if test == "temp file in new set":
            return any(
                entry.name.startswith(".tmp-cert.pem-")
                for temp in sets.glob(".tmp-*")
                for entry in temp.iterdir()
            )
        if test == "temp .live link":
            return any(cert_dir.glob(".live.tmp-*"))
        if test == "old set half removed":
            old_set = sets / str(old.live)
            return old_set.is_dir() and len(list(old_set.iterdir())) < len(CERT_FILES)
        raise AssertionError(test)

    def describe(self, old: Trio, tokens_before: set[str]) -> str:
        lane = self.lane
        tokens = [n for n in lane.challenge_files() - tokens_before if not n.startswith(".")]
        state = dir_state(lane.paths.cert_dir)
        parts = [_summary(lane.new_requests())]
        if tokens:
            parts.append(f"{len(tokens)} token published")
        if state.live != old.live:
            parts.append("set switched")
        elif state.leftovers():
            parts.append("install begun")
        return "; ".join(parts)

    def describe_files(self, old: Trio) -> str:
        state = dir_state(self.lane.paths.cert_dir)
        leftovers = ", ".join(
            re.sub(r"\d{8}T[\d.]+Z-[0-9a-f]{4}|[0-9a-f]{8}$", "*", e) for e in state.leftovers()
        )
        live = "old" if state.live == old.live else "new"
        return f"paused; .live {live}; {leftovers or 'no temp entries'}"

    def check_precision(self, old: Trio, tokens_before: set[str]) -> None:
        """The freeze must land in the intended step, not after it; else retry."""
        step = self.point.step
        requests = self.lane.new_requests()
        tokens = [n for n in self.lane.challenge_files() - tokens_before if not n.startswith(".")]
        state = dir_state(self.lane.paths.cert_dir)
        installing = state.live != old.live or bool(state.leftovers())
        late = {
            "account": ("POST", "/chalZ/") in requests or bool(tokens),
            "published": ("POST", "/finalize-order/") in requests,
            "finalize": installing,
        }[step]
        if late:
            raise Missed(f"frozen too late: {self.describe(old, tokens_before)}")

    # -- the whole kill point --

    def execute(self, max_attempts: int = 3) -> Outcome:
        started = time.monotonic()
        outcome = self.outcome
        lane, point = self.lane, self.point
        keys = lane.keys()
        old = lane.trio()
        self.run_dirs_before = set(lane.run_dirs())
        self.orphans_before = set(dir_state(lane.paths.cert_dir).other_sets)
        before = dir_state(lane.paths.cert_dir)
        assert not before.leftovers(), f"lane {lane.index} not clean before {point.id}: {before}"
        for attempt in range(1, max_attempts + 1):
            outcome.attempts = attempt
            tokens_before = lane.challenge_files()
            try:
                result, roles, supervisor = self.kill_run(old)
                break
            except Missed as missed:
                outcome.observed = f"missed: {missed}"
                if attempt == max_attempts:
                    outcome.violations.append(f"harness: step never caught ({missed})")
                    outcome.seconds = time.monotonic() - started
                    return outcome
                # The run went on undisturbed to its end: what it left is the new old.
                old = lane.trio()
                assert not lane.problems(old) and not dir_state(lane.paths.cert_dir).leftovers()
        outcome.code = result.code
        outcome.stderr = result.stderr
        self.after_kill(old, keys, result, roles, supervisor, tokens_before)
        self.recover(keys)
        outcome.seconds = time.monotonic() - started
        return outcome

    def settle(self, roles: list[Proc]) -> None:
        for proc in roles:
            wait_for(lambda p=proc: not p.alive(), 10, f"{proc.name} left running")

    def after_kill(
        self,
        old: Trio,
        keys: dict[str, bytes],
        result: Result,
        roles: list[Proc],
        supervisor: Proc,
        tokens_before: set[str],
    ) -> None:
        lane, point, outcome = self.lane, self.point, self.outcome
        v = outcome.violations
        # Status: a killed supervisor is the run's status; else 1, or 0 if the
        # kill came after the work was done.
        if point.target == SUPERVISOR:
            if result.code != -signal.SIGKILL:
                v.append(f"supervisor's status {result.code}, not killed")
            outcome.roles_after_supervisor = reap_adopted(
                [r for r in roles if r.alive() or r.state() == "Z"], timeout=10
            )
            # Roles already reaped before we looked count as dead too.
            for proc in roles:
                outcome.roles_after_supervisor.setdefault(proc.name, "gone")
            survivors = [n for n, e in outcome.roles_after_supervisor.items() if e == "SURVIVED"]
            if survivors:
                v.append(f"roles outlived the supervisor: {survivors}")
            # (In the files step strace holds fileproc for a while.)
            limit = 5 + (PAUSE_MICROSECONDS / 1e6 if point.step == "files" else 0)
            if outcome.lasted > limit:
                v.append(f"the roles outlived the supervisor by {outcome.lasted:.1f}s")
        else:
            if result.code not in (0, 1):
                v.append(f"exit status {result.code}")
            if point.target not in result.stderr:
                v.append(f"stderr does not name {point.target}")
            try:
                self.settle(roles)
            except TimeoutError as error:
                v.append(str(error))
        left = processes_using([lane.paths.base, lane.paths.challenge_dir, lane.tmpdir])
        if left:
            v.append(f"processes of the killed run still running: {left}")
        if lane.keys() != keys:
            v.append("a key changed")
        # The certificate set: the whole old one or a whole new one.
        try:
            trio = lane.trio()
            problems = lane.problems(trio)
        except OSError as error:
            trio, problems = None, [f"cannot read the set: {error}"]
        if problems or trio is None:
            outcome.visible = "BROKEN"
            v.extend(problems)
        elif trio.same_bytes(old):
            outcome.visible = "old"
        elif trio.serial() != old.serial():
            outcome.visible = "new"
        else:
            outcome.visible = "BROKEN"
            v.append("same serial, other bytes")
        if point.expect and outcome.visible != point.expect:
            v.append(f"expected the {point.expect} set to be visible, found {outcome.visible}")
        if outcome.visible == "old" and result.code == 0:
            v.append("exit 0 but the old set is still there")
        state = dir_state(lane.paths.cert_dir)
        outcome.leftovers_after_kill = state.leftovers()
        outcome.generation_stale_after_kill = state.generation != state.live
        outcome.challenge_left = sorted(lane.challenge_files() - tokens_before)
        if outcome.challenge_left and point.target != "chngproc":
            # Only a chngproc killed outright cannot withdraw what it published.
            v.append(f"token files left although chngproc was not killed: {outcome.challenge_left}")
        outcome.run_dir_left = sorted(set(lane.run_dirs()) - self.run_dirs_before)
        if outcome.run_dir_left and point.target != SUPERVISOR:
            v.append(f"the supervisor left its run directory: {outcome.run_dir_left}")

    def recover(self, keys: dict[str, bytes]) -> None:
        """The next run must work, clean up after the crash, and install a whole set."""
        lane, outcome = self.lane, self.outcome
        v = outcome.violations
        if outcome.generation_stale_after_kill:
            # What a web server watching .generation would see after a plain
            # (cron) run that finds the certificate current.
            plain = lane.run()
            state = dir_state(lane.paths.cert_dir)
            outcome.generation_stale_after_exit2 = state.generation != state.live
            if plain.code not in (0, 2):
                v.append(f"the next run (no -F) failed: {plain.code}: {plain.stderr.strip()}")
        before = lane.trio()
        tokens_before_recovery = lane.challenge_files()
        again = lane.run("-F")
        outcome.recovery = f"exit {again.code}"
        if again.code != 0:
            v.append(f"the next run failed with {again.code}: {again.stderr.strip()}")
            return
        trio = lane.trio()
        problems = lane.problems(trio)
        if problems:
            v.extend(f"after recovery: {p}" for p in problems)
        if trio.serial() == before.serial():
            v.append("the next run exited 0 but installed nothing new")
        if lane.keys() != keys:
            v.append("a key changed in the next run")
        state = dir_state(lane.paths.cert_dir)
        if state.leftovers():
            v.append(f"leftovers after the next run: {state.leftovers()}")
        if state.generation != state.live:
            v.append(".generation does not name the live set after the next run")
        outcome.orphan_sets = sorted(set(state.other_sets) - self.orphans_before)
        new_tokens = sorted(
            n for n in lane.challenge_files() - tokens_before_recovery if not n.startswith(".")
        )
        if new_tokens:
            v.append(f"the next run left token files: {new_tokens}")
        left = processes_using([lane.paths.base, lane.paths.challenge_dir, lane.tmpdir])
        if left:
            v.append(f"processes of this lane still running: {left}")
        stray = set(lane.run_dirs()) - self.run_dirs_before - set(outcome.run_dir_left)
        if stray:
            v.append(f"the next run left its run directory: {sorted(stray)}")


def new_root(parent: Path, index: int) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"lane{index}-", dir=parent))
