"""Many certificates in one run (`letskencrypt --config FILE`).

The due certificates are done by one set of roles (SharedRun, host.py):
netproc, acctproc, dnsproc, chngproc, certproc, fileproc and revokeproc are
forked once for the run, from this process, which has loaded every role's
code once (launch.prepare_to_fork) and holds no key and no token; each is
told every certificate's settings, opens what each needs, confines itself
once to all their paths and serves each certificate while that
certificate's run lasts.  keyproc is one process per certificate, forked
when that certificate's turn comes: no process ever holds two domain keys;
and acctproc one per account (RoleSpec.one_process_per: each serves the
certificates that sign with its account key, on sockets of its own), so no
process holds two accounts' keys either.
Each certificate's edge tokens are made by a dealer process (never here)
and reach only that certificate's keyproc and the shared roles.  A shared
role's servicer for a certificate knows that certificate alone: its
acctproc signs orders for its names only and a finalize only for its own
keyproc's key, its fileproc writes its certificate directory only, its
chngproc its challenge directory only.  So an attacker in a shared role
may do to every certificate of the run what one certificate's role may do
to that one, and still reads no domain key and no other account's key.

Before any role starts, the certificates that are not due are left out by
the same rule revokeproc applies (renewal.decide on the installed set) and
by what an earlier run learnt of the CA's renewal information (ARI, the
run state's note, see ari.judge): a rerun with nothing due starts no role
and sends no request.  A certificate is due when its lifetime says so, when
the time picked in the CA's renewal window has come, or when the CA is to
be asked again (no note for it yet, or its Retry-After has passed);
netproc gets the note, and acctproc the ARI identifier of the certificate
installed when the run starts.  `concurrency` certificates are in flight
at a time; netproc looks the account up once per authority.

After the run (all its roles have exited), each changed certificate's
files are published at the paths the configuration names for them
(symlinks into the certificate directory), and its deploy hook runs.
Exit status: 0 when something changed and nothing failed, 1 when anything
failed (the others are still done), 2 when nothing was due.
"""

import contextlib
import dataclasses
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from letskencrypt import ari, deploy, host, interrupts, launch
from letskencrypt.certs import ari_cert_id, configured_anchors, trust_problem
from letskencrypt.constants import (
    EXIT_CHANGED,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_NOTHING_TO_DO,
)
from letskencrypt.errors import LetskencryptError, plain_words
from letskencrypt.filestore import CertDir, installed_set
from letskencrypt.fsutil import make_directories, write_all
from letskencrypt.linux import PR_SET_PDEATHSIG, prctl
from letskencrypt.options import installed_ari_cert_id
from letskencrypt.relay import Relay
from letskencrypt.renewal import Decision, decide, load_certificate_file, load_chain_file
from letskencrypt.roles import ROLES, spec_of
from letskencrypt.rpc import EDGES
from letskencrypt.settings import (
    AcctprocSettings,
    AriNote,
    NetprocSettings,
    RevokeprocSettings,
    RoleSettings,
)
from letskencrypt.supervisor import (
    CERT_DIR_MODE,
    RunUser,
    interruption,
    make_run_dir,
    stop_signals_caught,
)

POLL_INTERVAL = 0.02
# How long the roles get to stop once a stop signal has come.
STOP_GRACE = 10.0
# The stable names fileproc keeps in a certificate directory.
PUBLISHED_FILES = ("cert.pem", "chain.pem", "fullchain.pem")


@dataclass
class Job:
    """One certificate of the configuration, ready to run."""

    handle: str
    names: tuple[str, ...]
    settings: dict[str, RoleSettings]
    cert_dir: str
    authority: str
    account_key: str
    # cert.pem / chain.pem / fullchain.pem -> where the configuration wants it.
    publish: dict[str, str] = field(default_factory=dict)
    deploy_hook: str | None = None
    # Renew however current (-F, a key rotation) or revoke: never skipped.
    always: bool = False
    # Why this host cannot run it (the command line's preflight), if it cannot.
    refused: str | None = None
    # What the command line does after its run (a key rotation's end).
    finish: Callable[[int], int] = lambda status: status


@dataclass
class Outcome:
    handle: str
    # "changed", "not due", "failed", "interrupted"
    result: str
    status: int
    reason: str = ""


def due(job: Job, now: datetime, note: AriNote | None = None) -> tuple[bool, str]:
    """Whether the job's certificate needs a run, and why (revokeproc's
    rule, then the CA's renewal information as `note` has it)."""
    if job.always:
        return True, "forced"
    revokeproc = job.settings["revokeproc"]
    assert isinstance(revokeproc, RevokeprocSettings)
    try:
        certificate = load_certificate_file(os.path.join(job.cert_dir, "cert.pem"))
        distrust = None
        if certificate is not None:
            chain = load_chain_file(os.path.join(job.cert_dir, "chain.pem"))
            anchors = configured_anchors(revokeproc.trust_anchors)
            distrust = trust_problem([certificate, *chain], anchors, now)
    except LetskencryptError as error:
        # revokeproc says it again, as the certificate's failure.
        return True, str(error)
    # Not revokeproc's `force`: a domain's `rotate key` sets it, yet rotates
    # only a certificate that is due; -F and the like make `always`.
    decision, reason = decide(certificate, list(job.names), now, False, distrust)
    netproc = job.settings["netproc"]
    assert isinstance(netproc, NetprocSettings)
    if decision != Decision.UP_TO_DATE or certificate is None or not netproc.ari:
        return decision != Decision.UP_TO_DATE, reason
    cert_id = ari_cert_id(certificate)
    if cert_id is None:
        return False, reason
    verdict, why = ari.judge(note, cert_id, now)
    if verdict == ari.WAIT:
        return False, f"{reason}; {why}"
    return True, why


def with_ari(job: Job, note: AriNote | None) -> dict[str, RoleSettings]:
    """The job's settings for a run starting now: netproc's with the ARI
    note, acctproc's with the installed certificate's ARI identifier (it
    may have changed since the settings were made: a --config daemon)."""
    settings = dict(job.settings)
    netproc, acctproc = settings["netproc"], settings["acctproc"]
    assert isinstance(netproc, NetprocSettings) and isinstance(acctproc, AcctprocSettings)
    settings["netproc"] = dataclasses.replace(netproc, ari_note=note)
    if not acctproc.replaces_any:
        replaces = installed_ari_cert_id(job.cert_dir)
        settings["acctproc"] = dataclasses.replace(acctproc, replaces=replaces)
    return settings


@dataclass
class Fleet:
    jobs: list[Job]
    concurrency: int
    verbosity: int = 0
    run_user: RunUser | None = None
    relay: Relay = field(default_factory=Relay)
    # Each certificate's ARI note from the run state (see ari.py).
    notes: dict[str, AriNote] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    interrupted: signal.Signals | None = None
    # A role of the run ended badly once every certificate was done.
    role_failed: bool = False
    # Each certificate's set installed when the run started.
    installed_before: dict[str, str | None] = field(default_factory=dict)

    def run(self) -> int:
        """Every due job, `concurrency` at a time; the run's exit status."""
        now = datetime.now(UTC)
        waiting = []
        for job in self.jobs:
            self.installed_before[job.handle] = installed_set(job.cert_dir)
            if job.refused is not None:
                self.fail(job, job.refused)
                continue
            note = self.notes.get(job.handle)
            needed, reason = due(job, now, note)
            if needed:
                job.settings = with_ari(job, note)
                waiting.append(job)
                self.say(job.handle, f"due: {reason}", level=1)
            else:
                self.outcomes[job.handle] = Outcome(
                    job.handle, "not due", EXIT_NOTHING_TO_DO, reason
                )
                self.say(job.handle, f"not due: {reason}", level=1)
        if waiting:
            launch.prepare_to_fork()
            with stop_signals_caught():
                self.drive(waiting)
        self.publish_and_deploy()
        status = self.status()
        self.relay.close()
        return status

    def shared_run(self, jobs: list[Job]) -> "SharedRun":
        return SharedRun(self, jobs)

    def drive(self, waiting: list[Job]) -> None:
        """Every waiting job, by one set of roles (SharedRun)."""
        run = self.shared_run(waiting)
        try:
            run.start()
            run.see_through()
        finally:
            run.end()

    def finished(self, job: Job, status: int) -> None:
        said = self.relay.last_lines.get(job.handle, "")
        if status == EXIT_CHANGED:
            outcome = Outcome(job.handle, "changed", status)
        elif status == EXIT_NOTHING_TO_DO:
            outcome = Outcome(job.handle, "not due", status)
        elif status in EXIT_CODES:
            outcome = Outcome(job.handle, "failed", status, said)
        elif status < 0 or status > EXIT_NOTHING_TO_DO:
            outcome = Outcome(job.handle, "interrupted", status)
        else:
            outcome = Outcome(job.handle, "failed", status, said)
        self.outcomes[job.handle] = outcome
        self.say(job.handle, outcome.result, level=1)

    def publish_and_deploy(self) -> None:
        """Publish each certificate installed; run the deploy hook of each
        new one, and of each whose hook an earlier run owes (it was stopped
        first, or the hook failed) while that one is still installed.  A
        stopped run runs no hook: the next run does."""
        for job in self.jobs:
            try:
                publish(job)
            except OSError as error:
                self.fail(job, f"could not publish the certificate: {plain_words(error)}")
                continue
            self.run_hook(job)

    def run_hook(self, job: Job) -> None:
        handle = job.handle
        before = self.installed_before.get(handle)
        deployed = deploy.deploy(job, before, stopped=self.interrupted is not None)
        if deployed is None:
            return
        outcome = self.outcomes.get(handle)
        if deployed.result == "deferred":
            if outcome is None or outcome.result != "interrupted":  # else its line says so
                self.say(handle, deploy.deferred_line(deployed))
        elif deployed.result == "failed":
            self.fail(job, deploy.failure_line(deployed))
        elif deployed.earlier:
            self.say(handle, deploy.EARLIER_LINE)
            if outcome is not None and outcome.result == "not due":
                self.outcomes[handle] = Outcome(handle, "changed", EXIT_CHANGED)

    def fail(self, job: Job, message: str) -> None:
        self.say(job.handle, message)
        self.outcomes[job.handle] = Outcome(job.handle, "failed", EXIT_FAILED, message)

    def say(self, handle: str | None, message: str, level: int = 0) -> None:
        if self.verbosity >= level:
            self.relay.write(f"letskencrypt: {message}", certificate=handle)

    def status(self) -> int:
        results = [outcome.result for outcome in self.outcomes.values()]
        failed = [handle for handle, o in self.outcomes.items() if o.result == "failed"]
        if failed:
            self.relay.write(f"letskencrypt: {len(failed)} of {len(results)} certificates "
                             f"failed: {', '.join(failed)}")  # fmt: skip
        if self.interrupted is not None:
            return interrupts.exit_status(self.interrupted)
        if failed or "interrupted" in results or self.role_failed:
            return EXIT_FAILED
        if "changed" in results:
            return EXIT_CHANGED
        return EXIT_NOTHING_TO_DO


def publish(job: Job) -> None:
    """Each path the configuration names for a file of the set becomes a
    symlink to that file in the certificate directory, once there is one
    (a regular file there, a certificate of an earlier tool, is kept as
    PATH.before-letskencrypt the first time)."""
    for name, path in job.publish.items():
        target = os.path.join(job.cert_dir, name)
        if not os.path.lexists(target):
            continue
        with contextlib.suppress(OSError):
            if os.readlink(path) == target:
                continue
        if os.path.isfile(path) and not os.path.islink(path):
            kept = f"{path}.before-letskencrypt"
            if not os.path.lexists(kept):
                os.link(path, kept)
        temporary = f"{path}.letskencrypt-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        os.symlink(target, temporary)
        os.rename(temporary, path)


def default_concurrency() -> int:
    """Certificates in flight at a time: most of their time is spent
    waiting on the CA."""
    return max(2, min(16, 4 * (os.cpu_count() or 1)))



@dataclass
class Flight:
    """A certificate whose run has started: its keyproc, and what became of it."""

    job: Job
    instance: int
    keyproc: launch.ForkedRole
    # The certificate set installed when it started (filestore.installed_set).
    before: str | None
    # netproc's status for it, from its result line (relay.statuses).
    status: int | str | None = None
    keyproc_done: bool = False


@dataclass
class SharedProcess:
    """A process of a role that serves many certificates of the run (host.py)."""

    role: str
    forked: "launch.ForkedRole | subprocess.Popen[bytes]"
    # The certificates it serves (by number): all of them, unless the role
    # has one process per account (RoleSpec.one_process_per).
    instances: frozenset[int]
    # Which of the role's processes it is, then (its sockets' directory, `p<part>`).
    part: int | None = None
    # Of how many.
    parts: int = 1

    @property
    def name(self) -> str:
        """How the run's messages name it."""
        return self.role if self.part is None or self.parts == 1 else f"{self.role}.{self.part}"


class SharedRun:
    """The due certificates of a run, by one set of roles (host.py).

    Every role but keyproc is forked once, before any token exists, and
    told every certificate's settings; so is the Dealer.  Then,
    `concurrency` certificates at a time, each gets a keyproc of its own,
    forked from this process (which holds no token and reads no key), and
    the dealer makes that certificate's edge tokens and writes each role
    its own: no token is ever in this process's memory, and no keyproc
    inherits another certificate's.  netproc runs each certificate in a
    thread of its own and says, in its result line, how it ended; once that
    certificate's keyproc has exited too, it is done.
    """

    def __init__(self, fleet: Fleet, jobs: list[Job]) -> None:
        self.fleet = fleet
        self.jobs = jobs
        self.relay = fleet.relay
        self.run_dir = ""
        self.shared: list[SharedProcess] = []
        # Each certificate's part on the edges served by a role with one
        # process per account (rpc.Certificate.parts).
        self.parts: list[dict[str, int]] = []
        # pid -> a shared role's process, or the certificate number of a keyproc.
        self.children: dict[int, SharedProcess | int] = {}
        self.flights: dict[int, Flight] = {}
        self.started = 0
        # Why the shared roles can no longer serve (one died), if so.
        self.broken: str | None = None
        self.dealer: Dealer | None = None
        self.made: set[str] = set()

    def start(self) -> None:
        self.jobs = [job for job in self.jobs if self.claim(job)]
        if not self.jobs:
            return
        for instance, job in enumerate(self.jobs):
            self.relay.handles[instance] = job.handle
        run_user = self.fleet.run_user
        shared_roles = [role for role in ROLES if not spec_of(role).per_certificate]
        groups_of = {role: self.split(role) for role in shared_roles}
        parts = {
            edge: len(groups_of[role])
            for role in shared_roles
            if spec_of(role).one_process_per is not None
            for edge in spec_of(role).serves
        }
        self.run_dir = make_run_dir(run_user, len(self.jobs), parts)
        shared_edges = frozenset(
            name for name, edge in EDGES.items() if not spec_of(edge.server).per_certificate
        )
        self.parts = [{} for _job in self.jobs]
        for role in shared_roles:
            spec = spec_of(role)
            groups = groups_of[role]
            for part, instances in enumerate(groups):
                forked = self.start_role(role)
                self.relay.add(role, forked.stdout, counts=spec.drives, shared=True)
                self.relay.add(role, forked.stderr, counts=spec.drives, shared=True)
                split = spec.one_process_per is not None
                shared = SharedProcess(
                    role, forked, instances, part if split else None, len(groups)
                )
                self.shared.append(shared)
                self.children[forked.pid] = shared
                for instance in instances if split else ():
                    self.parts[instance].update(dict.fromkeys(spec.serves, part))
        self.dealer = Dealer.start(self, os.getpid())
        for shared in self.shared:
            document = host.run_document(
                shared.role,
                self.run_dir,
                [
                    job.settings[shared.role] if instance in shared.instances else None
                    for instance, job in enumerate(self.jobs)
                ],
                shared_edges,
                verbosity=self.fleet.verbosity,
                run_user=(run_user.uid, run_user.gid) if run_user else None,
                supervisor_pid=os.getpid(),
                part=shared.part,
            )
            self.write(shared.forked, document)

    def split(self, role: str) -> list[frozenset[int]]:
        """The certificates each of the role's processes serves: all in one,
        or one process for each account (RoleSpec.one_process_per), so that
        no process holds two accounts' keys."""
        one_process_per = spec_of(role).one_process_per
        if one_process_per is None:
            return [frozenset(range(len(self.jobs)))]
        groups: dict[object, set[int]] = {}
        for instance, job in enumerate(self.jobs):
            groups.setdefault(one_process_per(job.settings[role]), set()).add(instance)
        return [frozenset(instances) for instances in groups.values()]

    def start_role(self, role: str) -> "launch.ForkedRole | subprocess.Popen[bytes]":
        """Fork a shared role (the compromised-role tests start another program)."""
        return launch.fork_role(role, shared=True)

    def claim(self, job: Job) -> bool:
        """Make the job's certificate directory if need be, and see that no
        other run holds its lock now (fileproc takes it for the run): one
        that does fails this certificate at once, naming the holder."""
        try:
            if not os.path.lexists(job.cert_dir):
                self.made.add(job.cert_dir)
            make_directories(job.cert_dir, CERT_DIR_MODE)
            with CertDir(job.cert_dir) as directory:
                directory.lock(wait=0)
        except LetskencryptError as error:
            self.fleet.fail(job, str(error))
            return False
        except OSError as error:
            self.fleet.fail(job, plain_words(error))
            return False
        return True

    def write(
        self, forked: "launch.ForkedRole | subprocess.Popen[bytes]", document: dict[str, Any]
    ) -> None:
        assert forked.stdin is not None
        try:
            write_all(forked.stdin.fileno(), (json.dumps(document) + "\n").encode())
        except OSError as error:
            self.broken = f"could not reach the roles: {plain_words(error)}"

    def see_through(self) -> None:
        fleet = self.fleet
        stop_deadline = math.inf
        while self.started < len(self.jobs) or self.flights:
            if fleet.interrupted is None:
                fleet.interrupted = interrupts.received()
                if fleet.interrupted is not None:
                    self.interrupt()
                    stop_deadline = time.monotonic() + STOP_GRACE
            elif time.monotonic() > stop_deadline:
                alive = [who.name for who in self.children.values() if not isinstance(who, int)]
                fleet.say(None, f"{', '.join(alive) or 'keyproc'} did not stop; killing the roles")
                self.signal(signal.SIGKILL)
                stop_deadline = math.inf
            while (
                self.started < len(self.jobs)
                and len(self.flights) < fleet.concurrency
                and self.broken is None
                and fleet.interrupted is None
            ):
                self.take_off(self.started)
                self.started += 1
            if self.started < len(self.jobs) and (self.broken or fleet.interrupted):
                self.leave_the_rest()
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                self.relay.pump(POLL_INTERVAL)
                self.land_finished()
                continue
            self.exited(pid, os.waitstatus_to_exitcode(status))
            self.land_finished()

    def leave_the_rest(self) -> None:
        """The certificates not started yet: interrupted, or failed with why."""
        fleet = self.fleet
        for job in self.jobs[self.started :]:
            if fleet.interrupted is not None:
                fleet.outcomes[job.handle] = Outcome(job.handle, "interrupted", EXIT_FAILED)
            else:
                fleet.fail(job, self.broken or "not started")
        self.started = len(self.jobs)

    def take_off(self, instance: int) -> None:
        job = self.jobs[instance]
        if self.broken is not None:
            return
        keyproc = launch.fork_role("keyproc")
        self.relay.add(job.handle, keyproc.stdout, nested=True)
        self.relay.add(job.handle, keyproc.stderr, nested=True)
        self.children[keyproc.pid] = instance
        flight = Flight(job, instance, keyproc, installed_set(job.cert_dir))
        self.flights[instance] = flight
        assert keyproc.stdin is not None
        if not self.dealer.deal(instance, keyproc.stdin.fileno()):
            self.broken = "could not hand a certificate its tokens"
        keyproc.stdin.close()
        keyproc.stdin = None

    def exited(self, pid: int, code: int) -> None:
        who = self.children.pop(pid, None)
        if who is None:
            return
        if isinstance(who, int):
            flight = self.flights.get(who)
            if flight is not None:
                self.relay.drain(flight.job.handle)
                flight.keyproc_done = True
            return
        self.relay.drain(who.role)
        if self.fleet.interrupted is not None:
            if who is self.driver:
                self.signal(signal.SIGTERM)
            return
        death = f"killed by signal {signal.Signals(-code).name}" if code < 0 else (
            f"exited with status {code}")  # fmt: skip
        if self.started < len(self.jobs) or self.flights:
            self.broken = f"{who.name} {death}"
            self.fleet.say(None, f"{self.broken}; the certificates not done fail")
            self.signal(signal.SIGTERM)
        elif code != 0:
            self.fleet.say(None, f"{who.name} {death}")
            self.fleet.role_failed = True

    def land_finished(self) -> None:
        if self.fleet.interrupted is not None and self.shared_alive():
            # What became of each certificate is known once fileproc and
            # certproc are gone (an install may still be under way).
            return
        for instance, flight in list(self.flights.items()):
            handle = flight.job.handle
            if flight.status is None:
                flight.status = self.relay.statuses.get(handle)
            if not flight.keyproc_done:
                continue
            if flight.status is None and self.broken is None and self.fleet.interrupted is None:
                continue  # netproc has not said yet
            del self.flights[instance]
            self.land(flight)

    def shared_alive(self) -> bool:
        return any(isinstance(who, SharedProcess) for who in self.children.values())

    def land(self, flight: Flight) -> None:
        job, fleet = flight.job, self.fleet
        status = flight.status
        if status == "interrupted" or (status is None and fleet.interrupted is not None):
            signum = fleet.interrupted or signal.SIGTERM
            message = interruption(signum, job.cert_dir, flight.before)
            if job.deploy_hook and installed_set(job.cert_dir) != flight.before:
                message += "; its deploy hook runs at the next run"
            fleet.say(job.handle, message)
            fleet.outcomes[job.handle] = Outcome(job.handle, "interrupted", EXIT_FAILED)
            return
        if not isinstance(status, int):
            status = EXIT_FAILED
        fleet.finished(job, job.finish(status))

    def interrupt(self) -> None:
        """A stop signal: netproc first (it withdraws what it published in
        DNS, and says which certificates it cut short), the others once it
        has exited (exited())."""
        self.signal(signal.SIGTERM, only=self.driver)

    @property
    def driver(self) -> SharedProcess:
        (driver,) = [shared for shared in self.shared if spec_of(shared.role).drives]
        return driver

    def signal(self, signum: int, only: SharedProcess | None = None) -> None:
        for pid, who in self.children.items():
            if only is None or who is only:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

    def end(self) -> None:
        """Tell the shared roles no certificate is left, wait for them (and
        whatever keyproc is left), then make sure nothing is."""
        if self.dealer is not None:
            self.dealer.close()
        for forked in (shared.forked for shared in self.shared):
            if forked.stdin is not None:
                with contextlib.suppress(OSError):
                    forked.stdin.close()
                forked.stdin = None
        deadline = time.monotonic() + STOP_GRACE
        while self.children and time.monotonic() < deadline:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                self.relay.pump(POLL_INTERVAL)
                continue
            self.exited(pid, os.waitstatus_to_exitcode(status))
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.children.pop(pid)
        self.relay.drain()
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        for cert_dir in self.made:
            # Empty unless a certificate was installed: a failed run leaves no trace.
            with contextlib.suppress(OSError):
                os.rmdir(cert_dir)


class Dealer:
    """The child that makes each certificate's edge tokens and writes each
    role its own (fleet.SharedRun): forked before any token exists, it
    holds the write ends of the shared roles' stdin, and gets each keyproc's
    stdin over a socket pair as that certificate's turn comes.  So the
    supervisor never holds a token, and no keyproc, forked from the
    supervisor, inherits one."""

    def __init__(self, pid: int, channel: socket.socket) -> None:
        self.pid = pid
        self.channel = channel

    @classmethod
    def start(cls, run: "SharedRun", supervisor: int) -> "Dealer":
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            status = EXIT_FAILED
            try:
                ours.close()
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                if os.getppid() == supervisor:
                    status = deal_until_closed(run, supervisor, theirs)
            finally:
                os._exit(status)
        theirs.close()
        return cls(pid, ours)

    def deal(self, instance: int, keyproc_stdin: int) -> bool:
        """Have the certificate `instance`'s tokens made and handed out;
        whether that was done."""
        try:
            socket.send_fds(self.channel, [str(instance).encode()], [keyproc_stdin])
            return self.channel.recv(16) == b"dealt"
        except OSError:
            return False

    def close(self) -> None:
        self.channel.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def deal_until_closed(run: "SharedRun", supervisor: int, channel: socket.socket) -> int:
    """In the dealer: for each certificate asked for, its tokens, to its
    keyproc (on the descriptor that came with the request) and to the shared
    roles; then "dealt" back."""
    run_user = run.fleet.run_user
    while True:
        data, fds, _flags, _address = socket.recv_fds(channel, 32, 1)
        if not data:
            return 0
        instance = int(data)
        job = run.jobs[instance]
        edge_tokens = {name: secrets.token_urlsafe(32) for name in EDGES}
        server_tokens = {name: secrets.token_urlsafe(32) for name in EDGES}
        document = launch.role_document(
            "keyproc",
            run.run_dir,
            job.settings["keyproc"],
            verbosity=run.fleet.verbosity,
            run_user=(run_user.uid, run_user.gid) if run_user else None,
            supervisor_pid=supervisor,
            edge_tokens=edge_tokens,
            server_tokens=server_tokens,
            instance=instance,
        )
        with contextlib.suppress(BrokenPipeError):  # it died: its status says why
            write_all(fds[0], json.dumps(document).encode())
        os.close(fds[0])
        for shared in run.shared:
            if instance not in shared.instances:
                continue
            line = host.certificate_document(
                shared.role, instance, edge_tokens, server_tokens, run.parts[instance]
            )
            assert shared.forked.stdin is not None
            write_all(shared.forked.stdin.fileno(), (json.dumps(line) + "\n").encode())
        channel.send(b"dealt")
