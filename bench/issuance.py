"""Wall time and peak memory (all processes together) of one issuance against pebble.

Run by hand, not in CI:  .venv/bin/python -m bench.issuance [--runs N] [--key-type T]

Memory is sampled every few milliseconds over the supervisor and all its
descendants from /proc: the peak of the summed RSS, and of the summed PSS
(which counts shared pages once, so it is the honest "all processes together").
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.pebble import Pebble

LETSKENCRYPT = str(Path(sys.executable).parent / "letskencrypt")
SAMPLE_INTERVAL = 0.005


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def memory_kib(pid: int) -> tuple[int, int]:
    """(rss, pss) in KiB, zero for a process that is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    fields = {
        line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()[1:] if ":" in line
    }
    return fields.get("Rss", 0), fields.get("Pss", 0)


def one_run(pebble: Pebble, workdir: Path, args: list[str]) -> tuple[float, int, int, int]:
    argv = [
        LETSKENCRYPT, "--server", pebble.directory_url, "--ca-bundle", pebble.ca_bundle,
        "--trust-anchors", pebble.trust_anchors,
        "-C", str(pebble.challenge_dir), "-c", str(workdir / "certs"),
        "-f", str(workdir / "account.pem"), "-k", str(workdir / "domain.pem"), *args,
    ]
    started = time.monotonic()
    client = subprocess.Popen(argv, stderr=subprocess.PIPE)
    peak_rss = peak_pss = peak_processes = 0
    while client.poll() is None:
        pids = descendants(client.pid)
        samples = [memory_kib(pid) for pid in pids]
        peak_rss = max(peak_rss, sum(rss for rss, _ in samples))
        peak_pss = max(peak_pss, sum(pss for _, pss in samples))
        peak_processes = max(peak_processes, len(pids))
        time.sleep(SAMPLE_INTERVAL)
    elapsed = time.monotonic() - started
    _, stderr = client.communicate()
    if client.returncode != 0:
        raise SystemExit(f"run failed ({client.returncode}): {stderr.decode()}")
    return elapsed, peak_rss, peak_pss, peak_processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--key-type", default="ecdsa256")
    options = parser.parse_args()
    names = ["bench.example.org", "www.bench.example.org"]
    quiet = {"PEBBLE_WFE_NONCEREJECT": "0"}
    with Pebble(env=quiet) as pebble, tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o755)
        pebble.challenge_dir.chmod(0o755)
        workdir = Path(tmp)
        times, rss, pss = [], [], []
        for index in range(options.runs):
            first = ["-n", "-N", "--key-type", options.key_type] if index == 0 else ["-F"]
            elapsed, peak_rss, peak_pss, processes = one_run(pebble, workdir, [*first, *names])
            times.append(elapsed)
            rss.append(peak_rss)
            pss.append(peak_pss)
            print(
                f"run {index + 1}: {elapsed:.2f} s, peak RSS {peak_rss / 1024:.1f} MiB, "
                f"peak PSS {peak_pss / 1024:.1f} MiB, {processes} processes"
            )
        print(
            f"median of {options.runs}: {statistics.median(times):.2f} s wall, "
            f"peak PSS {max(pss) / 1024:.1f} MiB (RSS sum {max(rss) / 1024:.1f} MiB)"
        )


if __name__ == "__main__":
    main()
