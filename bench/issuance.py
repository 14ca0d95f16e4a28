"""Wall time and peak memory (all processes together) of one issuance against pebble.

Run by hand, not in CI:  .venv/bin/python -m bench.issuance [--runs N] [--key-type T]

Memory is sampled every few milliseconds over the supervisor and all its
descendants from /proc: the peak of the summed RSS, and of the summed PSS
(which counts shared pages once, so it is the honest "all processes together");
the sampler is bench/sampler.py, shared with bench/compare.py.
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.sampler import measure
from tests.pebble import Pebble

LETSKENCRYPT = str(Path(sys.executable).parent / "letskencrypt")


def one_run(pebble: Pebble, workdir: Path, args: list[str]) -> tuple[float, int, int, int]:
    argv = [
        LETSKENCRYPT, "--server", pebble.directory_url, "--ca-bundle", pebble.ca_bundle,
        "--trust-anchors", pebble.trust_anchors,
        "-C", str(pebble.challenge_dir), "-c", str(workdir / "certs"),
        "-f", str(workdir / "account.pem"), "-k", str(workdir / "domain.pem"), *args,
    ]
    run = measure(argv)
    if run.returncode != 0:
        raise SystemExit(f"run failed ({run.returncode}): {run.stderr.decode()}")
    return run.seconds, run.peak_rss_kib, run.peak_pss_kib, run.peak_processes


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
