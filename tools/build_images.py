"""Build the container images offline: a distroless-style Python base from
Debian packages, then one image per role holding only the wheels it needs.

    make images     (python3 tools/build_images.py [--force] [--sizes]
                     [--base-image IMAGE] [ROLE ...])

No container registry is needed.  The base is the runtime closure of
BASE_PACKAGES, fetched with `apt-get download` and unpacked with `dpkg-deb`
into a root directory; what the maintainer scripts would have done is done
here (CA bundle, ld.so.cache, the python3 link, users, /tmp, compiled
stdlib); the tree is tarred and added to an empty image
(Dockerfiles/base/Containerfile).

The wheels come in a chain of RUNTIMES, tagged images that each add one
layer holding one set of wheels, so that a set is stored once however many
roles use it: runtime-grpc (Dockerfiles/runtime-grpc) adds to the base what
every role needs (grpcio, protobuf, the sandbox's), runtime-crypto and
runtime-net add cryptography or requests (and their dependencies) on top of
runtime-grpc.  All of them go to the one site directory of the image, where
no layer overwrites another's files.  Each role's image
(Dockerfiles/<role>/Containerfile) is the runtime holding exactly the wheels
of ROLE_WHEELS plus one small layer: the letskencrypt package.  Everything is
installed with Debian's python3.11 (the image's own interpreter) and
compiled, since the root file system is read-only.

Downloads are cached under build/cache.  Every image carries a label with a
hash of its inputs (the base: this file, its Containerfile and the exact
.debs; a runtime: this file, its Containerfile, its parent image, the wheels;
a role: this file, its Containerfile, its runtime image and the package
sources); an image whose label matches is not rebuilt, so a change of the
code rebuilds only the roles' top layers.  Images that lose their tag to a
rebuild are removed.  With --base-image the runtimes are built on that image
instead (for instance gcr.io/distroless/python3-debian12:nonroot, pulled
beforehand).
"""

import argparse
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
CACHE = BUILD / "cache"
DEB_CACHE = CACHE / "debs"
WHEEL_CACHE = CACHE / "wheels"
DOCKERFILES = ROOT / "Dockerfiles"
PACKAGE_SOURCE = ROOT / "services" / "letskencrypt"
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
APT_ARCHIVES = Path("/var/cache/apt/archives")
APT_LISTS = Path("/var/lib/apt/lists")

# Debian's interpreter: the same build (and ABI) as the one in the base image.
SYSTEM_PYTHON = "/usr/bin/python3.11"
SITE_PACKAGES = "/usr/local/lib/python3.11/dist-packages"
BASE_IMAGE = "localhost/letskencrypt-base:latest"
INPUTS_LABEL = "io.letskencrypt.inputs"
NONROOT = 65532
# Files in the images carry this time, so equal inputs give equal layers.
EPOCH = 0

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
# netproc checks the CA's chain as text only (letskencrypt.pem): no cryptography.
ROLE_WHEELS: dict[str, tuple[str, ...]] = {
    "acctproc": ("cryptography",),
    "keyproc": ("cryptography",),
    "netproc": ("requests",),
    "dnsproc": (),
    "chngproc": (),
    "certproc": ("cryptography",),
    "fileproc": (),
    "revokeproc": ("cryptography",),
}
ROLES = tuple(ROLE_WHEELS)
OPTIONAL_WHEELS = frozenset(name for names in ROLE_WHEELS.values() for name in names)
# Top-level modules that each optional wheel brings along with its dependencies.
OPTIONAL_MODULES: dict[str, frozenset[str]] = {
    "cryptography": frozenset({"cryptography", "cffi", "_cffi_backend", "pycparser"}),
    "requests": frozenset({"requests", "urllib3", "idna", "charset_normalizer", "certifi"}),
}


@dataclass(frozen=True)
class Runtime:
    """An image of the chain that carries the wheels: its parent's wheels
    plus one layer with the optional wheels `adds` and their dependencies
    (for the first, every dependency that is not optional)."""

    name: str
    parent: str | None  # a runtime's name; None: the base image
    adds: tuple[str, ...]


# Parents first.  Every role's set of ROLE_WHEELS must be one runtime's.
RUNTIMES: dict[str, Runtime] = {
    runtime.name: runtime
    for runtime in (
        Runtime("grpc", None, ()),
        Runtime("crypto", "grpc", ("cryptography",)),
        Runtime("net", "grpc", ("requests",)),
    )
}

# Kept of /usr/share/doc: the licences.
_DOC_KEEP = re.compile(r"copyright")
_PRUNED_DIRS = (
    # glibc's iconv modules: Python has codecs of its own.
    "usr/lib/x86_64-linux-gnu/gconv",
    # Time zones with leap seconds, and CPython's own regression test helpers.
    "usr/share/zoneinfo/right",
    "usr/lib/python3.11/test",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/menu",
    "usr/share/gdb",
    "usr/share/bash-completion",
    "var/cache",
    "var/log",
)


def image_name(role: str) -> str:
    return f"localhost/letskencrypt-{role}:latest"


def runtime_image(name: str) -> str:
    return f"localhost/letskencrypt-runtime-{name}:latest"


def runtime_wheels(name: str) -> frozenset[str]:
    """The optional wheels of a runtime, its ancestors' included."""
    runtime = RUNTIMES[name]
    inherited = runtime_wheels(runtime.parent) if runtime.parent else frozenset()
    return inherited | frozenset(runtime.adds)


def role_runtime(role: str) -> str:
    """The runtime that holds exactly the role's wheels."""
    wanted = frozenset(ROLE_WHEELS[role])
    for name in RUNTIMES:
        if runtime_wheels(name) == wanted:
            return name
    raise SystemExit(f"no runtime in RUNTIMES holds exactly {role}'s wheels {sorted(wanted)}")


def runtime_chain(name: str) -> list[str]:
    """The runtime and its ancestors, the first built first."""
    parent = RUNTIMES[name].parent
    return [*(runtime_chain(parent) if parent else []), name]


def log(message: str) -> None:
    sys.stderr.write(f"build_images: {message}\n")
    sys.stderr.flush()


def run(args: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, text=True, **kwargs)  # type: ignore[call-overload]


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def podman(*args: str, capture: bool = False) -> str:
    result = subprocess.run(
        ["podman", *args],
        check=True,
        text=True,
        env=podman_env(),
        stdout=subprocess.PIPE if capture else None,
    )
    return result.stdout or ""


def digest(parts: Iterable[bytes | str]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "big"))
        hasher.update(data)
    return hasher.hexdigest()


def tree_digest(top: Path) -> str:
    """Hash of the names and contents of the files under `top`, caches aside."""
    parts: list[bytes | str] = []
    for path in sorted(top.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        parts += [str(path.relative_to(top)), path.read_bytes()]
    return digest(parts)


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """One build at a time (make images from a shell and from the tests)."""
    BUILD.mkdir(exist_ok=True)
    with open(BUILD / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- the Debian packages of the base ------------------------------------------


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
    key = digest(
        [apt_fingerprint(), *BASE_PACKAGES, *sorted(EXCLUDED_PACKAGES), *PARTIAL_PACKAGES]
    )
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


# --- the base root file system ------------------------------------------------

PASSWD = f"""\
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin
"""
GROUP = f"""\
root:x:0:
nogroup:x:65534:
nonroot:x:{NONROOT}:
"""
NSSWITCH = """\
passwd: files
group: files
shadow: files
hosts: files dns
networks: files
protocols: files
services: files
"""


def unpack(debs: Sequence[Path], root: Path) -> None:
    # A merged /usr, like every Debian 12 system.
    for name in ("bin", "sbin", "lib", "lib64"):
        (root / "usr" / name).mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(f"usr/{name}")
    status = root / "var/lib/dpkg/status.d"
    status.mkdir(parents=True)
    for deb in debs:
        only = PARTIAL_PACKAGES.get(deb.name.split("_")[0], ())
        unpacker = ["dpkg-deb", "--fsys-tarfile", str(deb)]
        with subprocess.Popen(unpacker, stdout=subprocess.PIPE) as p:
            run(["tar", "-x", "--keep-directory-symlink", "-C", str(root), *only], stdin=p.stdout)
        if p.returncode:
            raise SystemExit(f"dpkg-deb failed on {deb.name}")
        if only:
            continue
        # What image scanners read to know the packages of a distroless image.
        control = run(["dpkg-deb", "-f", str(deb)], stdout=subprocess.PIPE).stdout
        package = control.split("\n", 1)[0].removeprefix("Package: ")
        (status / package).write_text(control)


def prune(root: Path) -> None:
    for name in _PRUNED_DIRS:
        shutil.rmtree(root / name, ignore_errors=True)
    doc = root / "usr/share/doc"
    for path in sorted(doc.rglob("*"), reverse=True):
        if path.is_symlink() or path.is_file():
            if not _DOC_KEEP.fullmatch(path.name):
                path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def configure(root: Path) -> None:
    """What the maintainer scripts (which never ran) would have done."""
    etc = root / "etc"
    # ca-certificates: the bundle that update-ca-certificates writes.
    certs = etc / "ssl/certs"
    certs.mkdir(parents=True, exist_ok=True)
    pems = sorted((root / "usr/share/ca-certificates/mozilla").glob("*.crt"))
    if not pems:
        raise SystemExit("no CA certificates in ca-certificates")
    bundle = b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in pems)
    (certs / "ca-certificates.crt").write_bytes(bundle)
    # OpenSSL's own default paths (the openssl package, left out, links these).
    ssl_dir = root / "usr/lib/ssl"
    ssl_dir.mkdir(parents=True, exist_ok=True)
    (ssl_dir / "certs").symlink_to("/etc/ssl/certs")
    (ssl_dir / "cert.pem").symlink_to("/etc/ssl/certs/ca-certificates.crt")
    # tzdata: UTC.
    (etc / "localtime").symlink_to("/usr/share/zoneinfo/Etc/UTC")
    (etc / "timezone").write_text("Etc/UTC\n")
    # Users: root, nobody and the distroless nonroot (65532).
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    (etc / "nsswitch.conf").write_text(NSSWITCH)
    (etc / "ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (root / "usr/bin/python3").symlink_to("python3.11")
    for name in ("tmp", "var/tmp", "root", "home/nonroot", "run", "proc", "sys", "dev"):
        (root / name).mkdir(parents=True, exist_ok=True)
    # Sticky and world-writable, as /tmp is everywhere.
    os.chmod(root / "tmp", 0o1777)  # noqa: S103
    os.chmod(root / "var/tmp", 0o1777)  # noqa: S103
    os.chmod(root / "root", 0o700)
    os.chmod(root / "home/nonroot", 0o700)
    run(["/sbin/ldconfig", "-r", str(root)])
    if not (etc / "ld.so.cache").exists():
        raise SystemExit("ldconfig wrote no ld.so.cache")
    stdlib = root / "usr/lib/python3.11"
    compile_tree(stdlib, "/usr/lib/python3.11")


def compile_tree(directory: Path, image_path: str) -> None:
    """Byte-compile `directory`, which the image has at `image_path`.

    Unchecked hashes: a .pyc is used without looking at its source's time,
    so nothing is ever rewritten, and equal sources give equal files.
    """
    run(
        [
            SYSTEM_PYTHON,
            "-m",
            "compileall",
            "-q",
            "-f",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(directory),
            "-p",
            image_path,
            str(directory),
        ]
    )


def write_tar(root: Path, target: Path) -> None:
    """All files owned by root except nonroot's home, none set-id, all with
    time EPOCH."""

    def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
        is_home = info.name == "home/nonroot"
        info.uid = info.gid = NONROOT if is_home else 0
        info.uname = info.gname = "nonroot" if is_home else "root"
        info.mode &= ~0o6000
        info.mtime = EPOCH
        return info

    partial = target.with_suffix(".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(root.iterdir()):
            tar.add(child, arcname=child.name, filter=owner)
    partial.rename(target)


def build_rootfs(debs: Sequence[Path], target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=BUILD, prefix="rootfs-") as tmp:
        root = Path(tmp)
        unpack(debs, root)
        prune(root)
        configure(root)
        write_tar(root, target)


# --- wheels: the runtimes' layers, and the roles' package layer --------------


@functools.cache
def project() -> dict:
    """pyproject.toml's [project], read once: one build sees one version."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    if not match:
        raise SystemExit(f"pyproject.toml: cannot read requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def requirements_with(wheels: Iterable[str]) -> list[str]:
    """The project's dependencies that are not optional, and of the optional
    ones those in `wheels`."""
    chosen = frozenset(wheels)
    return [
        requirement
        for requirement in project()["dependencies"]
        if requirement_name(requirement) not in OPTIONAL_WHEELS
        or requirement_name(requirement) in chosen
    ]


def role_requirements(role: str) -> list[str]:
    """The project's dependencies that are in this role's image."""
    return requirements_with(ROLE_WHEELS[role])


def runtime_requirements(name: str) -> list[str]:
    return requirements_with(runtime_wheels(name))


def fetch_wheels() -> str:
    """Download (once) binary wheels for all of the project's dependencies;
    return a digest of the wheel cache's contents."""
    requirements = sorted(project()["dependencies"])
    stamp = WHEEL_CACHE / f".downloaded-{digest(requirements)[:16]}"
    if not stamp.exists():
        log(f"downloading wheels for {', '.join(requirements)}")
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        run(
            [
                SYSTEM_PYTHON,
                "-m",
                "pip",
                "download",
                "-q",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                "-d",
                str(WHEEL_CACHE),
                *requirements,
            ]
        )
        stamp.touch()
    return digest(sorted(p.name for p in WHEEL_CACHE.glob("*.whl")))


def runtime_dir(name: str) -> Path:
    """build/runtimes/NAME: full/, what the image's site directory holds
    (every wheel of the runtime and its ancestors), and context/site/, the
    part of it that this runtime's layer adds."""
    return BUILD / "runtimes" / name


def install_wheels(requirements: Sequence[str], site: Path) -> None:
    """Install from the wheel cache only into `site`, and compile."""
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    run(
        [
            SYSTEM_PYTHON,
            "-m",
            "pip",
            "install",
            # Only the wheel cache counts: no configuration, no index.
            "--isolated",
            "-q",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            "--no-index",
            "--find-links",
            str(WHEEL_CACHE),
            "--only-binary=:all:",
            "--no-compile",
            "--no-warn-script-location",
            "--target",
            str(site),
            *requirements,
        ]
    )
    # Console scripts: nothing could run them in an image without a shell.
    shutil.rmtree(site / "bin", ignore_errors=True)
    compile_tree(site, SITE_PACKAGES)


def link_difference(full: Path, below: Path | None, layer: Path) -> None:
    """Fill `layer` with hard links to the files of `full` that `below` (the
    parent's full site directory) lacks.  A file both have must be the same,
    or the layer would replace a file of the parent's: the wheel sets must
    agree on their shared dependencies.  Compiled files of equal sources are
    left to the parent's layer (marshal output need not be byte-identical)."""
    shutil.rmtree(layer, ignore_errors=True)
    layer.mkdir(parents=True)
    for path in sorted(full.rglob("*")):
        relative = path.relative_to(full)
        if below is not None and (below / relative).exists():
            other = below / relative
            if path.is_dir() or path.suffix == ".pyc":
                continue
            if path.read_bytes() != other.read_bytes():
                raise SystemExit(
                    f"{relative} differs between runtime layers: the wheel sets disagree"
                )
            continue
        target = layer / relative
        if path.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.readlink(path))
        elif path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)


def stage_runtime(name: str, wheels: str) -> Path:
    """Stage the runtime's layer in runtime_dir(name)/context, its ancestors
    first; nothing is redone when the key of the last staging matches."""
    runtime = RUNTIMES[name]
    below = stage_runtime(runtime.parent, wheels) / "full" if runtime.parent else None
    directory = runtime_dir(name)
    full, layer, stamp = directory / "full", directory / "context" / "site", directory / "key"
    key = digest(
        [
            Path(__file__).read_bytes(),
            wheels,
            *runtime_requirements(name),
            *(runtime_requirements(runtime.parent) if runtime.parent else []),
        ]
    )
    if stamp.exists() and stamp.read_text() == key and full.is_dir() and layer.is_dir():
        return directory
    stamp.unlink(missing_ok=True)
    install_wheels(runtime_requirements(name), full)
    link_difference(full, below, layer)
    stamp.write_text(key)
    return directory


def distributions(site: Path) -> list[str]:
    return sorted(
        p.name.split("-")[0]
        for p in site.glob("*.dist-info")
        if p.is_dir() and not p.name.startswith("letskencrypt-")
    )


def stage_package(sources: str) -> Path:
    """Stage build/package/site: the letskencrypt package of the current
    sources, compiled, and nothing else; the build context of every role's
    image.  Nothing is redone when the key of the last staging matches."""
    context = BUILD / "package"
    site, stamp = context / "site", context / "key"
    key = digest([Path(__file__).read_bytes(), sources])
    if stamp.exists() and stamp.read_text() == key and site.is_dir():
        return context
    stamp.unlink(missing_ok=True)
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    meta = project()
    shutil.copytree(
        PACKAGE_SOURCE,
        site / "letskencrypt",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyi"),
    )
    # For importlib.metadata.version("letskencrypt") (netproc's User-Agent).
    info = site / f"letskencrypt-{meta['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: letskencrypt\nVersion: {meta['version']}\n"
        f"Summary: {meta['description']}\n"
    )
    (info / "INSTALLER").write_text("build_images\n")
    compile_tree(site / "letskencrypt", f"{SITE_PACKAGES}/letskencrypt")
    stamp.write_text(key)
    return context


# --- images -------------------------------------------------------------------


def image_labels() -> dict[str, tuple[str, str]]:
    """Local images by name: (image id, inputs label)."""
    output = podman("images", "--format", "json", capture=True)
    images: dict[str, tuple[str, str]] = {}
    for image in json.loads(output or "[]"):
        labels = image.get("Labels") or {}
        for name in image.get("Names") or []:
            images[name] = (image["Id"], labels.get(INPUTS_LABEL, ""))
    return images


def podman_build(
    containerfile: Path, context: Path, tag: str, labels: dict[str, str], args: dict[str, str]
) -> str:
    """Build one image, which adds one layer to its parent (--layers=false:
    no intermediate image is left behind); return its id."""
    command = ["build", "--pull=never", "--layers=false", "-q", "-f", str(containerfile), "-t", tag]
    for key, value in labels.items():
        command += ["--label", f"{key}={value}"]
    for key, value in args.items():
        command += ["--build-arg", f"{key}={value}"]
    output = podman(*command, str(context), capture=True).split()
    if not output:
        raise SystemExit(f"podman build of {tag} printed no image id")
    return output[-1]


def build_base(images: dict[str, tuple[str, str]], force: bool) -> str:
    containerfile = DOCKERFILES / "base" / "Containerfile"
    debs = base_debs()
    key = digest(
        [Path(__file__).read_bytes(), containerfile.read_bytes(), *(d.filename for d in debs)]
    )
    current = images.get(BASE_IMAGE)
    if current and current[1] == key and not force:
        return current[0]
    started = time.monotonic()
    context = BUILD / "base"
    context.mkdir(parents=True, exist_ok=True)
    rootfs = context / "rootfs.tar"
    rootfs.unlink(missing_ok=True)
    build_rootfs(fetch(debs), rootfs)
    image_id = podman_build(containerfile, context, BASE_IMAGE, {INPUTS_LABEL: key}, {})
    log(f"built {BASE_IMAGE} ({len(debs)} packages) in {time.monotonic() - started:.1f} s")
    return image_id


def build_runtime(
    name: str,
    parent: tuple[str, str],
    wheels: str,
    images: dict[str, tuple[str, str]],
    force: bool,
) -> str:
    """Build runtime `name` on `parent` (image name, id); return its id."""
    runtime = RUNTIMES[name]
    containerfile = DOCKERFILES / f"runtime-{name}" / "Containerfile"
    requirements = runtime_requirements(name)
    key = digest(
        [
            Path(__file__).read_bytes(),
            containerfile.read_bytes(),
            *parent,
            wheels,
            *requirements,
        ]
    )
    tag = runtime_image(name)
    current = images.get(tag)
    if current and current[1] == key and not force:
        return current[0]
    started = time.monotonic()
    directory = stage_runtime(name, wheels)
    labels = {
        INPUTS_LABEL: key,
        "io.letskencrypt.wheels": " ".join(distributions(directory / "full")),
    }
    # The first runtime's parent is the base (an upstream one with --base-image).
    arg = "PARENT_IMAGE" if runtime.parent else "BASE_IMAGE"
    image_id = podman_build(containerfile, directory / "context", tag, labels, {arg: parent[0]})
    log(f"built {tag} in {time.monotonic() - started:.1f} s")
    return image_id


def build_role(
    role: str,
    runtime: tuple[str, str],
    sources: str,
    force: bool,
    images: dict[str, tuple[str, str]],
) -> None:
    """Build the role's image: its runtime (image name, id) plus the package."""
    containerfile = DOCKERFILES / role / "Containerfile"
    key = digest([Path(__file__).read_bytes(), containerfile.read_bytes(), *runtime, sources])
    tag = image_name(role)
    current = images.get(tag)
    if current and current[1] == key and not force:
        return
    started = time.monotonic()
    # The context holds the package only: the role's layer is its code.
    context = stage_package(sources)
    # io.letskencrypt.wheels comes with the runtime's labels.
    labels = {INPUTS_LABEL: key}
    build_args = {"RUNTIME_IMAGE": runtime[0], "VERSION": project()["version"]}
    podman_build(containerfile, context, tag, labels, build_args)
    log(f"built {tag} in {time.monotonic() - started:.1f} s")


# --- sizes --------------------------------------------------------------------


def image_layers(names: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
    """Each image's layers, the lowest first: (diff id, uncompressed size).

    `podman history` sizes the layers (on the history entry that made each;
    entries that made none are empty), `podman image inspect` names them."""
    inspected = json.loads(podman("image", "inspect", *names, capture=True))
    result = {}
    for name, image in zip(names, inspected, strict=True):
        layers = image["RootFS"]["Layers"]
        history = json.loads(podman("history", "--format", "json", name, capture=True))
        sizes = [entry["size"] for entry in reversed(history) if entry["size"] > 0]
        if len(sizes) != len(layers):
            raise SystemExit(f"{name}: {len(layers)} layers, but {len(sizes)} sized in history")
        result[name] = list(zip(layers, sizes, strict=True))
    return result


def unique_layers_size(layers: dict[str, list[tuple[str, int]]]) -> int:
    """What the images take once stored together: each distinct layer once."""
    return sum(dict(layer for image in layers.values() for layer in image).values())


def sizes_report(names: Sequence[str]) -> str:
    """A table of the images, their layers (`*`: first seen in this row)
    and the total of distinct layers; list parents before their children."""
    layers = image_layers(names)
    seen: set[str] = set()
    width = max(len(name) for name in names)
    lines = [f"{'image':<{width}}  {'size':>8}  layers in MB, lowest first (*: new in this row)"]
    for name in names:
        cells = []
        for layer, size in layers[name]:
            cells.append(f"{size / 1e6:.1f}{'' if layer in seen else '*'}")
            seen.add(layer)
        total = sum(size for _layer, size in layers[name])
        lines.append(f"{name:<{width}}  {total / 1e6:5.1f} MB  {' + '.join(cells)}")
    lines.append(
        f"{'distinct layers, total':<{width}}  {unique_layers_size(layers) / 1e6:5.1f} MB"
        f"  ({len(seen)} layers)"
    )
    return "\n".join(lines) + "\n"


def all_images(base: str) -> list[str]:
    """Every image of a build, parents first."""
    return [
        base,
        *(runtime_image(name) for name in RUNTIMES),
        *(image_name(role) for role in ROLES),
    ]


def build(roles: Sequence[str], base: str, force: bool) -> None:
    images = image_labels()
    if base == BASE_IMAGE:
        base_id = build_base(images, force)
    else:
        base_id = podman("image", "inspect", "--format", "{{.Id}}", base, capture=True).strip()
    wheels = fetch_wheels()
    sources = digest([tree_digest(PACKAGE_SOURCE), (ROOT / "pyproject.toml").read_bytes()])
    if force:
        for stamp in [BUILD / "package" / "key", *(runtime_dir(n) / "key" for n in RUNTIMES)]:
            stamp.unlink(missing_ok=True)
    # Left by earlier versions, which staged every wheel once per role.
    shutil.rmtree(BUILD / "roles", ignore_errors=True)
    built: dict[str, str] = {}
    for role in roles:
        for name in runtime_chain(role_runtime(role)):
            if name not in built:
                parent = RUNTIMES[name].parent
                below = (runtime_image(parent), built[parent]) if parent else (base, base_id)
                built[name] = build_runtime(name, below, wheels, images, force)
        runtime = role_runtime(role)
        build_role(role, (runtime_image(runtime), built[runtime]), sources, force, images)
    # Images that lost their tag to a rebuild: a role's, then the runtime it
    # was built on, which only becomes dangling once that role is gone.
    while podman("image", "prune", "-f", "--filter", "label=" + INPUTS_LABEL, capture=True).strip():
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roles", nargs="*", metavar="ROLE", help="default: all eight")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--sizes", action="store_true", help="then print the images' sizes")
    parser.add_argument(
        "--base-image",
        default=os.environ.get("BASE_IMAGE") or BASE_IMAGE,
        help=f"image to build the roles on (default {BASE_IMAGE}, built here)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.roles) - set(ROLES))
    if unknown:
        parser.error(f"unknown role {unknown[0]!r}; one of {', '.join(ROLES)}")
    definitions = [*ROLES, *(f"runtime-{name}" for name in RUNTIMES)]
    missing = [d for d in definitions if not (DOCKERFILES / d / "Containerfile").exists()]
    if missing:
        raise SystemExit(f"no Containerfile for {', '.join(missing)}")
    for role in ROLES:
        role_runtime(role)
    started = time.monotonic()
    with build_lock():
        build(args.roles or ROLES, args.base_image, args.force)
    log(f"images up to date ({time.monotonic() - started:.1f} s)")
    if args.sizes:
        sys.stdout.write(sizes_report(all_images(args.base_image)))


if __name__ == "__main__":
    main()
