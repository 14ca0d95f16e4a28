"""Validation of untrusted input: domain names, IP addresses, ACME tokens,
terminal text.

A certificate's names are domain names and IP addresses (RFC 8738), each kept
as its canonical text: a domain name in lower case without a trailing dot, an
address as `ipaddress` writes it (RFC 5952 for IPv6).  No valid domain name
reads as an IP address (an all-numeric top-level label is refused), so the
text alone says which of the two a name is: `identifier_type`.
"""

import ipaddress
import re
import unicodedata

from letskencrypt.errors import InputError

MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
MAX_DOMAINS = 100
MAX_TOKEN_LENGTH = 256
THUMBPRINT_LENGTH = 43  # b64url of a SHA-256 digest, no padding
# The keys keys.py can create; named here so that the command line (and the
# container entry point of roles without the cryptography wheel) can check them.
KEY_TYPES = ("rsa2048", "rsa3072", "rsa4096", "ecdsa256", "ecdsa384")

MAX_NONCE_LENGTH = 128

_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")

# ESC-introduced sequences are replaced as a whole so that no fragment of
# e.g. a colour code or an OSC 8 hyperlink survives: CSI (ESC [ ... final),
# terminated OSC/DCS/APC/PM strings (ended by BEL or ST), and two-byte
# escapes.  An unterminated string only loses its ESC and introducer, so a
# hostile server cannot hide the rest of its message.
_ESCAPE_RE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[ -~]?"
)
# NEL (U+0085) and the Unicode line/paragraph separators count as newlines.
_NEWLINES_RE = re.compile("[\r\n\x85\u2028\u2029]+")
# Cc: C0, DEL, C1.  Cf: bidi overrides, zero-width chars, etc.
# Cs: lone surrogates, which would crash a UTF-8 terminal writer.
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Cs"))

# The identifier types of RFC 8555 and RFC 8738.
IP = "ip"
DNS = "dns"
# Addresses that cannot be the far end of an http-01 validation, whatever
# the CA: no TCP connection reaches an unspecified, multicast or broadcast
# address, and a link-local IPv6 address needs a zone that an identifier
# cannot carry.  Everything else (loopback and private ranges included) is
# left to the CA's own policy.
_UNREACHABLE = (
    (ipaddress.ip_network("0.0.0.0/32"), "the unspecified address"),
    (ipaddress.ip_network("::/128"), "the unspecified address"),
    (ipaddress.ip_network("255.255.255.255/32"), "the broadcast address"),
    (ipaddress.ip_network("224.0.0.0/4"), "a multicast address"),
    (ipaddress.ip_network("ff00::/8"), "a multicast address"),
    (ipaddress.ip_network("fe80::/10"), "a link-local address (it needs a zone)"),
)
_DOTTED_DECIMAL = frozenset("0123456789.")


def _quote(value: str) -> str:
    """Render untrusted input for inclusion in an error message."""
    return repr(safe_text(value, 80))


def _domain_error(name: str, reason: str) -> InputError:
    return InputError(f"invalid domain name {_quote(name)}: {reason}")


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


def _check_punycode(label: str) -> str | None:
    """Return a reason if an 'xn--' label is not valid punycode."""
    # (A body decoding to plain ASCII would end in '-', rejected earlier.)
    try:
        label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        return f"label {label!r} is not valid punycode"
    return None


def _check_label(label: str) -> str | None:
    """Return the reason why a label is invalid, or None if it is fine."""
    if not label:
        return "empty label"
    if len(label) > MAX_LABEL_LENGTH:
        return f"label {label!r} is longer than {MAX_LABEL_LENGTH} characters"
    bad = sorted(set(label) - _LABEL_CHARS)
    if bad:
        return f"label {label!r} contains invalid character {bad[0]!r}"
    if label.startswith("-") or label.endswith("-"):
        return f"label {label!r} starts or ends with '-'"
    if label.startswith("xn--"):
        return _check_punycode(label)
    return None


def validate_domain(name: str) -> str:
    """Return `name` lower-cased without a trailing dot, or raise InputError."""
    if not isinstance(name, str):
        raise InputError(f"domain name must be a string, not {type(name).__name__}")
    if not name:
        raise _domain_error(name, "empty name")
    if not name.isascii():
        raise _domain_error(
            name, "non-ASCII characters (give internationalised names as punycode 'xn--...')"
        )
    normalised = name.lower()
    if normalised.endswith("."):
        normalised = normalised[:-1]
    if "*" in normalised:
        raise _domain_error(
            name, "a wildcard name needs --challenge dns-01 or dns-persist-01"
        )
    if _is_ip_address(normalised):
        raise _domain_error(name, "IP addresses are not domain names")
    if len(normalised) > MAX_NAME_LENGTH:
        raise _domain_error(name, f"longer than {MAX_NAME_LENGTH} characters")
    labels = normalised.split(".")
    for label in labels:
        reason = _check_label(label)
        if reason:
            raise _domain_error(name, reason)
    if len(labels) < 2:
        raise _domain_error(name, "at least two labels are required")
    if labels[-1].isdigit():
        raise _domain_error(name, f"top-level label {labels[-1]!r} is all-numeric")
    return normalised


def _address_error(text: str, reason: str) -> InputError:
    return InputError(f"invalid IP address {_quote(text)}: {reason}")


def _looks_like_address(text: str) -> bool:
    """Text meant as an IP address rather than a domain name: with a ':'
    (IPv6, or a port), a '/' (a prefix), or only digits and dots."""
    return ":" in text or "/" in text or (
        "." in text and not set(text) - _DOTTED_DECIMAL
    )


def validate_ip(text: str) -> str:
    """Return the canonical text of an IPv4 or IPv6 address, or raise InputError.

    Refused: brackets, zone ids, prefixes, IPv4 written otherwise than as
    four decimal numbers without leading zeros (other parsers read "010" as
    octal), IPv4-mapped IPv6 addresses (the same host as the IPv4 address),
    and addresses no http-01 validation can reach (_UNREACHABLE).
    """
    if not isinstance(text, str):
        raise InputError(f"IP address must be a string, not {type(text).__name__}")
    if text.startswith("[") or text.endswith("]"):
        raise _address_error(text, "give the address without brackets")
    if "%" in text:
        raise _address_error(text, "a zone id (%...) cannot be part of a certificate's name")
    if "/" in text:
        raise _address_error(text, "a prefix is no address; give one address")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if ":" in text:
            raise _address_error(
                text, "not an IPv6 address (and a domain name has no ':')"
            ) from None
        raise _address_error(
            text, "an IPv4 address is four decimal numbers 0-255 without leading zeros"
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise _address_error(
            text, f"an IPv4-mapped address; give the IPv4 address {address.ipv4_mapped}"
        )
    for network, what in _UNREACHABLE:
        if address in network:
            raise _address_error(text, f"{what} cannot be validated by a CA")
    return str(address)


def identifier_type(name: str) -> str:
    """IP for a name that is an IP address, DNS for any other (RFC 8738)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return DNS
    return IP


def validate_name(name: str, wildcard: bool = False) -> str:
    """A certificate's name: an IP address or a domain name, canonical, or
    InputError; with `wildcard`, also "*." and a domain name (RFC 8555 7.1.3)."""
    if not isinstance(name, str):
        raise InputError(f"name must be a string, not {type(name).__name__}")
    if name.startswith("*.") and _looks_like_address(name[2:]):
        raise _domain_error(name, "a wildcard cannot cover an IP address")
    if wildcard and name.startswith("*."):
        return "*." + validate_domain(name[2:])
    if _looks_like_address(name) or _is_ip_address(name):
        return validate_ip(name)
    return validate_domain(name)


def parse_dns_server(text: str, what: str, default_port: int = 53) -> tuple[str, int]:
    """(address, port) of "ADDRESS", "ADDRESS:PORT", "[IPV6]" or "[IPV6]:PORT":
    an IP address, never a name (no resolver stands between us and the
    server that gets our updates)."""
    host, port_text = text, ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise InputError(f"{what} {_quote(text)}: give [IPV6]:PORT")
        port_text = rest[1:]
        if rest and not port_text:
            raise InputError(f"{what} {_quote(text)}: no port after ':'")
    elif text.count(":") == 1:
        host, _colon, port_text = text.partition(":")
        if not port_text:
            raise InputError(f"{what} {_quote(text)}: no port after ':'")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InputError(
            f"{what} {_quote(text)}: give an IP address (and :PORT), not a name"
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise InputError(f"{what} {_quote(text)}: no zone id (%...)")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InputError(f"{what} {_quote(text)}: the port is a number from 1 to 65535")
        port = int(port_text)
    return str(address), port


def dns_server_text(address: str, port: int) -> str:
    """The canonical "ADDRESS:PORT" ("[IPV6]:PORT") that parse_dns_server reads."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def validate_names(names: list[str], wildcards: bool = False) -> list[str]:
    """Validate and canonicalise a certificate's names (domain names and IP
    addresses, and with `wildcards` "*.NAME"), keeping their order."""
    if not names:
        raise InputError("no domain names given")
    if len(names) > MAX_DOMAINS:
        raise InputError(f"too many names: {len(names)} (at most {MAX_DOMAINS})")
    result: list[str] = []
    seen: set[str] = set()
    for name in names:
        canonical = validate_name(name, wildcards)
        if canonical in seen:
            what = "IP address" if identifier_type(canonical) == IP else "domain name"
            raise InputError(f"duplicate {what} {canonical!r}")
        seen.add(canonical)
        result.append(canonical)
    return result


def validate_domains(names: list[str]) -> list[str]:
    """Validate and normalise a list of names, keeping their order."""
    if not names:
        raise InputError("no domain names given")
    if len(names) > MAX_DOMAINS:
        raise InputError(f"too many domain names: {len(names)} (at most {MAX_DOMAINS})")
    result: list[str] = []
    seen: set[str] = set()
    for name in names:
        normalised = validate_domain(name)
        if normalised in seen:
            raise InputError(f"duplicate domain name {normalised!r}")
        seen.add(normalised)
        result.append(normalised)
    return result


def is_nonce(value: object) -> bool:
    """An ACME Replay-Nonce: non-empty base64url of at most 128 characters."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_NONCE_LENGTH
        and _B64URL_RE.fullmatch(value) is not None
    )


def validate_token(token: str) -> str:
    """Return an ACME challenge token unchanged if it is safe, else raise."""
    if not isinstance(token, str):
        raise InputError(f"challenge token must be a string, not {type(token).__name__}")
    if not token:
        raise InputError("invalid challenge token: empty")
    if len(token) > MAX_TOKEN_LENGTH:
        raise InputError(
            f"invalid challenge token: {len(token)} characters (at most {MAX_TOKEN_LENGTH})"
        )
    if not _B64URL_RE.fullmatch(token):
        raise InputError(f"invalid challenge token {_quote(token)}: only [A-Za-z0-9_-] allowed")
    return token


def validate_key_authorization(token: str, key_authorization: str) -> str:
    """Check that `key_authorization` is `token` + '.' + a JWK thumbprint."""
    validate_token(token)
    if not isinstance(key_authorization, str):
        raise InputError(
            f"key authorization must be a string, not {type(key_authorization).__name__}"
        )
    prefix = token + "."
    if not key_authorization.startswith(prefix):
        raise InputError(
            f"key authorization {_quote(key_authorization)} does not start with the token"
        )
    thumbprint = key_authorization[len(prefix) :]
    if len(thumbprint) != THUMBPRINT_LENGTH or not _B64URL_RE.fullmatch(thumbprint):
        raise InputError(
            f"key authorization {_quote(key_authorization)}: thumbprint must be "
            f"{THUMBPRINT_LENGTH} base64url characters"
        )
    return key_authorization


# The characters of _UNSAFE_CATEGORIES in ASCII: C0 controls and DEL (Cc).
_ASCII_UNSAFE = {code: "?" for code in (*range(0x20), 0x7F)}


def _replace_unsafe(text: str) -> str:
    if text.isascii():  # most text, and a character at a time is slow
        return text.translate(_ASCII_UNSAFE)
    return "".join("?" if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in text)


def safe_text(s: str, limit: int = 500) -> str:
    """Make untrusted text safe to print on a terminal.

    Newlines (and tabs) become single spaces; escape sequences, other control
    characters and invisible format/bidi characters become '?'; the result is
    at most `limit` characters, ending in '…' when it was truncated.
    """
    if limit < 1:
        raise ValueError(f"safe_text limit must be positive, got {limit}")
    text = _NEWLINES_RE.sub(" ", str(s)).replace("\t", " ")
    text = _ESCAPE_RE.sub("?", text)
    text = _replace_unsafe(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
