"""Many certificates in one run (`letskencrypt --config FILE`).

Each certificate gets a lane: a supervisor of its own with its own eight
roles, forked from this process, which has loaded every role's code once
(launch.prepare_to_fork) and holds no key and no token.  A lane's roles know
only that certificate: its keyproc holds its domain key and no other, its
acctproc signs orders for its names only, its fileproc writes its
certificate directory only, its chngproc its challenge directory only.  So
what one certificate's roles may do, an attacker in them may do to that
certificate alone; the account (one per authority) is the same in every lane
of that authority.

Before any lane starts, the certificates that are not due are left out by
the same rule revokeproc applies (renewal.decide on the installed set) and
by what an earlier run learnt of the CA's renewal information (ARI, the
run state's note, see ari.judge): a rerun with nothing due starts no role
and sends no request.  A certificate is due for a lane when its lifetime
says so, when the time picked in the CA's renewal window has come, or when
the CA is to be asked again (no note for it yet, or its Retry-After has
passed); a lane's netproc gets the note, and its acctproc the ARI
identifier of the certificate installed when the lane starts.  Lanes run
`concurrency` at a time; the first lane of an authority whose account key
does not exist yet runs alone, so that one account is made, not one per lane.

After a lane has changed its certificate (all its roles have exited), the
certificate's files are published at the paths the configuration names for
them (symlinks into the certificate directory), and its deploy hook runs.
Exit status: 0 when something changed and nothing failed, 1 when anything
failed (the others are still done), 2 when nothing was due.
"""

import contextlib
import dataclasses
import fcntl
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from letskencrypt import ari, interrupts, launch
from letskencrypt.certs import ari_cert_id, configured_anchors, trust_problem
from letskencrypt.constants import (
    EXIT_CHANGED,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_NOTHING_TO_DO,
)
from letskencrypt.errors import LetskencryptError, plain_words
from letskencrypt.linux import PR_SET_PDEATHSIG, prctl
from letskencrypt.options import installed_ari_cert_id
from letskencrypt.relay import STYLE, Relay
from letskencrypt.renewal import Decision, decide, load_certificate_file, load_chain_file
from letskencrypt.settings import (
    AcctprocSettings,
    AriNote,
    NetprocSettings,
    RevokeprocSettings,
    RoleSettings,
)
from letskencrypt.supervisor import RunUser, Supervisor, stop_signals_caught

POLL_INTERVAL = 0.02
# How long the lanes get to stop once a stop signal has come.
STOP_GRACE = 10.0
# The longest a deploy hook may run.
HOOK_TIMEOUT = 300.0
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
    # What the command line does after a lane (a key rotation's end).
    finish: Callable[[int], int] = lambda status: status


@dataclass
class Outcome:
    handle: str
    # "changed", "not due", "failed", "interrupted"
    result: str
    status: int
    reason: str = ""


@dataclass
class Lane:
    job: Job
    pid: int


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
        # The lane's revokeproc says it again, as the run's failure.
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
    """The job's settings for a lane starting now: netproc's with the ARI
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
    lanes: dict[int, Lane] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    interrupted: signal.Signals | None = None

    def run(self) -> int:
        """Every due job, `concurrency` lanes at a time; the run's exit status."""
        now = datetime.now(UTC)
        waiting = []
        for job in self.jobs:
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

    def drive(self, waiting: list[Job]) -> None:
        # An authority whose account key does not exist yet: one lane at a
        # time until one has made it.
        opening = {job.authority for job in waiting if not os.path.exists(job.account_key)}
        while waiting or self.lanes:
            if self.interrupted is None:
                self.interrupted = interrupts.received()
                if self.interrupted is not None:
                    for job in waiting:
                        self.outcomes[job.handle] = Outcome(job.handle, "interrupted", EXIT_FAILED)
                    waiting.clear()
                    self.signal_lanes(signal.SIGTERM)
            while waiting and len(self.lanes) < self.concurrency:
                job = self.next_job(waiting, opening)
                if job is None:
                    break
                self.start(job)
            pid, status = os.waitpid(-1, os.WNOHANG) if self.lanes else (0, 0)
            if pid == 0:
                self.relay.pump(POLL_INTERVAL)
                continue
            lane = self.lanes.pop(pid, None)
            if lane is None:
                continue
            self.relay.drain(lane.job.handle)
            if os.path.exists(lane.job.account_key):
                opening.discard(lane.job.authority)
            self.finished(lane.job, os.waitstatus_to_exitcode(status))

    def next_job(self, waiting: list[Job], opening: set[str]) -> Job | None:
        """The next job that may start now: not one of an authority whose
        account is being made, unless it is the one making it."""
        running = {lane.job.authority for lane in self.lanes.values()}
        for index, job in enumerate(waiting):
            if job.authority in opening and job.authority in running:
                continue
            return waiting.pop(index)
        return None

    def start(self, job: Job) -> None:
        read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os._exit(self.lane_body(job, parent, write_end))
        os.close(write_end)
        self.relay.add(
            job.handle, os.fdopen(read_end, "rb", buffering=0), nested=True, counts=True
        )
        self.lanes[pid] = Lane(job, pid)

    def lane_body(self, job: Job, parent: int, output: int) -> int:
        """In the lane's process: one certificate's run, as `letskencrypt`
        without --config would do it; its output goes to `output`."""
        status = EXIT_FAILED
        try:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:
                return EXIT_FAILED
            moved = fcntl.fcntl(output, fcntl.F_DUPFD, launch.HIGH_FD)
            nothing = os.open(os.devnull, os.O_RDONLY)
            os.dup2(nothing, 0)
            os.dup2(moved, 1)
            os.dup2(moved, 2)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            # The lane's lines go to us, plain; we give them the run's style.
            STYLE.log_format, STYLE.timestamps = "text", False
            supervisor = Supervisor(
                settings=job.settings,
                cert_dir=job.cert_dir,
                verbosity=self.verbosity,
                run_user=self.run_user,
                prepared=True,
            )
            status = job.finish(supervisor.run())
            os.write(2, f"{supervisor.relay.counts_line()}\n".encode())
        except LetskencryptError as error:
            os.write(2, f"letskencrypt: {error}\n".encode())
        except OSError as error:
            os.write(2, f"letskencrypt: {plain_words(error)}\n".encode())
        except BaseException as error:  # one line, never a traceback
            os.write(2, f"letskencrypt: internal error: {plain_words(error)}\n".encode())
        return status

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

    def signal_lanes(self, signum: int) -> None:
        for pid in self.lanes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def publish_and_deploy(self) -> None:
        for job in self.jobs:
            outcome = self.outcomes.get(job.handle)
            try:
                publish(job)
            except OSError as error:
                self.fail(job, f"could not publish the certificate: {plain_words(error)}")
                continue
            if outcome is None or outcome.result != "changed" or not job.deploy_hook:
                continue
            problem = run_deploy_hook(job)
            if problem is not None:
                self.fail(job, f"deploy hook: {problem} (the certificate stays installed)")

    def fail(self, job: Job, message: str) -> None:
        self.say(job.handle, message)
        self.outcomes[job.handle] = Outcome(job.handle, "failed", EXIT_FAILED, message)

    def say(self, handle: str, message: str, level: int = 0) -> None:
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
        if failed or "interrupted" in results:
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


def hook_environment(job: Job) -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("LETSKENCRYPT_")
    }
    environment.update(
        LETSKENCRYPT_CERTIFICATE=job.handle,
        LETSKENCRYPT_NAMES=" ".join(job.names),
        LETSKENCRYPT_CERT_DIR=job.cert_dir,
        LETSKENCRYPT_CERT=os.path.join(job.cert_dir, "cert.pem"),
        LETSKENCRYPT_CHAIN=os.path.join(job.cert_dir, "chain.pem"),
        LETSKENCRYPT_FULLCHAIN=os.path.join(job.cert_dir, "fullchain.pem"),
    )
    return environment


def run_deploy_hook(job: Job) -> str | None:
    """Run the job's deploy hook with /bin/sh; None if it succeeded, else why not."""
    assert job.deploy_hook is not None
    try:
        completed = subprocess.run(
            ["/bin/sh", "-c", job.deploy_hook],
            env=hook_environment(job),
            stdin=subprocess.DEVNULL,
            timeout=HOOK_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"still running after {HOOK_TIMEOUT:.0f} s; killed"
    except OSError as error:
        return plain_words(error)
    if completed.returncode < 0:
        return f"killed by signal {signal.Signals(-completed.returncode).name}"
    if completed.returncode != 0:
        return f"exited with status {completed.returncode}"
    return None


def default_concurrency() -> int:
    """Lanes at a time: most of a lane's time is spent waiting on the CA."""
    return max(2, min(16, 4 * (os.cpu_count() or 1)))

