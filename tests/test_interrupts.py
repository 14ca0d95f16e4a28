"""Ctrl-C and SIGTERM at any instant of a run (issue 8): the real command
against pebble, stopped at 20 points from start-up to the installed
certificate.  Whenever it comes, the run ends by that signal (a shell shows
130 or 143) with at most one line, no traceback, no process, run directory,
challenge file or temporary file left behind, and the certificate directory
either as it was or holding the complete new set, as the line says.

Instants are counted from the moment the command's own code is running
(its handlers show in /proc/<pid>/status): before that, Python itself is
starting, and a SIGINT is Python's (see README, "Exit status"), unless the
command was started with the stop signals blocked, which the last test
does from the instant of exec on.
"""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.conftest import LETSKENCRYPT
from tests.pebble import Pebble

NAME = "interrupt.example.org"
# Right after the command's own code starts (seconds), then spread to the end.
EARLY_POINTS = (0.0, 0.01, 0.03, 0.06, 0.1)
POINTS = 20
RUN_TIMEOUT = 60
# For env --block-signal (GNU coreutils 8.31 or later).
BLOCKED = "INT,TERM,HUP"
NOTHING = "no certificate was installed or removed"
LINE = re.compile(
    rf"letskencrypt: interrupted by (SIG[A-Z]+)"
    rf"(; {NOTHING}|, after a new certificate was installed in .+)"
)


def test_a_signal_the_caller_ignores_stays_ignored() -> None:
    """`nohup letskencrypt ...`: a hangup must not stop the run."""
    code = (
        "import os, signal\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "from letskencrypt import interrupts\n"
        "interrupts.catch()\n"
        "os.kill(os.getpid(), signal.SIGHUP)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print(interrupts.received().name)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)  # fmt: skip
    assert result.stdout == "SIGTERM\n"


def test_stop_signals_are_caught_before_the_heavy_imports(tmp_path: Path) -> None:
    """Counting from the handlers (as below) would hide handlers installed
    late: the system calls show they come before the command line's module
    (and with it gRPC, the roles, ...) is loaded."""
    strace = shutil.which("strace")
    assert strace is not None, "no strace: make setup installs it (APT_PACKAGES)"
    trace = tmp_path / "trace"
    command = [strace, "-qq", "-e", "trace=rt_sigaction,openat", "-o", str(trace),
               LETSKENCRYPT, "--help"]  # fmt: skip
    subprocess.run(command, capture_output=True, check=True, timeout=60)
    calls = trace.read_text().splitlines()
    caught = [i for i, call in enumerate(calls)
              if re.match(r"rt_sigaction\(SIGTERM, \{sa_handler=0x", call)]  # fmt: skip
    loaded = [i for i, call in enumerate(calls)
              if re.search(r'"[^"]*/letskencrypt/(__pycache__/)?cli[.][^"]*", O_RDONLY', call)
              and not call.endswith("ENOENT (No such file or directory)")]  # fmt: skip
    assert caught and loaded, calls
    assert caught[0] < loaded[0]


@dataclass
class Template:
    """A client that has its keys and a certificate: each run starts from a copy."""

    base: Path
    # How long a normal run (-F) takes here.
    duration: float


def argv(pebble: Pebble, base: Path, *extra: str) -> list[str]:
    return [
        LETSKENCRYPT, "--server", pebble.directory_url, "--ca-bundle", pebble.ca_bundle,
        "--trust-anchors", pebble.trust_anchors, "-C", str(pebble.challenge_dir),
        "-c", str(base / "certs"), "-f", str(base / "account.pem"),
        "-k", str(base / "domain" / "privkey.pem"), *extra, NAME,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def template(pebble: Pebble, tmp_path_factory: pytest.TempPathFactory) -> Template:
    base = tmp_path_factory.mktemp("interrupts-template")
    base.chmod(0o755)
    first = subprocess.run(argv(pebble, base, "-n", "-N"), capture_output=True, text=True,
                           timeout=RUN_TIMEOUT, check=False)  # fmt: skip
    assert first.returncode == 0, first.stderr
    durations = []
    for _ in range(2):
        client = subprocess.Popen(argv(pebble, base, "-F"), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait_for_handlers(client.pid)
        started = time.monotonic()
        _, stderr = client.communicate(timeout=RUN_TIMEOUT)
        assert client.returncode == 0, stderr
        durations.append(time.monotonic() - started)
    return Template(base, min(durations))


def points(duration: float) -> list[float]:
    later = POINTS - len(EARLY_POINTS)
    start = EARLY_POINTS[-1] + 0.05
    return [*EARLY_POINTS, *(start + (duration - start) * i / (later - 1) for i in range(later))]


def handlers_in_place(pid: int) -> bool:
    """The command caught SIGTERM: its own code is running (Python alone never does)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # gone already
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16)
    return bool(caught & 1 << (signal.SIGTERM - 1))


def wait_for_handlers(pid: int) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while not handlers_in_place(pid):
        assert time.monotonic() < deadline, "the command never got going"
        time.sleep(0.001)


def processes_marked(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (in PATH, which the
    supervisor passes on to every role: see constants.ROLE_ENVIRONMENT)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in environment and state != "Z":
            found.append(int(entry.name))
    return found


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def live_set(cert_dir: Path) -> str | None:
    try:
        return os.readlink(cert_dir / ".live")
    except OSError:
        return None


def certificate_state(cert_dir: Path) -> tuple[str | None, dict[str, str]]:
    """The live set's name and the sha256 of every file under the directory."""
    live = live_set(cert_dir)
    digests = {
        str(path.relative_to(cert_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(cert_dir.rglob("*"))
        if path.is_file()
    }
    return live, digests


def assert_complete_set(base: Path) -> None:
    cert_dir = base / "certs"
    certificate = x509.load_pem_x509_certificate((cert_dir / "cert.pem").read_bytes())
    chain = x509.load_pem_x509_certificates((cert_dir / "chain.pem").read_bytes())
    full = x509.load_pem_x509_certificates((cert_dir / "fullchain.pem").read_bytes())
    assert full == [certificate, *chain]
    key = load_pem_private_key((base / "domain" / "privkey.pem").read_bytes(), None)
    assert certificate.public_key() == key.public_key()


@dataclass
class Outcome:
    delay: float | None
    code: int
    stderr: str
    installed: bool


def interrupted_run(
    pebble: Pebble,
    template: Template,
    work: Path,
    signum: int,
    whole_group: bool,
    delay: float | None,
    blocked: bool = False,
) -> Outcome:
    """`delay`: seconds after the command's handlers are in place (`blocked`:
    after it was started with the stop signals blocked); None: the instant
    the new set goes live."""
    base = work / "client"
    shutil.copytree(template.base, base, symlinks=True)
    tmpdir = work / "tmp"
    tmpdir.mkdir()
    marker = f"/nonexistent/letskencrypt-interrupts-{uuid.uuid4().hex}"
    environment = {**os.environ, "TMPDIR": str(tmpdir),
                   "PATH": f"{marker}:{os.environ.get('PATH', '/usr/bin:/bin')}"}  # fmt: skip
    before = certificate_state(base / "certs")
    command = argv(pebble, base, "-F")
    if blocked:
        command = ["env", f"--block-signal={BLOCKED}", *command]
    client = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
        process_group=0,
    )  # fmt: skip
    try:
        if not blocked:
            wait_for_handlers(client.pid)
        if delay is None:
            deadline = time.monotonic() + RUN_TIMEOUT
            while live_set(base / "certs") == before[0]:
                assert client.poll() is None, "the run ended without installing"
                assert time.monotonic() < deadline, "no new set went live"
                time.sleep(0.0005)
        else:
            time.sleep(delay)
        try:
            if whole_group:
                os.killpg(client.pid, signum)
            else:
                os.kill(client.pid, signum)
        except ProcessLookupError:
            pass  # done already
        _, stderr = client.communicate(timeout=RUN_TIMEOUT)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    where = f"{signal.Signals(signum).name} at {delay} s: {stderr!r}"
    assert "Traceback" not in stderr, where
    # Nothing of the run is left: no process, no run directory, no file in flight.
    assert not group_alive(client.pid), where
    assert processes_marked(marker) == [], where
    assert list(tmpdir.iterdir()) == [], where
    assert list(pebble.challenge_dir.iterdir()) == [], where
    assert [p for p in (base / "certs").rglob("*") if ".tmp" in p.name] == [], where
    after = certificate_state(base / "certs")
    installed = after[0] != before[0]
    if installed:
        assert_complete_set(base)
    else:
        assert after == before, where
    shutil.rmtree(work)
    return Outcome(delay, client.returncode, stderr, installed)


def check_outcome(outcome: Outcome, signum: int) -> None:
    where = f"at {outcome.delay} s: {outcome.code} {outcome.stderr!r}"
    lines = outcome.stderr.splitlines()
    if outcome.code == 0:
        # The run was over before the signal came: its status stands.
        assert outcome.installed and lines == [], where
        return
    # Ended by the signal itself (a shell shows 128 + its number).
    assert outcome.code == -signum, where
    assert len(lines) == 1, where
    said = LINE.fullmatch(lines[0])
    assert said is not None, where
    assert said.group(1) == signal.Signals(signum).name, where
    assert ("after a new certificate was installed" in lines[0]) == outcome.installed, where


@pytest.mark.parametrize(
    ("signum", "whole_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["SIGINT-to-the-process-group", "SIGTERM-to-the-supervisor"],
)
def test_a_stop_signal_at_any_instant(
    pebble: Pebble, template: Template, tmp_path: Path, signum: int, whole_group: bool
) -> None:
    outcomes = [
        interrupted_run(pebble, template, tmp_path / f"run{index}", signum, whole_group, delay)
        for index, delay in enumerate(points(template.duration))
    ]
    for outcome in outcomes:
        check_outcome(outcome, signum)
    interrupted = [outcome for outcome in outcomes if outcome.code != 0]
    # The early points, at least, stopped the run before it installed anything.
    assert len(interrupted) >= len(EARLY_POINTS), outcomes
    assert not any(outcome.installed for outcome in outcomes[: len(EARLY_POINTS)]), outcomes


def test_ctrl_c_as_the_new_set_goes_live(
    pebble: Pebble, template: Template, tmp_path: Path
) -> None:
    """The instant between fileproc's switch and netproc's exit: the line
    says the certificate was installed (or the run had ended, with 0)."""
    outcome = interrupted_run(pebble, template, tmp_path / "run", signal.SIGINT, True, None)
    check_outcome(outcome, signal.SIGINT)
    assert outcome.installed


def test_started_with_the_signals_blocked_no_instant_is_python_s(
    pebble: Pebble, template: Template, tmp_path: Path
) -> None:
    """`env --block-signal=INT,TERM,HUP letskencrypt ...`: a Ctrl-C from the
    instant of exec on, while Python itself starts too, waits for the
    command's handlers: never a traceback, always the one line."""
    probe = subprocess.run(["env", f"--block-signal={BLOCKED}", "true"], capture_output=True,
                           check=False)  # fmt: skip
    # coreutils 8.31 and later (Debian 12 has 9.1).
    assert probe.returncode == 0, f"env has no --block-signal: {probe.stderr!r}"
    for index in range(12):
        delay = index * 0.01
        outcome = interrupted_run(pebble, template, tmp_path / f"run{index}", signal.SIGINT,
                                  True, delay, blocked=True)  # fmt: skip
        where = f"at {delay} s: {outcome.code} {outcome.stderr!r}"
        assert outcome.code == -signal.SIGINT, where
        assert not outcome.installed, where
        # Empty only if the signal beat env itself to blocking it.
        assert outcome.stderr in ("", f"letskencrypt: interrupted by SIGINT; {NOTHING}\n"), where
