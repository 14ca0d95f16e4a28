import ipaddress
import os
from datetime import timedelta

import pytest
from cryptography import x509
from letskencrypt.errors import CertificateFileError
from letskencrypt.renewal import (
    Decision,
    decide,
    load_certificate_file,
    load_chain_file,
    renewal_due,
    renewal_window,
)

from tests.certfactory import LEAF_KEY, NOW, make_cert, make_pki, pem

NAMES = ["a.example", "b.example"]
SECOND = timedelta(seconds=1)


@pytest.fixture(scope="module")
def pki():
    return make_pki()


def _cert(pki, days, names=NAMES, hours=0):
    return pki.leaf(names, not_before=NOW, not_after=NOW + timedelta(days=days, hours=hours))


@pytest.mark.parametrize(
    ("days", "window"),
    [
        (90, timedelta(days=30)),  # a third
        (30, timedelta(days=10)),
        (10, timedelta(days=5)),  # ≤ 10 days: a half
        (6, timedelta(days=3)),
        (4, timedelta(days=3)),  # half would be 2 days: never under 3
        (1, timedelta(days=3)),
    ],
)
def test_renewal_window(pki, days, window):
    assert renewal_window(_cert(pki, days)) == window


@pytest.mark.parametrize("days", [90, 6, 4])
def test_boundaries(pki, days):
    cert = _cert(pki, days)
    due = cert.not_valid_after_utc - renewal_window(cert)
    assert decide(cert, NAMES, due, force=False)[0] is Decision.UP_TO_DATE
    assert decide(cert, NAMES, due - timedelta(hours=1), force=False)[0] is Decision.UP_TO_DATE
    decision, reason = decide(cert, NAMES, due + SECOND, force=False)
    assert decision is Decision.RENEW
    assert reason.startswith("expires in")


def test_90_day_numbers(pki):
    cert = _cert(pki, 90)
    assert decide(cert, NAMES, NOW + timedelta(days=60), False)[0] is Decision.UP_TO_DATE
    assert decide(cert, NAMES, NOW + timedelta(days=60) + SECOND, False)[0] is Decision.RENEW


def test_6_day_numbers(pki):
    cert = _cert(pki, 6)
    assert decide(cert, NAMES, NOW + timedelta(days=3), False)[0] is Decision.UP_TO_DATE
    assert decide(cert, NAMES, NOW + timedelta(days=3) + SECOND, False)[0] is Decision.RENEW


def test_4_day_numbers(pki):
    cert = _cert(pki, 4)
    # Half the lifetime (2 days) is below the 3-day floor: due after 1 day.
    assert decide(cert, NAMES, NOW + timedelta(days=1), False)[0] is Decision.UP_TO_DATE
    assert decide(cert, NAMES, NOW + timedelta(days=1) + SECOND, False)[0] is Decision.RENEW


def test_fresh_is_up_to_date(pki):
    decision, reason = decide(_cert(pki, 90), NAMES, NOW, force=False)
    assert decision is Decision.UP_TO_DATE
    assert reason.startswith("valid for 90d0h more")
    assert "renewal due in 60d0h" in reason


def test_expired(pki):
    decision, reason = decide(_cert(pki, 90), NAMES, NOW + timedelta(days=91), force=False)
    assert decision is Decision.RENEW
    assert reason.startswith("expired 1d0h ago")


def test_no_certificate_is_issue():
    assert decide(None, NAMES, NOW, force=False) == (Decision.ISSUE, "no certificate yet")
    assert decide(None, NAMES, NOW, force=True)[0] is Decision.ISSUE


def test_names_changed(pki):
    cert = _cert(pki, 90)
    decision, reason = decide(cert, ["a.example", "c.example"], NOW, force=False)
    assert decision is Decision.RENEW
    assert reason == "names changed: adding ['c.example'], removing ['b.example']"
    assert decide(cert, ["a.example"], NOW, False)[1] == "names changed: removing ['b.example']"
    assert decide(cert, [*NAMES, "c.example"], NOW, False)[1] == (
        "names changed: adding ['c.example']"
    )


def test_names_compare_case_and_order_insensitively(pki):
    cert = _cert(pki, 90)
    assert decide(cert, ["B.example", "A.EXAMPLE"], NOW, False)[0] is Decision.UP_TO_DATE


def test_names_changed_with_addresses(pki):
    cert = pki.leaf(
        ["a.example", x509.IPAddress(ipaddress.ip_address("2001:db8::1"))],
        not_before=NOW, not_after=NOW + timedelta(days=90),
    )  # fmt: skip
    assert decide(cert, ["2001:db8::1", "a.example"], NOW, False)[0] is Decision.UP_TO_DATE
    assert decide(cert, ["a.example", "2001:db8::1", "192.0.2.1"], NOW, False) == (
        Decision.RENEW, "names changed: adding ['192.0.2.1']",
    )  # fmt: skip
    assert decide(cert, ["a.example"], NOW, False)[1] == "names changed: removing ['2001:db8::1']"
    # An address the certificate holds as a DNS name is not the address.
    as_text = _cert(pki, 90, names=["a.example", "2001:db8::1"])
    assert decide(as_text, ["a.example", "2001:db8::1"], NOW, False)[1] == (
        "names changed: adding ['2001:db8::1'], removing ['DNS:2001:db8::1']"
    )


def test_force(pki):
    assert decide(_cert(pki, 90), NAMES, NOW, force=True) == (Decision.RENEW, "forced")


def test_naive_now(pki):
    cert = _cert(pki, 90)
    assert decide(cert, NAMES, NOW.replace(tzinfo=None), False)[0] is Decision.UP_TO_DATE


# --- load_certificate_file ---------------------------------------------------


def test_load_missing_is_none(tmp_path):
    assert load_certificate_file(str(tmp_path / "cert.pem")) is None
    dangling = tmp_path / "dangling.pem"
    dangling.symlink_to(tmp_path / "nowhere")
    assert load_certificate_file(str(dangling)) is None


def test_load_first_certificate_through_symlink(tmp_path, pki):
    cert = _cert(pki, 90)
    real = tmp_path / "real.pem"
    real.write_bytes(pem(cert, pki.intermediate))
    link = tmp_path / "cert.pem"
    link.symlink_to(real)
    assert load_certificate_file(str(link)) == cert


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "cert.pem"
    path.write_bytes(b"hello")
    with pytest.raises(CertificateFileError, match=f"certificate {path}: no PEM certificate"):
        load_certificate_file(str(path))
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateFileError, match=f"certificate {path}: not a valid PEM"):
        load_certificate_file(str(path))
    path.write_bytes(b"x" * 101)
    with pytest.raises(CertificateFileError, match=f"certificate {path}: larger than 100 bytes"):
        load_certificate_file(str(path), max_bytes=100)
    with pytest.raises(CertificateFileError, match=f"certificate {tmp_path}: not a regular file"):
        load_certificate_file(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CertificateFileError, match="not a regular file"):
        load_certificate_file(str(fifo))


def test_load_cert_without_san(tmp_path, pki):
    cert = make_cert("x", "intermediate", LEAF_KEY.public_key(), LEAF_KEY, ca=False)
    path = tmp_path / "cert.pem"
    path.write_bytes(pem(cert))
    loaded = load_certificate_file(str(path))
    assert decide(loaded, NAMES, NOW, False)[0] is Decision.RENEW


# --- an installed certificate certproc would refuse is never current ---------


def test_distrust_means_renew(pki):
    reason = "certificate does not chain to a trust anchor: no anchor issued certificate 0"
    decision, why = decide(_cert(pki, 90), NAMES, NOW, force=False, distrust=reason)
    assert decision is Decision.RENEW
    assert why == f"installed {reason}"
    assert decide(None, NAMES, NOW, False, distrust=reason)[0] is Decision.ISSUE


def test_load_chain_file(tmp_path, pki):
    path = tmp_path / "chain.pem"
    assert load_chain_file(str(path)) == []
    path.write_bytes(b"")
    assert load_chain_file(str(path)) == []
    path.write_bytes(pem(pki.intermediate, pki.root))
    assert load_chain_file(str(path)) == [pki.intermediate, pki.root]
    path.write_bytes(pem(pki.intermediate) + b"junk")
    with pytest.raises(CertificateFileError, match=f"chain {path}: unexpected data"):
        load_chain_file(str(path))


# --- renewal_due: the rule decide applies, with its time --------------------


@pytest.mark.parametrize(
    ("days", "reason"),
    [
        (90, "lifetime rule: renew in the last 30 days of a 90-day certificate"),
        (6, "lifetime rule: renew in the last 3 days of a 6-day certificate"),
        (4, "lifetime rule: renew in the last 3 days of a 4-day certificate"),
    ],
)
def test_renewal_due_is_where_decide_turns(pki, days, reason):
    cert = _cert(pki, days)
    due = renewal_due(cert, NAMES)
    assert due == (cert.not_valid_after_utc - renewal_window(cert), reason)
    assert decide(cert, NAMES, due.at, False)[0] is Decision.UP_TO_DATE
    assert decide(cert, NAMES, due.at + SECOND, False)[0] is Decision.RENEW


def test_renewal_due_at_once(pki):
    cert = _cert(pki, 90)
    assert renewal_due(None, NAMES) == (None, "no certificate yet")
    assert renewal_due(cert, ["c.example"]).at is None
    assert renewal_due(cert, ["c.example"]).reason.startswith("names changed: adding")
    assert renewal_due(cert, NAMES, distrust="x") == (None, "installed x")


def test_renewal_due_rounds_odd_lifetimes(pki):
    cert = _cert(pki, 6, hours=16)
    assert renewal_due(cert, NAMES).reason == (
        "lifetime rule: renew in the last 3.3 days of a 6.7-day certificate"
    )
