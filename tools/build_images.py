"""Build the container images offline: a distroless-style Python base from
Debian packages, then one image per role holding only the wheels it needs.

    make images     (python3 tools/build_images.py [--force] [--sizes]
                     [--base-image IMAGE] [--image-prefix PREFIX]
                     [--containerfiles DIR] [ROLE ...])

No container registry is needed.  This is the entry point; the work is in
tools/images/, one module per job:

- debs: the runtime closure of BASE_PACKAGES, fetched with `apt-get download`;
- rootfs: the .debs unpacked with `dpkg-deb` into a root directory, the
  maintainer scripts' work done by hand (CA bundle, ld.so.cache, the python3
  link, users, /tmp, compiled stdlib), tarred and added to an empty image
  (Dockerfiles/base/Containerfile);
- wheels: a chain of RUNTIMES, tagged images that each add one layer holding
  one set of wheels, so that a set is stored once however many roles use it
  (runtime-grpc adds to the base what every role needs, runtime-crypto and
  runtime-net add cryptography or requests on top of it), and the
  letskencrypt package, each role's one layer of its own (ROLE_WHEELS says
  which runtime a role is built on); all installed with Debian's python3.11
  and compiled, since the root file system is read-only;
- containerfile: one template for the runtimes and one for the roles
  (Dockerfiles/{runtime,role}/Containerfile.in), rendered at build time;
- podman: building, up-to-date checks, pruning, layers and sizes.

Downloads are cached under build/cache.  Every image carries a label with a
hash of its inputs (the build tool, its Containerfile as rendered, and: the
exact .debs for the base; the parent image and the wheels for a runtime; the
runtime image and the package sources for a role); an image whose label
matches is not rebuilt, so a change of the code rebuilds only the roles' top
layers.  Images that lose their tag to a rebuild are removed.  With
--base-image the runtimes are built on that image instead (for instance
gcr.io/distroless/python3-debian12:nonroot, pulled beforehand).  The images
are named PREFIX + name + ":latest", PREFIX being --image-prefix, else
$IMAGE_PREFIX (as in compose.yaml), else localhost/letskencrypt-.
"""

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from images import containerfile, debs, rootfs, wheels
from images.common import BUILD, ROOT, digest, log, tree_digest
from images.podman import (
    INPUTS_LABEL,
    Build,
    Images,
    ensure,
    image_id,
    image_labels,
    image_layers,
    prune_untagged,
    sizes_report,
    unique_layers_size,
    write_containerfile,
)
from images.wheels import (
    OPTIONAL_MODULES,
    ROLE_WHEELS,
    ROLES,
    RUNTIMES,
    requirement_name,
    role_requirements,
    role_runtime,
    runtime_chain,
    runtime_wheels,
)

__all__ = [
    "BASE_IMAGE",
    "INPUTS_LABEL",
    "OPTIONAL_MODULES",
    "ROLES",
    "ROLE_WHEELS",
    "RUNTIMES",
    "ImageNames",
    "all_images",
    "image_layers",
    "image_name",
    "main",
    "requirement_name",
    "role_requirements",
    "role_runtime",
    "runtime_chain",
    "runtime_image",
    "runtime_wheels",
    "sizes_report",
    "unique_layers_size",
]

DEFAULT_PREFIX = "localhost/letskencrypt-"
_PREFIX = re.compile(r"[a-z0-9][a-z0-9._/:-]*")


@dataclass(frozen=True)
class ImageNames:
    """The images' names: PREFIX + base, runtime-NAME or a role, `:latest`."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise SystemExit(f"image prefix {self.prefix!r}: want something like {DEFAULT_PREFIX}")

    def image(self, name: str) -> str:
        return f"{self.prefix}{name}:latest"

    def base(self) -> str:
        return self.image("base")

    def runtime(self, name: str) -> str:
        return self.image(f"runtime-{name}")

    def every(self, base: str | None = None) -> list[str]:
        """Every image of a build, parents first."""
        return [
            base or self.base(),
            *(self.runtime(name) for name in RUNTIMES),
            *(self.image(role) for role in ROLES),
        ]


# The names that the tests (and anyone importing this module) see.
NAMES = ImageNames(os.environ.get("IMAGE_PREFIX") or DEFAULT_PREFIX)
BASE_IMAGE = NAMES.base()


def image_name(role: str) -> str:
    return NAMES.image(role)


def runtime_image(name: str) -> str:
    return NAMES.runtime(name)


def all_images(base: str) -> list[str]:
    return NAMES.every(base)


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """One build at a time (make images from a shell and from the tests)."""
    BUILD.mkdir(exist_ok=True)
    with open(BUILD / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def stage_base(packages: Sequence[debs.Deb]) -> Path:
    context = BUILD / "base"
    context.mkdir(parents=True, exist_ok=True)
    target = context / "rootfs.tar"
    target.unlink(missing_ok=True)
    rootfs.build_rootfs(debs.fetch(packages), target)
    return context


def base_build(names: ImageNames) -> Build:
    packages = debs.base_debs()
    return Build(
        name="base",
        tag=names.base(),
        containerfile=containerfile.BASE_CONTAINERFILE.read_text(),
        inputs=digest(deb.filename for deb in packages),
        stage=lambda: stage_base(packages),
    )


def runtime_build(name: str, parent: tuple[str, str], wheel_cache: str, names: ImageNames) -> Build:
    """Runtime `name` on `parent` (image name, id)."""
    return Build(
        name=f"runtime-{name}",
        tag=names.runtime(name),
        containerfile=containerfile.runtime_containerfile(name, parent[0]),
        inputs=digest([*parent, wheel_cache, *wheels.runtime_requirements(name)]),
        stage=lambda: wheels.stage_runtime(name, wheel_cache) / "context",
        labels=lambda context: {
            "io.letskencrypt.wheels": " ".join(wheels.distributions(context.parent / "full"))
        },
    )


def role_build(role: str, runtime: tuple[str, str], sources: str, names: ImageNames) -> Build:
    """The role's image: its runtime (image name, id) plus the package; the
    context holds the package only, the role's layer being its code."""
    return Build(
        name=role,
        tag=names.image(role),
        containerfile=containerfile.role_containerfile(role, role_runtime(role), runtime[0]),
        inputs=digest([*runtime, sources]),
        stage=lambda: wheels.stage_package(sources),
    )


def build(roles: Sequence[str], base: str, force: bool, names: ImageNames) -> None:
    images: Images = image_labels()
    found = dict(images)
    # The base is built here unless it is someone else's (--base-image).
    built_here = base == names.base()
    base_id = ensure(base_build(names), images, force) if built_here else image_id(base)
    wheel_cache = wheels.fetch_wheels()
    sources = digest([tree_digest(wheels.PACKAGE_SOURCE), (ROOT / "pyproject.toml").read_bytes()])
    if force:
        for stamp in [
            BUILD / "package" / "key",
            *(wheels.runtime_dir(n) / "key" for n in RUNTIMES),
        ]:
            stamp.unlink(missing_ok=True)
    # Left by earlier versions, which staged every wheel once per role.
    shutil.rmtree(BUILD / "roles", ignore_errors=True)
    built: dict[str, str] = {}
    for role in roles:
        for name in runtime_chain(role_runtime(role)):
            if name not in built:
                parent = RUNTIMES[name].parent
                below = (names.runtime(parent), built[parent]) if parent else (base, base_id)
                built[name] = ensure(runtime_build(name, below, wheel_cache, names), images, force)
        runtime = role_runtime(role)
        ensure(
            role_build(role, (names.runtime(runtime), built[runtime]), sources, names),
            images,
            force,
        )
    # Only a build can have left an image without its tag (ensure() records
    # what it builds in `images`): a warm run makes one podman call.
    if images != found:
        prune_untagged()


def write_containerfiles(top: Path, base: str, names: ImageNames) -> None:
    """Every Containerfile as a build would use it, under top/NAME/."""
    write_containerfile("base", containerfile.BASE_CONTAINERFILE.read_text(), top)
    for name, runtime in RUNTIMES.items():
        parent = names.runtime(runtime.parent) if runtime.parent else base
        write_containerfile(
            f"runtime-{name}", containerfile.runtime_containerfile(name, parent), top
        )
    for role in ROLES:
        runtime = role_runtime(role)
        text = containerfile.role_containerfile(role, runtime, names.runtime(runtime))
        write_containerfile(role, text, top)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("roles", nargs="*", metavar="ROLE", help="default: all eight")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--sizes", action="store_true", help="then print the images' sizes")
    parser.add_argument(
        "--image-prefix",
        default=NAMES.prefix,
        help=f"images are PREFIX<name>:latest (default $IMAGE_PREFIX or {DEFAULT_PREFIX})",
    )
    parser.add_argument(
        "--base-image",
        default=os.environ.get("BASE_IMAGE"),
        help="image to build the runtimes on (default PREFIXbase:latest, built here)",
    )
    parser.add_argument(
        "--containerfiles",
        type=Path,
        metavar="DIR",
        help="only write every rendered Containerfile under DIR/NAME/",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.roles) - set(ROLES))
    if unknown:
        parser.error(f"unknown role {unknown[0]!r}; one of {', '.join(ROLES)}")
    names = ImageNames(args.image_prefix)
    base = args.base_image or names.base()
    for role in ROLES:
        role_runtime(role)
    if args.containerfiles:
        write_containerfiles(args.containerfiles, base, names)
        return
    started = time.monotonic()
    with build_lock():
        build(args.roles or ROLES, base, args.force, names)
    log(f"images up to date ({time.monotonic() - started:.1f} s)")
    if args.sizes:
        sys.stdout.write(sizes_report(names.every(base)))


if __name__ == "__main__":
    main()
