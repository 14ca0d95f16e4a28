import ipaddress
import re
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from letskencrypt.certs import (
    MAX_LIFETIME,
    cert_dns_names,
    cert_names,
    check_chain,
    parse_anchors,
    parse_pem_chain,
    split_leaf_and_chain,
    trust_problem,
    verify_path,
)
from letskencrypt.errors import CertificateRejected, LetskencryptError

from tests.certfactory import (
    INTERMEDIATE_KEY,
    LEAF_KEY,
    NOW,
    OTHER_KEY,
    ROOT_KEY,
    make_cert,
    make_pki,
    pem,
    spki,
)

NAMES = ["a.example", "b.example"]


PKI = make_pki()


@pytest.fixture(scope="module")
def pki():
    return PKI


@pytest.fixture(scope="module")
def leaf(pki):
    return pki.leaf(NAMES)


def _check(chain, names=NAMES, key=LEAF_KEY, now=NOW, anchors=None):
    """check_chain, by default to the root of the module's PKI."""
    return check_chain(chain, spki(key), names, anchors or [PKI.root], now)


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


def ip(text: str) -> x509.IPAddress:
    return x509.IPAddress(ipaddress.ip_address(text))


def test_cert_names_has_addresses_as_canonical_text(pki):
    cert = pki.leaf(["A.Example", ip("192.0.2.1"), ip("2001:db8::1"), "b.example"])
    assert cert_names(cert) == ["a.example", "b.example", "192.0.2.1", "2001:db8::1"]
    assert cert_names(pki.root) == []


def test_a_dns_name_that_reads_as_an_address_is_no_address(pki):
    # So that a CA cannot answer an order for 192.0.2.1 with a dNSName.
    cert = pki.leaf(["192.0.2.1", "::1"])
    assert cert_names(cert) == ["DNS:192.0.2.1", "DNS:::1"]


# --- check_chain -----------------------------------------------------------


def test_good_chain_accepted(pki, leaf):
    assert _check([leaf, pki.intermediate]) == pki.root
    assert _check([leaf, pki.intermediate, pki.root]) == pki.root
    _check([leaf, pki.intermediate], names=["B.example", "a.example"])  # order-insensitive


def test_default_now_is_current_time(pki):
    now = datetime.now(UTC)
    fresh = pki.leaf(NAMES, not_before=now - timedelta(minutes=1))
    intermediate = make_cert("intermediate", "root", INTERMEDIATE_KEY.public_key(), ROOT_KEY,
                             ca=True, not_before=now - timedelta(days=1))
    root = make_cert("root", "root", ROOT_KEY.public_key(), ROOT_KEY, ca=True,
                     not_before=now - timedelta(days=1))
    check_chain([fresh, intermediate], spki(LEAF_KEY), NAMES, [root])
    with pytest.raises(CertificateRejected, match="not valid yet"):
        check_chain([fresh, pki.intermediate], spki(LEAF_KEY), NAMES, [pki.root],
                    now - timedelta(days=365))


def test_wrong_key(pki, leaf):
    _rejected([leaf, pki.intermediate], "not for our domain key", key=OTHER_KEY)


def test_wrong_names(pki):
    cert = pki.leaf(["a.example"])
    with pytest.raises(CertificateRejected) as info:
        _check([cert, pki.intermediate])
    assert str(info.value) == (
        "certificate names ['a.example'] differ from the requested ['a.example', 'b.example']"
    )


def test_addresses_must_match_exactly(pki):
    names = ["a.example", "192.0.2.1", "2001:db8::1"]
    good = pki.leaf(["a.example", ip("2001:db8::1"), ip("192.0.2.1")])
    assert _check([good, pki.intermediate], names=names) == pki.root
    for wrong in (
        ["a.example", ip("192.0.2.1")],  # one missing
        ["a.example", ip("192.0.2.1"), ip("2001:db8::1"), ip("192.0.2.2")],  # one more
        ["a.example", "192.0.2.1", ip("2001:db8::1")],  # an address as a dNSName
        ["a.example", ip("192.0.2.1"), ip("::ffff:192.0.2.1")],  # mapped is another address
        [ip("192.0.2.1"), ip("2001:db8::1")],  # the domain name missing
    ):
        _rejected([pki.leaf(wrong), pki.intermediate], "differ from the requested", names=names)


def test_wrong_address_message(pki):
    cert = pki.leaf(["a.example", "192.0.2.1"])
    with pytest.raises(CertificateRejected) as info:
        _check([cert, pki.intermediate], names=["a.example", "192.0.2.1"])
    assert str(info.value) == (
        "certificate names ['DNS:192.0.2.1', 'a.example'] differ from the requested "
        "['192.0.2.1', 'a.example']"
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


# --- the path to a trust anchor --------------------------------------------


def test_leaf_signed_by_the_anchor_itself(pki):
    direct = make_cert("leaf", "root", LEAF_KEY.public_key(), ROOT_KEY, ca=False, names=NAMES)
    assert _check([direct]) == pki.root
    # The anchor may be an intermediate, too: then the leaf alone is enough.
    assert _check([pki.leaf(NAMES)], anchors=[pki.intermediate]) == pki.intermediate


def test_leaf_only_is_refused(pki, leaf):
    _rejected([leaf], r"does not chain to a trust anchor: no anchor issued certificate 0 "
                      r"\(issuer 'CN=intermediate'\)")


def test_self_signed_leaf_for_our_key_and_names(pki):
    forged = make_cert("leaf", "leaf", LEAF_KEY.public_key(), LEAF_KEY, ca=False, names=NAMES)
    _rejected([forged], "does not chain to a trust anchor")
    _rejected([forged, pki.intermediate], "certificate 0 issuer 'CN=leaf' does not match")


def test_unknown_ca(pki):
    stranger = make_cert("stranger", "stranger", OTHER_KEY.public_key(), OTHER_KEY, ca=True)
    foreign = make_cert("leaf", "stranger", LEAF_KEY.public_key(), OTHER_KEY, ca=False,
                        names=NAMES)
    _rejected([foreign, stranger], r"no anchor issued certificate 1 \(issuer 'CN=stranger'\)")
    # Another root by the name of ours changes nothing.
    fake_root = make_cert("root", "root", OTHER_KEY.public_key(), OTHER_KEY, ca=True)
    fake_intermediate = make_cert("intermediate", "root", INTERMEDIATE_KEY.public_key(),
                                  OTHER_KEY, ca=True)
    _rejected([pki.leaf(NAMES), fake_intermediate, fake_root],
              "certificate 1 names the trust anchor 'CN=root' as its issuer but is not signed")


def test_intermediate_must_be_a_ca(pki):
    not_ca = make_cert("intermediate", "root", INTERMEDIATE_KEY.public_key(), ROOT_KEY, ca=False)
    _rejected([pki.leaf(NAMES), not_ca], r"certificate 1 \('CN=intermediate'\) is not a CA")


def test_intermediate_must_be_allowed_to_sign_certificates(pki):
    usage = x509.KeyUsage(True, False, False, False, False, False, True, False, False)
    builder = (
        x509.CertificateBuilder()
        .subject_name(pki.intermediate.subject)
        .issuer_name(pki.root.subject)
        .public_key(INTERMEDIATE_KEY.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=100))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
    )
    crl_only = builder.sign(ROOT_KEY, hashes.SHA256())
    _rejected([pki.leaf(NAMES), crl_only], "is not a CA certificate")


def test_path_length(pki):
    def ca(subject, issuer, key, signer, path_length):
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name.from_rfc4514_string(f"CN={subject}"))
            .issuer_name(x509.Name.from_rfc4514_string(f"CN={issuer}"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=100))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .sign(signer, hashes.SHA256())
        )

    upper = ca("intermediate", "root", INTERMEDIATE_KEY, ROOT_KEY, 0)
    lower = ca("lower", "intermediate", OTHER_KEY, INTERMEDIATE_KEY, None)
    leaf = make_cert("leaf", "lower", LEAF_KEY.public_key(), OTHER_KEY, ca=False, names=NAMES)
    _rejected([leaf, lower, upper], "certificate 2 allows 0 CA certificates below it, not 1")
    strict_root = ca("root", "root", ROOT_KEY, ROOT_KEY, 0)
    _rejected([pki.leaf(NAMES), pki.intermediate], "trust anchor 'CN=root' allows 0",
              anchors=[strict_root])


def test_every_certificate_on_the_path_is_valid_now(pki):
    old = make_cert("intermediate", "root", INTERMEDIATE_KEY.public_key(), ROOT_KEY, ca=True,
                    not_before=NOW - timedelta(days=900), not_after=NOW - timedelta(days=1))
    _rejected([pki.leaf(NAMES), old], "certificate 1 has expired")
    expired_root = make_cert("root", "root", ROOT_KEY.public_key(), ROOT_KEY, ca=True,
                             not_before=NOW - timedelta(days=900),
                             not_after=NOW - timedelta(days=1))
    _rejected([pki.leaf(NAMES), pki.intermediate], "trust anchor 'CN=root' has expired",
              anchors=[expired_root])


def test_beyond_the_anchor_only_the_links_are_checked(pki, leaf):
    """A cross-sign of the root by an older one, as CAs send: not on the path,
    so it may have expired, but it must still sign what comes before it."""
    cross = make_cert("root", "older root", ROOT_KEY.public_key(), OTHER_KEY, ca=True,
                      not_before=NOW - timedelta(days=900), not_after=NOW - timedelta(days=1))
    assert _check([leaf, pki.intermediate, cross]) == pki.root
    lookalike = make_cert("root", "older root", OTHER_KEY.public_key(), OTHER_KEY, ca=True)
    _rejected([leaf, pki.intermediate, lookalike], "certificate 1 is not signed by certificate 2")


@pytest.mark.parametrize(
    ("days", "accepted"), [(90, True), (398, True), (399, False), (36500, False)]
)
def test_lifetime(pki, days, accepted):
    cert = pki.leaf(NAMES, not_before=NOW - timedelta(hours=1),
                    not_after=NOW - timedelta(hours=1) + timedelta(days=days))
    if accepted:
        _check([cert, pki.intermediate])
    else:
        _rejected([cert, pki.intermediate], f"lifetime of {days} days exceeds 398 days")
    assert timedelta(days=398) == MAX_LIFETIME


def test_no_anchors_no_trust(pki, leaf):
    with pytest.raises(CertificateRejected, match="no trust anchors"):
        verify_path([leaf, pki.intermediate], [], NOW)


def test_trust_problem(pki, leaf):
    assert trust_problem([leaf, pki.intermediate], [pki.root], NOW) is None
    assert "does not chain to a trust anchor" in trust_problem([leaf], [pki.root], NOW)
    century = pki.leaf(NAMES, not_after=NOW + timedelta(days=36500))
    assert "exceeds 398 days" in trust_problem([century, pki.intermediate], [pki.root], NOW)
    early = pki.leaf(NAMES, not_before=NOW + timedelta(days=1))
    assert "not valid yet" in trust_problem([early, pki.intermediate], [pki.root], NOW)
    # An expired leaf is the renewal decision's business (it names the date).
    expired = pki.leaf(NAMES, not_before=NOW - timedelta(days=90), not_after=NOW - timedelta(1))
    assert trust_problem([expired, pki.intermediate], [pki.root], NOW) is None
    assert trust_problem([], [pki.root], NOW) == "certificate chain is empty"


def test_parse_anchors(pki, leaf):
    assert parse_anchors(pem(pki.root, pki.intermediate)) == [pki.root, pki.intermediate]
    with pytest.raises(CertificateRejected, match=r"trust anchor 1 \('CN=leaf'\) is not a CA"):
        parse_anchors(pem(pki.root, leaf))
    with pytest.raises(CertificateRejected, match="trust anchors: PEM chain has more than 8"):
        parse_anchors(pem(*[pki.root] * 9))
    with pytest.raises(CertificateRejected, match="trust anchors: PEM chain too large"):
        parse_anchors(pem(pki.root) + b"\n" * (16 * 1024))
    with pytest.raises(CertificateRejected, match="trust anchors: PEM chain contains no"):
        parse_anchors(b"")


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
