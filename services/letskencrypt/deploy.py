"""Deploy hooks: the command run after a certificate was installed, and the
record of one that is owed.

A hook runs in the supervisor once the roles have exited (never in a
sandboxed role): /bin/sh -c COMMAND, standard input from /dev/null, at most
HOOK_TIMEOUT, with the certificate's names and paths in its environment.

A hook is owed when a run installed a certificate set but did not run its
hook to success: a stop signal came first (a stopped run runs no hook), or
the hook failed.  The certificate directory remembers it in OWED, the set's
name there (filestore: `.sets/<id>`), written by the supervisor; the next
run runs the hook once while that set is still the one installed, even when
nothing is due, and forgets it.  It is kept with the certificate rather
than in the run state: a run of one certificate has none, and the state file
is never a source of truth.  fileproc, which may write the directory, could
forge or remove it: at worst one hook run too many or too few, less than it
can do to the certificate itself.
"""

import contextlib
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from typing import Protocol

from letskencrypt.errors import plain_words
from letskencrypt.filestore import CERT, CHAIN, FULLCHAIN, SETS, installed_set

# The longest a deploy hook may run.
HOOK_TIMEOUT = 300.0
OWED = ".deploy-owed"
SET_NAME = re.compile(re.escape(SETS) + r"/[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
MAX_OWED_BYTES = 256


class Deployable(Protocol):
    """A certificate with a deploy hook (fleet.Job)."""

    handle: str
    names: tuple[str, ...]
    cert_dir: str
    deploy_hook: str | None


@dataclass(frozen=True)
class Deployed:
    """What deploy() did: "ran", "failed" (`problem` says why) or "deferred"
    (the run was stopped); `earlier`: for a set an earlier run installed."""

    result: str
    earlier: bool
    problem: str | None = None


def deploy(job: Deployable, before: str | None, stopped: bool) -> Deployed | None:
    """After a run: the job's hook if the run installed a new set (`before`:
    the set installed when it started) or an earlier run owes it for the set
    installed now; None if there was nothing to run."""
    live = installed_set(job.cert_dir)
    new = live is not None and live != before
    owed_now = live is not None and owed(job.cert_dir) == live
    if not job.deploy_hook or not (new or owed_now):
        forget(job.cert_dir)
        return None
    assert live is not None
    if stopped:
        return Deployed("deferred", not new, owe(job.cert_dir, live))
    problem = run_hook(job)
    if problem is not None:
        unrecorded = owe(job.cert_dir, live)
        return Deployed("failed", not new, f"{problem}; {unrecorded}" if unrecorded else problem)
    forget(job.cert_dir)
    return Deployed("ran", not new)


EARLIER_LINE = "deploy hook: ran for the certificate an earlier run installed"


def deferred_line(deployed: Deployed) -> str:
    """What a stopped run says of a hook it leaves to the next run."""
    line = "deploy hook: the run was stopped; it runs at the next run"
    return f"{line} ({deployed.problem})" if deployed.problem else line


def failure_line(deployed: Deployed) -> str:
    return (f"deploy hook: {deployed.problem} (the certificate stays installed; "
            "the hook runs again at the next run)")  # fmt: skip


def hook_environment(job: Deployable) -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("LETSKENCRYPT_")
    }
    environment.update(
        LETSKENCRYPT_CERTIFICATE=job.handle,
        LETSKENCRYPT_NAMES=" ".join(job.names),
        LETSKENCRYPT_CERT_DIR=job.cert_dir,
        LETSKENCRYPT_CERT=os.path.join(job.cert_dir, CERT),
        LETSKENCRYPT_CHAIN=os.path.join(job.cert_dir, CHAIN),
        LETSKENCRYPT_FULLCHAIN=os.path.join(job.cert_dir, FULLCHAIN),
    )
    return environment


def run_hook(job: Deployable) -> str | None:
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


def owed(cert_dir: str) -> str | None:
    """The set whose hook is owed, if the directory says one is."""
    try:
        fd = os.open(os.path.join(cert_dir, OWED), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, MAX_OWED_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    text = data.decode("ascii", "replace").strip()
    return text if len(data) <= MAX_OWED_BYTES and SET_NAME.fullmatch(text) else None


def owe(cert_dir: str, set_name: str) -> str | None:
    """Remember that `set_name`'s hook is owed (replacing OWED atomically);
    None, or why it could not be remembered."""
    temporary = os.path.join(cert_dir, f"{OWED}.{os.getpid()}")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, f"{set_name}\n".encode("ascii"))
        finally:
            os.close(fd)
        os.replace(temporary, os.path.join(cert_dir, OWED))
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return f"could not note that it is owed: {plain_words(error)}"
    return None


def forget(cert_dir: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(cert_dir, OWED))
