import ipaddress
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from letskencrypt import filestore, runstate, status
from letskencrypt.renewal import Decision, decide
from letskencrypt.status import Entry

from tests.certfactory import INTERMEDIATE_KEY, NOW, make_cert, make_pki, pem

NAMES = ("a.example", "b.example")
SECOND = timedelta(seconds=1)
DAY = timedelta(days=1)
T_RUN = datetime(2026, 11, 26, 17, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def pki():
    return make_pki()


def leaf(pki, days: float = 90, names=NAMES, key=None, issuer="intermediate"):
    public_key = (key or ec.generate_private_key(ec.SECP256R1())).public_key()
    return make_cert(
        "leaf",
        issuer,
        public_key,
        INTERMEDIATE_KEY,
        ca=False,
        names=list(names),
        not_before=NOW,
        not_after=NOW + timedelta(days=days),
    )


def installed(tmp_path: Path, pki, cert) -> str:
    """A real certificate directory, as fileproc leaves it."""
    cert_dir = tmp_path / "certs" / "web"
    cert_dir.mkdir(parents=True, exist_ok=True)
    filestore.install(str(cert_dir), pem(cert), pem(pki.intermediate))
    return str(cert_dir)


def entry(cert_dir: str, names=NAMES, handle="web") -> Entry:
    return Entry(
        handle=handle,
        names=tuple(names),
        cert_dir=cert_dir,
        key_type="ecdsa256",
        authority="letsencrypt",
        directory_url="https://acme.example/directory",
    )


def one(cert_dir: str, now: datetime, names=NAMES, state=None) -> status.Facts:
    (facts,) = status.gather([entry(cert_dir, names)], state or runstate.State(), now)
    return facts


# --- gather ----------------------------------------------------------------------


@pytest.mark.parametrize("make_dir", [False, True])
def test_no_certificate_yet_is_due_now(tmp_path, make_dir):
    cert_dir = tmp_path / "web"
    if make_dir:
        cert_dir.mkdir()
    facts = one(str(cert_dir), NOW)
    assert facts.due
    assert facts.next_renewal is None
    assert facts.renewal_reason == "no certificate yet"
    assert facts.installed_names == ()
    assert (facts.key_type, facts.issuer, facts.serial, facts.not_after) == (None,) * 4
    assert facts.error is None
    assert os.path.exists(cert_dir) is make_dir  # status creates nothing


def test_current_certificate(tmp_path, pki):
    cert = leaf(pki, 90)
    cert_dir = installed(tmp_path, pki, cert)
    facts = one(cert_dir, NOW + DAY)
    assert facts == status.Facts(
        handle="web",
        names=NAMES,
        cert_dir=cert_dir,
        authority="letsencrypt",
        directory_url="https://acme.example/directory",
        installed_names=NAMES,
        key_type="ecdsa256",
        issuer="CN=intermediate",
        serial=format(cert.serial_number, "x"),
        not_before=NOW,
        not_after=NOW + 90 * DAY,
        next_renewal=NOW + 60 * DAY,
        renewal_reason="lifetime rule: renew in the last 30 days of a 90-day certificate",
        due=False,
        last_result=None,
        last_run=None,
        last_message=None,
        error=None,
    )


def test_due_by_the_lifetime_rule(tmp_path, pki):
    cert_dir = installed(tmp_path, pki, leaf(pki, 90))
    at_the_turn = one(cert_dir, NOW + 60 * DAY)
    assert not at_the_turn.due
    facts = one(cert_dir, NOW + 60 * DAY + SECOND)
    assert facts.due
    assert facts.next_renewal == NOW + 60 * DAY
    assert facts.renewal_reason.startswith("lifetime rule: renew in the last 30 days")


def test_short_lived_certificate(tmp_path, pki):
    cert = leaf(pki, 6)
    cert_dir = installed(tmp_path, pki, cert)
    facts = one(cert_dir, NOW + 2 * DAY)
    assert not facts.due
    assert facts.next_renewal == NOW + 3 * DAY
    assert facts.renewal_reason == "lifetime rule: renew in the last 3 days of a 6-day certificate"
    assert one(cert_dir, NOW + 3 * DAY + SECOND).due


@pytest.mark.parametrize("days", [90, 6])
def test_due_agrees_with_the_runs_decision(tmp_path, pki, days):
    cert = leaf(pki, days)
    cert_dir = installed(tmp_path, pki, cert)
    for hours in range(0, days * 24 + 48, 7):
        now = NOW + timedelta(hours=hours)
        renew = decide(cert, list(NAMES), now, force=False)[0] is Decision.RENEW
        assert one(cert_dir, now).due is renew, now


def test_expired(tmp_path, pki):
    cert_dir = installed(tmp_path, pki, leaf(pki, 6))
    facts = one(cert_dir, NOW + 7 * DAY)
    assert facts.due
    assert facts.renewal_reason == "expired"
    assert facts.next_renewal == NOW + 3 * DAY


def test_names_changed(tmp_path, pki):
    cert_dir = installed(tmp_path, pki, leaf(pki, 90))
    facts = one(cert_dir, NOW, names=("a.example", "c.example"))
    assert facts.due
    assert facts.next_renewal is None
    assert facts.renewal_reason == "names changed: adding ['c.example'], removing ['b.example']"
    assert facts.installed_names == NAMES
    expired = one(cert_dir, NOW + 100 * DAY, names=("c.example",))
    assert expired.renewal_reason.startswith("expired; names changed: adding ['c.example']")


def test_addresses_are_shown_like_names(tmp_path, pki):
    names = ("a.example", "192.0.2.1", "2001:db8::1")
    sans = ["a.example", *(x509.IPAddress(ipaddress.ip_address(a)) for a in names[1:])]
    cert_dir = installed(tmp_path, pki, leaf(pki, 90, names=sans))
    facts = one(cert_dir, NOW, names=names)
    assert not facts.due
    assert facts.installed_names == names
    assert "a.example, 192.0.2.1, 2001:db8::1" in status.render_text([facts])
    shown = json.loads(status.render_json([facts]))["certificates"][0]
    assert shown["names"] == shown["installed_names"] == list(names)
    fewer = one(cert_dir, NOW, names=("a.example", "192.0.2.1"))
    assert fewer.renewal_reason == "names changed: removing ['2001:db8::1']"


@pytest.mark.parametrize(
    ("key", "name"),
    [
        (ec.generate_private_key(ec.SECP384R1()), "ecdsa384"),
        (rsa.generate_private_key(65537, 2048), "rsa2048"),
        (ec.generate_private_key(ec.SECP521R1()), None),
    ],
)
def test_key_type_of_the_certificate(tmp_path, pki, key, name):
    cert_dir = installed(tmp_path, pki, leaf(pki, key=key))
    assert one(cert_dir, NOW).key_type == name


def test_corrupt_certificate_file(tmp_path, pki):
    cert_dir = Path(installed(tmp_path, pki, leaf(pki, 90)))
    live = cert_dir / os.readlink(cert_dir / filestore.LIVE) / filestore.CERT
    live.chmod(0o644)
    live.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    facts = one(str(cert_dir), NOW)
    assert facts.error == f"certificate {cert_dir}/cert.pem: not a valid PEM certificate"
    assert not facts.due
    assert facts.renewal_reason == "unknown: the certificate cannot be read"
    assert (facts.installed_names, facts.not_after, facts.next_renewal) == ((), None, None)


def test_unreadable_certificate_directory(tmp_path):
    not_a_dir = tmp_path / "web"
    not_a_dir.write_text("a file")
    facts = one(str(not_a_dir), NOW)
    assert facts.error == f"certificate {not_a_dir}/cert.pem: cannot open: Not a directory"
    assert "\n" not in facts.error


def test_gather_changes_nothing(tmp_path, pki):
    cert_dir = installed(tmp_path, pki, leaf(pki, 90))

    def snapshot():
        return sorted(
            (str(p), p.lstat().st_mtime_ns, p.lstat().st_mode) for p in Path(cert_dir).rglob("*")
        )

    before = snapshot()
    one(cert_dir, NOW)
    assert snapshot() == before


def test_last_run_comes_from_the_state(tmp_path, pki):
    cert_dir = installed(tmp_path, pki, leaf(pki, 90))
    state = runstate.record(runstate.State(), "web", "failed", "rate limited", T_RUN.timestamp())
    facts = one(cert_dir, NOW, state=state)
    assert (facts.last_result, facts.last_run, facts.last_message) == (
        "failed",
        T_RUN,
        "rate limited",
    )
    other = status.gather([entry(cert_dir, handle="mail")], state, NOW)[0]
    assert (other.last_result, other.last_run, other.last_message) == (None, None, None)


def test_corrupt_state_file_means_no_history(tmp_path, pki):
    cert_dir = installed(tmp_path, pki, leaf(pki, 90))
    state_file = tmp_path / "state.json"
    state_file.write_text('{"version": 1, "certificates": {"web": {"last_run": "x"}}}')
    state = runstate.load(str(state_file))
    assert state.warning is not None
    facts = one(cert_dir, NOW, state=state)
    assert facts.last_result is None
    assert not facts.due


def test_naive_now_is_utc(tmp_path, pki):
    cert_dir = installed(tmp_path, pki, leaf(pki, 90))
    assert one(cert_dir, (NOW + 61 * DAY).replace(tzinfo=None)).due


# --- rendering -------------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path, pki):
    """Four certificates: current, never issued, due, unreadable."""
    current = installed(tmp_path / "1", pki, leaf(pki, 90))
    due = installed(tmp_path / "3", pki, leaf(pki, 6, issuer="evil\x1b[2J\nCA"))
    broken = tmp_path / "4"
    broken.mkdir()
    (broken / "cert.pem").write_text("garbage")
    state = runstate.record(runstate.State(), "current", "changed", "issued", T_RUN.timestamp())
    state = runstate.record(state, "due", "failed", "boom \x1b[31mred", T_RUN.timestamp())
    entries = [
        entry(current, handle="current"),
        entry(str(tmp_path / "2"), handle="new"),
        entry(due, handle="due"),
        entry(str(broken), handle="broken"),
    ]
    return status.gather(entries, state, NOW + 4 * DAY)


def test_render_text(mixed):
    text = status.render_text(mixed)
    blocks = [block + "\n" for block in text.rstrip("\n").split("\n\n")]
    assert [block.splitlines()[0] for block in blocks] == ["current", "new", "due", "broken"]
    assert (
        "  renewal    due after 2027-01-25 18:00:00 UTC "
        "(lifetime rule: renew in the last 30 days of a 90-day certificate)\n"
    ) in blocks[0]
    assert "  last run   2026-11-26 17:30:00 UTC, changed: issued\n" in blocks[0]
    assert "  valid      2026-11-26 18:00:00 UTC to 2027-02-24 18:00:00 UTC\n" in blocks[0]
    assert "  installed  a.example, b.example\n" in blocks[0]
    assert "  renewal    due now (no certificate yet)\n" in blocks[1]
    assert "  last run   (none recorded)\n" in blocks[1]
    assert "due now, since 2026-11-29 18:00:00 UTC" in blocks[2]
    assert "  error      certificate " in blocks[3]
    assert "  issuer     CN=evil? CA\n" in blocks[2]
    assert "failed: boom ?red\n" in blocks[2]
    assert "\x1b" not in text
    assert text.endswith("\n") and not text.endswith("\n\n")
    for block in blocks:
        assert all(line.startswith("  ") for line in block.splitlines()[1:])


def test_render_text_of_nothing():
    assert status.render_text([]) == "no certificates configured\n"


def test_render_json(mixed):
    document = json.loads(status.render_json(mixed))
    certificates = document["certificates"]
    assert [c["handle"] for c in certificates] == ["current", "new", "due", "broken"]
    keys = {f for f in status.Facts.__dataclass_fields__}
    assert all(set(c) == keys for c in certificates)
    current = certificates[0]
    assert current["not_before"] == "2026-11-26T18:00:00Z"
    assert current["not_after"] == "2027-02-24T18:00:00Z"
    assert current["next_renewal"] == "2027-01-25T18:00:00Z"
    assert current["last_run"] == "2026-11-26T17:30:00Z"
    assert current["names"] == list(NAMES)
    assert current["due"] is False
    assert certificates[1]["next_renewal"] is None
    assert certificates[1]["due"] is True
    assert certificates[3]["error"].endswith("no PEM certificate in the file")
    assert status.render_json(mixed).isascii()
    assert status.render_json(mixed) == status.render_json(mixed)
    assert status.render_json([]) == '{\n  "certificates": []\n}\n'
