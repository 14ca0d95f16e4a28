"""Shared fixtures: a real pebble on loopback and a way to run `letskencrypt`."""

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.pebble import Pebble

ROOT = Path(__file__).resolve().parent.parent
LETSKENCRYPT = str(Path(sys.executable).parent / "letskencrypt")
RUN_TIMEOUT = 120
BUILD_TIMEOUT = 1800
# The line a run that creates the CA's account says, without -v: the
# agreement it makes (acme.AcmeClient.account).
TERMS_LINE = re.compile(
    r"^letskencrypt: netproc: account \S+ created(, agreeing to the CA's terms of service \S+|"
    r" \(the CA names no terms of service\))\n",
    re.MULTILINE,
)


def without_terms(stderr: str) -> str:
    """`stderr` without the line of an account's creation (at most one)."""
    return TERMS_LINE.sub("", stderr, count=1)


@pytest.fixture(scope="session")
def built_images() -> None:
    """`make images`: quick when nothing changed, a rebuild when the code did,
    so the container tests never run yesterday's images."""
    subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "images"],
        check=True,
        timeout=BUILD_TIMEOUT,
        env={k: v for k, v in os.environ.items() if k != "BASE_IMAGE"},
    )


@pytest.fixture(scope="session")
def pebble() -> Iterator[Pebble]:
    # Pebble's defaults stay on: 5% of nonces are rejected (exercising our
    # badNonce retry) and half of the valid authorisations are reused.
    with Pebble() as server:
        os.chmod(server.challenge_dir, 0o755)
        yield server


@pytest.fixture(scope="session")
def pebble_sid() -> Iterator[Pebble]:
    """Debian unstable's pebble 2.10 (from `make pebble-sid`), with its defaults:
    the DEFAULT_PROFILES, ARI, no EAB.  Missing binaries are an error, not a skip."""
    with Pebble(generation="2.10") as server:
        os.chmod(server.challenge_dir, 0o755)
        yield server


@dataclass
class Paths:
    """One client's files: keys, certificates and the challenge directory."""

    base: Path
    challenge_dir: Path

    @property
    def cert_dir(self) -> Path:
        return self.base / "certs"

    @property
    def account_key(self) -> Path:
        return self.base / "account" / "privkey.pem"

    @property
    def domain_key(self) -> Path:
        return self.base / "domain" / "privkey.pem"

    def snapshot(self) -> dict[str, str]:
        """sha256 of every file under base (following the cert symlinks)."""
        digests = {}
        for path in sorted(self.base.rglob("*")):
            if path.is_file():
                digests[str(path.relative_to(self.base))] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
        return digests


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def paths(tmp_path: Path, pebble: Pebble) -> Paths:
    tmp_path.chmod(0o755)
    return Paths(base=tmp_path, challenge_dir=pebble.challenge_dir)


def stop_when(
    process: "subprocess.Popen[str]",
    ready: Callable[[], object],
    signum: int = signal.SIGTERM,
    poll: float = 0.05,
) -> str:
    """Wait (RUN_TIMEOUT at most) until `ready()` is true while `process`
    runs, send it `signum`, and return its stderr once it has ended (killed
    if it has not within 60 s)."""
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not ready() and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1]
            time.sleep(poll)
        assert ready(), "never ready to be stopped"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return stderr


def run_client(
    pebble: Pebble,
    paths: Paths,
    *args: str,
    server: str | None = None,
    timeout: float = RUN_TIMEOUT,
) -> Result:
    argv = [
        LETSKENCRYPT,
        "--server",
        server or pebble.directory_url,
        "--ca-bundle",
        pebble.ca_bundle,
        "--trust-anchors",
        pebble.trust_anchors,
        "-C",
        str(paths.challenge_dir),
        "-c",
        str(paths.cert_dir),
        "-f",
        str(paths.account_key),
        "-k",
        str(paths.domain_key),
        *args,
    ]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    return Result(completed.returncode, completed.stdout, completed.stderr)


def write_config(
    base: Path,
    server: Pebble,
    domains: dict[str, list[str]],
    authority: tuple[str, ...] = (),
) -> Path:
    """An acme-client.conf in `base`: one authority `ca` for `server` (plus
    the `authority` lines), and a domain block per handle with its extra lines."""
    lines = [
        f'state directory "{base / "state"}"',
        "authority ca {",
        f'    api url "{server.directory_url}"',
        f'    account key "{base / "account" / "privkey.pem"}"',
        f'    trust anchors "{server.trust_anchors}"',
        f'    ca bundle "{server.ca_bundle}"',
        *(f"    {line}" for line in authority),
        "}",
    ]
    for handle, extra in domains.items():
        lines += [
            f"domain {handle} {{",
            f'    domain key "{base / "keys" / handle}.pem"',
            f'    challengedir "{server.challenge_dir}"',
            *(f"    {line}" for line in extra),
            "}",
        ]
    path = base / "letskencrypt.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_config(config: Path, *args: str, timeout: float = RUN_TIMEOUT) -> Result:
    """`letskencrypt --config CONFIG -n -N ARGS`."""
    completed = subprocess.run(
        [LETSKENCRYPT, "--config", str(config), "-n", "-N", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return Result(completed.returncode, completed.stdout, completed.stderr)
