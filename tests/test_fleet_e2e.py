"""End to end, many certificates in one run (`letskencrypt --config FILE`)
against a real pebble: 100 certificates, a rerun with nothing due, one name
changed, one certificate failing while the others succeed, deploy hooks,
published paths, `status` and the metrics file."""

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.conftest import LETSKENCRYPT, stop_when
from tests.pebble import Pebble

RUN_TIMEOUT = 600
COUNT = 100


@dataclass
class Site:
    handle: str
    names: list[str]


def sites(count: int, prefix: str) -> list[Site]:
    return [
        Site(f"{prefix}{index}.example.test", [f"{prefix}{index}.example.test"])
        for index in range(count)
    ]


def write_config(
    base: Path,
    pebble: Pebble,
    sites: list[Site],
    challenge_dirs: dict[str, Path] | None = None,
    authority_of: dict[str, str] | None = None,
) -> Path:
    """`authority_of`: the authority each certificate signs with (default
    "pebble", whose account key is account.pem; another's is <name>.pem)."""
    lines = [
        f'pebble_url = "{pebble.directory_url}"',
        f'state directory "{base / "state"}"',
        f'deploy hook "echo $LETSKENCRYPT_CERTIFICATE >> {base / "hook.log"}"',
    ]
    authority_of = authority_of or {}
    for authority in sorted({"pebble", *authority_of.values()}):
        account_key = base / ("account.pem" if authority == "pebble" else f"{authority}.pem")
        lines += [
            f"authority {authority} {{",
            "    api url $pebble_url",
            f'    account key "{account_key}" ecdsa',
            f'    trust anchors "{pebble.trust_anchors}"',
            f'    ca bundle "{pebble.ca_bundle}"',
            "}",
        ]
    for site in sites:
        challenge_dir = (challenge_dirs or {}).get(site.handle, pebble.challenge_dir)
        alternatives = " ".join(site.names[1:])
        lines += [
            f"domain {site.handle} {{",
            *([f"    alternative names {{ {alternatives} }}"] if alternatives else []),
            f'    domain key "{base / "keys" / site.handle}.pem"',
            f'    certificate directory "{base / "certs" / site.handle}"',
            f'    domain full chain certificate "{base / "published" / site.handle}.pem"',
            f'    challengedir "{challenge_dir}"',
            f"    sign with {authority_of.get(site.handle, 'pebble')}",
            "}",
        ]
    path = base / "acme-client.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LETSKENCRYPT, "--config", str(config), "-n", "-N", *args],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip


def serial(base: Path, handle: str) -> int:
    pem = (base / "certs" / handle / "cert.pem").read_bytes()
    return x509.load_pem_x509_certificate(pem).serial_number


def hook_lines(base: Path) -> list[str]:
    path = base / "hook.log"
    return path.read_text().split() if path.exists() else []


@pytest.fixture
def base(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    for directory in ("keys", "certs", "published"):
        (tmp_path / directory).mkdir()
    return tmp_path


def test_one_hundred_certificates_one_failing_then_nothing_due_then_one_name_changed(
    pebble: Pebble, base: Path
) -> None:
    fleet = sites(COUNT, "s")
    closed = base / "closed-challenges"
    closed.mkdir()
    closed.chmod(0o555)
    failing = fleet[42].handle
    config = write_config(base, pebble, fleet, {failing: closed})
    metrics = base / "metrics.prom"

    # One certificate's challenge directory is closed to the roles: it fails
    # alone, before any request of its own; the other 99 are issued.
    first = run(config, "--metrics-file", str(metrics))
    assert first.returncode == 1, first.stderr[-3000:]
    assert first.stderr.splitlines()[-1] == (
        f"letskencrypt: 1 of {COUNT} certificates failed: {failing}"
    )
    assert any(
        line.startswith(f"letskencrypt: {failing}: challenge directory {closed}")
        for line in first.stderr.splitlines()
    ), first.stderr[-3000:]
    for site in fleet:
        exists = (base / "certs" / site.handle / "cert.pem").exists()
        assert exists == (site.handle != failing), site.handle
    assert sorted(hook_lines(base)) == sorted(s.handle for s in fleet if s.handle != failing)
    text = metrics.read_text()
    assert len(re.findall(r"^letskencrypt_certificate_due\{", text, re.M)) == COUNT
    assert f'letskencrypt_certificate_failures_in_row{{certificate="{failing}"}} 1' in text
    orders = re.search(r"^letskencrypt_run_orders (\d+)$", text, re.M)
    assert orders is not None and int(orders.group(1)) == COUNT - 1

    # Opened again: exactly that one is issued.
    config = write_config(base, pebble, fleet)
    second = run(config)
    assert second.returncode == 0, second.stderr[-3000:]
    serials = {site.handle: serial(base, site.handle) for site in fleet}
    assert len(set(serials.values())) == COUNT
    assert hook_lines(base)[COUNT - 1:] == [failing]
    # The configured full chain path points at the certificate directory's.
    published = base / "published" / f"{fleet[0].handle}.pem"
    assert os.readlink(published) == str(base / "certs" / fleet[0].handle / "fullchain.pem")
    assert published.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert list(pebble.challenge_dir.iterdir()) == []

    # Nothing due: exit 2, and not one request.
    requests_before = pebble.request_count()
    again = run(config, "-v")
    assert again.returncode == 2, again.stderr[-3000:]
    assert pebble.request_count() == requests_before
    assert again.stderr.count(": not due: ") == COUNT
    assert len(hook_lines(base)) == COUNT

    # One name changed: exactly that certificate is renewed.
    changed = fleet[7]
    changed.names.append(f"www.{changed.handle}")
    config = write_config(base, pebble, fleet)
    third = run(config)
    assert third.returncode == 0, third.stderr[-3000:]
    renewed = [site.handle for site in fleet if serial(base, site.handle) != serials[site.handle]]
    assert renewed == [changed.handle]
    assert hook_lines(base)[COUNT:] == [changed.handle]

    shown = subprocess.run(
        [LETSKENCRYPT, "status", "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    document = json.loads(shown.stdout)
    assert len(document["certificates"]) == COUNT
    assert all(not entry["due"] for entry in document["certificates"])
    assert {entry["last_result"] for entry in document["certificates"]} == {"not-due", "changed"}


def test_a_mistake_in_the_file_is_named_before_any_request(pebble: Pebble, base: Path) -> None:
    config = base / "acme-client.conf"
    config.write_text('authority a {\n    api url "https://x.test/dir"\n}\n')
    before = pebble.request_count()
    result = run(config)
    assert result.returncode == 1
    assert result.stderr.startswith(f"letskencrypt: {config}:"), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert pebble.request_count() == before


def test_per_certificate_options_are_refused_with_config(base: Path, pebble: Pebble) -> None:
    config = write_config(base, pebble, sites(1, "o"))
    result = run(config, "-c", str(base / "elsewhere"))
    assert result.returncode == 1
    assert result.stderr == (
        "letskencrypt: -c/--cert-dir goes in the configuration file (certificate directory) "
        "with --config\n"
    )


def test_daemon_renews_on_a_schedule_and_stops_on_sigterm(pebble: Pebble, base: Path) -> None:
    fleet = sites(3, "d")
    config = write_config(base, pebble, fleet)
    daemon = subprocess.Popen(
        [LETSKENCRYPT, "--config", str(config), "-n", "-N", "-v", "--daemon",
         "--interval", "2", "--jitter", "0", "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(hook_lines(base)) < len(fleet):
            time.sleep(0.2)
        assert sorted(hook_lines(base)) == sorted(site.handle for site in fleet)
        time.sleep(3)  # at least one more check, with nothing due
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    finally:
        daemon.kill()
    assert daemon.returncode == 0, stderr[-3000:]
    events = [json.loads(line) for line in stderr.splitlines()]
    assert {"time", "certificate", "role", "event"} <= set(events[0])
    assert {e["certificate"] for e in events if e["role"] == "netproc"} == {
        site.handle for site in fleet
    }
    assert sum(e["event"].startswith("not due: ") for e in events) >= len(fleet)
    assert any(e["event"].startswith("next check in ") for e in events)
    assert len(hook_lines(base)) == len(fleet)


def test_rotate_key_makes_a_new_key_only_when_renewing(pebble: Pebble, base: Path) -> None:
    """`rotate key` rotates at each renewal, not at each run; a domain's key
    type is its own, not the account key's."""
    config = write_config(base, pebble, sites(1, "r"))
    text = config.read_text().replace("sign with pebble\n", "sign with pebble\n    rotate key\n")
    key = base / "keys" / "r0.example.test.pem"
    config.write_text(text.replace(f'"{key}"', f'"{key}" rsa2048'))

    first = run(config)
    assert first.returncode == 0, first.stderr
    assert isinstance(load_pem_private_key(key.read_bytes(), None), rsa.RSAPrivateKey)
    issued = key.read_bytes()
    # The account key was made ecdsa384 by `account key ... ecdsa`; the
    # domain's rsa2048 does not make it wrong.
    again = run(config)
    assert again.returncode == 2, again.stderr
    assert key.read_bytes() == issued
    forced = run(config, "-F")
    assert forced.returncode == 0, forced.stderr
    assert key.read_bytes() != issued
    assert list((base / "keys").glob("r0.example.test.pem.old-*"))


def test_a_certificate_another_run_holds_fails_at_once_and_the_others_go_on(
    pebble: Pebble, base: Path
) -> None:
    """One certificate directory is locked by another run (as fileproc locks
    it): that certificate fails before any role starts, naming the holder;
    the other is issued."""
    fleet = sites(2, "held")
    config = write_config(base, pebble, fleet)
    held = base / "certs" / fleet[0].handle
    held.mkdir(parents=True)
    holder = subprocess.Popen(
        ["python3", "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)", str(held)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        started = time.monotonic()
        result = run(config)
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert any(
        line.startswith(f"letskencrypt: {fleet[0].handle}: ") and "another run holds its lock"
        and f"pid {holder.pid}" in line for line in lines
    ), result.stderr  # fmt: skip
    assert lines[-1] == f"letskencrypt: 1 of 2 certificates failed: {fleet[0].handle}"
    assert (base / "certs" / fleet[1].handle / "cert.pem").exists()
    assert not (held / "cert.pem").exists()
    # Not after waiting out the lock as a one-certificate run would.
    assert took < 30


def test_sigterm_mid_run_ends_every_certificate_cleanly(pebble: Pebble, base: Path) -> None:
    """SIGTERM once some of 30 certificates are installed: the run dies of
    it; each certificate is whole or absent; those in flight say whether
    theirs was installed; the run leaves no socket directory behind and runs
    no deploy hook.  The next run deploys each certificate exactly once:
    those the stopped run installed, and those it issues itself."""
    fleet = sites(30, "t")
    config = write_config(base, pebble, fleet)
    tmpdir = base / "tmp"
    tmpdir.mkdir()
    process = subprocess.Popen(
        [LETSKENCRYPT, "--config", str(config), "-n", "-N", "-j", "4"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmpdir)},
    )  # fmt: skip
    installed = lambda: [s for s in fleet if (base / "certs" / s.handle / "cert.pem").exists()]  # noqa: E731
    stderr = stop_when(process, installed, poll=0.01)
    assert process.returncode == -signal.SIGTERM, stderr
    assert "did not stop" not in stderr
    done = installed()
    assert 0 < len(done) < len(fleet), stderr
    for site in fleet:
        files = {p.name for p in (base / "certs" / site.handle).glob("*.pem")}
        assert files in (set(), {"cert.pem", "chain.pem", "fullchain.pem"}), (site, files)
    # Each certificate in flight says what became of it, and says it truly.
    cut_short = re.findall(r"^letskencrypt: (\S+): interrupted by SIGTERM(.*)$", stderr, re.M)
    assert cut_short, stderr
    for handle, what in cut_short:
        there = (base / "certs" / handle / "cert.pem").exists()
        if there:
            assert what.startswith(", after a new certificate was installed in "), stderr
        else:
            assert what == "; no certificate was installed or removed", stderr
    assert list(tmpdir.iterdir()) == []
    assert hook_lines(base) == []
    rerun = run(config, "-j", "4")
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(hook_lines(base)) == sorted(site.handle for site in fleet), rerun.stderr
    for site in done:
        assert (f"letskencrypt: {site.handle}: deploy hook: ran for the certificate an earlier "
                "run installed") in rerun.stderr.splitlines(), rerun.stderr  # fmt: skip


def test_a_failed_deploy_hook_runs_again_at_the_next_run(pebble: Pebble, base: Path) -> None:
    """The hook fails: the certificates stay installed and the run exits 1;
    the next run, with nothing due, tries the hook again (and fails again);
    once it succeeds, each certificate is deployed once, and a later run has
    nothing to do."""
    fleet = sites(2, "h")
    config = write_config(base, pebble, fleet)
    ready = base / "hook-can-run"
    text = config.read_text()
    config.write_text(text.replace('deploy hook "echo', f'deploy hook "test -e {ready} && echo'))
    for attempt in range(2):
        failed = run(config)
        assert failed.returncode == 1, failed.stderr
        for site in fleet:
            assert (base / "certs" / site.handle / "cert.pem").exists()
            assert (f"letskencrypt: {site.handle}: deploy hook: exited with status 1 (the "
                    "certificate stays installed; the hook runs again at the next run)"
                    ) in failed.stderr.splitlines(), (attempt, failed.stderr)  # fmt: skip
        assert hook_lines(base) == []
        assert [entry["deploy_hook_owed"] for entry in status(config)] == [True, True]
    ready.touch()
    deployed = run(config)
    assert deployed.returncode == 0, deployed.stderr
    assert sorted(hook_lines(base)) == sorted(site.handle for site in fleet)
    idle = run(config)
    assert idle.returncode == 2, idle.stderr
    assert len(hook_lines(base)) == len(fleet)
    assert [entry["deploy_hook_owed"] for entry in status(config)] == [False, False]


def status(config: Path) -> list[dict[str, object]]:
    """`letskencrypt status --json`: each certificate's entry."""
    completed = subprocess.run(
        [LETSKENCRYPT, "status", "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(completed.stdout)["certificates"]
