"""The wheels: which role gets which of the project's dependencies
(ROLE_WHEELS), the chain of runtime images that carry them (RUNTIMES), and
the staged site directories that become layers: each runtime's wheels
(installed with Debian's python3.11, pip --only-binary --target, compiled)
and the letskencrypt package itself."""

import functools
import os
import re
import shutil
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from letskencrypt.roles import specs

from .common import (
    BUILD,
    CACHE,
    ROOT,
    SITE_PACKAGES,
    SYSTEM_PYTHON,
    compile_tree,
    digest,
    log,
    run,
    tool_digest,
)

WHEEL_CACHE = CACHE / "wheels"
PACKAGE_SOURCE = ROOT / "services" / "letskencrypt"

# Of the project's dependencies, those a role's spec names (RoleSpec.wheels)
# go only into the roles that import them; every other dependency (grpcio,
# protobuf, the sandbox's) goes into all.
ROLE_WHEELS: dict[str, tuple[str, ...]] = {
    role: spec.wheels for role, spec in specs().items()
}
ROLES = tuple(ROLE_WHEELS)
OPTIONAL_WHEELS = frozenset(name for names in ROLE_WHEELS.values() for name in names)
# Top-level modules that each optional wheel brings along with its dependencies.
OPTIONAL_MODULES: dict[str, frozenset[str]] = {
    "cryptography": frozenset({"cryptography", "cffi", "_cffi_backend", "pycparser"}),
    "requests": frozenset({"requests", "urllib3", "idna", "charset_normalizer", "certifi"}),
    # idna: dnspython's extra, which it imports whenever it is installed.
    "dnspython": frozenset({"dns", "idna"}),
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
        Runtime("dns", "grpc", ("dnspython",)),
    )
}


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


@functools.cache
def project() -> dict:
    """pyproject.toml's [project], read once: one build sees one version."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@functools.cache
def package_version() -> str:
    """letskencrypt.__version__ (pyproject.toml's version is dynamic, read from it)."""
    source = (PACKAGE_SOURCE / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', source, re.M)
    if not match:
        raise SystemExit(f"{PACKAGE_SOURCE}/__init__.py: no __version__")
    return match.group(1)


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
            tool_digest(),
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
    key = digest([tool_digest(), sources])
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
    # For importlib.metadata.version("letskencrypt"), as an installed package has it.
    version = package_version()
    info = site / f"letskencrypt-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: letskencrypt\nVersion: {version}\n"
        f"Summary: {meta['description']}\n"
    )
    (info / "INSTALLER").write_text("build_images\n")
    compile_tree(site / "letskencrypt", f"{SITE_PACKAGES}/letskencrypt")
    stamp.write_text(key)
    return context
