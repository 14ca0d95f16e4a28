"""One real run of `letskencrypt` with one role replaced by tests/attacker_role.py.

    python -m tests.compromised_run ROLE TARGET_JSON -- <letskencrypt arguments>

The supervisor is the real one; only its `role_argv` differs, for ROLE.
"""

import os
import sys
from pathlib import Path
from typing import Any

from letskencrypt import cli, options
from letskencrypt.errors import InputError
from letskencrypt.supervisor import Supervisor

ATTACKER = str(Path(__file__).resolve().with_name("attacker_role.py"))


class CompromisedSupervisor(Supervisor):
    """Starts the attacker in place of one role; everything else is as usual."""

    def __init__(self, attacker: str, target_json: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attacker = attacker
        self.target_json = target_json

    def role_argv(self, role: str) -> list[str] | None:
        if role == self.attacker:
            return [sys.executable, ATTACKER, role, self.target_json]
        return super().role_argv(role)


def main(argv: list[str]) -> int:
    role, target_json, separator, *arguments = argv
    assert separator == "--", argv
    args = options.build_parser().parse_args(arguments)
    try:
        settings = options.role_settings(args)
        user = cli.run_user(args.user)
    except InputError as error:
        sys.stderr.write(f"letskencrypt: {error}\n")
        return 1
    supervisor = CompromisedSupervisor(
        role,
        target_json,
        settings=settings,
        cert_dir=os.path.abspath(args.cert_dir),
        verbosity=args.verbose,
        run_user=user,
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
