"""Property tests for the parsers that face hostile input: what the CA sends
(problem documents, tokens, URLs, Retry-After, certificate chains) and what
the command line is given (domain names, contacts, the server URL).

Each parser may reject, but only with its own error class, and what it
accepts or prints keeps the promised shape: one terminal-safe line, a
same-origin https URL that every URL parser on the way reads the same, a
base64url token that is a plain file name, a wait that is never negative.
"""

from __future__ import annotations

import email.utils
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import urllib3
from cryptography.hazmat.primitives import serialization
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from letskencrypt.acme import AcmeError, check_url, format_problem, parse_retry_after
from letskencrypt.certs import check_chain, parse_pem_chain
from letskencrypt.errors import CertificateRejected, InputError
from letskencrypt.options import check_contact
from letskencrypt.urls import origin
from letskencrypt.validate import (
    MAX_LABEL_LENGTH,
    MAX_NAME_LENGTH,
    MAX_TOKEN_LENGTH,
    safe_text,
    validate_domain,
    validate_key_authorization,
    validate_token,
)

from tests.certfactory import LEAF_KEY, NOW, make_pki, spki
from tests.certfactory import pem as to_pem

SETTINGS = settings(deadline=None)

# --- strategies ---------------------------------------------------------------------

# What a terminal acts on or hides: ESC and the introducers that follow it,
# BEL, BS, NUL, DEL, C1 (CSI, OSC, ST, NEL), line and paragraph separators,
# bidi overrides and isolates, zero-width characters, a BOM, lone surrogates.
HOSTILE_CHARACTERS = [
    "\x1b", "[", "]", "P", "X", "^", "_", "\\", ";", "0", "m", "\x07", "\x08", "\x00",
    "\x7f", "\x9b", "\x9c", "\x9d", "\x85", "\r", "\n", "\t", "\x0b", "\x0c",
    "\u2028", "\u2029", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066",
    "\u2067", "\u2068", "\u2069", "\u200b", "\u200e", "\u200f", "\u061c", "\ufeff",
    "\ud800", "\udfff", "\ufffd", "a", " ",
]  # fmt: skip
CHARACTERS = st.one_of(st.sampled_from(HOSTILE_CHARACTERS), st.characters(exclude_categories=()))
TEXT = st.text(alphabet=CHARACTERS, max_size=80)
LONG_TEXT = st.text(alphabet=CHARACTERS, min_size=200, max_size=3000)
ACME_TYPES = st.sampled_from(
    ["urn:ietf:params:acme:error:malformed", "urn:ietf:params:acme:error:", "", "about:blank"]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    TEXT,
    LONG_TEXT,
    ACME_TYPES.flatmap(lambda prefix: TEXT.map(lambda text: prefix + text)),
)
JSONISH = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(
            st.one_of(TEXT, st.sampled_from(["type", "detail"])), children, max_size=6
        )
    ),
    max_leaves=40,
)
IDENTIFIERS = st.fixed_dictionaries({}, optional={"type": JSONISH, "value": JSONISH}) | JSONISH
SUBPROBLEMS = st.fixed_dictionaries(
    {}, optional={"type": JSONISH, "detail": JSONISH, "identifier": IDENTIFIERS}
)
PROBLEMS = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(ACME_TYPES, JSONISH),
        "detail": st.one_of(LONG_TEXT, JSONISH),
        "subproblems": st.one_of(st.lists(SUBPROBLEMS | JSONISH, max_size=25), JSONISH),
    },
)
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def assert_terminal_safe(text: str) -> None:
    unsafe = [f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in UNSAFE_CATEGORIES]
    assert unsafe == [], (unsafe, text)


# --- acme.format_problem -------------------------------------------------------------


@SETTINGS
@given(st.one_of(PROBLEMS, JSONISH, st.binary(max_size=300)), st.integers(0, 999))
def test_format_problem_is_one_safe_bounded_line(problem: Any, status: int) -> None:
    line = format_problem(problem, status)
    assert isinstance(line, str) and line
    assert_terminal_safe(line)
    assert len(line) <= 2000
    if status:
        assert line.startswith(f"HTTP {status}: ")


SIMPLE_SUBPROBLEMS = st.fixed_dictionaries(
    {}, optional={"type": TEXT, "detail": TEXT, "identifier": st.just({"type": "dns"})}
)


@SETTINGS
@given(st.lists(SIMPLE_SUBPROBLEMS, min_size=11, max_size=40), st.integers(0, 1000))
def test_format_problem_shows_at_most_ten_subproblems(subproblems: list[Any], more: int) -> None:
    subproblems += [{}] * more
    line = format_problem({"type": "x", "subproblems": subproblems}, 400)
    assert line.endswith(f"(+{len(subproblems) - 10} more subproblems)") or line.endswith("…")


# --- validate.safe_text --------------------------------------------------------------


@SETTINGS
@given(st.one_of(TEXT, LONG_TEXT), st.integers(1, 400))
def test_safe_text_is_safe_bounded_and_idempotent(text: str, limit: int) -> None:
    shown = safe_text(text, limit)
    assert_terminal_safe(shown)
    assert "\t" not in shown
    assert len(shown) <= limit
    assert safe_text(shown, limit) == shown


@SETTINGS
@given(
    st.text(alphabet="0123456789;:<=>?", max_size=12),
    st.text(alphabet=" !\"#$%&'()*+,-./", max_size=3),
    st.characters(min_codepoint=0x40, max_codepoint=0x7E),
)
def test_safe_text_drops_whole_csi_sequences(params: str, inter: str, final: str) -> None:
    assert safe_text(f"a\x1b[{params}{inter}{final}b") == "a?b"


@SETTINGS
@given(
    st.sampled_from("]PX^_"),
    st.text(alphabet=st.characters(exclude_characters="\x07\x1b"), max_size=60),
    st.sampled_from(["\x07", "\x1b\\"]),
)
def test_safe_text_drops_whole_terminal_strings(kind: str, payload: str, end: str) -> None:
    # OSC 52 (clipboard), OSC 8 (hyperlinks), DCS, SOS, PM, APC.
    assert safe_text(f"a\x1b{kind}{payload}{end}b") == "a?b"


@SETTINGS
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200))
def test_safe_text_keeps_printable_ascii(text: str) -> None:
    assert safe_text(text, 201) == text


@pytest.mark.parametrize("limit", [0, -1])
def test_safe_text_needs_a_positive_limit(limit: int) -> None:
    with pytest.raises(ValueError):
        safe_text("x", limit)


# --- tokens and key authorizations ----------------------------------------------------

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
TOKENS = st.text(alphabet=B64URL, min_size=1, max_size=MAX_TOKEN_LENGTH)
TOKEN_LIKE = st.one_of(
    TEXT,
    TOKENS,
    TOKENS.map(lambda t: t + "\n"),
    st.text(alphabet=B64URL + "./%\\=+ \x00", max_size=300),
    st.sampled_from(["..", "../x", "..%2f", "/etc/passwd", ".", "a/b", "A" * 10240]),
    st.none(),
    st.integers(),
    st.binary(max_size=20),
    st.lists(st.text(max_size=3), max_size=3),
)


@SETTINGS
@given(TOKEN_LIKE)
@example("x\n")
def test_token_is_a_plain_file_name_or_rejected(token: Any) -> None:
    try:
        accepted = validate_token(token)
    except InputError as error:
        assert_terminal_safe(str(error))
        return
    assert accepted == token
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,256}", accepted)
    assert accepted not in (".", "..") and "/" not in accepted


@SETTINGS
@given(TOKENS)
def test_every_base64url_token_is_accepted(token: str) -> None:
    assert validate_token(token) == token


@SETTINGS
@given(TOKENS, st.text(alphabet=B64URL, min_size=43, max_size=43))
def test_key_authorization_of_token_and_thumbprint(token: str, thumbprint: str) -> None:
    key_authorization = f"{token}.{thumbprint}"
    assert validate_key_authorization(token, key_authorization) == key_authorization


@SETTINGS
@given(TOKEN_LIKE, st.one_of(TEXT, TOKENS, st.none(), st.integers()))
def test_key_authorization_shape_or_rejected(token: Any, key_authorization: Any) -> None:
    try:
        accepted = validate_key_authorization(token, key_authorization)
    except InputError as error:
        assert_terminal_safe(str(error))
        return
    assert accepted == key_authorization
    assert re.fullmatch(re.escape(token) + r"\.[A-Za-z0-9_-]{43}", accepted)


# --- domain names ----------------------------------------------------------------------

LABELS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
NAMES = st.lists(LABELS, min_size=1, max_size=4).flatmap(
    lambda labels: st.from_regex(r"[a-z][a-z0-9]{1,9}", fullmatch=True).map(
        lambda tld: ".".join([*labels, tld])
    )
)
NAME_LIKE = st.one_of(
    TEXT,
    NAMES,
    NAMES.map(str.upper),
    NAMES.map(lambda n: n + "."),
    st.text(alphabet="abc019-.*_[]:", max_size=80),
    st.lists(LABELS, min_size=1, max_size=8).map(".".join),
)


def assert_well_formed(name: str) -> None:
    assert name == name.lower() and not name.endswith(".")
    assert 0 < len(name) <= MAX_NAME_LENGTH
    labels = name.split(".")
    assert len(labels) >= 2 and not labels[-1].isdigit()
    for label in labels:
        assert 0 < len(label) <= MAX_LABEL_LENGTH
        assert re.fullmatch(r"[a-z0-9-]+", label)
        assert not label.startswith("-") and not label.endswith("-")


@SETTINGS
@given(NAME_LIKE)
def test_domain_is_well_formed_or_rejected(name: str) -> None:
    try:
        accepted = validate_domain(name)
    except InputError as error:
        assert_terminal_safe(str(error))
        return
    assert_well_formed(accepted)
    assert accepted == name.lower().removesuffix(".")
    assert validate_domain(accepted) == accepted  # round trip
    assert validate_domain(accepted.upper() + ".") == accepted


@SETTINGS
@given(NAMES)
def test_generated_names_are_accepted(name: str) -> None:
    assume(len(name) <= MAX_NAME_LENGTH and not name.split(".")[0].startswith("xn--"))
    assert validate_domain(name) == name


@SETTINGS
@given(NAMES, st.integers(0, 300), st.sampled_from([c for c in HOSTILE_CHARACTERS if c.isspace()
       or unicodedata.category(c) in UNSAFE_CATEGORIES]))  # fmt: skip
def test_any_control_character_is_rejected(name: str, where: int, control: str) -> None:
    where %= len(name) + 1
    with pytest.raises(InputError) as raised:
        validate_domain(name[:where] + control + name[where:])
    assert_terminal_safe(str(raised.value))


# --- certificate chains ----------------------------------------------------------------

PKI = make_pki()
NAMES_OF_LEAF = ["a.example.org", "b.example.org"]
LEAF = PKI.leaf(NAMES_OF_LEAF)
LEAF_DER = LEAF.public_bytes(serialization.Encoding.DER)
GOOD_CHAIN = to_pem(LEAF, PKI.intermediate, PKI.root)


def der_to_pem(der: bytes) -> bytes:
    import base64

    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode()


INTERMEDIATE_DER = PKI.intermediate.public_bytes(serialization.Encoding.DER)
MUTATIONS = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)


def mutate(der: bytes, changes: list[tuple[int, int]]) -> bytes:
    data = bytearray(der)
    for position, value in changes:
        data[position % len(data)] = value
    return bytes(data)


PEM_LIKE = st.one_of(
    st.binary(max_size=2000),
    st.text(alphabet="-BEGINDCRTFA \n\r\t=+/abc0123", max_size=400).map(str.encode),
    st.binary(max_size=600).map(der_to_pem),
    st.tuples(st.integers(0, len(GOOD_CHAIN)), st.binary(max_size=40)).map(
        lambda cut: GOOD_CHAIN[: cut[0]] + cut[1] + GOOD_CHAIN[cut[0] :]
    ),
    st.integers(0, len(GOOD_CHAIN)).map(lambda cut: GOOD_CHAIN[:cut]),
)


@SETTINGS
@given(PEM_LIKE)
@example(b"")
@example(GOOD_CHAIN + b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
def test_parse_pem_chain_rejects_only_with_certificate_rejected(data: bytes) -> None:
    try:
        chain = parse_pem_chain(data)
    except CertificateRejected as error:
        assert_terminal_safe(str(error))
        return
    assert 1 <= len(chain) <= 10
    assert data.count(b"-----BEGIN CERTIFICATE-----") == len(chain)


@settings(SETTINGS, max_examples=300)
@given(MUTATIONS, st.integers(0, 1 << 16), st.booleans())
@example([(12, 1)], 0, True)  # version 2: cryptography raises InvalidVersion, no ValueError
@example([(58, 0)], 0, True)  # a tag in the issuer name: fails only when the issuer is read
def test_mutated_certificates_are_rejected_cleanly(
    changes: list[tuple[int, int]], length: int, in_leaf: bool
) -> None:
    target = LEAF_DER if in_leaf else INTERMEDIATE_DER
    der = mutate(target, changes)
    if length:
        der = der[: length % len(der)]
    leaf, intermediate = (der, INTERMEDIATE_DER) if in_leaf else (LEAF_DER, der)
    data = der_to_pem(leaf) + der_to_pem(intermediate) + to_pem(PKI.root)
    try:
        chain = parse_pem_chain(data)
        check_chain(chain, spki(LEAF_KEY), NAMES_OF_LEAF, [PKI.root], now=NOW)
    except CertificateRejected as error:
        assert_terminal_safe(str(error))
        return
    # Accepted: then the leaf still is what it was where it matters.
    assert chain[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == spki(LEAF_KEY)
    chain[0].verify_directly_issued_by(chain[1])


def test_the_good_chain_is_accepted() -> None:
    check_chain(parse_pem_chain(GOOD_CHAIN), spki(LEAF_KEY), NAMES_OF_LEAF, [PKI.root], now=NOW)


# --- Retry-After ------------------------------------------------------------------------

HTTP_DATES = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
).map(lambda when: email.utils.format_datetime(when, usegmt=True))
RETRY_AFTER_LIKE = st.one_of(
    st.none(),
    TEXT,
    st.integers(0, 10**30).map(str),
    st.integers(0, 10**12).map(lambda n: "0" * 5 + str(n)),
    st.text(alphabet="0123456789", max_size=5000),
    HTTP_DATES,
    st.text(alphabet="MonTueFriJanDec ,:0123456789+-GMTUTC", max_size=40),
)


@SETTINGS
@given(RETRY_AFTER_LIKE)
@example("Fri, 31 Dec 9999 23:59:59 -2359")
@example("Mon, 01 Jan 0001 00:00:00 +2359")
@example("١٢٣")  # Arabic-Indic digits are digits, but not ASCII
def test_retry_after_is_never_negative(value: str | None) -> None:
    seconds = parse_retry_after(value)
    assert seconds is None or (seconds >= 0 and seconds == seconds and seconds < float("inf"))


@SETTINGS
@given(st.integers(0, 10**10), st.integers(0, 5))
def test_retry_after_seconds_are_exact(seconds: int, zeros: int) -> None:
    assert parse_retry_after("0" * zeros + str(seconds)) == seconds


@SETTINGS
@given(st.integers(10**10, 10**400))
def test_retry_after_beyond_the_cap_stays_large(seconds: int) -> None:
    assert parse_retry_after(str(seconds)) == 10**10


@SETTINGS
@given(st.integers(-(10**6), 10**9))
def test_retry_after_dates_count_from_now(offset: int) -> None:
    now = datetime(2026, 11, 26, 18, 0, 0, tzinfo=UTC)
    header = email.utils.format_datetime(now + timedelta(seconds=offset), usegmt=True)
    assert parse_retry_after(header, now=now) == max(0, offset)


# --- URLs the CA hands out ---------------------------------------------------------------

BASE = "https://127.0.0.1:14000/dir"
URL_PIECES = st.sampled_from(
    [
        "https://", "http://", "HTTPS://", "//", "https:", "127.0.0.1", "127.0.0.2", "localhost",
        "evil.example", ":14000", ":443", ":0", ":014000", ":", "@", "/", "\\", "?", "#",
        "%2e", "%40", "%2f", "[", "]", "::1", ".", "a", "0x7f.1", "%00", " ", "\t", ";", "&",
        "=", "~", "%", "14000", "user:pw@", "\u3002", "\uff0e", "\x00", "\r\n",
    ]
)  # fmt: skip
URL_LIKE = st.one_of(
    st.lists(URL_PIECES, max_size=14).map("".join),
    st.lists(URL_PIECES, max_size=10).map(lambda parts: "https://127.0.0.1:14000" + "".join(parts)),
    TEXT,
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
)


def connection_target(url: str) -> tuple[str, str | None, int]:
    """Where requests and urllib3, as the Transport uses them, would connect."""
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, None)
    parsed = urllib3.util.parse_url(prepared.url or "")
    return parsed.scheme or "", parsed.host, parsed.port or 443


@SETTINGS
@given(URL_LIKE)
@example("https://127.0.0.1:14000\\@127.0.0.2/x")
@example("https://127.0.0.1:14000#@127.0.0.2/x")
@example("https://127.0.0.1:14000?@127.0.0.2/x")
@example("https://127.0.0.1:014000/x")
def test_accepted_urls_lead_to_the_ca_and_nowhere_else(url: str) -> None:
    try:
        accepted = check_url(url, BASE, "test")
    except AcmeError as error:
        assert_terminal_safe(str(error))
        return
    assert accepted == url
    assert origin(url) == origin(BASE)
    assert connection_target(url) == ("https", "127.0.0.1", 14000)
    assert urllib3.util.parse_url(url).host == "127.0.0.1"


@SETTINGS
@given(URL_LIKE)
def test_origin_is_https_host_port_or_input_error(url: str) -> None:
    try:
        scheme, host, port = origin(url)
    except InputError:
        return
    assert scheme == "https"
    assert host and host == host.lower()
    assert 0 <= port <= 65535
    assert urlsplit(url).scheme.lower() == "https"


@SETTINGS
@given(st.one_of(TEXT, st.emails(), st.emails().map(lambda e: "mailto:" + e), URL_LIKE))
def test_contact_is_a_printable_mailto_or_https_uri(contact: str) -> None:
    try:
        accepted = check_contact(contact)
    except InputError as error:
        assert_terminal_safe(str(error))
        return
    assert accepted.startswith(("mailto:", "https:"))
    assert len(accepted) <= 320
    assert accepted.isascii() and accepted.isprintable() and " " not in accepted
    assert check_contact(accepted) == accepted


@SETTINGS
@given(st.emails())
def test_plain_addresses_become_mailto(address: str) -> None:
    assume(len(address) <= 313 and ":" not in address)
    assert check_contact(address) == f"mailto:{address}"
