"""What every job of the image build shares: paths, logging, running
commands, hashing inputs, and byte-compiling with the images' interpreter."""

import hashlib
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
BUILD = ROOT / "build"
CACHE = BUILD / "cache"

# Debian's interpreter: the same build (and ABI) as the one in the base image.
SYSTEM_PYTHON = "/usr/bin/python3.11"
SITE_PACKAGES = "/usr/local/lib/python3.11/dist-packages"
NONROOT = 65532
# Files in the images carry this time, so equal inputs give equal layers.
EPOCH = 0


def log(message: str) -> None:
    sys.stderr.write(f"build_images: {message}\n")
    sys.stderr.flush()


def run(args: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, text=True, **kwargs)  # type: ignore[call-overload]


def digest(parts: Iterable[bytes | str]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "big"))
        hasher.update(data)
    return hasher.hexdigest()


def tree_digest(top: Path, pattern: str = "*") -> str:
    """Hash of the names and contents of the files under `top` that match
    `pattern`, caches aside."""
    parts: list[bytes | str] = []
    for path in sorted(top.rglob(pattern)):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        parts += [str(path.relative_to(top)), path.read_bytes()]
    return digest(parts)


def tool_digest() -> str:
    """Hash of the build tool itself (the entry point and this package):
    part of every image's inputs, so a change of the tool rebuilds."""
    return digest([(TOOLS / "build_images.py").read_bytes(), tree_digest(Path(__file__).parent)])


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
