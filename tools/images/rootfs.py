"""The base image's root file system: the .debs unpacked (no maintainer
script runs), pruned, configured by hand (CA bundle, time zone, users,
python3 link, /tmp, ld.so.cache, compiled stdlib) and written as a
reproducible tar for Dockerfiles/base/Containerfile."""

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .common import BUILD, EPOCH, NONROOT, compile_tree, run
from .debs import PARTIAL_PACKAGES

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
