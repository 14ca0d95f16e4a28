"""The caller's environment does not matter (issue 8): the real command
against pebble, started as root and as an ordinary user, with TMPDIR inside
a 0700 directory, umask 077, a working directory it cannot read (or that is
gone), no HOME, and its interpreter and packages in a virtual environment
under a 0700 home (made from the system's Python, or from a Python
installed in that home as pyenv does).  Each variation either works or is refused in preflight
with one line, and then not one request has reached pebble.
"""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from packaging.requirements import Requirement

from tests.conftest import LETSKENCRYPT, ROOT, without_terms
from tests.pebble import Pebble

USER = 65534
ROOT_USER = os.geteuid() == 0
RUN_TIMEOUT = 120
PACKAGE = ROOT / "services" / "letskencrypt"


@dataclass
class Case:
    name: str
    as_user: bool = False
    tmpdir_private: bool = False
    umask: int | None = None
    # "unreadable": a 0700 directory of someone else; "removed": deleted under it.
    cwd: str | None = None
    no_home: bool = False
    # "private": a venv under a 0700 home; "unreadable": its files 0600, dirs
    # 0700; "installation": the venv's Python itself installed in that home.
    interpreter: str | None = None
    no_namespaces: bool = False
    # None: the run works; else the words of its one preflight line.
    refused: str | None = None
    environment: dict[str, str] = field(default_factory=dict)


CASES = [
    Case("root"),
    Case("root, TMPDIR in a 0700 directory", tmpdir_private=True),
    Case("root, umask 077", umask=0o077),
    Case("root, working directory removed", cwd="removed"),
    Case("root, no HOME", no_home=True),
    Case("root, interpreter under a 0700 home", interpreter="private"),
    Case("root, Python installed under a 0700 home", interpreter="installation"),
    Case("root, all of these", tmpdir_private=True, umask=0o077, cwd="removed", no_home=True,
         interpreter="installation"),
    Case("root, code installed with umask 077", interpreter="unreadable",
         refused="which cannot read letskencrypt's Python code through it (mode 700): "
         "chmod -R a+rX"),
    Case("root, no namespaces, interpreter under a 0700 home", interpreter="private",
         no_namespaces=True, refused="(mode 700): chmod a+x"),
    Case("root, no namespaces, TMPDIR in a 0700 directory", tmpdir_private=True,
         no_namespaces=True, refused="set TMPDIR to a directory it can reach"),
    Case("user", as_user=True),
    Case("user, TMPDIR in a 0700 directory", as_user=True, tmpdir_private=True),
    Case("user, umask 077", as_user=True, umask=0o077),
    Case("user, unreadable working directory", as_user=True, cwd="unreadable"),
    Case("user, no HOME", as_user=True, no_home=True),
    Case("user, interpreter under a 0700 home", as_user=True, interpreter="private"),
    Case("user, Python installed under a 0700 home", as_user=True, interpreter="installation"),
    Case("user, all of these", as_user=True, tmpdir_private=True, umask=0o077,
         cwd="unreadable", no_home=True, interpreter="installation"),
]  # fmt: skip


@dataclass
class Place:
    """The module's shared directory (0755, outside pytest's 0700 one) and pebble."""

    base: Path
    pebble: Pebble
    ca_bundle: Path
    trust_anchors: Path


@pytest.fixture(scope="module")
def place() -> Iterator[Place]:
    if not ROOT_USER:
        pytest.skip("runs the command as root and as another user")
    # Short: the run directory's socket paths must fit in 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="lke-env-"))
    base.chmod(0o755)
    challenges = base / "challenges"
    challenges.mkdir(mode=0o755)
    try:
        with Pebble(challenge_dir=challenges) as pebble:
            # Pebble's own files live in a 0700 directory: copies the user can read.
            ca_bundle = Path(shutil.copy(pebble.ca_bundle, base / "ca.pem"))
            trust_anchors = Path(shutil.copy(pebble.trust_anchors, base / "anchors.pem"))
            for path in (ca_bundle, trust_anchors):
                path.chmod(0o644)
            yield Place(base, pebble, ca_bundle, trust_anchors)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def runtime_entries() -> set[str]:
    """The site-packages entries of letskencrypt's dependencies, all the way down."""
    entries: set[str] = set()
    seen: set[str] = set()
    wanted = [str(Requirement(r).name) for r in importlib.metadata.requires("letskencrypt") or []
              if not Requirement(r).marker]  # fmt: skip
    while wanted:
        name = wanted.pop().lower()
        if name in seen:
            continue
        seen.add(name)
        distribution = importlib.metadata.distribution(name)
        for requirement in map(Requirement, distribution.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name)
        entries |= {f.parts[0] for f in distribution.files or [] if f.parts[0] != ".."}
    return entries


def copy_python(home: Path) -> Path:
    """A whole Python installation under `home`, as pyenv makes one (its
    standard library is read after the roles drop root); returns its interpreter."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    source, prefix = Path(sys.base_prefix), home / "python"
    (prefix / "bin").mkdir(parents=True)
    shutil.copy2(source / "bin" / version, prefix / "bin" / version)
    skipped = shutil.ignore_patterns("__pycache__", "test")
    shutil.copytree(source / "lib" / version, prefix / "lib" / version, symlinks=True,
                    ignore=skipped)  # fmt: skip
    return prefix / "bin" / version


def make_venv(home: Path, owner: int, interpreter: str) -> Path:
    """A virtual environment with its own copy of the interpreter, the runtime
    dependencies and letskencrypt, under `home` (0700, `owner`'s); returns the
    command.  `interpreter`: "private", "unreadable" (as if installed with
    umask 077), or "installation" (made from a Python installed in `home`)."""
    home.mkdir(mode=0o700)
    environment = home / "venv"
    if interpreter == "installation":
        python = copy_python(home)
    else:
        python = Path(sys.base_prefix, "bin", f"python{sys.version_info.major}")
    subprocess.run([str(python), "-m", "venv", "--copies", "--without-pip", str(environment)],
                   check=True, timeout=60)  # fmt: skip
    site = Path(subprocess.run(
        [str(environment / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip())  # fmt: skip
    source = Path(sysconfig.get_paths()["purelib"])
    for entry in runtime_entries():
        if (source / entry).is_dir():
            shutil.copytree(source / entry, site / entry, symlinks=True)
        elif (source / entry).exists():
            shutil.copy2(source / entry, site / entry)
    shutil.copytree(PACKAGE, site / "letskencrypt",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    command = environment / "bin" / "letskencrypt"
    command.write_text(f"#!{environment}/bin/python\nimport sys\n"
                       "from letskencrypt.__main__ import main\nsys.exit(main())\n")  # fmt: skip
    command.chmod(0o755)
    for path in [home, *home.rglob("*")]:
        if interpreter == "unreadable" and path != home and not path.is_symlink():
            path.chmod(0o700 if path.is_dir() or os.access(path, os.X_OK) else 0o600)
        os.lchown(path, owner, owner)
    return command


@dataclass
class Result:
    code: int
    stderr: str
    requests: int


def run_case(place: Place, case: Case, work: Path) -> Result:
    owner = USER if case.as_user else 0
    work.mkdir(mode=0o755)
    os.chown(work, owner, owner)
    os.chown(place.pebble.challenge_dir, owner, owner)
    command = LETSKENCRYPT
    if case.interpreter is not None:
        command = str(make_venv(work / "home", owner, case.interpreter))
    environment = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "HOME")}
    environment["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    if not case.no_home:
        environment["HOME"] = str(work)
    tmpdir = work / "tmp"
    if case.tmpdir_private:
        (work / "private").mkdir(mode=0o700)
        os.chown(work / "private", owner, owner)
        tmpdir = work / "private" / "tmp"
    tmpdir.mkdir()
    os.chown(tmpdir, owner, owner)
    environment["TMPDIR"] = str(tmpdir)
    if case.no_namespaces:
        environment["LETSKENCRYPT_NO_NAMESPACES"] = "1"
    argv = [command, "--server", place.pebble.directory_url, "--ca-bundle", str(place.ca_bundle),
            "--trust-anchors", str(place.trust_anchors), "-C", str(place.pebble.challenge_dir),
            "-c", str(work / "certs"), "-f", str(work / "account" / "privkey.pem"),
            "-k", str(work / "domain" / "privkey.pem"), "-n", "-N", "environment.example.org"]
    cwd = str(work)
    if case.cwd == "unreadable":
        cwd = str(work / "closed")
        os.mkdir(cwd, 0o700)  # root's: the user may not even list it
    elif case.cwd == "removed":
        (work / "gone").mkdir()
        argv = ["sh", "-c", 'cd "$0" && rmdir "$0" && exec "$@"', str(work / "gone"), *argv]
    before = place.pebble.request_count()
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False, cwd=cwd,
        env=environment, umask=-1 if case.umask is None else case.umask,
        user=owner if case.as_user else None, group=owner if case.as_user else None,
        extra_groups=[] if case.as_user else None,
    )  # fmt: skip
    assert list(tmpdir.iterdir()) == [], f"{case.name}: the run directory was left behind"
    assert list(place.pebble.challenge_dir.iterdir()) == [], case.name
    return Result(completed.returncode, completed.stderr,
                  place.pebble.request_count() - before)  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_it_works_or_is_refused_in_preflight(place: Place, case: Case) -> None:
    work = place.base / f"case{CASES.index(case)}"
    result = run_case(place, case, work)
    if case.refused is not None:
        assert result.code == 1, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("letskencrypt: "), result.stderr
        assert case.refused in result.stderr, result.stderr
        assert result.requests == 0
        assert not (work / "account" / "privkey.pem").exists()
        return
    assert result.code == 0, result.stderr
    # Nothing but the line that says the run created the account.
    assert without_terms(result.stderr) == "", result.stderr
    assert result.requests > 0
    x509.load_pem_x509_certificate((work / "certs" / "cert.pem").read_bytes())
    # The caller's umask decides nothing: a web server reads the certificates.
    assert (work / "certs").stat().st_mode & 0o777 == 0o755
    assert (work / "certs" / "cert.pem").stat().st_mode & 0o777 == 0o444
    assert (work / "account" / "privkey.pem").stat().st_mode & 0o777 == 0o400
