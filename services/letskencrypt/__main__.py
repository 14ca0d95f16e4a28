"""The `letskencrypt` command (`python -m letskencrypt`): a run (cli.py),
`letskencrypt status` (confrun.py) or `letskencrypt sandbox-check`
(sandbox_check.py)."""

import sys

from letskencrypt import interrupts


def main() -> None:
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
