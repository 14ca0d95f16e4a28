"""Where the memory of one issuance is: per process, per kind of mapping.

Run by hand:  .venv/bin/python -m bench.breakdown [--runs N] [--top K]

Like bench/issuance.py it runs letskencrypt against a local pebble and samples
the whole process tree (bench/sampler.py); in addition, whenever the summed
PSS reaches a new peak, it reads /proc/PID/smaps of every process and keeps
that snapshot.  It prints, for the snapshot at the peak of each run, each
process's PSS and private dirty memory and which mappings hold it ([heap],
anonymous mappings, thread stacks, libraries by name), then the medians over
the runs.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.sampler import SAMPLE_INTERVAL, descendants, memory_kib
from tests.pebble import Pebble

LETSKENCRYPT = str(Path(sys.executable).parent / "letskencrypt")
HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")
STACK_SIZE_KIB = 8 * 1024


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def kind_of(name: str, size_kib: int, previous_guard: bool) -> str:
    """A short name for a mapping: a library's base name, [heap], a thread stack..."""
    if name.startswith("/"):
        base = Path(name).name
        if base.startswith("cygrpc"):
            return "libgrpc (cygrpc.so)"
        if "python3" in base and not base.endswith(".so"):
            return "python (binary)"
        if base.startswith("libpython"):
            return "libpython"
        if base.startswith(("libcrypto", "libssl")):
            return base.split(".so")[0]
        if base.startswith("_rust"):
            return "cryptography _rust.so"
        if base.endswith(".so") or ".so." in base:
            return "other .so"
        return "other file"
    if name in ("[heap]", "[stack]", "[vdso]", "[vvar]", "[vsyscall]"):
        return name
    if previous_guard and size_kib >= STACK_SIZE_KIB - 64:
        return "thread stacks"
    return "anonymous"


def mappings(pid: int) -> list[tuple[str, int, dict[str, int]]]:
    """Every mapping of one process: (header line, size KiB, {field: KiB})."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return []
    found: list[tuple[str, int, dict[str, int]]] = []
    for line in text.splitlines():
        if HEADER.match(line):
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            found.append((line, (end - start) // 1024, {}))
        elif found and line.split(":")[0] in ("Pss", "Private_Dirty", "Rss"):
            found[-1][2][line.split(":")[0]] = int(line.split()[1])
    return found


def kinds_of(found: list[tuple[str, int, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """{kind: {"Pss": KiB, "Private_Dirty": KiB, "Rss": KiB}} of one process's mappings."""
    kinds: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    previous_guard = False
    for header, size, values in found:
        fields = header.split(None, 5)
        name = fields[5] if len(fields) > 5 else ""
        kind = kind_of(name, size, previous_guard)
        # A thread stack is an anonymous mapping just after a PROT_NONE guard.
        previous_guard = fields[1].startswith("---") and not name
        for key, value in values.items():
            kinds[kind][key] += value
    return kinds


def sample(argv: list[str]) -> tuple[float, int, dict[int, tuple[str, list]]]:
    """Run `argv`: its wall time, its peak PSS, and each process's mappings at its own peak."""
    started = time.monotonic()
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    peak = 0
    # Each process's mappings when its own PSS was highest: the roles grow
    # until the run ends, and exit one by one faster than smaps can be read.
    own_peak: dict[int, int] = {}
    snapshot: dict[int, tuple[str, list]] = {}
    while process.poll() is None:
        pids = descendants(process.pid)
        samples = {pid: memory_kib(pid)[1] for pid in pids}
        peak = max(peak, sum(samples.values()))
        for pid, pss in samples.items():
            if pss > own_peak.get(pid, 0) + 128:
                found = mappings(pid)
                name = process_name(pid)
                if found and name != "?":
                    own_peak[pid] = pss
                    snapshot[pid] = (name, found)
        time.sleep(SAMPLE_INTERVAL)
    elapsed = time.monotonic() - started
    _, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"run failed ({process.returncode}): {err.decode()}")
    return elapsed, peak, snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=6, help="mapping kinds shown per process")
    parser.add_argument(
        "--dump",
        action="append",
        default=[],
        help="list this process's mappings with 64 KiB or more private dirty",
    )
    parser.add_argument("--quiet", action="store_true", help="medians only")
    options = parser.parse_args()
    names = ["bench.example.org", "www.bench.example.org"]
    per_process: dict[str, list[tuple[int, int]]] = defaultdict(list)
    per_kind: dict[tuple[str, str], list[int]] = defaultdict(list)
    times, peaks = [], []
    with (
        Pebble(env={"PEBBLE_WFE_NONCEREJECT": "0"}) as pebble,
        tempfile.TemporaryDirectory() as tmp,
    ):
        Path(tmp).chmod(0o755)
        pebble.challenge_dir.chmod(0o755)
        workdir = Path(tmp)
        for index in range(options.runs):
            first = ["-n", "-N"] if index == 0 else ["-F"]
            argv = [
                LETSKENCRYPT,
                "--server",
                pebble.directory_url,
                "--ca-bundle",
                pebble.ca_bundle,
                "--trust-anchors",
                pebble.trust_anchors,
                "-C",
                str(pebble.challenge_dir),
                "-c",
                str(workdir / "certs"),
                "-f",
                str(workdir / "account.pem"),
                "-k",
                str(workdir / "domain.pem"),
                *first,
                *names,
            ]
            elapsed, peak, snapshot = sample(argv)
            times.append(elapsed)
            peaks.append(peak)
            if not options.quiet:
                print(f"run {index + 1}: {elapsed:.2f} s, peak PSS {peak / 1024:.1f} MiB")
            for _pid, (name, found) in sorted(snapshot.items()):
                kinds = kinds_of(found)
                if name in options.dump:
                    for header, size, values in found:
                        if values.get("Private_Dirty", 0) >= 64:
                            print(
                                f"    {values['Private_Dirty']:6d} KiB dirty of {size:7d}: "
                                f"{header[:100]}"
                            )
                pss = sum(k.get("Pss", 0) for k in kinds.values())
                dirty = sum(k.get("Private_Dirty", 0) for k in kinds.values())
                per_process[name].append((pss, dirty))
                for kind, values in kinds.items():
                    per_kind[name, kind].append(values.get("Private_Dirty", 0))
                if options.quiet:
                    continue
                print(f"  {name:12} PSS {pss / 1024:5.1f} MiB  private dirty {dirty / 1024:5.1f}")
                top = sorted(kinds.items(), key=lambda kv: -kv[1].get("Private_Dirty", 0))
                for kind, values in top[: options.top]:
                    print(
                        f"      {kind:24} dirty {values.get('Private_Dirty', 0):6d} KiB"
                        f"  pss {values.get('Pss', 0):6d} KiB"
                    )
    print(
        f"median of {options.runs}: {statistics.median(times):.2f} s wall, "
        f"peak PSS {statistics.median(peaks) / 1024:.1f} MiB (max {max(peaks) / 1024:.1f})"
    )
    for name, values in sorted(per_process.items()):
        pss = statistics.median(v[0] for v in values)
        dirty = statistics.median(v[1] for v in values)
        kinds = sorted(
            ((statistics.median(v), kind) for (n, kind), v in per_kind.items() if n == name),
            reverse=True,
        )
        detail = ", ".join(f"{kind} {k / 1024:.1f}" for k, kind in kinds[: options.top] if k)
        print(f"  {name:12} PSS {pss / 1024:5.1f}  dirty {dirty / 1024:5.1f} MiB: {detail}")


if __name__ == "__main__":
    main()
