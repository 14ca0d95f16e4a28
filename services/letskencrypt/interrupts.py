"""Ctrl-C, SIGTERM and SIGHUP in the command line: caught from its first line,
remembered, and acted on only where a run can stop cleanly (the supervisor's
loops), never raised in the middle of something as KeyboardInterrupt.

An interrupted run cleans up, says in one line what it had done, and then
ends by the signal that stopped it, as a shell expects of an interrupted
command (it reports 128 + the signal's number: 130 for SIGINT, 143 for
SIGTERM, 129 for SIGHUP).  A signal that comes before any of our code runs
ends the process the same way, by the kernel's default action.

`__main__` imports this before anything else, so it imports little: the
shorter the time before `catch()`, the shorter the time during which
Python's own KeyboardInterrupt (and its traceback) is in force.
"""

from __future__ import annotations

import os
import signal
import sys

# Not `typing` itself: importing it takes longer than everything else here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_received: list[signal.Signals] = []


def _remember(signum: int, _frame: object) -> None:
    _received.append(signal.Signals(signum))


def catch() -> None:
    """From now on, remember the stop signals instead of acting on them;
    except those the caller had us ignore (`nohup`, a shell's background
    job): they stay ignored.  Those the caller blocked are unblocked, and
    one that came meanwhile is remembered now: started with them blocked
    (`env --block-signal=INT,TERM,HUP letskencrypt ...`), the command has
    no instant at which a stop signal is Python's."""
    caught = [signum for signum in STOP_SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN]
    for signum in caught:
        signal.signal(signum, _remember)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, caught)


def received() -> signal.Signals | None:
    """The first stop signal that came since `catch()`, if any."""
    return _received[0] if _received else None


def exit_status(signum: int) -> int:
    """The status a shell reports for a command that `signum` ended."""
    return 128 + signum


def exit_with(status: int) -> NoReturn:
    """End the process with `status`, at once; the status of an interrupted
    run (`exit_status` of a stop signal) ends it by that signal itself.

    No interpreter teardown: it restores the default handlers before it is
    done, and a stop signal then would kill a run that has finished, with
    its status lost."""
    sys.stdout.flush()
    sys.stderr.flush()
    for signum in STOP_SIGNALS:
        if status == exit_status(signum):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            # Still here: PID 1 of a container, which a signal it does not
            # handle leaves alive; it exits with the status a shell would show.
    os._exit(status)
