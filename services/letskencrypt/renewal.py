"""Whether a certificate must be issued, renewed, or is still good."""

import enum
import os
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from cryptography import x509

from letskencrypt import fsutil
from letskencrypt.certs import cert_names, parse_pem_chain
from letskencrypt.errors import CertificateFileError, CertificateRejected

MAX_CERT_FILE_BYTES = 256 * 1024
SHORT_LIFETIME = timedelta(days=10)
MIN_RENEWAL_WINDOW = timedelta(days=3)


class Decision(enum.Enum):
    ISSUE = "issue"
    RENEW = "renew"
    UP_TO_DATE = "up to date"


class Due(NamedTuple):
    """When renewal becomes due (None: at once) and the rule that says so."""

    at: datetime | None
    reason: str


def renewal_window(cert: x509.Certificate) -> timedelta:
    """How long before notAfter renewal becomes due.

    A third of the lifetime (half for certificates of 10 days or less, so
    that short-lived ones are not renewed almost at once), never under 3 days.
    """
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    fraction = lifetime / 2 if lifetime <= SHORT_LIFETIME else lifetime / 3
    return max(fraction, MIN_RENEWAL_WINDOW)


def _format_duration(delta: timedelta) -> str:
    seconds = int(abs(delta).total_seconds())
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    if days:
        return f"{days}d{hours}h"
    return f"{hours}h{seconds // 60}m"


def _names_changed(actual: list[str], wanted: list[str]) -> str | None:
    added = sorted(set(wanted) - set(actual))
    removed = sorted(set(actual) - set(wanted))
    if not added and not removed:
        return None
    parts = []
    if added:
        parts.append(f"adding {added}")
    if removed:
        parts.append(f"removing {removed}")
    return "names changed: " + ", ".join(parts)


def _days(delta: timedelta) -> str:
    return f"{delta / timedelta(days=1):.1f}".removesuffix(".0")


def renewal_due(
    cert: x509.Certificate | None, names: list[str], distrust: str | None = None
) -> Due:
    """The renewal rule, without the clock: when the certificate stops being
    current, and why.

    At once (`at` None) without a certificate, with an installed chain that
    is not trusted (`distrust`, see decide) or with other names than
    `names`; otherwise `renewal_window` before notAfter.  It is due once
    the time is past `at`.
    """
    if cert is None:
        return Due(None, "no certificate yet")
    if distrust:
        return Due(None, f"installed {distrust}")
    changed = _names_changed(cert_names(cert), [name.lower() for name in names])
    if changed:
        return Due(None, changed)
    window = renewal_window(cert)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return Due(
        cert.not_valid_after_utc - window,
        f"lifetime rule: renew in the last {_days(window)} days "
        f"of a {_days(lifetime)}-day certificate",
    )


def decide(
    cert: x509.Certificate | None,
    names: list[str],
    now: datetime,
    force: bool,
    distrust: str | None = None,
) -> tuple[Decision, str]:
    """Decide what to do about the current certificate; returns (decision, reason).

    `distrust` is why the installed chain is not one certproc would accept
    (certs.trust_problem): such a certificate is never current.
    A naive `now` is taken as UTC.  The rule is `renewal_due`'s.
    """
    due = renewal_due(cert, names, distrust)
    if cert is None:
        return Decision.ISSUE, due.reason
    if due.at is None:
        return Decision.RENEW, due.reason
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    not_after = cert.not_valid_after_utc
    remaining = not_after - now
    window = not_after - due.at
    if remaining <= timedelta(0):
        return Decision.RENEW, f"expired {_format_duration(remaining)} ago ({not_after})"
    if now > due.at:
        return Decision.RENEW, (
            f"expires in {_format_duration(remaining)} ({not_after}), "
            f"renewal is due {_format_duration(window)} before"
        )
    if force:
        return Decision.RENEW, "forced"
    return Decision.UP_TO_DATE, (
        f"valid for {_format_duration(remaining)} more ({not_after}), "
        f"renewal due in {_format_duration(due.at - now)}"
    )


def _read_limited(path: str, max_bytes: int, dir_fd: int | None) -> bytes | None:
    # Follows symlinks on purpose: cert.pem is a symlink managed by fileproc.
    # O_NONBLOCK keeps a FIFO planted at the path from blocking the open.
    name = path if dir_fd is None else os.path.basename(path)
    try:
        fd = os.open(name, fsutil.READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CertificateFileError(f"certificate {path}: cannot open: {exc.strerror}") from None
    try:
        fsutil.check_regular(fd)
        return fsutil.read_bounded(fd, max_bytes)
    except fsutil.NotRegularFile:
        raise CertificateFileError(f"certificate {path}: not a regular file") from None
    except fsutil.FileTooLarge:
        raise CertificateFileError(f"certificate {path}: larger than {max_bytes} bytes") from None
    finally:
        os.close(fd)


def load_certificate_file(
    path: str, max_bytes: int = MAX_CERT_FILE_BYTES, dir_fd: int | None = None
) -> x509.Certificate | None:
    """The first certificate of a PEM file, or None if there is no file.

    With `dir_fd` (a descriptor of the file's directory, opened before the
    caller dropped privileges) only the last component is looked up.
    """
    data = _read_limited(path, max_bytes, dir_fd)
    if data is None:
        return None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateFileError(f"certificate {path}: no PEM certificate in the file")
    try:
        certificate = x509.load_pem_x509_certificate(data)
        # Parsed lazily by cryptography: a malformed part must fail here.
        certificate.extensions  # noqa: B018
        certificate.not_valid_after_utc  # noqa: B018
    except (ValueError, x509.InvalidVersion, x509.DuplicateExtension,
            x509.UnsupportedGeneralNameType):
        raise CertificateFileError(f"certificate {path}: not a valid PEM certificate") from None
    return certificate


def load_chain_file(
    path: str, max_bytes: int = MAX_CERT_FILE_BYTES, dir_fd: int | None = None
) -> list[x509.Certificate]:
    """Every certificate of a PEM chain file (chain.pem); none if there is no
    file or it is empty (a leaf the anchor signed directly)."""
    data = _read_limited(path, max_bytes, dir_fd)
    if data is None or not data.strip():
        return []
    try:
        return parse_pem_chain(data, max_bytes)
    except CertificateRejected as error:
        raise CertificateFileError(f"chain {path}: {error}") from None
