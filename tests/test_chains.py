"""Alternate certificate chains (RFC 8555 section 7.4.2) and --preferred-chain:
the Link header parser, the issuer's Common Name read without cryptography,
and which chain netproc's client hands on."""

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from letskencrypt import options, pem
from letskencrypt.acme.client import MAX_CHAINS_BYTES, Chains
from letskencrypt.acme.messages import AcmeError, alternate_links
from letskencrypt.constants import MAX_ALTERNATES
from letskencrypt.errors import InputError
from letskencrypt.roles.certproc import CertificateService
from letskencrypt.v1 import certificate_pb2, files_pb2, keyinfo_pb2

from tests.certfactory import INTERMEDIATE_KEY, LEAF_KEY, ROOT_KEY, make_cert, spki
from tests.certfactory import pem as pem_of
from tests.test_acme import BASE, response, scripted

CERT = f"{BASE}/cert/1"
DIRECTORY = f"{BASE}/dir"
PEM_CHAIN = "application/pem-certificate-chain"


def chain(top_issuer: str) -> bytes:
    """leaf <- intermediate, the intermediate issued by `top_issuer`."""
    intermediate = make_cert(
        "intermediate", top_issuer, INTERMEDIATE_KEY.public_key(), ROOT_KEY, ca=True
    )
    leaf = make_cert(
        "leaf", "intermediate", LEAF_KEY.public_key(), INTERMEDIATE_KEY, ca=False,
        names=["example.org"],
    )  # fmt: skip
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, intermediate))


def der_of(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


# --- the Link header --------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    (None, []),
    ("", []),
    (f'<{BASE}/cert/1/1>;rel="alternate"', [f"{BASE}/cert/1/1"]),
    # Several headers, as requests joins them; relative references; any case.
    (f'<{BASE}/cert/1/1>;rel="alternate", </cert/1/2>; REL=Alternate',
     [f"{BASE}/cert/1/1", f"{BASE}/cert/1/2"]),
    # Other relations are not alternates; a rel of several types is.
    (f'<{BASE}/dir>;rel="index", <{BASE}/cert/1/1>; title="a, b; c"; rel="up alternate"',
     [f"{BASE}/cert/1/1"]),
    # Only the first rel counts (RFC 8288 section 3.3).
    (f'<{BASE}/cert/1/1>; rel="index"; rel="alternate"', []),
    # A quoted string with escapes, and a parameter without a value.
    (f'<{BASE}/cert/1/1>; title="say \\"hi\\""; anchor; rel=alternate', [f"{BASE}/cert/1/1"]),
    # Repeats and the certificate's own URL are dropped.
    (f"<{BASE}/cert/1/1>;rel=alternate,<{BASE}/cert/1/1>;rel=alternate,<{CERT}>;rel=alternate",
     [f"{BASE}/cert/1/1"]),
])  # fmt: skip
def test_alternate_links(header: str | None, expected: list[str]) -> None:
    assert alternate_links(header, CERT, DIRECTORY) == expected


@pytest.mark.parametrize(("header", "reason"), [
    (f'{BASE}/cert/1/1;rel="alternate"', "a link does not start with '<'"),
    (f'<{BASE}/cert/1/1;rel="alternate"', "a link has no '>'"),
    (f'<{BASE}/cert/1/1> rel="alternate"', "expected ';' or ',' after a link"),
    (f'<{BASE}/cert/1/1>;="alternate"', "a link parameter has no name"),
    (f"<{BASE}/cert/1/1>;rel=", "a link parameter has no value"),
    (f'<{BASE}/cert/1/1>;rel="alternate', "an unterminated quoted string"),
])  # fmt: skip
def test_a_malformed_link_header_is_refused(header: str, reason: str) -> None:
    with pytest.raises(AcmeError) as info:
        alternate_links(header, CERT, DIRECTORY)
    assert str(info.value) == f"CA sent a malformed Link header: {reason}"


@pytest.mark.parametrize("url", [
    "https://elsewhere.test/cert/1/1",
    "http://ca.test/cert/1/1",
    "https://ca.test:8443/cert/1/1",
    "//elsewhere.test/cert",
])  # fmt: skip
def test_an_alternate_off_the_cas_origin_is_refused(url: str) -> None:
    off_origin = r"alternate chain URL.* (is not on the CA's origin|is not https)"
    with pytest.raises(AcmeError, match=off_origin):
        alternate_links(f'</cert/1/0>;rel=alternate, <{url}>;rel="alternate"', CERT, DIRECTORY)


def test_an_alternate_that_is_no_url_is_refused() -> None:
    with pytest.raises(AcmeError, match="malformed alternate chain URL"):
        alternate_links("<https://ca.test/a b>;rel=alternate", CERT, DIRECTORY)


def test_too_many_alternates_are_refused() -> None:
    links = [f"<{BASE}/cert/1/{i}>;rel=alternate" for i in range(MAX_ALTERNATES)]
    assert len(alternate_links(", ".join(links), CERT, DIRECTORY)) == MAX_ALTERNATES
    # Links of other relations do not count.
    assert len(alternate_links(", ".join([*links, f"<{BASE}/x>;rel=up"]), CERT, DIRECTORY)) == 8
    links.append(f"<{BASE}/cert/1/{MAX_ALTERNATES}>;rel=alternate")
    with pytest.raises(AcmeError, match=f"more than {MAX_ALTERNATES} alternate chains"):
        alternate_links(", ".join(links), CERT, DIRECTORY)


def test_an_overlong_link_header_is_refused() -> None:
    with pytest.raises(AcmeError, match="Link header longer than"):
        alternate_links(f"<{BASE}/{'a' * 20000}>;rel=alternate", CERT, DIRECTORY)


# --- the issuer's Common Name --------------------------------------------------------


def test_issuer_common_name_agrees_with_cryptography() -> None:
    for name in ("Pebble Root CA 1a2b3c", "ISRG Root X1", "Ünïcødé 根"):
        certificate = make_cert("leaf", name, LEAF_KEY.public_key(), ROOT_KEY, ca=False)
        assert pem.issuer_common_name(der_of(certificate)) == name


def test_issuer_common_name_of_other_names_and_string_types() -> None:
    issuer = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Printable Root",
                           _type=x509.name._ASN1Type.PrintableString),
        x509.NameAttribute(NameOID.COMMON_NAME, "second"),
    ])  # fmt: skip
    certificate = (
        x509.CertificateBuilder()
        .subject_name(issuer)
        .issuer_name(issuer)
        .public_key(ROOT_KEY.public_key())
        .serial_number(1)
        .not_valid_before(make_cert("a", "b", LEAF_KEY.public_key(), ROOT_KEY, ca=False)
                          .not_valid_before_utc)
        .not_valid_after(make_cert("a", "b", LEAF_KEY.public_key(), ROOT_KEY, ca=False)
                         .not_valid_after_utc)
        .sign(ROOT_KEY, hashes.SHA256())
    )  # fmt: skip
    assert pem.issuer_common_name(der_of(certificate)) == "Printable Root"
    no_cn = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org")]))
        .public_key(ROOT_KEY.public_key())
        .serial_number(1)
        .not_valid_before(certificate.not_valid_before_utc)
        .not_valid_after(certificate.not_valid_after_utc)
        .sign(ROOT_KEY, hashes.SHA256())
    )
    assert pem.issuer_common_name(der_of(no_cn)) is None


@pytest.mark.parametrize("der", [b"", b"\x30\x00", b"\x30\x03\x02\x01\x00", b"garbage" * 10])
def test_issuer_common_name_of_garbage_is_none(der: bytes) -> None:
    assert pem.issuer_common_name(der) is None


def test_issuer_common_name_of_a_truncated_name_is_none() -> None:
    der = der_of(make_cert("leaf", "Some Root", LEAF_KEY.public_key(), ROOT_KEY, ca=False))
    # Break the CN's string tag (UTF8String 0x0c -> 0x04, OCTET STRING): no name.
    at = der.index(b"Some Root") - 2
    assert der[at] == 0x0C
    assert pem.issuer_common_name(der[:at] + b"\x04" + der[at + 1 :]) is None


# --- which chain the client hands on -----------------------------------------------


def chain_answer(body: bytes, *links: str, nonce: str = "n0"):
    link = ", ".join(f"<{url}>;rel=\"alternate\"" for url in links) or None
    return response(200, body, nonce=nonce, Content_Type=PEM_CHAIN, Link=link)


def test_no_alternates_at_all_is_the_default_chain() -> None:
    default = chain("Root A")
    client, transport, *_ = scripted(response(200), chain_answer(default))
    assert client.download(CERT) == Chains(default)
    assert len(transport.calls) == 3


def test_every_alternate_is_fetched_in_order() -> None:
    default, first, second = chain("Root A"), chain("Root B"), chain("Root C")
    client, transport, signer, _sleeps, _lines = scripted(
        response(200),
        chain_answer(default, f"{BASE}/cert/1/1", f"{BASE}/cert/1/2"),
        chain_answer(first),
        chain_answer(second),
    )
    assert client.download(CERT) == Chains(default, (first, second))
    fetched = [call[1] for call in transport.calls[2:]]
    assert fetched == [CERT, f"{BASE}/cert/1/1", f"{BASE}/cert/1/2"]
    # Each alternate: a signed POST-as-GET with the same limits and Accept.
    assert [call[3] for call in signer.calls] == [None, None, None]
    assert all(call[2].get("Accept") == PEM_CHAIN for call in transport.calls[2:])
    assert all(call[3] == 256 * 1024 for call in transport.calls[2:])


def test_an_unusable_link_header_is_the_default_chain_only() -> None:
    default = chain("Root A")
    notices: list[str] = []
    client, transport, *_ = scripted(
        response(200), chain_answer(default, "https://elsewhere.test/cert"), notice=notices.append
    )
    assert client.download(CERT) == Chains(default)
    assert len(transport.calls) == 3  # nothing is fetched off the CA's origin
    assert notices == [
        "alternate chain URL 'https://elsewhere.test/cert' is not on the CA's origin "
        "'https://ca.test/dir'; only the default chain"
    ]


def test_an_alternate_that_fails_is_skipped() -> None:
    default, good = chain("Root A"), chain("Root B")
    notices: list[str] = []
    client, *_ = scripted(
        response(200),
        chain_answer(default, f"{BASE}/cert/1/1", f"{BASE}/cert/1/2"),
        response(200, b"<html>", Content_Type="text/html"),
        chain_answer(good),
        notice=notices.append,
    )
    assert client.download(CERT) == Chains(default, (good,))
    assert len(notices) == 1
    assert notices[0].startswith(f"alternate chain {BASE}/cert/1/1: ")
    assert notices[0].endswith("; skipped")


def test_alternates_beyond_a_mebibyte_in_all_are_left_out() -> None:
    default = chain("Root A")
    # A chain padded (whitespace between blocks is allowed) to about 220 KiB.
    padding = b"\n" * 220 * 1024
    big = padding + chain("Root B")
    links = [f"{BASE}/cert/1/{i}" for i in range(1, 7)]
    notices: list[str] = []
    client, transport, *_ = scripted(
        response(200),
        chain_answer(default, *links),
        *[chain_answer(big) for _ in links],
        notice=notices.append,
    )
    chains = client.download(CERT)
    assert chains.alternates == (big,) * 4
    assert len(default) + sum(map(len, chains.alternates)) <= MAX_CHAINS_BYTES
    assert len(transport.calls) == 3 + 5  # the fifth is fetched, then the rest are not
    assert notices == [
        f"alternate chain {links[4]}: the chains would exceed 1024 KiB in all; "
        "it and the rest skipped"
    ]


def test_a_default_chain_that_is_no_chain_is_still_an_error() -> None:
    client, *_ = scripted(response(200), response(200, b"junk", Content_Type=PEM_CHAIN))
    with pytest.raises(AcmeError, match="unusable certificate chain"):
        client.download(CERT)


# --- the option -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ISRG Root X1", "Pebble Root CA 2f1d2a", "x" * 64, "é"])
def test_preferred_chain_names(name: str) -> None:
    assert options.check_preferred_chain(name) == name


@pytest.mark.parametrize("name", ["", "x" * 65, "a\nb", "tab\there", "\x1b[31m"])
def test_preferred_chain_refuses(name: str) -> None:
    with pytest.raises(InputError, match=r"--preferred-chain .*: give the issuer's Common Name"):
        options.check_preferred_chain(name)


# --- which chain certproc installs ---------------------------------------------------


ROOT_B_KEY = ec.generate_private_key(ec.SECP256R1())
NAMES = ["example.org"]


class Recorder:
    """Stands in for the keyinfo and file stubs certproc calls."""

    def __init__(self) -> None:
        self.installed: list[bytes] = []

    def Describe(self, _request: object, **_kw: object) -> keyinfo_pb2.KeyInfoReply:
        return keyinfo_pb2.KeyInfoReply(public_key_der=spki(LEAF_KEY), names=NAMES)

    def Install(self, request: files_pb2.InstallRequest, **_kw: object) -> files_pb2.InstallReply:
        self.installed.append(request.certificate_pem + request.chain_pem)
        return files_pb2.InstallReply()


class Aborted(Exception):
    pass


class Context:
    def abort(self, _code: object, details: str) -> None:
        raise Aborted(details)


def cross_signed() -> tuple[list[x509.Certificate], bytes, bytes, bytes]:
    """Two roots, "Root A" and "Root B", that both certify the intermediate
    that issued the leaf: the default chain ends at A, the alternate at B."""
    root_a = make_cert("Root A", "Root A", ROOT_KEY.public_key(), ROOT_KEY, ca=True)
    root_b = make_cert("Root B", "Root B", ROOT_B_KEY.public_key(), ROOT_B_KEY, ca=True)
    under_a = make_cert("intermediate", "Root A", INTERMEDIATE_KEY.public_key(), ROOT_KEY, ca=True)
    under_b = make_cert(
        "intermediate", "Root B", INTERMEDIATE_KEY.public_key(), ROOT_B_KEY, ca=True
    )
    leaf = make_cert(
        "leaf", "intermediate", LEAF_KEY.public_key(), INTERMEDIATE_KEY, ca=False, names=NAMES
    )
    return [root_a, root_b], pem_of(leaf, under_a), pem_of(leaf, under_b), pem_of(leaf)


def submit(
    anchors: list[x509.Certificate],
    preferred: str | None,
    default: bytes,
    *alternates: bytes,
    kept: bool = False,
) -> tuple[list[bytes], list[str]]:
    service = CertificateService.__new__(CertificateService)
    notes: list[str] = []
    recorder = Recorder()

    class Log:
        info = notice = error = debug = staticmethod(notes.append)

    CertificateService.__init__(service, grpc.insecure_channel("unix:/nonexistent"),
                                grpc.insecure_channel("unix:/nonexistent"), anchors, "issue",
                                preferred, Log())  # fmt: skip
    service.key_info = service.files = recorder  # type: ignore[assignment]
    request = certificate_pb2.SubmitRequest(
        pem_chain=default, alternate_pem_chains=alternates, kept=kept
    )
    service.Submit(request, Context())  # type: ignore[arg-type]
    return recorder.installed, notes


def test_without_a_preference_the_default_chain_is_installed() -> None:
    anchors, default, alternate, _leaf = cross_signed()
    installed, _notes = submit(anchors, None, default, alternate)
    assert installed == [default]


def test_the_preferred_alternate_is_installed_once_verified() -> None:
    anchors, default, alternate, _leaf = cross_signed()
    installed, notes = submit(anchors, "Root B", default, alternate)
    assert installed == [alternate]
    assert "chose alternate chain 1 (--preferred-chain)" in notes


def test_the_default_when_it_is_the_preferred_one() -> None:
    anchors, default, alternate, _leaf = cross_signed()
    assert submit(anchors, "Root A", default, alternate)[0] == [default]


def test_an_alternate_that_does_not_verify_is_never_chosen() -> None:
    # Root B is not a trust anchor of this run: its chain is said and left out.
    anchors, default, alternate, _leaf = cross_signed()
    installed, notes = submit(anchors[:1], "Root B", default, alternate)
    assert installed == [default]
    assert any(note.startswith("alternate chain 1: ") and note.endswith("; left out")
               for note in notes)  # fmt: skip
    assert notes[-2] == (
        "no verified chain of the 1 ends in a certificate issued by 'Root B' "
        "(--preferred-chain): the default chain"
    )


def test_an_alternate_with_another_leaf_is_never_chosen() -> None:
    anchors, default, _alternate, _leaf = cross_signed()
    other_leaf = make_cert(
        "leaf", "intermediate", LEAF_KEY.public_key(), INTERMEDIATE_KEY, ca=False, names=NAMES
    )
    under_b = x509.load_pem_x509_certificates(_alternate)[1]
    installed, notes = submit(anchors, "Root B", default, pem_of(other_leaf, under_b))
    assert installed == [default]
    assert "alternate chain 1: its leaf is not the default chain's; left out" in notes


def test_a_default_chain_that_fails_fails_whatever_the_alternates() -> None:
    anchors, _default, alternate, leaf_only = cross_signed()
    with pytest.raises(Aborted):
        submit(anchors, "Root B", leaf_only, alternate)


@pytest.mark.parametrize("count", [MAX_ALTERNATES + 1])
def test_more_alternates_than_netproc_may_fetch_are_refused(count: int) -> None:
    anchors, default, alternate, _leaf = cross_signed()
    with pytest.raises(Aborted, match=f"netproc sent {count} alternate chains"):
        submit(anchors, None, default, *[alternate] * count)


def test_a_kept_chain_comes_alone() -> None:
    anchors, default, alternate, _leaf = cross_signed()
    with pytest.raises(Aborted, match="netproc sent 1 alternate chains"):
        submit(anchors, None, default, alternate, kept=True)
