import re
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from letskencrypt.certs import (
    cert_dns_names,
    check_chain,
    parse_pem_chain,
    split_leaf_and_chain,
)
from letskencrypt.errors import CertificateRejected, LetskencryptError

from tests.certfactory import (
    INTERMEDIATE_KEY,
    LEAF_KEY,
    NOW,
    OTHER_KEY,
    make_cert,
    make_pki,
    pem,
    spki,
)

NAMES = ["a.example", "b.example"]


@pytest.fixture(scope="module")
def pki():
    return make_pki()


@pytest.fixture(scope="module")
def leaf(pki):
    return pki.leaf(NAMES)


def _check(chain, names=NAMES, key=LEAF_KEY, now=NOW):
    check_chain(chain, spki(key), names, now)


def _rejected(chain, match, **kw):
    with pytest.raises(CertificateRejected, match=match):
        _check(chain, **kw)


# --- parse_pem_chain -------------------------------------------------------


def test_parse_good_chain(pki, leaf):
    data = pem(leaf, pki.intermediate)
    chain = parse_pem_chain(data)
    assert chain == [leaf, pki.intermediate]


def test_parse_tolerates_whitespace_between_blocks(pki, leaf):
    blocks = [pem(leaf), pem(pki.intermediate)]
    data = b"\n\n  " + blocks[0].replace(b"\n", b"\r\n") + b"\t\n" + blocks[1] + b"\n\n"
    assert parse_pem_chain(data) == [leaf, pki.intermediate]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no certificate"),
        (b"  \n\t", "no certificate"),
        (b"garbage", "unexpected data at offset 0"),
        (b"\xff\xfe", "non-ASCII byte at offset 0"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n", "no END CERTIFICATE"),
        (b"-----BEGIN CERTIFICATE-----\nAAA*\n-----END CERTIFICATE-----\n", "not plain base64"),
        (b"-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n", "invalid base64"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid DER"),
        (
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "unexpected PEM block 'PRIVATE KEY'",
        ),
    ],
)
def test_parse_rejects(data, reason):
    with pytest.raises(CertificateRejected, match=re.escape(reason)):
        parse_pem_chain(data)


def test_parse_rejects_non_cert_block_after_certs(leaf):
    key_pem = LEAF_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(CertificateRejected, match="unexpected PEM block 'PRIVATE KEY'"):
        parse_pem_chain(pem(leaf) + key_pem)


def test_parse_rejects_text_between_blocks(pki, leaf):
    data = pem(leaf) + b"Subject: evil\n" + pem(pki.intermediate)
    with pytest.raises(CertificateRejected, match="unexpected data at offset"):
        parse_pem_chain(data)


def test_parse_rejects_pem_headers(leaf):
    data = pem(leaf).replace(
        b"-----BEGIN CERTIFICATE-----\n", b"-----BEGIN CERTIFICATE-----\nProc-Type: 4,x\n\n"
    )
    with pytest.raises(CertificateRejected, match="not plain base64"):
        parse_pem_chain(data)


def test_parse_limits(pki, leaf):
    assert len(parse_pem_chain(pem(*[leaf] * 10))) == 10
    with pytest.raises(CertificateRejected, match="more than 10 certificates"):
        parse_pem_chain(pem(*[leaf] * 11))
    with pytest.raises(CertificateRejected, match="more than 2 certificates"):
        parse_pem_chain(pem(leaf, pki.intermediate, pki.root), max_certs=2)
    with pytest.raises(CertificateRejected, match="too large"):
        parse_pem_chain(b" " * (256 * 1024 + 1))
    with pytest.raises(CertificateRejected, match="too large"):
        parse_pem_chain(pem(leaf), max_bytes=100)


def test_error_messages_are_terminal_safe():
    with pytest.raises(CertificateRejected) as info:
        parse_pem_chain(b"\x1b]0;owned\x07 rest")
    assert "\x1b" not in str(info.value) and "\x07" not in str(info.value)


# --- names -----------------------------------------------------------------


def test_cert_dns_names(pki):
    cert = pki.leaf(["A.Example", "b.example"])
    assert cert_dns_names(cert) == ["a.example", "b.example"]
    assert cert_dns_names(pki.root) == []


# --- check_chain -----------------------------------------------------------


def test_good_chain_accepted(pki, leaf):
    _check([leaf, pki.intermediate])
    _check([leaf, pki.intermediate, pki.root])
    _check([leaf, pki.intermediate], names=["B.example", "a.example"])  # order-insensitive
    _check([pki.leaf(NAMES)], names=NAMES)  # leaf only: nothing to link


def test_default_now_is_current_time(pki):
    fresh = pki.leaf(NAMES, not_before=datetime.now(UTC) - timedelta(minutes=1))
    check_chain([fresh, pki.intermediate], spki(LEAF_KEY), NAMES)


def test_wrong_key(pki, leaf):
    _rejected([leaf, pki.intermediate], "not for our domain key", key=OTHER_KEY)


def test_wrong_names(pki):
    cert = pki.leaf(["a.example"])
    with pytest.raises(CertificateRejected) as info:
        _check([cert, pki.intermediate])
    assert str(info.value) == (
        "certificate names ['a.example'] differ from the requested ['a.example', 'b.example']"
    )


def test_extra_name(pki):
    cert = pki.leaf([*NAMES, "evil.example"])
    _rejected([cert, pki.intermediate], "differ from the requested")


def test_no_san(pki):
    cert = make_cert("a.example", "intermediate", LEAF_KEY.public_key(), INTERMEDIATE_KEY, ca=False)
    _rejected([cert, pki.intermediate], r"certificate names \[\] differ")


def test_broken_link_wrong_signer(pki):
    # Right issuer name, wrong signing key.
    forged = make_cert(
        "leaf", "intermediate", LEAF_KEY.public_key(), OTHER_KEY, ca=False, names=NAMES
    )
    _rejected([forged, pki.intermediate], "certificate 0 is not signed by certificate 1")


def test_broken_link_wrong_order(pki, leaf):
    _rejected([leaf, pki.root], "certificate 0 issuer 'CN=intermediate' does not match")
    _rejected([leaf, pki.intermediate, leaf], "certificate 1 issuer 'CN=root' does not match")


def test_broken_link_upper(pki, leaf):
    # The intermediate claims the root as issuer, but the "root" given is a lookalike.
    fake_root = make_cert("root", "root", OTHER_KEY.public_key(), OTHER_KEY, ca=True)
    _rejected([leaf, pki.intermediate, fake_root], "certificate 1 is not signed by certificate 2")


def test_expired(pki):
    cert = pki.leaf(
        NAMES, not_before=NOW - timedelta(days=90), not_after=NOW - timedelta(minutes=6)
    )
    _rejected([cert, pki.intermediate], "has expired")
    skewed = pki.leaf(
        NAMES, not_before=NOW - timedelta(days=90), not_after=NOW - timedelta(minutes=4)
    )
    _check([skewed, pki.intermediate])


def test_not_yet_valid(pki):
    cert = pki.leaf(NAMES, not_before=NOW + timedelta(minutes=6))
    _rejected([cert, pki.intermediate], "not valid yet")
    _check([pki.leaf(NAMES, not_before=NOW + timedelta(minutes=4)), pki.intermediate])


def test_leaf_must_not_be_ca(pki):
    cert = make_cert(
        "leaf", "intermediate", LEAF_KEY.public_key(), INTERMEDIATE_KEY, ca=True, names=NAMES
    )
    _rejected([cert, pki.intermediate], "is a CA certificate")


def test_empty_chain():
    _rejected([], "empty")


def test_naive_now_is_utc(pki, leaf):
    _check([leaf, pki.intermediate], now=NOW.replace(tzinfo=None))


def test_too_many_certs_in_pem(pki, leaf):
    with pytest.raises(CertificateRejected, match="more than 10"):
        parse_pem_chain(pem(leaf, *[pki.intermediate] * 10, pki.root))


# --- split -----------------------------------------------------------------


def test_split_leaf_and_chain(pki, leaf):
    messy = b"\n" + pem(leaf).replace(b"\n", b"\r\n") + b"\n\n" + pem(pki.intermediate, pki.root)
    leaf_pem, chain_pem = split_leaf_and_chain(messy)
    assert leaf_pem == pem(leaf)
    assert chain_pem == pem(pki.intermediate, pki.root)
    assert x509.load_pem_x509_certificate(leaf_pem) == leaf
    assert split_leaf_and_chain(pem(leaf)) == (pem(leaf), b"")


def test_split_rejects_garbage():
    with pytest.raises(CertificateRejected):
        split_leaf_and_chain(b"nope")


def test_errors_share_a_base():
    assert issubclass(CertificateRejected, LetskencryptError)
