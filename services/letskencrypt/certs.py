"""Checks on the certificate chain a CA sent; all of it is treated as hostile.

A chain is accepted only when it leads from the leaf to one of the CA's
configured trust anchors (see anchors.py): certificate by certificate, in
the order the CA sent them, each signed by the next, until one is signed by
an anchor.  Every CA certificate on that path must be a CA (basicConstraints
cA=true, keyCertSign if it has a keyUsage, within its pathLenConstraint), and
every certificate on it, the anchor too, must be within its validity period
now.  Certificates the CA sent beyond the one an anchor signed (a cross-sign
of the root by an older one, say) must still each be signed by the next, but
are not on the path: their dates and flags are not checked.

Time: `CLOCK_SKEW` (5 minutes) either way, for this host's clock and the
CA's.  The leaf may live at most `MAX_LIFETIME` (398 days, the CA/Browser
Forum's limit) from notBefore to notAfter.
"""

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from letskencrypt import pem
from letskencrypt.b64 import b64url
from letskencrypt.constants import MAX_ANCHOR_BYTES, MAX_ANCHORS
from letskencrypt.errors import CertificateRejected
from letskencrypt.validate import IP, identifier_type, safe_text

MAX_CHAIN_BYTES = pem.MAX_CHAIN_BYTES
MAX_CHAIN_CERTS = pem.MAX_CHAIN_CERTS
CLOCK_SKEW = timedelta(minutes=5)
MAX_LIFETIME = timedelta(days=398)

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


# How a dNSName entry that reads as an IP address is shown: never equal to
# any requested name, and plain about what it is.
DNS_ADDRESS_PREFIX = "DNS:"


def san_names(san: x509.SubjectAlternativeName) -> list[str]:
    """The names of a subjectAltName as requested names are written: dNSName
    entries lower-cased, iPAddress entries as their canonical text (RFC
    8738).  A dNSName that reads as an IP address is no address: it comes
    out as 'DNS:<text>', so that it never matches one."""
    names = []
    for name in san.get_values_for_type(x509.DNSName):
        name = name.lower()
        names.append(DNS_ADDRESS_PREFIX + name if identifier_type(name) == IP else name)
    names.extend(str(address) for address in san.get_values_for_type(x509.IPAddress))
    return names


def cert_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses of the subjectAltName (see san_names;
    empty if there is none)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    except _PARSE_ERRORS as exc:
        raise CertificateRejected(f"certificate has malformed extensions: {exc}") from None
    return san_names(san.value)


def ari_cert_id(cert: x509.Certificate) -> str | None:
    """The certificate's ARI identifier (RFC 9773 section 4.1):
    base64url(its authorityKeyIdentifier's keyIdentifier) "." base64url(the
    DER content octets of its serial number, a leading zero when the top bit
    is set); None without a keyIdentifier or with a serial number that is
    not positive."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    serial = cert.serial_number
    if aki.key_identifier is None or not aki.key_identifier or serial <= 0:
        return None
    serial_der = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
    return f"{b64url(aki.key_identifier)}.{b64url(serial_der)}"


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
    actual = cert_names(leaf)
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


def _show_name(name: x509.Name) -> str:
    return repr(safe_text(name.rfc4514_string(), 200))


def _check_dates(certificate: x509.Certificate, what: str, now: datetime) -> None:
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    if now + CLOCK_SKEW < not_before:
        raise CertificateRejected(f"{what} is not valid yet (notBefore {not_before})")
    if now - CLOCK_SKEW > not_after:
        raise CertificateRejected(f"{what} has expired (notAfter {not_after})")


def _check_lifetime(leaf: x509.Certificate) -> None:
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    if lifetime > MAX_LIFETIME:
        raise CertificateRejected(
            f"certificate lifetime of {lifetime.days} days exceeds {MAX_LIFETIME.days} days"
        )


def _basic_constraints(certificate: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    except _PARSE_ERRORS as exc:
        raise CertificateRejected(f"certificate has malformed extensions: {exc}") from None


def _check_not_ca(leaf: x509.Certificate) -> None:
    constraints = _basic_constraints(leaf)
    if constraints is not None and constraints.ca:
        raise CertificateRejected("certificate is a CA certificate, not an end-entity one")


def _is_ca(certificate: x509.Certificate) -> bool:
    constraints = _basic_constraints(certificate)
    if constraints is None or not constraints.ca:
        return False
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign


def _check_issuer(certificate: x509.Certificate, index: int, below: int) -> None:
    """Certificate `index` of the chain issues certificates: a CA, allowed to
    have `below` CA certificates under it on the path."""
    if not _is_ca(certificate):
        raise CertificateRejected(
            f"certificate {index} ({_show_name(certificate.subject)}) is not a CA certificate"
        )
    constraints = _basic_constraints(certificate)
    limit = constraints.path_length if constraints is not None else None
    if limit is not None and below > limit:
        raise CertificateRejected(
            f"certificate {index} allows {limit} CA certificates below it, not {below}"
        )


def _check_anchor(anchor: x509.Certificate, below: int, now: datetime) -> None:
    """The anchor that signed certificate `below` of the chain."""
    constraints = _basic_constraints(anchor)
    limit = constraints.path_length if constraints is not None else None
    if limit is not None and below > limit:
        raise CertificateRejected(
            f"trust anchor {_show_name(anchor.subject)} allows {limit} CA certificates "
            f"below it, not {below}"
        )
    _check_dates(anchor, f"trust anchor {_show_name(anchor.subject)}", now)


def _signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _issuing_anchor(
    certificate: x509.Certificate, index: int, anchors: list[x509.Certificate]
) -> x509.Certificate | None:
    """The anchor that signed `certificate`, None if no anchor has its issuer's name."""
    named = [anchor for anchor in anchors if anchor.subject == certificate.issuer]
    for anchor in named:
        if _signed_by(certificate, anchor):
            return anchor
    if named:
        raise CertificateRejected(
            f"certificate {index} names the trust anchor {_show_name(certificate.issuer)} "
            "as its issuer but is not signed by it"
        )
    return None


def verify_path(
    chain: list[x509.Certificate], anchors: list[x509.Certificate], now: datetime
) -> x509.Certificate:
    """The trust anchor that `chain` (leaf first, as the CA sent it) leads to.

    CertificateRejected unless each certificate of the chain is signed by
    the next, some certificate is signed by an anchor, the ones that sign up
    to there are CA certificates within their path length, and they and the
    anchor are valid at `now` (within CLOCK_SKEW).
    """
    if not chain:
        raise CertificateRejected("certificate chain is empty")
    if not anchors:
        raise CertificateRejected("no trust anchors configured")
    for index in range(len(chain) - 1):
        _check_link(chain[index], chain[index + 1], index)
    for index, certificate in enumerate(chain):
        if index > 0:
            _check_issuer(certificate, index, index - 1)
        what = "certificate" if index == 0 else f"certificate {index}"
        _check_dates(certificate, what, now)
        anchor = _issuing_anchor(certificate, index, anchors)
        if anchor is not None:
            _check_anchor(anchor, index, now)
            return anchor
    raise CertificateRejected(
        "certificate does not chain to a trust anchor: "
        f"no anchor issued certificate {len(chain) - 1} "
        f"(issuer {_show_name(chain[-1].issuer)})"
    )


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now


def check_chain(
    chain: list[x509.Certificate],
    expected_public_key_der: bytes,
    expected_names: list[str],
    anchors: list[x509.Certificate],
    now: datetime | None = None,
) -> x509.Certificate:
    """Raise CertificateRejected unless `chain` is a fit for our key and names
    and leads to one of `anchors`; return that anchor.

    Checks: the leaf's key is ours, its names (dNSName and iPAddress
    entries, see san_names) are exactly the requested ones, it is not a CA,
    lives at most 398 days, and the chain leads to an anchor (verify_path:
    signatures, names, CA flags, validity within ±5 minutes).  A naive `now` is taken as UTC.
    """
    if not chain:
        raise CertificateRejected("certificate chain is empty")
    now = _utc(now)
    leaf = chain[0]
    _check_key(leaf, expected_public_key_der)
    _check_names(leaf, expected_names)
    _check_not_ca(leaf)
    _check_lifetime(leaf)
    return verify_path(chain, anchors, now)


def trust_problem(
    chain: list[x509.Certificate], anchors: list[x509.Certificate], now: datetime | None = None
) -> str | None:
    """Why an installed chain (leaf first) is not one certproc would accept,
    or None.  Expiry of the leaf is left to the renewal decision."""
    if not chain:
        return "certificate chain is empty"
    now = _utc(now)
    leaf = chain[0]
    try:
        _check_not_ca(leaf)
        _check_lifetime(leaf)
        if now - CLOCK_SKEW > leaf.not_valid_after_utc:
            return None  # expired: renewal says so, with the date
        verify_path(chain, anchors, now)
    except CertificateRejected as error:
        return str(error)
    return None


def parse_anchors(data: bytes) -> list[x509.Certificate]:
    """Trust anchors from PEM: 1 to MAX_ANCHORS CA certificates, nothing else."""
    try:
        anchors = parse_pem_chain(data, MAX_ANCHOR_BYTES, MAX_ANCHORS)
    except CertificateRejected as error:
        raise CertificateRejected(f"trust anchors: {error}") from None
    for index, anchor in enumerate(anchors):
        if not _is_ca(anchor):
            raise CertificateRejected(
                f"trust anchor {index} ({_show_name(anchor.subject)}) is not a CA certificate"
            )
    return anchors


def configured_anchors(text: str | None) -> list[x509.Certificate]:
    """The trust anchors of a role's settings (PEM text, see anchors.py)."""
    if not text:
        raise CertificateRejected("no trust anchors configured")
    return parse_anchors(text.encode("ascii", "replace"))


def split_leaf_and_chain(pem: bytes) -> tuple[bytes, bytes]:
    """Return (leaf PEM, PEM of the rest), each re-serialised canonically."""
    certificates = parse_pem_chain(pem)
    encoded = [cert.public_bytes(serialization.Encoding.PEM) for cert in certificates]
    return encoded[0], b"".join(encoded[1:])
