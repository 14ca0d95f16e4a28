"""Issue 7: each of the eight roles in turn is attacker code inside that role's
real sandbox, with its real edges and tokens, during a real run against pebble.

For every role: one forced renewal (`-F`) of a certificate issued by a normal
run, through the real supervisor, with that one role replaced by
tests/attacker_role.py (see there for how, and for the attacks).  The run's
standard streams are a pseudo-terminal that is the run's controlling
terminal, as when an operator starts it by hand, so the terminal attacks
have something to attack.  The test collects the attacker's report from
that terminal, then:

- test_attack[role-case]: every attack was refused (controls: allowed);
- test_outcome[role]: the run's exit status, the keys byte-identical, the
  certificate directory holding either the old set or a new set that
  verifies to pebble's root and is for the domain key, nothing else written
  in the certificate, challenge and key directories, and no connection to
  the bait sockets.

`ATTACK_CASES` counts the cases per role.
"""

import contextlib
import fcntl
import itertools
import json
import os
import pty
import shutil
import socket
import stat
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from letskencrypt.roles import ROLES

from tests import attacker_role
from tests.conftest import ROOT, Paths, run_client
from tests.pebble import Pebble

NAMES = ["compromised.example.org", "www.compromised.example.org"]
RUN_TIMEOUT = 240
CERT_DIR_ENTRIES = {"cert.pem", "chain.pem", "fullchain.pem", ".live", ".sets", ".generation"}
CERT_FILES = ("cert.pem", "chain.pem", "fullchain.pem")
# What the run is expected to end with, whoever the attacker is: the
# attacker then behaves as the role, and every attack was refused.
EXPECTED_STATUS = dict.fromkeys(ROLES, 0)
REPORT_DIR = os.environ.get("LETSKENCRYPT_ATTACK_REPORTS", "")
ATTACK_CASES = {role: len(attacker_role.cases(role)) for role in ROLES}


def case_ids() -> list[tuple[str, str, str]]:
    return [
        (role, case.name, case.expect) for role in ROLES for case in attacker_role.cases(role)
    ]


# --- the arena: keys, a first certificate, bait sockets -------------------------------


@dataclass
class Bait:
    """A named unix socket in /tmp (mode 0777) and an abstract one, listening."""

    named: socket.socket
    named_path: str
    abstract: socket.socket
    abstract_name: str

    def accepted(self) -> int:
        """Connections made since the last call (they wait in the backlog)."""
        count = 0
        for listener in (self.named, self.abstract):
            while True:
                try:
                    connection, _ = listener.accept()
                except BlockingIOError:
                    break
                connection.close()
                count += 1
        return count

    def close(self) -> None:
        self.named.close()
        self.abstract.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.named_path)


def make_bait() -> Bait:
    tag = f"letskencrypt-attack-bait-{os.getpid()}"
    named_path = f"/tmp/{tag}.sock"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(named_path)
    named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    named.bind(named_path)
    os.chmod(named_path, 0o777)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + tag)
    for listener in (named, abstract):
        listener.listen(64)
        listener.setblocking(False)
    return Bait(named, named_path, abstract, tag)


@dataclass
class Run:
    role: str
    paths: Paths
    code: int
    output: str
    before: dict[str, bytes]
    bait_connections: int
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: dict[str, Any] | None = None


def file_bytes(base: Path) -> dict[str, bytes]:
    """Every file under base (following the certificate symlinks), by relative path."""
    found = {}
    for path in sorted(base.rglob("*")):
        if path.is_file():
            found[str(path.relative_to(base))] = path.read_bytes()
    return found


def parse_reports(run: Run) -> None:
    for line in run.output.replace("\r", "").splitlines():
        for prefix in (attacker_role.REPORT_PREFIX, attacker_role.DONE_PREFIX):
            where = line.find(prefix + "{")
            if where < 0:
                continue
            entry = json.loads(line[where + len(prefix) :])
            if prefix == attacker_role.DONE_PREFIX:
                run.done = entry
            else:
                run.reports[entry["name"]] = entry


def make_controlling_terminal() -> None:
    """In the child, after setsid(): the pty on fd 0 becomes its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_under_terminal(argv: list[str]) -> tuple[int, str]:
    """Run argv with stdin, stdout and stderr on a new pty; its output, as text."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the slave is gone
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        process = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=make_controlling_terminal,
        )
    finally:
        os.close(slave)
    try:
        code = process.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    reader.join(timeout=10)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


class Arena:
    """One pebble, one first issuance, one attacked renewal per role (on demand)."""

    def __init__(self, pebble: Pebble, base: Path, bait: Bait) -> None:
        self.pebble = pebble
        self.base = base
        self.bait = bait
        self.runs: dict[str, Run] = {}
        self.first = Paths(base=base / "first", challenge_dir=pebble.challenge_dir)
        self.first.base.mkdir(mode=0o755)
        result = run_client(pebble, self.first, "-n", "-N", *NAMES)
        assert result.code == 0, result.stderr
        self.root = x509.load_pem_x509_certificate(pebble.root_pem(0).encode())

    def run(self, role: str) -> Run:
        if role not in self.runs:
            self.runs[role] = self._run(role)
        return self.runs[role]

    def _run(self, role: str) -> Run:
        paths = Paths(base=self.base / role, challenge_dir=self.pebble.challenge_dir)
        shutil.copytree(self.first.base, paths.base, symlinks=True)
        before = file_bytes(paths.base)
        url = urlsplit(self.pebble.directory_url)
        target = attacker_role.Target(
            account_key=str(paths.account_key),
            domain_key=str(paths.domain_key),
            audit_log=str(paths.account_key.parent / "audit.log"),
            cert_dir=str(paths.cert_dir),
            challenge_dir=str(paths.challenge_dir),
            base=str(paths.base),
            bait_socket=self.bait.named_path,
            abstract_socket=self.bait.abstract_name,
            pebble_host="127.0.0.1",
            pebble_port=int(url.port or 443),
        )
        self.bait.accepted()
        argv = [
            sys.executable, "-m", "tests.compromised_run", role, json.dumps(target.__dict__), "--",
            "--server", self.pebble.directory_url, "--ca-bundle", self.pebble.ca_bundle,
            "--trust-anchors", self.pebble.trust_anchors,
            "-C", str(paths.challenge_dir), "-c", str(paths.cert_dir),
            "-f", str(paths.account_key), "-k", str(paths.domain_key),
            "-F", *NAMES,
        ]  # fmt: skip
        code, output = run_under_terminal(argv)
        run = Run(role, paths, code, output, before, self.bait.accepted())
        parse_reports(run)
        if REPORT_DIR:
            # For reading by hand: LETSKENCRYPT_ATTACK_REPORTS=/some/dir pytest ...
            document = {"code": code, "done": run.done, "reports": run.reports, "output": output}
            (Path(REPORT_DIR) / f"{role}.json").write_text(json.dumps(document, indent=1))
        return run


@pytest.fixture(scope="module")
def arena(pebble: Pebble, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    base = tmp_path_factory.mktemp("compromised")
    base.chmod(0o755)
    bait = make_bait()
    try:
        yield Arena(pebble, base, bait)
    finally:
        bait.close()


# --- the attacks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "name", "expect"), case_ids(), ids=[f"{r}-{n}" for r, n, _ in case_ids()]
)
def test_attack(arena: Arena, role: str, name: str, expect: str) -> None:
    run = arena.run(role)
    assert name in run.reports, f"{role} made no report on {name}:\n{run.output[-3000:]}"
    report = run.reports[name]
    shown = f"{role} {name}: {report['outcome']}: {report['detail']}"
    assert report["outcome"] != attacker_role.ERROR, shown
    if expect == attacker_role.EXPECT_REFUSED:
        assert report["outcome"] == attacker_role.REFUSED, shown
    elif expect == attacker_role.EXPECT_ALLOWED:
        assert report["outcome"] == attacker_role.SUCCEEDED, shown
    else:  # an accepted risk: reported, whatever it came to
        assert report["outcome"] in (attacker_role.REFUSED, attacker_role.SUCCEEDED), shown


# --- the run's outcome ------------------------------------------------------------------------


def chain_to_pebble(arena: Arena, cert_dir: Path, domain_key: Path) -> None:
    """A new set: for our key and names, and it verifies up to pebble's root."""
    leaf = x509.load_pem_x509_certificate((cert_dir / "cert.pem").read_bytes())
    chain = x509.load_pem_x509_certificates((cert_dir / "chain.pem").read_bytes())
    full = x509.load_pem_x509_certificates((cert_dir / "fullchain.pem").read_bytes())
    assert full == [leaf, *chain]
    key = load_pem_private_key(domain_key.read_bytes(), None)
    assert leaf.public_key() == key.public_key()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(NAMES)
    links = [leaf, *chain]
    if links[-1] != arena.root:
        links.append(arena.root)
    for child, issuer in itertools.pairwise(links):
        child.verify_directly_issued_by(issuer)


@pytest.mark.parametrize("role", ROLES)
def test_outcome(arena: Arena, role: str) -> None:
    run = arena.run(role)
    tail = run.output[-4000:]
    assert run.done is not None, f"no ATTACK-DONE from {role}:\n{tail}"
    assert run.done["count"] == ATTACK_CASES[role]
    assert run.code == EXPECTED_STATUS[role], tail
    paths = run.paths
    after = file_bytes(paths.base)
    # Keys byte-identical and still 0400.
    for key in (paths.account_key, paths.domain_key):
        relative = str(key.relative_to(paths.base))
        assert after.get(relative) == run.before[relative], f"{relative} changed"
        assert stat.S_IMODE(key.stat().st_mode) == 0o400
    # Nothing new beside the keys; the audit log only grew.
    assert sorted(os.listdir(paths.base)) == ["account", "certs", "domain"]
    assert sorted(os.listdir(paths.account_key.parent)) == ["audit.log", "privkey.pem"]
    assert sorted(os.listdir(paths.domain_key.parent)) == ["privkey.pem"]
    audit = "account/audit.log"
    assert after[audit].startswith(run.before[audit])
    # The certificate directory: the old set, or a valid new one; nothing else.
    entries = set(os.listdir(paths.cert_dir))
    assert entries <= CERT_DIR_ENTRIES, entries - CERT_DIR_ENTRIES
    planted = [str(p) for p in paths.cert_dir.rglob("*attack*")]
    assert planted == []
    old = {name: run.before[f"certs/{name}"] for name in CERT_FILES}
    new = {name: after.get(f"certs/{name}") for name in CERT_FILES}
    if new != old:
        missing = [name for name, data in new.items() if data is None]
        assert not missing, f"the certificate set is gone: {missing}"
        chain_to_pebble(arena, paths.cert_dir, paths.domain_key)
    # The challenge directory is empty again, the bait untouched.
    assert list(paths.challenge_dir.iterdir()) == []
    assert run.bait_connections == 0
    assert not os.path.lexists(f"/tmp/attack-{role}")


def test_every_role_has_its_cases() -> None:
    """The count the issue asks for, and each name unique within its role."""
    for role in ROLES:
        names = [case.name for case in attacker_role.cases(role)]
        assert len(names) == len(set(names)), role
        assert ATTACK_CASES[role] >= 45, (role, ATTACK_CASES[role])
