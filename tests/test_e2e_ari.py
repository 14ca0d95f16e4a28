"""End to end, native mode: ACME Renewal Information (RFC 9773) against
pebble 2.10 (renewalInfo, `POST /set-renewal-info/` to set a certificate's
window) and pebble 2.4 (no renewalInfo: the lifetime rule alone)."""

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from tests.conftest import LETSKENCRYPT, Paths, run_client, run_config, write_config
from tests.pebble import Pebble, ari_cert_id
from tests.test_e2e_native import leaf

NEW_ORDER = "/order-plz"
EXPLANATION = "https://ca.example.org/incident-42"
SITE = "site.ari.example.org"


def paths_for(tmp_path: Path, server: Pebble) -> Paths:
    tmp_path.chmod(0o755)
    return Paths(base=tmp_path, challenge_dir=server.challenge_dir)


def new_orders(server: Pebble, since: int) -> int:
    return sum(1 for method, url in server.request_lines()[since:] if (method, url) == (
        "POST", NEW_ORDER))


def order_audit(paths: Paths) -> list[dict[str, Any]]:
    log = paths.account_key.parent / "audit.log"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    return [entry for entry in entries if entry["kind"] == "newOrder"]


def replacements(server: Pebble) -> list[str]:
    """Pebble's log lines for orders it took as replacements."""
    return [line for line in server.log_text().splitlines() if "is a replacement of" in line]


def pebble_finds(certificate: x509.Certificate) -> bool:
    """Whether pebble 2.10 finds `certificate` by the ARI identifier in a
    newOrder's `replaces`.  It indexes orders by the serial's minimal bytes
    but looks the identifier's DER bytes up as they are, so a serial whose
    top bit needs a leading zero byte (about 1 in 256 of its 63-bit serials)
    is "not found" (HTTP 500).  The client then orders without `replaces`."""
    return certificate.serial_number.bit_length() % 8 != 0


def replaced_then_signed(paths: Paths, cert_id: str) -> dict[str, Any]:
    """The audit entries of the last renewal's newOrders: the first says it
    replaces `cert_id`; returns the last (what the CA took)."""
    entries = order_audit(paths)
    asked = [entry for entry in entries if entry.get("replaces") == cert_id]
    assert asked and asked[0]["decision"] == "signed", entries
    return entries[-1]


def test_window_in_the_future_is_up_to_date(pebble_sid: Pebble, tmp_path: Path) -> None:
    paths = paths_for(tmp_path, pebble_sid)
    name = "future.ari.example.org"
    assert run_client(pebble_sid, paths, "-n", "-N", name).code == 0
    certificate = leaf(paths)
    now = datetime.now(UTC)
    pebble_sid.set_renewal_info(certificate, now + timedelta(days=30), now + timedelta(days=31))
    before = pebble_sid.request_count()
    again = run_client(pebble_sid, paths, "-v", name)
    assert again.code == 2, again.stderr
    assert new_orders(pebble_sid, before) == 0
    asked = pebble_sid.request_lines()[before:]
    assert [method for method, _url in asked] == ["GET", "GET"]
    assert "renewalInfo" in asked[1][1]
    assert "renewal picked for" in again.stderr
    assert leaf(paths) == certificate


def test_window_in_the_past_renews_with_replaces(pebble_sid: Pebble, tmp_path: Path) -> None:
    paths = paths_for(tmp_path, pebble_sid)
    name = "past.ari.example.org"
    assert run_client(pebble_sid, paths, "-n", "-N", name).code == 0
    old = leaf(paths)
    now = datetime.now(UTC)
    pebble_sid.set_renewal_info(
        old, now - timedelta(hours=2), now - timedelta(hours=1), EXPLANATION
    )
    before, replaced = pebble_sid.request_count(), len(replacements(pebble_sid))
    renewed = run_client(pebble_sid, paths, name)
    assert renewed.code == 0, renewed.stderr
    # Said without -v: why the certificate was renewed early, and the CA's explanation.
    assert "renewing early, as the CA's renewal information suggests" in renewed.stderr
    assert EXPLANATION in renewed.stderr
    # (pebble rejects a nonce now and then: the newOrder may be sent twice)
    assert new_orders(pebble_sid, before) >= 1
    new = leaf(paths)
    assert new.serial_number != old.serial_number
    # The newOrder said which certificate it replaces; acctproc signed it and pebble took it
    # (or, for a serial pebble cannot find, the order was sent again without it).
    assert len(replacements(pebble_sid)) == replaced + pebble_finds(old)
    last = replaced_then_signed(paths, ari_cert_id(old))
    assert last["decision"] == "signed"
    assert ("replaces" in last) == pebble_finds(old)
    # The first order replaced nothing.
    assert "replaces" not in order_audit(paths)[0]


def test_forced_renewal_replaces_the_installed_certificate(
    pebble_sid: Pebble, tmp_path: Path
) -> None:
    paths = paths_for(tmp_path, pebble_sid)
    name = "forced.ari.example.org"
    assert run_client(pebble_sid, paths, "-n", "-N", name).code == 0
    old = leaf(paths)
    assert run_client(pebble_sid, paths, "-F", name).code == 0
    last = replaced_then_signed(paths, ari_cert_id(old))
    assert last.get("replaces") == (ari_cert_id(old) if pebble_finds(old) else None)


def test_no_ari_never_asks(pebble_sid: Pebble, tmp_path: Path) -> None:
    paths = paths_for(tmp_path, pebble_sid)
    name = "noari.ari.example.org"
    assert run_client(pebble_sid, paths, "-n", "-N", "--no-ari", name).code == 0
    now = datetime.now(UTC)
    pebble_sid.set_renewal_info(leaf(paths), now - timedelta(hours=2), now - timedelta(hours=1))
    before = pebble_sid.request_count()
    again = run_client(pebble_sid, paths, "--no-ari", name)
    assert again.code == 2, again.stderr
    assert pebble_sid.request_count() == before


def test_pebble_24_has_no_renewal_information(pebble: Pebble, tmp_path: Path) -> None:
    """No renewalInfo in the directory: the lifetime rule, and no replaces."""
    paths = paths_for(tmp_path, pebble)
    name = "old.ari.example.org"
    assert run_client(pebble, paths, "-n", "-N", name).code == 0
    before = pebble.request_count()
    again = run_client(pebble, paths, "-v", name)
    assert again.code == 2, again.stderr
    assert pebble.request_lines()[before:] == [("GET", "/dir")]
    assert "renewal information: the CA offers none (no renewalInfo)" in again.stderr
    assert run_client(pebble, paths, "-F", name).code == 0
    assert all("replaces" not in entry for entry in order_audit(paths))


def test_config_run_keeps_the_window_and_asks_no_more(pebble_sid: Pebble, tmp_path: Path) -> None:
    """A --config run asks the new certificate's renewal information once;
    reruns before the picked time and the CA's Retry-After send nothing.
    Once the CA's window is in the past and the note is due again, the
    rerun renews with replaces; status shows the window."""
    tmp_path.chmod(0o755)
    config = write_config(tmp_path, pebble_sid, {SITE: []})
    first = run_config(config)
    assert first.code == 0, first.stderr
    state_file = tmp_path / "state" / "state.json"
    note = json.loads(state_file.read_text())["certificates"][SITE]["ari"]
    cert_path = tmp_path / "state" / "certs" / SITE / "cert.pem"
    old = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert note["cert_id"] == ari_cert_id(old)
    assert note["start"] <= note["chosen"] <= note["end"]

    now = datetime.now(UTC)
    pebble_sid.set_renewal_info(old, now + timedelta(days=30), now + timedelta(days=31))
    before = pebble_sid.request_count()
    again = run_config(config, "-v")
    assert again.code == 2, again.stderr
    assert pebble_sid.request_count() == before

    # The CA's Retry-After has passed (as if hours went by): asked again,
    # the window is in the future, nothing ordered.
    state = json.loads(state_file.read_text())
    state["certificates"][SITE]["ari"]["retry_until"] = now.timestamp() - 1
    state_file.write_text(json.dumps(state))
    asked = run_config(config, "-v")
    assert asked.code == 2, asked.stderr
    assert new_orders(pebble_sid, before) == 0
    assert pebble_sid.request_count() > before
    stored = json.loads(state_file.read_text())["certificates"][SITE]["ari"]
    assert stored["start"] == (now + timedelta(days=30)).replace(microsecond=0).timestamp()
    shown = subprocess.run(
        [LETSKENCRYPT, "status", "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    entry = json.loads(shown.stdout)["certificates"][0]
    assert entry["ari"]["window_start"] is not None
    assert entry["ari"]["chosen"] is not None

    # Then the CA moves the window into the past.
    pebble_sid.set_renewal_info(old, now - timedelta(hours=2), now - timedelta(hours=1))
    state = json.loads(state_file.read_text())
    state["certificates"][SITE]["ari"]["retry_until"] = now.timestamp() - 1
    state_file.write_text(json.dumps(state))
    replaced = len(replacements(pebble_sid))
    renewed = run_config(config)
    assert renewed.code == 0, renewed.stderr
    assert len(replacements(pebble_sid)) == replaced + pebble_finds(old)
    new = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert new.serial_number != old.serial_number
    text = subprocess.run(
        [LETSKENCRYPT, "status", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "ARI window" in text
