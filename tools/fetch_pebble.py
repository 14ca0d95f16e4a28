#!/usr/bin/python3
"""Fetch Debian unstable's ``pebble`` (2.10 or later) into a cache, never installing it.

``tools/fetch_pebble.py [--dest build/pebble-sid]``

apt is pointed at a temporary sources list naming the system's own Debian
mirror with the suite ``sid``, and at temporary lists and cache directories,
so the system's apt state is left as it was.  ``apt-get download pebble``
fetches the .deb (signature-checked through the release file, as any apt
download), ``dpkg-deb -x`` unpacks it into ``<dest>/`` (binaries in
``<dest>/usr/bin/``), and ``<dest>/VERSION`` records the Debian version.
The binaries are static apart from libc6 (>= 2.34), so they run on Debian 12.

A second run finds ``VERSION`` and the binaries working, and does nothing.
Any failure is one line on stderr and exit status 1.

Standard library only: it runs with Debian's interpreter before the venv exists.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["FetchError", "cached_version", "debian_mirror", "fetch", "main"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = ROOT / "build" / "pebble-sid"
PACKAGE = "pebble"
SUITE = "sid"
MIN_VERSION = (2, 10)
BINARIES = ("pebble", "pebble-challtestsrv")
SOURCES_LIST = Path("/etc/apt/sources.list")
SOURCES_PARTS = Path("/etc/apt/sources.list.d")
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_TIMEOUT = 600
CHECK_TIMEOUT = 10


class FetchError(RuntimeError):
    """Fetching or checking the package failed (the message is one line)."""


# -- finding the system's Debian mirror ----------------------------------------


def _one_line_entries(text: str) -> list[dict[str, str]]:
    """``deb [opts] URI suite comps...`` lines of a one-line-style list."""
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.match(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
        if not match or match.group(1) != "deb":
            continue
        options = dict(opt.split("=", 1) for opt in (match.group(2) or "").split() if "=" in opt)
        entries.append(
            {
                "uri": match.group(3),
                "suites": match.group(4),
                "signed-by": options.get("signed-by", ""),
            }
        )
    return entries


def _deb822_entries(text: str) -> list[dict[str, str]]:
    """Stanzas of a deb822 ``.sources`` file with ``Types: deb`` (one per URI)."""
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:
                fields[key] += "\n" + raw.strip()
                continue
            name, sep, value = raw.partition(":")
            if sep:
                key = name.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed_by = fields.get("signed-by", "")
        if "\n" in signed_by or "BEGIN PGP" in signed_by:
            signed_by = ""  # an inline key: fall back to Debian's keyring
        for uri in fields.get("uris", "").split():
            entries.append({"uri": uri, "suites": fields.get("suites", ""), "signed-by": signed_by})
    return entries


def _is_debian_archive(entry: dict[str, str]) -> bool:
    """The main Debian archive (not security, not a third-party repository)."""
    uri = entry["uri"].rstrip("/")
    suites = entry["suites"].split()
    if "security" in uri or all(s.endswith("-security") for s in suites):
        return False
    return uri.endswith("/debian") or "debian-archive-keyring" in entry["signed-by"]


def debian_mirror(
    sources_list: Path = SOURCES_LIST, sources_parts: Path = SOURCES_PARTS
) -> tuple[str, str]:
    """(URI, signed-by keyring or "") of the first Debian archive apt is configured with."""
    found: list[dict[str, str]] = []
    if sources_list.is_file():
        found += _one_line_entries(sources_list.read_text(errors="replace"))
    if sources_parts.is_dir():
        for part in sorted(sources_parts.iterdir()):
            if part.suffix == ".list":
                found += _one_line_entries(part.read_text(errors="replace"))
            elif part.suffix == ".sources":
                found += _deb822_entries(part.read_text(errors="replace"))
    for entry in found:
        if _is_debian_archive(entry):
            return entry["uri"], entry["signed-by"]
    raise FetchError(
        f"no Debian archive found in {sources_list} or {sources_parts}/*.list, *.sources"
    )


# -- fetching ------------------------------------------------------------------


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    """Run a command; on failure raise FetchError naming its last error line."""
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT,
            check=False,
            env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"},
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"{what}: {e}") from None
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        # apt's specific complaint (often a "W: Failed to fetch ...") comes
        # before its generic "E: Some index files failed to download".
        errors = [ln for ln in lines if ln.startswith("E:") and "Some index files" not in ln]
        errors += [ln for ln in lines if ln.startswith(("W:", "E:"))] + lines + ["(no output)"]
        raise FetchError(f"{what} failed (exit {done.returncode}): {errors[0].strip()}")
    return done.stdout


def _version_tuple(version: str) -> tuple[int, ...]:
    """(2, 10, 0) from a Debian version such as ``2.10.0+ds1-2``."""
    upstream = version.split(":", 1)[-1]
    return tuple(int(n) for n in re.findall(r"\d+", upstream.split("+")[0].split("-")[0])[:3])


def _check_binaries(dest: Path) -> None:
    """The unpacked binaries run on this system (``pebble -version``)."""
    for name in BINARIES:
        if not os.access(dest / "usr" / "bin" / name, os.X_OK):
            raise FetchError(f"{dest}/usr/bin/{name} is missing or not executable")
    binary = str(dest / "usr" / "bin" / "pebble")
    try:
        done = subprocess.run(
            [binary, "-version"], capture_output=True, text=True, timeout=CHECK_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"{binary} does not run: {e}") from None
    if done.returncode != 0 or "Pebble version" not in done.stdout:
        raise FetchError(
            f"{binary} -version failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[:200]}"
        )


def cached_version(dest: Path) -> str | None:
    """The version recorded in ``dest`` if it is there and its binaries run."""
    try:
        version = (dest / "VERSION").read_text().strip()
    except OSError:
        return None
    try:
        _check_binaries(dest)
    except FetchError:
        return None
    return version or None


def _give_to_apt(*paths: Path) -> None:
    """As root, let apt's unprivileged download user (_apt) write these."""
    if os.geteuid() != 0:
        return
    try:
        apt_user = pwd.getpwnam("_apt")
    except KeyError:
        return
    for path in paths:
        os.chown(path, apt_user.pw_uid, -1)


def fetch(dest: Path = DEFAULT_DEST) -> str:
    """Download and unpack sid's pebble into ``dest``; return its Debian version."""
    uri, signed_by = debian_mirror()
    if not signed_by and DEBIAN_KEYRING.is_file():
        signed_by = str(DEBIAN_KEYRING)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-pebble-", dir=dest.parent) as tmpname:
        tmp = Path(tmpname)
        tmp.chmod(0o755)  # apt's _apt user must reach its directories below
        lists, cache, download = tmp / "lists", tmp / "cache", tmp / "download"
        for d in (lists / "partial", cache / "archives" / "partial", download):
            d.mkdir(parents=True)
        _give_to_apt(download)
        sources = tmp / "sources.list"
        options = f"[signed-by={signed_by}] " if signed_by else ""
        sources.write_text(f"deb {options}{uri} {SUITE} main\n")
        apt_options = [
            "-o", f"Dir::Etc::SourceList={sources}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={lists}",
            "-o", f"Dir::Cache={cache}",
            "-o", "Dir::Etc::PreferencesParts=/dev/null",
            "-o", f"Dir::Etc::Preferences={tmp / 'preferences'}",
        ]  # fmt: skip
        _run(
            ["apt-get", "-q", *apt_options, "--error-on=any", "update"],
            f"apt-get update from {uri} {SUITE}",
        )
        _run(
            ["apt-get", "-q", *apt_options, "download", PACKAGE],
            f"apt-get download {PACKAGE} from {uri} {SUITE}",
            cwd=download,
        )
        debs = sorted(download.glob(f"{PACKAGE}_*.deb"))
        if len(debs) != 1:
            raise FetchError(f"apt-get download left {len(debs)} {PACKAGE} packages, not one")
        version = _run(
            ["dpkg-deb", "--field", str(debs[0]), "Version"], f"dpkg-deb --field {debs[0].name}"
        ).strip()
        if _version_tuple(version) < MIN_VERSION:
            raise FetchError(
                f"{SUITE} has {PACKAGE} {version}, wanted "
                f"{'.'.join(map(str, MIN_VERSION))} or later"
            )
        unpacked = tmp / "unpacked"
        _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], f"dpkg-deb -x {debs[0].name}")
        _check_binaries(unpacked)
        (unpacked / "VERSION").write_text(version + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        unpacked.rename(dest)
    return version


def main(argv: list[str] | None = None) -> int:
    """Fetch (or find cached) Debian unstable's pebble; print one line."""
    parser = argparse.ArgumentParser(prog="tools/fetch_pebble.py", description=main.__doc__)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="cache directory")
    parser.add_argument("--force", action="store_true", help="fetch again even if cached")
    args = parser.parse_args(argv)
    dest: Path = args.dest.resolve()
    version = None if args.force else cached_version(dest)
    if version is not None:
        print(f"pebble {version} from Debian {SUITE}: cached in {dest}")
        return 0
    try:
        version = fetch(dest)
    except FetchError as e:
        print(f"fetch_pebble: cannot fetch {PACKAGE} from Debian {SUITE}: {e}", file=sys.stderr)
        return 1
    print(f"pebble {version} from Debian {SUITE}: fetched into {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
