"""Crash consistency: SIGKILL each role, and the whole run, at each step.

Starting from keys and a valid certificate set (a first real run against
pebble), every kill point runs `letskencrypt -F` and SIGKILLs one target at
one step (see tests/crashkit.py for how the steps are caught without any hook
in the product):

* account   - pebble has logged POST /sign-me-up (the account lookup)
* published - a token file has appeared in the challenge directory
* finalize  - pebble has logged POST /finalize-order/
* files     - fileproc is inside CertDir.install: killed by strace on entry to
              each of its fsync/mkdir/rename/symlink/unlink calls, or held in
              one while another target is killed

Targets: each of the eight roles by name, and the supervisor (the whole run;
its roles must die with it through their parent-death signal).

After every kill: the run's status is 1 (0 accepted if the work was done;
the killed supervisor's own status is SIGKILL), the account and domain keys
are byte-identical, cert.pem / chain.pem / fullchain.pem read through their
symlinks are exactly the old trio or a complete new trio (fullchain = cert +
chain, leaf issued by the chain, for the domain key and names, mode 0444),
no process of the run is left; then the next run (-F) succeeds, cleans up what
the crash left in the certificate directory and installs a complete set.

47 kill points: 9 targets x 3 frozen steps, and in the files step fileproc at
10 syscalls, the 7 other roles at one pause and the supervisor at 3; plus the
supervisor killed while its roles start (as their subreaper).  They run in
parallel lanes, each with its own pebble (LETSKENCRYPT_CRASH_LANES, default
4).  Every outcome is printed (pytest -s, or -rA) as one line; a test fails
listing every violated invariant, an orphaned set or a `.generation` that
does not name the live set once the next run is over.
"""

import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from letskencrypt.roles import spec_of

from tests.crashkit import (
    ROLES,
    RUN_TIMEOUT,
    SUPERVISOR,
    TARGETS,
    Crash,
    KillPoint,
    Lane,
    Outcome,
    Proc,
    Strace,
    children,
    comm,
    dir_state,
    reap_adopted,
    set_subreaper,
    stat_fields,
    wait_for,
)

LANES = int(os.environ.get("LETSKENCRYPT_CRASH_LANES", "4"))

FREEZE_STEPS = ("account", "published", "finalize")

# fileproc killed on entry to each file-system call of an install over an
# existing set (no -b); the set a reader must see afterwards.
FILEPROC_KILLS = (
    ("mkdirat", 1, "old"),  # nothing written yet
    ("fsync", 1, "old"),  # cert.pem written to a temporary file, not synced
    ("renameat", 2, "old"),  # new set half written
    ("renameat", 4, "old"),  # new set complete under .sets/.tmp-<id>
    ("symlinkat", 1, "old"),  # new set complete under .sets/<id>
    ("renameat", 5, "old"),  # .live.tmp-* made, .live not yet switched
    ("fsync", 6, "new"),  # .live switched, not yet synced; .generation not rewritten
    ("renameat", 6, "new"),  # .generation written to its temporary file
    ("unlinkat", 2, "new"),  # old set half removed
    ("fsync", 8, "new"),  # everything done but the last fsync
)
# fileproc held in a syscall while another target is killed.
PAUSES = {
    "temp file in new set": ("fsync", 1),
    "temp .live link": ("renameat", 5),
    "old set half removed": ("unlinkat", 2),
}


def pause(test: str) -> Strace:
    syscall, when = PAUSES[test]
    return Strace(syscall, when, "pause", test)


def kill_points(step: str) -> list[KillPoint]:
    if step in FREEZE_STEPS:
        return [KillPoint(target, step) for target in TARGETS]
    assert step == "files"
    points = [
        KillPoint("fileproc", "files", Strace(syscall, when, "kill"), expect)
        for syscall, when, expect in FILEPROC_KILLS
    ]
    points += [
        KillPoint(role, "files", pause("temp .live link")) for role in ROLES if role != "fileproc"
    ]
    points += [KillPoint(SUPERVISOR, "files", pause(test)) for test in PAUSES]
    return points


STEPS = (*FREEZE_STEPS, "files")
ALL_POINTS = [point for step in STEPS for point in kill_points(step)]


@pytest.fixture(scope="module")
def lanes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Lane]]:
    set_subreaper(True)
    started = time.monotonic()
    made: list[Lane] = []
    try:
        for index in range(LANES):
            made.append(Lane(index, tmp_path_factory.mktemp(f"crash-lane{index}")))
        with ThreadPoolExecutor(LANES) as pool:
            firsts = list(pool.map(lambda lane: lane.run("-n", "-N", "-v"), made))
        for lane, first in zip(made, firsts, strict=True):
            assert first.code == 0, first.stderr
            assert not lane.problems(lane.trio())
        print(f"\n{LANES} lanes ready in {time.monotonic() - started:.1f}s")
        yield made
    finally:
        for lane in made:
            lane.close()
        set_subreaper(False)


def run_points(lanes: list[Lane], points: list[KillPoint]) -> list[Outcome]:
    """Each lane takes the next kill point until none is left."""
    todo: queue.Queue[KillPoint] = queue.Queue()
    for point in points:
        todo.put(point)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def work(lane: Lane) -> None:
        while True:
            try:
                point = todo.get_nowait()
            except queue.Empty:
                return
            outcome = Crash(lane, point).execute()
            with lock:
                outcomes.append(outcome)

    with ThreadPoolExecutor(len(lanes)) as pool:
        for future in [pool.submit(work, lane) for lane in lanes]:
            future.result()
    order = {point.id: i for i, point in enumerate(points)}
    return sorted(outcomes, key=lambda o: order[o.point.id])


def report(step: str, outcomes: list[Outcome], seconds: float) -> str:
    lines = [f"--- {step}: {len(outcomes)} kill points in {seconds:.1f}s"]
    lines += [outcome.line() for outcome in outcomes]
    return "\n".join(lines)


def check_step(lanes: list[Lane], step: str) -> list[Outcome]:
    started = time.monotonic()
    outcomes = run_points(lanes, kill_points(step))
    text = report(step, outcomes, time.monotonic() - started)
    print("\n" + text)
    bad = [o for o in outcomes if o.violations]
    details = "\n".join(f"{o.point.id}: stderr of the killed run:\n{o.stderr}" for o in bad)
    assert not bad, f"invariants violated:\n{text}\n{details}"
    # Once the next run is over, no set is orphaned and .generation names the
    # live set (a web server watching it must see every switch).
    orphans = {o.point.id: o.orphan_sets for o in outcomes if o.orphan_sets}
    assert not orphans, f"orphaned sets:\n{text}"
    stale = [o.point.id for o in outcomes if o.generation_stale_after_exit2]
    assert not stale, f".generation names an old set after {stale}:\n{text}"
    return outcomes


def test_kill_points_cover_every_target_at_every_step() -> None:
    for step in STEPS:
        assert {p.target for p in kill_points(step)} == set(TARGETS), step
    assert len({p.id for p in ALL_POINTS}) == len(ALL_POINTS)


@pytest.mark.parametrize("step", FREEZE_STEPS)
def test_kill_at_step(lanes: list[Lane], step: str) -> None:
    outcomes = check_step(lanes, step)
    for outcome in outcomes:
        # Frozen before any install began: the old set is what a reader sees.
        assert outcome.visible == "old", outcome.line()
        assert outcome.code in (1, -signal.SIGKILL), outcome.line()
        if outcome.point.target == SUPERVISOR:
            assert_died_with_supervisor(outcome)


def assert_died_with_supervisor(outcome: Outcome) -> None:
    """Every role died of its parent-death signal: SIGKILL, but SIGTERM for
    chngproc, which withdraws its files and exits."""
    expected = {role: "killed by SIGKILL" for role in ROLES}
    expected["chngproc"] = "exit 0"
    assert outcome.roles_after_supervisor == expected, outcome.line()


# The roles are not dumpable: only root (as CI and `make test` run) can strace
# fileproc; the Makefile installs strace.
@pytest.mark.skipif(os.geteuid() != 0, reason="strace must attach to a non-dumpable fileproc")
def test_kill_during_file_writes(lanes: list[Lane]) -> None:
    outcomes = check_step(lanes, "files")
    for outcome in outcomes:
        if outcome.point.target == SUPERVISOR:
            assert_died_with_supervisor(outcome)


def test_supervisor_killed_while_roles_start(lanes: list[Lane]) -> None:
    """SIGKILL the supervisor as soon as its eight roles exist, as they start:
    every role must die with it, and none may carry on with the run on its
    own.  We are the roles' subreaper here, as systemd, `tini -s` or a CI
    runner may be: an orphan's parent is then not pid 1.  A role dies of its
    parent-death signal: SIGKILL from birth, and once confined its spec's
    (chngproc's SIGTERM lets it remove its files and exit 0)."""
    lane = lanes[0]
    keys, old = lane.keys(), lane.trio()
    lane.mark()
    client = lane.start("-F", "-v")
    wait_for(lambda: {comm(pid) for pid in children(client.pid)} == set(ROLES), 30,
             "eight roles", interval=0.0005)  # fmt: skip
    procs = [Proc(pid, fields[1], comm(pid) or str(pid)) for pid in children(client.pid)
             if (fields := stat_fields(pid)) is not None]  # fmt: skip
    # Long enough for the supervisor to hand every role its configuration.
    time.sleep(0.05)
    os.kill(client.pid, signal.SIGKILL)
    started = time.monotonic()
    # stderr reaches EOF only once every role has exited.
    _, stderr = client.communicate(timeout=RUN_TIMEOUT)
    lasted = time.monotonic() - started
    ended = reap_adopted(procs, timeout=10)
    assert client.returncode == -signal.SIGKILL
    assert set(ended) == set(ROLES), ended
    for role, how in ended.items():
        allowed = {"killed by SIGKILL", "gone"}
        if spec_of(role).parent_death_signal == signal.SIGTERM:
            allowed |= {"killed by SIGTERM", "exit 0"}
        assert how in allowed, (ended, stderr)
    assert lasted < 5, f"the roles lived on for {lasted:.1f}s: {stderr}"
    assert lane.new_requests() == [], "a role went on with the run"
    assert lane.keys() == keys
    assert lane.trio().same_bytes(old)
    assert not dir_state(lane.paths.cert_dir).leftovers()
