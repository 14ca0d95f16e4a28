"""letskencrypt.pem: the text-only check of PEM chains that fileproc and
netproc use instead of an X.509 parser (their images carry no cryptography)."""

import base64
import contextlib
import re

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st
from letskencrypt import pem
from letskencrypt.certs import parse_pem_chain
from letskencrypt.errors import CertificateRejected

from tests.certfactory import make_pki
from tests.certfactory import pem as to_pem


@pytest.fixture(scope="module")
def pki():
    return make_pki()


@pytest.fixture(scope="module")
def chain(pki):
    return [pki.leaf(["a.example"]), pki.intermediate, pki.root]


def block(der: bytes) -> bytes:
    body = base64.encodebytes(der).decode("ascii")
    return f"{pem.BEGIN}\n{body}{pem.END}\n".encode("ascii")


def test_real_chain_gives_the_ders(chain):
    ders = pem.certificate_ders(to_pem(*chain))
    assert ders == [cert.public_bytes(serialization.Encoding.DER) for cert in chain]
    assert all(pem.looks_like_certificate(der) for der in ders)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no certificate"),
        (b"garbage", "unexpected data at offset 0"),
        (b"\xff", "non-ASCII byte at offset 0"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n", "no END CERTIFICATE"),
        (b"-----BEGIN CERTIFICATE-----\nAAA*\n-----END CERTIFICATE-----\n", "not plain base64"),
        (b"-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n", "invalid base64"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid DER"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "'PRIVATE KEY'"),
        (b"<html>not a cert</html>", "unexpected data at offset 0"),
        (b" " * (256 * 1024 + 1), "too large"),
    ],
)
def test_rejects_like_the_full_parser(data, reason):
    """Same checks and messages as certs.parse_pem_chain, before any X.509."""
    for parse in (pem.certificate_ders, parse_pem_chain):
        with pytest.raises(CertificateRejected, match=re.escape(reason)):
            parse(data)


def test_limits(chain):
    data = to_pem(*chain)
    with pytest.raises(CertificateRejected, match="more than 2 certificates"):
        pem.certificate_ders(data, max_certs=2)
    with pytest.raises(CertificateRejected, match="too large"):
        pem.certificate_ders(data, max_bytes=len(data) - 1)
    big = b"\x30\x83" + (70000).to_bytes(3, "big") + b"\x00" * 70000
    assert not pem.looks_like_certificate(big)


def test_der_framing(chain):
    der = chain[0].public_bytes(serialization.Encoding.DER)
    assert pem.looks_like_certificate(der)
    # Trailing or missing bytes, another outer tag, indefinite or padded lengths.
    broken = [
        der + b"\x00",
        der[:-1],
        b"\x31" + der[1:],
        b"\x30\x80" + der[4:] + b"\x00\x00",
        b"\x30\x84\x00\x00" + der[2:],
        b"\x30\x03\x02\x01\x00",  # a SEQUENCE, but of one INTEGER
        b"",
    ]
    for data in broken:
        assert not pem.looks_like_certificate(data), data[:8]
        with pytest.raises(CertificateRejected, match="not a valid DER certificate"):
            pem.certificate_ders(block(data))


@given(st.binary(max_size=300))
def test_arbitrary_bodies_are_rejected_cleanly(body):
    """Whatever the CA sends inside a block: a list of DER or one rejection."""
    try:
        ders = pem.certificate_ders(block(body))
    except CertificateRejected:
        return
    assert ders == [body]
    assert pem.looks_like_certificate(body)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_are_rejected_cleanly(data):
    with contextlib.suppress(CertificateRejected):
        pem.certificate_ders(data)
