"""`python -m letskencrypt.roles ROLE`: a native role process (see launch.py)."""

import sys

from letskencrypt import process
from letskencrypt.constants import EXIT_FAILED
from letskencrypt.roles import ROLES


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in ROLES:
        sys.stderr.write(f"usage: python -m letskencrypt.roles {{{','.join(ROLES)}}}\n")
        sys.exit(EXIT_FAILED)
    process.run_role(sys.argv[1])


if __name__ == "__main__":
    main()
