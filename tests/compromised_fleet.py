"""One real `letskencrypt --config FILE` run whose netproc is tests/attacker_fleet.py.

    python -m tests.compromised_fleet <letskencrypt arguments with --config>

The supervisor, the shared roles and each certificate's keyproc are the
real ones; only netproc is started as that file instead of forked, and each
acctproc as tests/spy_role.py (which says what it was given, then serves as
the real one).
"""

import os
import subprocess
import sys
from pathlib import Path

from letskencrypt import cli, conf, confrun, fleet, launch, options
from letskencrypt.errors import LetskencryptError
from letskencrypt.relay import Relay

ATTACKER = str(Path(__file__).resolve().with_name("attacker_fleet.py"))
SPY = str(Path(__file__).resolve().with_name("spy_role.py"))


class CompromisedRun(fleet.SharedRun):
    def start_role(self, role: str) -> "launch.ForkedRole | subprocess.Popen[bytes]":
        if role == "netproc":
            return launch.spawn_role(role, argv=[sys.executable, ATTACKER], dies_with_us=True)
        if role == "acctproc":
            return launch.spawn_role(role, argv=[sys.executable, SPY, role], dies_with_us=True)
        return super().start_role(role)


class CompromisedFleet(fleet.Fleet):
    def shared_run(self, jobs: list[fleet.Job]) -> fleet.SharedRun:
        return CompromisedRun(self, jobs)


def main(argv: list[str]) -> int:
    args = options.build_parser().parse_args(argv)
    try:
        config = conf.load(os.path.abspath(args.config))
        user = cli.run_user(args.user)
        jobs = confrun.build_jobs(args, config, user)
    except LetskencryptError as error:
        sys.stderr.write(f"letskencrypt: {error}\n")
        return 1
    runner = CompromisedFleet(
        jobs=jobs, concurrency=2, verbosity=args.verbose, run_user=user, relay=Relay()
    )
    return runner.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
