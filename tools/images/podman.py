"""podman: building one image per Containerfile (one layer each, no
intermediate images), skipping an image whose input label already matches,
removing images that lost their tag, and reading layers and sizes."""

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import BUILD, ROOT, digest, log, tool_digest

CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
# Every image built here carries a hash of its inputs under this label.
INPUTS_LABEL = "io.letskencrypt.inputs"

# Local images by name: (image id, inputs label).
Images = dict[str, tuple[str, str]]


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


def image_labels() -> dict[str, tuple[str, str]]:
    """Local images by name: (image id, inputs label)."""
    output = podman("images", "--format", "json", capture=True)
    images: dict[str, tuple[str, str]] = {}
    for image in json.loads(output or "[]"):
        labels = image.get("Labels") or {}
        for name in image.get("Names") or []:
            images[name] = (image["Id"], labels.get(INPUTS_LABEL, ""))
    return images


def podman_build(containerfile: Path, context: Path, tag: str, labels: dict[str, str]) -> str:
    """Build one image, which adds one layer to its parent (--layers=false:
    no intermediate image is left behind); return its id."""
    command = ["build", "--pull=never", "--layers=false", "-q", "-f", str(containerfile), "-t", tag]
    for key, value in labels.items():
        command += ["--label", f"{key}={value}"]
    output = podman(*command, str(context), capture=True).split()
    if not output:
        raise SystemExit(f"podman build of {tag} printed no image id")
    return output[-1]


@dataclass(frozen=True)
class Build:
    """One image to build: its Containerfile's text, and how to stage its
    context (done only when the image is out of date)."""

    name: str  # base, runtime-NAME or a role
    tag: str
    containerfile: str
    inputs: str  # a hash of everything else the image is made of
    stage: Callable[[], Path]
    # Labels that depend on the staged context (given its path).
    labels: Callable[[Path], dict[str, str]] | None = None

    def key(self) -> str:
        return digest([tool_digest(), self.containerfile, self.inputs])


def ensure(build: Build, images: Images, force: bool) -> str:
    """The id of an image tagged `build.tag` whose inputs are `build`'s:
    the existing one when its label matches (unless `force`), else a new
    one.  The Containerfile is written to build/containerfiles/NAME/."""
    key = build.key()
    current = images.get(build.tag)
    if current and current[1] == key and not force:
        return current[0]
    started = time.monotonic()
    context = build.stage()
    containerfile = write_containerfile(build.name, build.containerfile)
    labels = {**(build.labels(context) if build.labels else {}), INPUTS_LABEL: key}
    image_id = podman_build(containerfile, context, build.tag, labels)
    images[build.tag] = (image_id, key)
    log(f"built {build.tag} in {time.monotonic() - started:.1f} s")
    return image_id


def write_containerfile(name: str, text: str, top: Path = BUILD / "containerfiles") -> Path:
    """Write `text` as top/NAME/Containerfile; return its path."""
    path = top / name / "Containerfile"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def prune_untagged() -> None:
    """Remove the images that lost their tag to a rebuild: a role's, then
    the runtime it was built on, which only becomes dangling once that role
    is gone."""
    while podman("image", "prune", "-f", "--filter", "label=" + INPUTS_LABEL, capture=True).strip():
        pass


def image_id(name: str) -> str:
    return podman("image", "inspect", "--format", "{{.Id}}", name, capture=True).strip()


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
