"""End to end, native mode, against a real pebble: what a run may and may not
do to the certificate directory when it is not alone or does not succeed.

* One run at a time per certificate: a second run waits a little, then
  exits 1 naming the holder's pid; never two orders at once.
* A failed run leaves the certificate directory exactly as it was (every
  entry's type, mode and content, and the directory's own mode) and the
  challenge directory empty.
* A certificate the CA issued but the run could not install (the
  certificate directory made read-only between the order and the install)
  is kept, and the next run installs it without a new order.

The moments are caught from the outside: the fileproc of a run holds its
lock (/proc/locks), pebble's validation fetches a token (the test serves the
challenge directory itself, see tests/pebble.py).
"""

import contextlib
import fcntl
import os
import re
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from letskencrypt.filestore import LOCK_WAIT, lock_holder

from tests import pebble as pebble_module
from tests.conftest import Paths, Result, run_client, without_terms
from tests.pebble import Pebble
from tests.test_e2e_native import (
    assert_challenges_cleaned,
    assert_installed,
    leaf,
    processes_under,
    start_client,
)

# What pebble logs for each order it creates (a newOrder POST it refused
# with badNonce, and the client retried, is not one).
ORDER_ADDED = re.compile(r'^Pebble [\d/]+ [\d:]+ Added order "[^"]+" to the db$', re.MULTILINE)
RUN_TIMEOUT = 120


def orders(pebble: Pebble) -> int:
    return len(ORDER_ADDED.findall(pebble.log_text()))


def listing(directory: Path) -> dict[str, tuple[str, bytes | str | None]]:
    """The directory and everything below it, not following links: octal
    mode, and a file's content or a link's target."""
    found: dict[str, tuple[str, bytes | str | None]] = {}
    if not directory.exists():
        return found
    for path in [directory, *sorted(directory.rglob("*"))]:
        info = path.lstat()
        content: bytes | str | None = None
        if stat.S_ISLNK(info.st_mode):
            content = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            content = path.read_bytes()
        found[str(path.relative_to(directory))] = (f"{info.st_mode:o}", content)
    return found


def one_line(result: Result) -> str:
    """The one line of a run's output (besides that of an account's creation)."""
    lines = without_terms(result.stderr).strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def with_keys(pebble: Pebble, paths: Paths) -> None:
    """Keys made by a first run, and an empty certificate directory."""
    first = run_client(pebble, paths, "-n", "-N", "keys.example.org")
    assert first.code == 0, first.stderr
    shutil.rmtree(paths.cert_dir)
    paths.cert_dir.mkdir()
    paths.cert_dir.chmod(0o755)


@pytest.fixture
def on_validation(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], bool]], None]:
    """Run a hook when pebble's validation fetches a token; the hook says
    whether the token is then served (False: 404, the validation fails)."""

    original = pebble_module._ChallengeHandler._lookup

    def install(hook: Callable[[], bool]) -> None:
        def lookup(handler: pebble_module._ChallengeHandler) -> bytes | None:
            return original(handler) if hook() else None

        monkeypatch.setattr(pebble_module._ChallengeHandler, "_lookup", lookup)

    return install


# --- one run at a time --------------------------------------------------------------


def holder_of(cert_dir: Path) -> str | None:
    fd = os.open(cert_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return lock_holder(fd)
    finally:
        os.close(fd)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, what
        time.sleep(0.005)
    return value


def holds_open(pid: int, directory: Path) -> bool:
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == str(directory):
                    return True
    return False


def signal_run(supervisor: int, signum: int) -> None:
    for pid in [supervisor, *processes_under(supervisor)]:
        os.kill(pid, signum)


def test_a_second_run_exits_naming_the_holder(pebble: Pebble, paths: Paths) -> None:
    """The first run is stopped (SIGSTOP) once its fileproc holds the lock;
    the second waits LOCK_WAIT seconds, then gives up before any of its roles
    starts and before any request, naming the first run's fileproc."""
    names = ["holder.example.org"]
    with_keys(pebble, paths)
    before_orders = orders(pebble)
    first = start_client(pebble, paths, *names)
    holder = wait_for(lambda: holder_of(paths.cert_dir), 30, "the first run took no lock")
    signal_run(first.pid, signal.SIGSTOP)
    try:
        requests = pebble.request_count()
        started = time.monotonic()
        second = run_client(pebble, paths, *names, timeout=RUN_TIMEOUT)
        waited = time.monotonic() - started
        assert pebble.request_count() == requests
    finally:
        signal_run(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=RUN_TIMEOUT)
    assert first.returncode == 0, stderr
    assert second.code == 1
    assert one_line(second) == (
        f"letskencrypt: certificate directory {paths.cert_dir}: another run holds its lock "
        f"({holder}); gave up after {LOCK_WAIT:g} s"
    )
    assert f"{holder}".startswith("pid ") and f"{holder}".endswith(", fileproc")
    assert LOCK_WAIT <= waited < LOCK_WAIT + 5
    assert orders(pebble) == before_orders + 1
    assert_installed(paths, names)
    assert_challenges_cleaned(paths)


def test_ctrl_c_while_waiting_for_the_lock(pebble: Pebble, paths: Paths) -> None:
    """Interrupted while it waits for another run: one line, no traceback."""
    paths.cert_dir.mkdir()
    holder = os.open(paths.cert_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        requests = pebble.request_count()
        waiting = start_client(pebble, paths, "waiting.example.org")
        wait_for(lambda: holds_open(waiting.pid, paths.cert_dir), 30, "no wait for the lock")
        waiting.send_signal(signal.SIGINT)
        _, stderr = waiting.communicate(timeout=RUN_TIMEOUT)
    finally:
        os.close(holder)
    assert waiting.returncode == -signal.SIGINT  # ended by it, as a shell expects
    assert stderr == (
        "letskencrypt: interrupted by SIGINT; no certificate was installed or removed\n"
    )
    assert pebble.request_count() == requests


def test_two_runs_at_once_order_once(pebble: Pebble, paths: Paths) -> None:
    """Started together: one orders and installs; the other either gives up
    naming the holder or, once the first is done within its wait, finds the
    certificate up to date.  Never a second order."""
    names = ["twice.example.org"]
    with_keys(pebble, paths)
    before_orders = orders(pebble)
    results: dict[int, Result] = {}

    def run(index: int) -> None:
        results[index] = run_client(pebble, paths, *names)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RUN_TIMEOUT)
    codes = sorted(result.code for result in results.values())
    assert codes in ([0, 1], [0, 2]), results
    assert orders(pebble) == before_orders + 1
    for result in results.values():
        if result.code == 1:
            assert "another run holds its lock (pid " in one_line(result)
    assert_installed(paths, names)
    assert_challenges_cleaned(paths)


# --- nothing written on failure -----------------------------------------------------


@pytest.mark.parametrize("before", ["missing", "empty", "installed"])
def test_a_failed_run_leaves_the_directory_as_it_was(
    pebble: Pebble, paths: Paths, on_validation: Callable, before: str
) -> None:
    """Pebble's validation fails (the token is not served): the run fails
    after fileproc has started, and nothing in the certificate directory
    has changed."""
    with_keys(pebble, paths)
    names = [f"failed-{before}.example.org"]
    if before == "installed":
        done = run_client(pebble, paths, *names)
        assert done.code == 0, done.stderr
        # Another name: a new order, with a validation that fails.
        names.append(f"www.failed-{before}.example.org")
    elif before == "missing":
        paths.cert_dir.rmdir()
    was = listing(paths.cert_dir)
    on_validation(lambda: False)
    result = run_client(pebble, paths, *names)
    assert result.code == 1
    assert "netproc" in one_line(result)
    assert listing(paths.cert_dir) == was
    assert_challenges_cleaned(paths)


# --- an issued certificate is never lost --------------------------------------------


class ReadOnly:
    """Once armed, the certificate directory turns read-only (0555) when
    pebble validates a token: after the order, before the install."""

    def __init__(self, paths: Paths, on_validation: Callable) -> None:
        self.cert_dir = paths.cert_dir
        self.on_validation = on_validation

    def arm(self) -> None:
        self.on_validation(self.read_only)

    def read_only(self) -> bool:
        if self.cert_dir.exists():
            self.cert_dir.chmod(0o555)
        return True

    def undo(self) -> None:
        self.on_validation(lambda: True)
        if self.cert_dir.exists():
            self.cert_dir.chmod(0o755)


@pytest.fixture
def read_only(paths: Paths, on_validation: Callable) -> Iterator[ReadOnly]:
    control = ReadOnly(paths, on_validation)
    try:
        yield control
    finally:
        control.undo()


def kept_certificate(paths: Paths, set_id: str) -> x509.Certificate:
    kept = paths.cert_dir / ".sets" / set_id / "cert.pem"
    return x509.load_pem_x509_certificate(kept.read_bytes())


def kept_failure(result: Result, paths: Paths) -> str:
    """The set named by the run's one-line error, which must say it kept it."""
    line = one_line(result)
    assert line.startswith(
        f"letskencrypt: netproc: certproc: fileproc: certificate directory {paths.cert_dir}: "
        "Permission denied: "
    ), line
    _, _, set_id = line.partition("; kept the new certificate in .sets/")
    assert set_id.endswith(": the next run installs it"), line
    return set_id.removesuffix(": the next run installs it")


@pytest.mark.parametrize("before", ["nothing", "installed"])
def test_a_certificate_that_cannot_be_installed_is_kept(
    pebble: Pebble, paths: Paths, read_only: ReadOnly, before: str
) -> None:
    names = [f"kept-{before}.example.org"]
    if before == "installed":
        first = run_client(pebble, paths, "-n", "-N", *names)
        assert first.code == 0, first.stderr
        old = listing(paths.cert_dir)
        # Another name: a new order, whose validation makes the directory read-only.
        names.append(f"www.kept-{before}.example.org")
        args = names
    else:
        old = {}
        args = ["-n", "-N", *names]
    read_only.arm()
    before_orders = orders(pebble)
    failed = run_client(pebble, paths, *args)
    assert failed.code == 1
    set_id = kept_failure(failed, paths)
    assert orders(pebble) == before_orders + 1
    kept_leaf = kept_certificate(paths, set_id)
    assert_challenges_cleaned(paths)
    read_only.undo()
    # Nothing changed but the kept set in .sets: readers see what they saw.
    now = listing(paths.cert_dir)
    assert {k: v for k, v in now.items() if not k.startswith(f".sets/{set_id}")} == (
        old or {".": now["."], ".sets": now[".sets"]}
    )
    requests = pebble.request_count()
    again = run_client(pebble, paths, *names)
    assert again.code == 0, again.stderr
    assert pebble.request_count() == requests, "the next run reached the CA"
    assert orders(pebble) == before_orders + 1
    installed = assert_installed(paths, names)
    assert installed == kept_leaf
    # The kept set was installed as a new set and then retired like any old one.
    assert sorted(os.listdir(paths.cert_dir / ".sets")) == [
        os.readlink(paths.cert_dir / ".live").removeprefix(".sets/")
    ]
    assert set_id not in os.listdir(paths.cert_dir / ".sets")

    # Once installed, it is simply the current certificate.
    idle = run_client(pebble, paths, *names)
    assert idle.code == 2, idle.stderr
    assert leaf(paths) == installed


def test_a_kept_certificate_for_another_key_is_not_installed(
    pebble: Pebble, paths: Paths, read_only: ReadOnly
) -> None:
    """The domain key changed since: certproc finds the kept certificate
    does not fit, and the run orders a new one."""
    names = ["kept-other-key.example.org"]
    read_only.arm()
    failed = run_client(pebble, paths, "-n", "-N", *names)
    assert failed.code == 1
    set_id = kept_failure(failed, paths)
    kept = kept_certificate(paths, set_id)
    read_only.undo()
    paths.domain_key.unlink()
    before_orders = orders(pebble)
    again = run_client(pebble, paths, "-N", "-v", *names)
    assert again.code == 0, again.stderr
    assert "the kept certificate does not fit this run" in again.stderr
    assert orders(pebble) == before_orders + 1
    assert assert_installed(paths, names) != kept
    # Superseded, the kept set was retired like any old one.
    assert set_id not in os.listdir(paths.cert_dir / ".sets")
