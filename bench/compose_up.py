"""`podman-compose up` to a certificate on disk, and what each role's image
spends importing its code.

Run by hand, after `make images`, not in CI:

    .venv/bin/python -m bench.compose_up [--runs 5] [--out bench/results/compose.md]

Each run is a fresh compose project (new volumes, new keys, new account)
against one local pebble, exactly as tests/test_compose.py runs it; two times
are taken from starting `podman-compose up`: until the certificate is on
disk (cert.pem in the certificate volume, the issue's measure), and until
`podman-compose up` has exited (it then stops and removes the containers).
The import times are `python3 -X importtime` of the container
entry point and the role's module inside each role's own image.
"""

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.pebble import Pebble
from tests.test_compose import CONTAINERS_CONF, PODMAN_COMPOSE, ROLES, ROOT, image, made_pod

IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \| (\S+)$")


def compose_up_seconds(pebble: Pebble) -> tuple[float, float]:
    """Seconds from `podman-compose up` to the certificate on disk, and to its exit."""
    with (
        tempfile.TemporaryDirectory(prefix="lk-compose-bench-") as base,
        made_pod(pebble, Path(base)) as pod,
    ):
        certificate = pod.dirs["certs"] / "cert.pem"
        started = time.monotonic()
        up = subprocess.Popen(
            [PODMAN_COMPOSE, "-p", pod.project, "-f", str(ROOT / "compose.yaml"), "up",
             "--abort-on-container-exit", "--exit-code-from", "netproc"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=pod.environment(),
        )  # fmt: skip
        on_disk = None
        while up.poll() is None:
            if on_disk is None and certificate.exists():
                on_disk = time.monotonic() - started
            time.sleep(0.01)
        exited = time.monotonic() - started
        output = up.stdout.read().decode(errors="replace") if up.stdout else ""
        if on_disk is None and certificate.exists():
            on_disk = exited
        if up.returncode != 0 or on_disk is None:
            raise SystemExit(f"compose up failed ({up.returncode}):\n{output[-3000:]}")
        return on_disk, exited


def import_milliseconds(role: str) -> float:
    """Cumulative import time of the container entry point and the role's module."""
    completed = subprocess.run(
        ["podman", "run", "--rm", "--entrypoint", "/usr/bin/python3", image(role), "-X",
         "importtime", "-c", f"import letskencrypt.container, letskencrypt.roles.{role}"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "CONTAINERS_CONF": CONTAINERS_CONF},
    )  # fmt: skip
    total = 0
    for line in completed.stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match and match.group(2) in ("letskencrypt.container", f"letskencrypt.roles.{role}"):
            total += int(match.group(1))
    return total / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default="bench/results/compose.md")
    args = parser.parse_args()
    with Pebble() as pebble:
        runs = [compose_up_seconds(pebble) for _ in range(args.runs)]
    on_disk = [run[0] for run in runs]
    exited = [run[1] for run in runs]
    imports = {role: import_milliseconds(role) for role in ROLES}
    lines = [
        "# podman-compose up to a certificate on disk",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
        "`python -m bench.compose_up` against a local pebble; load average at the end: "
        f"{os.getloadavg()[0]:.2f}.",
        "",
        f"- {args.runs} runs, each a fresh project. To the certificate on disk: median "
        f"**{statistics.median(on_disk):.2f} s** (range {min(on_disk):.2f}-{max(on_disk):.2f} s); "
        "target: at most 4 s.",
        f"- To `podman-compose up` exiting (containers stopped and removed): median "
        f"{statistics.median(exited):.2f} s (range {min(exited):.2f}-{max(exited):.2f} s).",
        "",
        "| role | import time of its code in its image (ms) |",
        "| --- | ---: |",
        *(f"| {role} | {ms:.0f} |" for role, ms in imports.items()),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
