"""What a role forked from the supervisor carries of the caller: nothing of
its environment but what roles are given (a credential in the caller's
environment is in no role's memory, nor in its /proc/PID/environ), and no
configuration file others may change is obeyed."""

import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import LETSKENCRYPT, Paths, run_config
from tests.crashkit import children, comm
from tests.pebble import Pebble

ROLES = {
    "netproc", "acctproc", "keyproc", "dnsproc",
    "chngproc", "certproc", "fileproc", "revokeproc",
}  # fmt: skip
MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (r)")


def memory_holds(pid: int, needle: bytes) -> bool:
    """Whether any readable mapping of process `pid` holds `needle` (we are root)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as memory:
        for line in maps:
            match = MAPPING.match(line)
            if match is None or "[vvar]" in line or "[vsyscall]" in line:
                continue
            start, end = int(match.group(1), 16), int(match.group(2), 16)
            try:
                memory.seek(start)
                if needle in memory.read(end - start):
                    return True
            except OSError:
                continue
    return False


def test_a_credential_in_the_caller_s_environment_reaches_no_role(
    pebble: Pebble, paths: Paths
) -> None:
    secret = f"hunter2-{secrets.token_hex(16)}"
    daemon = subprocess.Popen(
        [LETSKENCRYPT, "--server", pebble.directory_url, "--ca-bundle", pebble.ca_bundle,
         "--trust-anchors", pebble.trust_anchors, "-C", str(paths.challenge_dir),
         "-c", str(paths.cert_dir), "-f", str(paths.account_key), "-k", str(paths.domain_key),
         "-n", "-N", "--daemon", "--interval", "3600", "secrets.example.org"],
        env={**os.environ, "CLOUD_API_TOKEN": secret},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (paths.cert_dir / "cert.pem").exists():
            assert daemon.poll() is None and time.monotonic() < deadline, "no certificate"
            time.sleep(0.1)
        roles = {comm(pid): pid for pid in children(daemon.pid)}
        assert set(roles) == ROLES, roles
        for pid in (daemon.pid, *roles.values()):
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"CLOUD_API_TOKEN" not in environ, comm(pid)
            assert not memory_holds(pid, secret.encode()), comm(pid)
        # The scan does find what a role was given: its settings.
        assert memory_holds(roles["netproc"], pebble.directory_url.encode())
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
    assert daemon.returncode == 0


def test_a_configuration_others_may_change_is_refused(pebble: Pebble, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    included = tmp_path / "hooks.conf"
    included.write_text('deploy hook "touch /tmp/pwned"\n')
    config = tmp_path / "acme-client.conf"
    config.write_text(
        f'include "hooks.conf"\nauthority a {{\n  api url "{pebble.directory_url}"\n'
        f'  account key "{tmp_path}/account.pem"\n}}\n'
        f'domain a.example.org {{\n  domain key "{tmp_path}/a.pem"\n}}\n'
    )
    before = pebble.request_count()
    for path, mode in ((config, 0o664), (included, 0o646)):
        for other in (config, included):
            other.chmod(0o644)
        path.chmod(mode)
        result = run_config(config)
        assert result.code == 1
        assert result.stderr == (
            f"letskencrypt: {path}: writable by its group or others (mode {mode:o}), and it "
            f"names commands this run executes: chmod go-w {path}\n"
        )
    included.chmod(0o644)
    os.chown(included, 65534, 65534)
    result = run_config(config)
    assert result.code == 1
    assert result.stderr.startswith(f"letskencrypt: {included}: owned by uid 65534;")
    assert pebble.request_count() == before
    assert not Path("/tmp/pwned").exists()
