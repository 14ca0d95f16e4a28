"""Deploy hooks (deploy.py): when one runs, and the note of one that is owed,
kept in the certificate directory."""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from letskencrypt import deploy


@dataclass
class Site:
    cert_dir: str
    deploy_hook: str | None
    handle: str = "web"
    names: tuple[str, ...] = ("web.example.org",)


def install(cert_dir: Path, set_id: str) -> str:
    """Make `set_id` the live set, as filestore does (the link alone)."""
    live = cert_dir / ".live"
    if live.is_symlink():
        live.unlink()
    live.symlink_to(f".sets/{set_id}")
    return f".sets/{set_id}"


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    (tmp_path / "certs").mkdir()
    return tmp_path / "certs"


def test_a_new_set_runs_the_hook_and_nothing_is_owed(cert_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    site = Site(str(cert_dir), f'echo "$LETSKENCRYPT_CERTIFICATE $LETSKENCRYPT_CERT" >> {log}')
    install(cert_dir, "a")
    assert deploy.deploy(site, None, stopped=False) == deploy.Deployed("ran", earlier=False)
    assert log.read_text() == f"web {cert_dir}/cert.pem\n"
    assert deploy.owed(str(cert_dir)) is None
    assert deploy.deploy(site, ".sets/a", stopped=False) is None  # nothing new, nothing owed


def test_a_failed_hook_is_owed_until_it_runs(cert_dir: Path) -> None:
    site = Site(str(cert_dir), "exit 3")
    live = install(cert_dir, "a")
    failed = deploy.deploy(site, None, stopped=False)
    assert failed == deploy.Deployed("failed", earlier=False, problem="exited with status 3")
    assert deploy.owed(str(cert_dir)) == live
    again = deploy.deploy(site, live, stopped=False)
    assert again is not None and again.result == "failed" and again.earlier
    site.deploy_hook = "true"
    assert deploy.deploy(site, live, stopped=False) == deploy.Deployed("ran", earlier=True)
    assert deploy.owed(str(cert_dir)) is None


def test_a_stopped_run_defers_the_hook(cert_dir: Path, tmp_path: Path) -> None:
    site = Site(str(cert_dir), f"touch {tmp_path / 'ran'}")
    live = install(cert_dir, "a")
    assert deploy.deploy(site, None, stopped=True) == deploy.Deployed("deferred", earlier=False)
    assert not (tmp_path / "ran").exists()
    assert deploy.owed(str(cert_dir)) == live


def test_an_owed_hook_for_a_set_no_longer_installed_is_forgotten(cert_dir: Path) -> None:
    site = Site(str(cert_dir), "exit 1")
    install(cert_dir, "a")
    deploy.deploy(site, None, stopped=False)
    live = install(cert_dir, "b")  # installed since, say by a run without the hook
    assert deploy.deploy(site, live, stopped=False) is None
    assert deploy.owed(str(cert_dir)) is None


def test_without_a_hook_nothing_runs_and_nothing_is_owed(cert_dir: Path) -> None:
    install(cert_dir, "a")
    deploy.owe(str(cert_dir), ".sets/a")
    assert deploy.deploy(Site(str(cert_dir), None), None, stopped=False) is None
    assert deploy.owed(str(cert_dir)) is None


@pytest.mark.parametrize(
    "content", [b"../etc\n", b".sets/..\n", b"/etc/passwd", b".sets/a b", b".sets/" + b"x" * 300]
)
def test_a_note_that_names_no_set_owes_nothing(cert_dir: Path, content: bytes) -> None:
    (cert_dir / deploy.OWED).write_bytes(content)
    assert deploy.owed(str(cert_dir)) is None


def test_a_note_that_is_a_symlink_is_not_followed(cert_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text(".sets/a\n")
    os.symlink(tmp_path / "elsewhere", cert_dir / deploy.OWED)
    assert deploy.owed(str(cert_dir)) is None


def test_a_note_that_cannot_be_written_says_why(tmp_path: Path) -> None:
    problem = deploy.owe(str(tmp_path / "missing"), ".sets/a")
    assert problem is not None and problem.startswith("could not note that it is owed: ")
