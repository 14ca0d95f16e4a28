"""Unpadded base64url (RFC 7515 section 2), shared by the key holders and
netproc without pulling in the cryptography wheel."""

import base64
import re

from letskencrypt.errors import InputError

_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


def b64url(data: bytes) -> str:
    """Base64url-encode without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(s: str) -> bytes:
    """Decode unpadded base64url, rejecting any other alphabet or padding."""
    if not isinstance(s, str) or not _B64URL_RE.fullmatch(s) or len(s) % 4 == 1:
        raise InputError(f"invalid base64url string {s[:60]!r}")
    data = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    if b64url(data) != s:
        # Non-zero trailing bits: several strings would decode the same.
        raise InputError(f"non-canonical base64url string {s[:60]!r}")
    return data
