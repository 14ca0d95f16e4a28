"""The base image's Debian packages: the runtime closure of BASE_PACKAGES
(resolved with apt-cache, once per state of apt's lists) and its .debs,
fetched with apt-get download into build/cache/debs and checked against
apt's SHA-256."""

import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import CACHE, digest, log, run

DEB_CACHE = CACHE / "debs"
APT_ARCHIVES = Path("/var/cache/apt/archives")
APT_LISTS = Path("/var/lib/apt/lists")

# What the base must run: Python and its standard library, TLS trust anchors,
# time zones, /etc/services and friends, libstdc++ (grpcio is C++) and
# libseccomp (the self-sandbox loads it).
BASE_PACKAGES = (
    "python3.11-minimal",
    "libpython3.11-stdlib",
    "ca-certificates",
    "tzdata",
    "netbase",
    "libstdc++6",
    "libseccomp2",
)
# Needed only to install or configure packages, never at run time: a
# dependency on one of these (or an alternative that names one) is dropped.
# openssl is the command-line tool; the library, libssl3, stays.
EXCLUDED_PACKAGES = frozenset(
    {
        "base-files",
        "cdebconf",
        "coreutils",
        "debconf",
        "debconf-2.0",
        "debianutils",
        "dpkg",
        "install-info",
        "libc-bin",
        "openssl",
        "perl",
        "perl-base",
        "sensible-utils",
        "tar",
    }
)
# Of these only the files listed are unpacked: what image scanners read to
# know the distribution (with var/lib/dpkg/status.d, written for the others).
PARTIAL_PACKAGES: dict[str, tuple[str, ...]] = {
    "base-files": ("./etc/debian_version", "./etc/os-release", "./usr/lib/os-release"),
}
# Of the project's dependencies, these go only into the roles that import
# them; every other dependency (grpcio, protobuf, the sandbox's) goes into all.


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    architecture: str
    sha256: str

    @property
    def filename(self) -> str:
        # apt-get download's name for it (an epoch's colon is escaped).
        return f"{self.package}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


_DEPENDS_RE = re.compile(r"^ ([ |])(?:Pre)?Depends: (<?)([^>\s]+)>?$")


def _dependency_groups(output: str) -> list[list[str]]:
    """Parse `apt-cache depends --important`: the groups of alternatives of
    every package listed; a virtual package is replaced by its providers."""
    groups: list[list[str]] = []
    pending: list[str] = []
    providers: list[str] | None = None  # where the lines after a <virtual> go
    for line in output.splitlines():
        match = _DEPENDS_RE.match(line)
        if match:
            name = match.group(3).split(":")[0]
            virtual = bool(match.group(2))
            if not virtual or name in EXCLUDED_PACKAGES:
                pending.append(name)
            providers = pending if virtual else None
            if match.group(1) != "|":
                groups.append(pending)
                pending = []
        elif line.startswith("    ") and providers is not None:
            providers.append(line.strip().split(":")[0])
        else:
            providers = None
    return groups


def resolve_closure(packages: Iterable[str]) -> list[str]:
    """The packages `packages` need to run, minus EXCLUDED_PACKAGES."""
    wanted = set(packages)
    frontier = sorted(wanted)
    while frontier:
        output = run(
            ["apt-cache", "depends", "--important", *frontier], stdout=subprocess.PIPE
        ).stdout
        found: set[str] = set()
        for alternatives in _dependency_groups(output):
            if not alternatives:
                raise SystemExit(f"a dependency among {frontier} has no installable package")
            if any(name in EXCLUDED_PACKAGES or name in wanted for name in alternatives):
                continue
            found.add(alternatives[0])
        frontier = sorted(found - wanted)
        wanted |= found
    return sorted(wanted)


def describe(packages: Sequence[str]) -> list[Deb]:
    output = run(
        ["apt-cache", "show", "--no-all-versions", *packages], stdout=subprocess.PIPE
    ).stdout
    debs = []
    for stanza in output.strip().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        debs.append(
            Deb(fields["Package"], fields["Version"], fields["Architecture"], fields["SHA256"])
        )
    if sorted(deb.package for deb in debs) != sorted(packages):
        raise SystemExit(f"apt-cache show did not describe exactly {', '.join(packages)}")
    return debs


def apt_fingerprint() -> str:
    """Changes whenever `apt-get update` brings new package lists."""
    lists = sorted(APT_LISTS.glob("*_Packages*"))
    return digest(f"{p.name} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in lists)


def base_debs() -> list[Deb]:
    """The exact .debs of the base, resolved once per state of apt's lists."""
    key = digest([apt_fingerprint(), *BASE_PACKAGES, *sorted(EXCLUDED_PACKAGES), *PARTIAL_PACKAGES])
    cached = CACHE / f"debs-{key[:16]}.json"
    if cached.exists():
        return [Deb(**entry) for entry in json.loads(cached.read_text())]
    debs = describe([*resolve_closure(BASE_PACKAGES), *PARTIAL_PACKAGES])
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob("debs-*.json"):
        old.unlink()
    cached.write_text(json.dumps([deb.__dict__ for deb in debs], indent=1))
    return debs


def sha256_file(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def fetch(debs: Sequence[Deb]) -> list[Path]:
    """The .deb files, from the cache, apt's own cache, or the mirror."""
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    missing = []
    for deb in debs:
        target = DEB_CACHE / deb.filename
        if not target.exists() and (APT_ARCHIVES / deb.filename).exists():
            shutil.copyfile(APT_ARCHIVES / deb.filename, target)
        if not target.exists():
            missing.append(deb)
    if missing:
        log(f"downloading {len(missing)} Debian packages")
        run(
            [
                "apt-get",
                "download",
                "-q",
                "-o",
                "APT::Sandbox::User=root",
                *(f"{deb.package}={deb.version}" for deb in missing),
            ],
            cwd=DEB_CACHE,
            stdout=subprocess.DEVNULL,
        )
    paths = []
    for deb in debs:
        path = DEB_CACHE / deb.filename
        if sha256_file(path) != deb.sha256:
            path.unlink()
            raise SystemExit(f"{path.name}: SHA-256 differs from apt's; removed, run again")
        paths.append(path)
    return paths
