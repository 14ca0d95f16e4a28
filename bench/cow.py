"""What the roles' private memory is: pages copied from the fork server, or new.

Run by hand:  .venv/bin/python -m bench.cow [--runs N]

It runs one issuance against a local pebble (as bench/issuance.py does),
with the supervisor's `launch.prepare_to_fork` wrapped: right after it, a
throw-away child of the supervisor (same addresses, nothing of the
supervisor's heap disturbed) walks every Python object reachable from the
garbage collector and the loaded modules and writes which object types
fill each 4 KiB page.  While the run goes on, every role's writable private
mappings are read from /proc/PID/pagemap (root only: it needs the page
frame bits); a page the role maps exclusively is private to it.  At the end
of each run, per role: its private pages by mapping ([heap], anonymous,
the binary's data), and of the [heap] and anonymous ones, how many held
Python objects of the fork server (copied on write: a reference count, a
code object's warm-up counter or inline cache, a dict's version...), by the
type that filled most of the page, and how many did not (memory the role
allocated itself, in free space of the heap or in new mappings).
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import pickle
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.sampler import descendants
from tests.pebble import Pebble

PAGE = 4096
GC_HEADER = 16  # bytes before a tracked object's address (3.11, x86_64/aarch64)
ROLE_NAMES = (
    "netproc", "acctproc", "keyproc", "dnsproc", "chngproc", "certproc", "fileproc", "revokeproc",
)  # fmt: skip


def object_pages() -> dict[int, collections.Counter[str]]:
    """{page number: {type name: bytes}} of every object reachable from here."""
    pages: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    seen: set[int] = set()
    stack: list[object] = [*gc.get_objects(), *sys.modules.values()]
    while stack:
        item = stack.pop()
        address = id(item)
        if address in seen:
            continue
        seen.add(address)
        try:
            size = sys.getsizeof(item)
        except Exception:  # an object without a size: count its header
            size = 16
        kind = "type" if isinstance(item, type) else type(item).__name__
        start = address - GC_HEADER if gc.is_tracked(item) else address
        end = address + size
        page = start // PAGE
        while page * PAGE < end:
            low, high = max(start, page * PAGE), min(end, (page + 1) * PAGE)
            pages[page][kind] += high - low
            page += 1
        stack.extend(gc.get_referents(item))
    return dict(pages)


def wrap_prepare_to_fork(map_path: str) -> None:
    """In the supervisor: after prepare_to_fork, a child writes the page map."""
    from letskencrypt import launch

    prepare = launch.prepare_to_fork

    def prepared() -> None:
        prepare()
        pid = os.fork()
        if pid == 0:
            try:
                with open(map_path, "wb") as out:
                    pickle.dump(object_pages(), out)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)

    launch.prepare_to_fork = prepared


def private_pages(pid: int) -> dict[int, str] | None:
    """{page number: mapping kind} of the pages `pid` alone maps, in its
    writable private mappings; None if it cannot be read (gone)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    except OSError:
        return None
    found: dict[int, str] = {}
    try:
        for line in maps:
            fields = line.split(None, 5)
            if not fields[1].startswith("rw") or fields[1][3] != "p":
                continue
            start, end = (int(x, 16) // PAGE for x in fields[0].split("-"))
            name = fields[5] if len(fields) > 5 else ""
            kind = name if name.startswith("[") else (Path(name).name if name else "anonymous")
            data = os.pread(pagemap, (end - start) * 8, start * 8)
            for index, (entry,) in enumerate(struct.iter_unpack("<Q", data)):
                # Bit 63: present; bit 56: mapped by this process only.
                if entry >> 63 & 1 and entry >> 56 & 1:
                    found[start + index] = kind
    except OSError:
        return None
    finally:
        os.close(pagemap)
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def one_run(argv: list[str], map_path: str) -> dict[str, dict[int, str]]:
    """Run the command; each role's private pages, last read before it ended."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.cow", "--supervisor", map_path, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    last: dict[str, dict[int, str]] = {}
    while process.poll() is None:
        for pid in descendants(process.pid):
            name = process_name(pid)
            if name in ROLE_NAMES and (pages := private_pages(pid)):
                last[name] = pages
        time.sleep(0.01)
    _, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"run failed ({process.returncode}): {err.decode()[-500:]}")
    return last


def report(
    last: dict[str, dict[int, str]], objects: dict[int, collections.Counter[str]], quiet: bool
) -> dict[str, dict[str, int]]:
    """Per role, KiB: total private, per mapping kind, copied per object type, new."""
    summary: dict[str, dict[str, int]] = {}
    for role, pages in sorted(last.items()):
        kinds = collections.Counter(pages.values())
        copied: collections.Counter[str] = collections.Counter()
        new = 0
        for page, kind in pages.items():
            if kind not in ("anonymous", "[heap]"):
                continue
            held = objects.get(page)
            if held:
                copied[held.most_common(1)[0][0]] += 1
            else:
                new += 1
        row = {"private": len(pages) * 4, "copied": sum(copied.values()) * 4, "new": new * 4}
        row.update({f"map {k}": v * 4 for k, v in kinds.items()})
        row.update({f"obj {k}": v * 4 for k, v in copied.items()})
        summary[role] = row
        if quiet:
            continue
        print(
            f"  {role:10} private {row['private']:6d} KiB: "
            + ", ".join(f"{k} {v * 4}" for k, v in kinds.most_common(4))
        )
        print(
            f"             [heap]+anonymous: copied {row['copied']} KiB (pages mostly "
            + ", ".join(f"{k} {v * 4}" for k, v in copied.most_common(7))
            + f"), new {row['new']} KiB"
        )
    return summary


def main() -> None:
    if sys.argv[1:2] == ["--supervisor"]:
        wrap_prepare_to_fork(sys.argv[2])
        sys.argv = ["letskencrypt", *sys.argv[3:]]
        from letskencrypt import __main__

        __main__.main()
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quiet", action="store_true", help="medians only")
    options = parser.parse_args()
    rows: dict[str, dict[str, list[int]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    quiet = {"PEBBLE_WFE_NONCEREJECT": "0"}
    with Pebble(env=quiet) as pebble, tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o755)
        pebble.challenge_dir.chmod(0o755)
        workdir = Path(tmp)
        map_path = str(workdir / "objects.pickle")
        for index in range(options.runs + 1):
            argv = [
                "--server", pebble.directory_url, "--ca-bundle", pebble.ca_bundle,
                "--trust-anchors", pebble.trust_anchors, "-C", str(pebble.challenge_dir),
                "-c", str(workdir / "certs"), "-f", str(workdir / "account.pem"),
                "-k", str(workdir / "domain.pem"), *(["-n", "-N"] if index == 0 else ["-F"]),
                "bench.example.org",
            ]  # fmt: skip
            last = one_run(argv, map_path)
            if index == 0:
                continue  # the account's and keys' creation is not a typical run
            with open(map_path, "rb") as source:
                objects = pickle.load(source)  # our own file, just written
            if not options.quiet:
                print(f"run {index}:")
            for role, row in report(last, objects, options.quiet).items():
                for key, value in row.items():
                    rows[role][key].append(value)
    print(f"medians of {options.runs} runs, KiB:")
    for role, row in sorted(rows.items()):
        objects_row = sorted(
            ((statistics.median(v), k[4:]) for k, v in row.items() if k.startswith("obj ")),
            reverse=True,
        )
        print(
            f"  {role:10} private {statistics.median(row['private']):6.0f}: copied "
            f"{statistics.median(row['copied']):5.0f} ("
            + ", ".join(f"{k} {v:.0f}" for v, k in objects_row[:6])
            + f"), new {statistics.median(row['new']):4.0f}"
        )


if __name__ == "__main__":
    main()
