"""Run a command and sample the memory of its whole process tree from /proc.

Shared by bench/issuance.py and bench/compare.py.  Every SAMPLE_INTERVAL the
process and all its descendants are read from /proc/PID/smaps_rollup: the
peak of the summed PSS (shared pages counted once, so the honest "all
processes together"), the peak of the summed RSS, and the peak RSS of the
single largest process.  A process that lives shorter than one interval may
be missed; the clients measured here live far longer.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SAMPLE_INTERVAL = 0.005


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from the parent links in /proc."""
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


@dataclass
class Measurement:
    """Wall time and memory peaks of one command (or several, see ``combine``)."""

    seconds: float
    peak_rss_kib: int  # summed over the tree
    peak_pss_kib: int  # summed over the tree
    peak_process_rss_kib: int  # the single largest process
    peak_processes: int
    returncode: int = 0
    stdout: bytes = b""
    stderr: bytes = b""

    @staticmethod
    def combine(parts: Sequence[Measurement]) -> Measurement:
        """Commands run one after the other: times add up, peaks are the largest."""
        return Measurement(
            seconds=sum(part.seconds for part in parts),
            peak_rss_kib=max((part.peak_rss_kib for part in parts), default=0),
            peak_pss_kib=max((part.peak_pss_kib for part in parts), default=0),
            peak_process_rss_kib=max((part.peak_process_rss_kib for part in parts), default=0),
            peak_processes=max((part.peak_processes for part in parts), default=0),
            returncode=next((part.returncode for part in parts if part.returncode), 0),
            stderr=b"".join(part.stderr for part in parts),
        )


def measure(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    sample: bool = True,
) -> Measurement:
    """Run ``argv`` to its end, sampling its process tree (unless not
    `sample`: a run timed alone, see bench/compare.py); output is captured."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        process = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        peak_rss = peak_pss = peak_process = peak_processes = 0
        if not sample:
            process.wait()
        while process.poll() is None:
            pids = descendants(process.pid)
            samples = [memory_kib(pid) for pid in pids]
            peak_rss = max(peak_rss, sum(rss for rss, _ in samples))
            peak_pss = max(peak_pss, sum(pss for _, pss in samples))
            peak_process = max(peak_process, max((rss for rss, _ in samples), default=0))
            peak_processes = max(peak_processes, len(pids))
            time.sleep(SAMPLE_INTERVAL)
        elapsed = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        return Measurement(
            seconds=elapsed,
            peak_rss_kib=peak_rss,
            peak_pss_kib=peak_pss,
            peak_process_rss_kib=peak_process,
            peak_processes=peak_processes,
            returncode=process.returncode,
            stdout=out.read(),
            stderr=err.read(),
        )
