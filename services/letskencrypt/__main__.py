"""The `letskencrypt` command (`python -m letskencrypt`): a run (cli.py),
`letskencrypt status` (confrun.py) or `letskencrypt sandbox-check`
(sandbox_check.py)."""

import os
import sys

from letskencrypt import interrupts
from letskencrypt.constants import COMMAND_ENVIRONMENT
from letskencrypt.linux import PR_SET_NAME, prctl

# Where this package is imported from (the start below must find it again).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def keep_only_our_environment() -> None:
    """Start again as `python -P -m letskencrypt` with only COMMAND_ENVIRONMENT
    of the caller's environment, when it has more: the roles are forked from
    this process, and whatever else it was given (a cloud credential, a
    proxy with a password) would otherwise be in every role's memory and
    its /proc/PID/environ.  Before anything else, signal handlers
    included: a stop signal the caller blocked stays blocked across it."""
    if set(os.environ) <= set(COMMAND_ENVIRONMENT):
        return
    environment = {k: os.environ[k] for k in COMMAND_ENVIRONMENT if k in os.environ}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, (PACKAGE_ROOT, environment.get("PYTHONPATH")))
    )
    # -P: no working directory on sys.path (a `letskencrypt` there is not ours).
    argv = [sys.executable, "-P", "-m", "letskencrypt", *sys.argv[1:]]
    os.execve(sys.executable, argv, environment)  # noqa: S606 - ourselves, no shell


def main() -> None:
    keep_only_our_environment()
    # Started again as `python -m`, the process (and whatever it forks before
    # a role names itself) would show as "python" in ps and /proc/PID/comm.
    prctl(PR_SET_NAME, b"letskencrypt")
    if sys.argv[1:2] == ["sandbox-check"]:
        from letskencrypt import sandbox_check

        sandbox_check.main(sys.argv[2:])
    if sys.argv[1:2] == ["status"]:
        from letskencrypt import confrun

        confrun.status_main(sys.argv[2:])
    # Before the imports below, which take most of a second: Ctrl-C from
    # here on is remembered, and the supervisor acts on it (interrupts.py).
    interrupts.catch()
    from letskencrypt import cli

    cli.main()


if __name__ == "__main__":
    main()
