"""URL rules shared by netproc and acctproc: https only, and one origin."""

import functools
from urllib.parse import urlsplit

from letskencrypt.errors import InputError

MAX_URL_LENGTH = 2048
# Printable ASCII minus space and the characters that URL parsers disagree on:
# a URL two parsers read differently could pass an origin check and still be
# fetched from elsewhere.
URL_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - set('\\"<>^`{|}')


def well_formed(url: str) -> bool:
    """Not empty, not too long, and only characters every parser reads alike."""
    return 0 < len(url) <= MAX_URL_LENGTH and set(url) <= URL_CHARS


@functools.lru_cache(maxsize=256)
def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an https URL, or InputError.  Cached: every
    URL a CA sends is checked against the directory's origin."""
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError as error:
        raise InputError(f"invalid URL {url[:200]!r}: {error}") from None
    if parts.scheme != "https":
        raise InputError(f"URL {url[:200]!r} is not https")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise InputError(f"URL {url[:200]!r} has no host or carries credentials")
    return (parts.scheme, parts.hostname.lower(), port)


def require_same_origin(url: str, base: str, what: str) -> str:
    """Return `url` if it is https on the same origin as `base`, else raise."""
    if len(url) > MAX_URL_LENGTH:
        raise InputError(f"{what} URL is longer than {MAX_URL_LENGTH} characters")
    if origin(url) != origin(base):
        raise InputError(f"{what} URL {url[:200]!r} is not on the CA's origin {base[:200]!r}")
    return url
