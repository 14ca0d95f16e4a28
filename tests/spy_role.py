"""A shared role of a `--config` run (host.py) that first says what it was
given, then serves as the real one; started in the role's place by
tests/compromised_fleet.py.

    python tests/spy_role.py ROLE

It writes one line on stderr, before it serves anything:

    SPY {"role": ..., "part": ..., "certificates": [...], "secrets": [...]}

`secrets`: the paths of the secrets the certificates it serves would have
it load (an account key, a new one, an EAB key), so that a test can see
that no process of the role is given two accounts' secrets.
"""

import json
import os
import sys

from letskencrypt import host, process
from letskencrypt.roles import spec_of


def main(role: str) -> None:
    process.begin(role)
    lines = host.Lines(0)
    run = host.read_run(role, lines)
    one_process_per = spec_of(role).one_process_per
    secrets = {
        path
        for config in run.configs.values()
        for path in (one_process_per(config.settings) if one_process_per else ())
        if path
    }
    line = {"role": role, "part": run.part, "certificates": sorted(run.configs),
            "secrets": sorted(secrets)}  # fmt: skip
    sys.stderr.write(f"SPY {json.dumps(line)}\n")
    sys.stderr.flush()
    code = host.serve_run(role, run, lines)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1])
