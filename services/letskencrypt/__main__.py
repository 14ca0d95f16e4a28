"""The `letskencrypt` command (`python -m letskencrypt`): a run (cli.py), or
`letskencrypt sandbox-check` (sandbox_check.py)."""

import sys

from letskencrypt import cli, sandbox_check


def main() -> None:
    if sys.argv[1:2] == ["sandbox-check"]:
        sandbox_check.main(sys.argv[2:])
    cli.main()


if __name__ == "__main__":
    main()
