"""Checks on the certificate chain a CA sent; all of it is treated as hostile."""

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from letskencrypt import pem
from letskencrypt.errors import CertificateRejected
from letskencrypt.validate import safe_text

MAX_CHAIN_BYTES = pem.MAX_CHAIN_BYTES
MAX_CHAIN_CERTS = pem.MAX_CHAIN_CERTS
CLOCK_SKEW = timedelta(minutes=5)

# What cryptography parses only when first asked for, and the errors it then
# raises: a malformed name or extension must fail here as CertificateRejected,
# not as a ValueError in the middle of check_chain or later in certproc.
_LAZY_PARTS = ("subject", "issuer", "extensions", "not_valid_before_utc", "not_valid_after_utc")
_PARSE_ERRORS = (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)


def parse_pem_chain(
    data: bytes, max_bytes: int = MAX_CHAIN_BYTES, max_certs: int = MAX_CHAIN_CERTS
) -> list[x509.Certificate]:
    """Parse a PEM chain made of CERTIFICATE blocks and whitespace only."""
    certificates: list[x509.Certificate] = []
    for index, der in enumerate(pem.certificate_ders(data, max_bytes, max_certs)):
        try:
            certificate = x509.load_der_x509_certificate(der)
        except (ValueError, x509.InvalidVersion):  # the latter is no ValueError
            raise CertificateRejected(f"certificate {index}: not a valid DER certificate") from None
        _parse_lazy_parts(certificate, index)
        certificates.append(certificate)
    return certificates


def _parse_lazy_parts(certificate: x509.Certificate, index: int) -> None:
    for part in _LAZY_PARTS:
        try:
            getattr(certificate, part)
        except _PARSE_ERRORS:
            raise CertificateRejected(f"certificate {index}: malformed {part}") from None


def cert_dns_names(cert: x509.Certificate) -> list[str]:
    """The lower-cased DNS names of the subjectAltName (empty if none)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    except _PARSE_ERRORS as exc:
        raise CertificateRejected(f"certificate has malformed extensions: {exc}") from None
    return [name.lower() for name in san.value.get_values_for_type(x509.DNSName)]


def _show_names(names: list[str]) -> str:
    return repr(sorted(safe_text(name, 100) for name in names))


def _check_key(leaf: x509.Certificate, expected_public_key_der: bytes) -> None:
    try:
        actual = leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateRejected("certificate public key is of an unsupported type") from None
    if actual != expected_public_key_der:
        raise CertificateRejected("certificate is not for our domain key (public key differs)")


def _check_names(leaf: x509.Certificate, expected_names: list[str]) -> None:
    actual = cert_dns_names(leaf)
    expected = [name.lower() for name in expected_names]
    if set(actual) != set(expected):
        raise CertificateRejected(
            f"certificate names {_show_names(actual)} differ from the requested "
            f"{_show_names(expected)}"
        )


def _check_link(child: x509.Certificate, issuer: x509.Certificate, index: int) -> None:
    if child.issuer != issuer.subject:
        raise CertificateRejected(
            f"certificate {index} issuer {safe_text(child.issuer.rfc4514_string(), 200)!r} "
            f"does not match certificate {index + 1} subject "
            f"{safe_text(issuer.subject.rfc4514_string(), 200)!r}"
        )
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateRejected(
            f"certificate {index} is not signed by certificate {index + 1}"
        ) from None


def _check_validity(leaf: x509.Certificate, now: datetime) -> None:
    not_before = leaf.not_valid_before_utc
    not_after = leaf.not_valid_after_utc
    if now + CLOCK_SKEW < not_before:
        raise CertificateRejected(f"certificate is not valid yet (notBefore {not_before})")
    if now - CLOCK_SKEW > not_after:
        raise CertificateRejected(f"certificate has expired (notAfter {not_after})")


def _check_not_ca(leaf: x509.Certificate) -> None:
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return
    except _PARSE_ERRORS as exc:
        raise CertificateRejected(f"certificate has malformed extensions: {exc}") from None
    if constraints.value.ca:
        raise CertificateRejected("certificate is a CA certificate, not an end-entity one")


def check_chain(
    chain: list[x509.Certificate],
    expected_public_key_der: bytes,
    expected_names: list[str],
    now: datetime | None = None,
) -> None:
    """Raise CertificateRejected unless `chain` is a fit for our key and names.

    Checks: the leaf's key is ours, its DNS names are exactly the requested
    ones, each certificate is signed by the next, the leaf is within its
    validity period (±5 minutes) and is not a CA.  Trust in the root is left
    to the TLS clients, as always.  A naive `now` is taken as UTC.
    """
    if not chain:
        raise CertificateRejected("certificate chain is empty")
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    leaf = chain[0]
    _check_key(leaf, expected_public_key_der)
    _check_names(leaf, expected_names)
    for index in range(len(chain) - 1):
        _check_link(chain[index], chain[index + 1], index)
    _check_validity(leaf, now)
    _check_not_ca(leaf)


def split_leaf_and_chain(pem: bytes) -> tuple[bytes, bytes]:
    """Return (leaf PEM, PEM of the rest), each re-serialised canonically."""
    certificates = parse_pem_chain(pem)
    encoded = [cert.public_bytes(serialization.Encoding.PEM) for cert in certificates]
    return encoded[0], b"".join(encoded[1:])
