"""PEM certificate chains checked as text, without the cryptography wheel.

fileproc stores a chain that certproc has already verified, and netproc only
needs to know that the CA sent certificates and not an error page: neither
interprets a certificate, so neither image carries cryptography.  What this
checks: the data is ASCII, within a size cap, made of CERTIFICATE blocks and
whitespace only; each block body is plain base64 that decodes to a DER
SEQUENCE of exactly its own length holding the three parts of an X.509
certificate (SEQUENCE, SEQUENCE, BIT STRING).  certs.parse_pem_chain runs the
same text checks and then parses each certificate fully.

One field is read: the issuer's Common Name, with which netproc picks among
the CA's alternate chains (--preferred-chain); certproc still verifies the
chain picked, so a wrong answer here can only pick another chain to check.
"""

import binascii
import re

from letskencrypt.errors import CertificateRejected
from letskencrypt.validate import safe_text

MAX_CHAIN_BYTES = 256 * 1024
MAX_CHAIN_CERTS = 10
# The largest certificate of a public CA is a few KiB; 64 KiB is generous.
MAX_CERT_DER_BYTES = 64 * 1024

BEGIN = "-----BEGIN CERTIFICATE-----"
END = "-----END CERTIFICATE-----"
_WHITESPACE = " \t\r\n"
_BASE64_BODY_RE = re.compile(r"[A-Za-z0-9+/=\s]*")
_ANY_BEGIN_RE = re.compile(r"-----BEGIN ([^-\r\n]{0,40})-----")

_SEQUENCE = 0x30
_BIT_STRING = 0x03
# tbsCertificate, signatureAlgorithm, signatureValue (RFC 5280 section 4.1).
_CERTIFICATE_PARTS = (_SEQUENCE, _SEQUENCE, _BIT_STRING)
_SET = 0x31
_OID = 0x06
_VERSION = 0xA0  # [0] EXPLICIT, before the serial number
_COMMON_NAME = bytes.fromhex("550403")  # 2.5.4.3
# The DirectoryString types a Common Name is written in, and how each decodes.
_STRING_CODECS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1",
                  0x1E: "utf-16-be", 0x1C: "utf-32-be"}  # fmt: skip


def _unexpected(text: str, pos: int) -> CertificateRejected:
    other = _ANY_BEGIN_RE.match(text, pos)
    if other:
        return CertificateRejected(
            f"unexpected PEM block {safe_text(other.group(1), 40)!r} "
            "(only CERTIFICATE blocks are allowed)"
        )
    snippet = safe_text(text[pos : pos + 30], 30)
    return CertificateRejected(f"unexpected data at offset {pos} of the PEM chain: {snippet!r}")


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `pos`.

    Only single-byte tags and definite, minimally encoded lengths of up to
    four bytes: what DER allows for a certificate.  ValueError otherwise.
    """
    if pos + 2 > len(der):
        raise ValueError("truncated")
    tag = der[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte tag")
    first = der[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or pos + count > len(der):
            raise ValueError("bad length")
        length = int.from_bytes(der[pos : pos + count], "big")
        if der[pos] == 0 or length < 0x80:
            raise ValueError("length not minimally encoded")
        pos += count
    if pos + length > len(der):
        raise ValueError("truncated")
    return tag, pos, pos + length


def looks_like_certificate(der: bytes) -> bool:
    """A DER SEQUENCE of exactly len(der) bytes holding SEQUENCE, SEQUENCE,
    BIT STRING: the shape of an X.509 certificate, contents not examined."""
    if not 0 < len(der) <= MAX_CERT_DER_BYTES:
        return False
    try:
        tag, pos, end = _tlv(der, 0)
        if tag != _SEQUENCE or end != len(der):
            return False
        for expected in _CERTIFICATE_PARTS:
            tag, _start, pos = _tlv(der, pos)
            if tag != expected:
                return False
    except ValueError:
        return False
    return pos == end


def issuer_common_name(der: bytes) -> str | None:
    """The (first) Common Name of the certificate's issuer; None when it has
    none or the DER does not frame as a certificate (nothing else is checked)."""
    if not looks_like_certificate(der):
        return None
    try:
        _tag, pos, _end = _tlv(der, 0)
        _tag, pos, tbs_end = _tlv(der, pos)  # tbsCertificate
        tag, start, end = _tlv(der, pos)
        if tag == _VERSION:
            tag, start, end = _tlv(der, end)
        # serialNumber, signature (AlgorithmIdentifier), then the issuer Name.
        tag, start, end = _tlv(der, end)
        tag, start, end = _tlv(der, end)
        if tag != _SEQUENCE or end > tbs_end:
            return None
        return _common_name(der, start, end)
    except (ValueError, UnicodeDecodeError):
        return None


def _common_name(der: bytes, pos: int, end: int) -> str | None:
    """The first CN of the RDNSequence in der[pos:end]."""
    while pos < end:
        tag, rdn, rdn_end = _tlv(der, pos)
        if tag != _SET or rdn_end > end:
            raise ValueError("not an RDN")
        while rdn < rdn_end:
            tag, attribute, attribute_end = _tlv(der, rdn)
            if tag != _SEQUENCE or attribute_end > rdn_end:
                raise ValueError("not an attribute")
            tag, oid, oid_end = _tlv(der, attribute)
            if tag != _OID:
                raise ValueError("not an OID")
            if der[oid:oid_end] == _COMMON_NAME:
                tag, value, value_end = _tlv(der, oid_end)
                codec = _STRING_CODECS.get(tag)
                if codec is None or value_end != attribute_end:
                    raise ValueError("not a string")
                return der[value:value_end].decode(codec)
            rdn = attribute_end
        pos = rdn_end
    return None


def _decode_block(body: str, index: int) -> bytes:
    if not _BASE64_BODY_RE.fullmatch(body):
        raise CertificateRejected(f"certificate {index}: PEM body is not plain base64")
    try:
        der = binascii.a2b_base64("".join(body.split()), strict_mode=True)
    except binascii.Error:
        raise CertificateRejected(f"certificate {index}: invalid base64 in PEM body") from None
    if not looks_like_certificate(der):
        raise CertificateRejected(f"certificate {index}: not a valid DER certificate")
    return der


def certificate_ders(
    data: bytes, max_bytes: int = MAX_CHAIN_BYTES, max_certs: int = MAX_CHAIN_CERTS
) -> list[bytes]:
    """The DER of each CERTIFICATE block of a PEM chain, which must hold
    nothing else but whitespace; CertificateRejected says what is wrong."""
    if len(data) > max_bytes:
        raise CertificateRejected(f"PEM chain too large: {len(data)} bytes (at most {max_bytes})")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CertificateRejected(f"PEM chain has a non-ASCII byte at offset {exc.start}") from None
    ders: list[bytes] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in _WHITESPACE:
            pos += 1
        if pos == len(text):
            break
        if not text.startswith(BEGIN, pos):
            raise _unexpected(text, pos)
        if len(ders) == max_certs:
            raise CertificateRejected(f"PEM chain has more than {max_certs} certificates")
        end = text.find(END, pos)
        if end < 0:
            raise CertificateRejected(f"certificate {len(ders)}: no END CERTIFICATE line")
        ders.append(_decode_block(text[pos + len(BEGIN) : end], len(ders)))
        pos = end + len(END)
    if not ders:
        raise CertificateRejected("PEM chain contains no certificate")
    return ders
