import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st
from letskencrypt.errors import InputError, LetskencryptError
from letskencrypt.validate import (
    DNS,
    IP,
    identifier_type,
    safe_text,
    validate_domain,
    validate_domains,
    validate_ip,
    validate_key_authorization,
    validate_name,
    validate_names,
    validate_token,
)

THUMB = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
DOMAIN_RE = re.compile(
    r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
)


# --- domains ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_name", "expected"),
    [
        ("example.com", "example.com"),
        ("Example.COM.", "example.com"),
        ("a-b.c0.example.org", "a-b.c0.example.org"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("1.2.3.com", "1.2.3.com"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ],
)
def test_valid_domains(given_name, expected):
    assert validate_domain(given_name) == expected


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "empty name"),
        (".", "empty label"),
        ("a..b", "empty label"),
        (".example.com", "empty label"),
        ("example.com..", "empty label"),
        ("localhost", "at least two labels"),
        ("a" * 64 + ".com", "longer than 63"),
        (".".join(["abcdefghi"] * 26), "longer than 253"),
        ("-a.com", "starts or ends with '-'"),
        ("a-.com", "starts or ends with '-'"),
        ("a_b.com", "invalid character '_'"),
        ("a b.com", "invalid character ' '"),
        ("a/b.com", "invalid character '/'"),
        ("*.example.com", "wildcard"),
        ("a.*.example.com", "wildcard"),
        ("192.0.2.1", "IP addresses"),
        ("::1", "IP addresses"),
        ("[2001:db8::1]", "IP addresses"),
        ("1.2.3.999", "all-numeric"),
        ("example.123", "all-numeric"),
        ("bücher.example", "non-ASCII"),
        ("xn--zz-zz-zz.example", "punycode"),
        ("a\x1b[31m.com", "invalid character"),
    ],
)
def test_invalid_domains(bad, reason):
    with pytest.raises(InputError, match=re.escape(reason)) as info:
        validate_domain(bad)
    message = str(info.value)
    assert message.startswith("invalid domain name ")
    assert "\x1b" not in message and "\n" not in message


def test_domain_error_message_format():
    with pytest.raises(InputError) as info:
        validate_domain("a..b")
    assert str(info.value) == "invalid domain name 'a..b': empty label"


def test_domain_must_be_str():
    with pytest.raises(InputError, match="must be a string"):
        validate_domain(b"example.com")  # type: ignore[arg-type]


def test_total_length_limit():
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253
    assert validate_domain(name) == name
    assert validate_domain(name + ".") == name
    with pytest.raises(InputError, match="longer than 253"):
        validate_domain("c" + name)


def test_validate_domains_keeps_order_and_normalises():
    assert validate_domains(["B.example.", "a.example", "c.example"]) == [
        "b.example",
        "a.example",
        "c.example",
    ]


def test_validate_domains_rejects_duplicates_after_normalisation():
    with pytest.raises(InputError, match=r"duplicate domain name 'a\.example'"):
        validate_domains(["a.example", "A.Example."])


def test_validate_domains_limits():
    names = [f"n{i}.example" for i in range(100)]
    assert validate_domains(names) == names
    with pytest.raises(InputError, match="too many domain names: 101"):
        validate_domains([*names, "x.example"])
    with pytest.raises(InputError, match="no domain names"):
        validate_domains([])
    with pytest.raises(InputError, match="empty label"):
        validate_domains(["ok.example", "bad..example"])


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True).filter(
    lambda s: s[2:4] != "--"
)


@given(st.lists(_label, min_size=1, max_size=5), st.from_regex(r"[a-z]{2,10}", fullmatch=True))
def test_generated_valid_names_round_trip(labels, tld):
    name = ".".join([*labels, tld])
    assert validate_domain(name) == name
    assert validate_domain(name.upper() + ".") == name


@given(st.text(max_size=80))
def test_any_text_is_rejected_cleanly_or_well_formed(text):
    try:
        result = validate_domain(text)
    except InputError as error:
        assert "\n" not in str(error)
        return
    assert DOMAIN_RE.fullmatch(result)
    assert not result.split(".")[-1].isdigit()
    assert validate_domain(result) == result


# --- IP addresses (RFC 8738) ------------------------------------------------


@pytest.mark.parametrize(
    ("given_address", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("192.0.2.10", "192.0.2.10"),
        ("10.1.2.3", "10.1.2.3"),
        ("169.254.1.1", "169.254.1.1"),
        ("::1", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        # RFC 5952: lower case, no leading zeros, the longest run of zeros as
        # "::" (the first of two as long), never "::" for one group.
        ("2001:DB8::A", "2001:db8::a"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
        ("fd00::1", "fd00::1"),
        ("64:ff9b::192.0.2.1", "64:ff9b::c000:201"),
    ],
)
def test_valid_addresses_are_canonical(given_address, expected):
    assert validate_ip(given_address) == expected
    assert validate_name(given_address) == expected
    assert identifier_type(expected) == IP
    assert validate_ip(expected) == expected


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("fe80::1%eth0", "a zone id"),
        ("2001:db8::1%1", "a zone id"),
        ("010.0.0.1", "without leading zeros"),
        ("127.1", "four decimal numbers"),
        ("1.2.3", "four decimal numbers"),
        ("1.2.3.256", "four decimal numbers"),
        ("1.2.3.4.", "four decimal numbers"),
        ("::ffff:192.0.2.1", "IPv4-mapped address; give the IPv4 address 192.0.2.1"),
        ("::ffff:c000:201", "IPv4-mapped address; give the IPv4 address 192.0.2.1"),
        ("192.0.2.0/24", "a prefix is no address"),
        ("2001:db8::/32", "a prefix is no address"),
        ("[::1]", "without brackets"),
        ("[::1", "without brackets"),
        ("2001:db8::1::2", "not an IPv6 address"),
        ("example.org:443", "not an IPv6 address"),
        ("0.0.0.0", "the unspecified address"),
        ("::", "the unspecified address"),
        ("255.255.255.255", "the broadcast address"),
        ("224.0.0.1", "a multicast address"),
        ("239.255.255.250", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("fe80::1", "a link-local address"),
        ("127.0.0.1\x1b[31m", "invalid domain name"),
    ],
)
def test_invalid_addresses(bad, reason):
    with pytest.raises(InputError, match=re.escape(reason)) as info:
        validate_name(bad)
    message = str(info.value)
    assert message.count("\n") == 0 and "\x1b" not in message


def test_a_wildcard_covers_no_address():
    for name in ("*.192.0.2.1", "*.::1", "*.2001:db8::1"):
        with pytest.raises(InputError, match="a wildcard cannot cover an IP address"):
            validate_name(name)


def test_identifier_type_tells_names_from_addresses():
    assert [identifier_type(n) for n in ("a.example", "1.2.3.com", "127.0.0.1", "::1")] == [
        DNS, DNS, IP, IP,
    ]  # fmt: skip
    # What no validated name is (a certificate's DNS name that reads as an
    # address, say) is still told by its text.
    assert identifier_type("DNS:127.0.0.1") == DNS


def test_validate_names_mixes_domains_and_addresses_in_order():
    assert validate_names(["Www.Example.", "0:0::1", "192.0.2.1", "a.example"]) == [
        "www.example", "::1", "192.0.2.1", "a.example",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["::1", "0:0::1"], "duplicate IP address '::1'"),
        (["a.example", "2001:DB8::1", "2001:db8:0::1"], "duplicate IP address '2001:db8::1'"),
        (["a.example", "A.example."], "duplicate domain name 'a.example'"),
        ([], "no domain names given"),
        ([f"10.0.0.{i}" for i in range(101)], "too many names: 101 (at most 100)"),
        (["a.example", "010.1.1.1"], "invalid IP address '010.1.1.1'"),
    ],
)
def test_validate_names_refuses(names, message):
    with pytest.raises(InputError, match=re.escape(message)):
        validate_names(names)


@given(st.ip_addresses())
def test_any_address_is_refused_cleanly_or_canonical(address):
    try:
        canonical = validate_name(str(address).upper())
    except InputError as error:
        assert "\n" not in str(error)
        return
    assert canonical == str(address)
    assert validate_name(canonical) == canonical
    assert identifier_type(canonical) == IP


# --- tokens ----------------------------------------------------------------


def test_token_accepts_base64url():
    token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
    assert validate_token(token) == token
    assert validate_token("a" * 256) == "a" * 256


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "empty"),
        ("a" * 257, "257 characters"),
        ("abc=", "only [A-Za-z0-9_-]"),
        ("a+b", "only"),
        ("a/b", "only"),
        ("../etc/passwd", "only"),
        ("abc\n", "only"),
        ("ab c", "only"),
        ("ä", "only"),
    ],
)
def test_token_rejects(bad, reason):
    with pytest.raises(InputError, match=re.escape(reason)):
        validate_token(bad)


@given(st.text(max_size=300))
def test_token_property(text):
    try:
        assert validate_token(text) == text
    except InputError:
        assert not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", text)
    else:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,256}", text)


def test_key_authorization():
    assert validate_key_authorization("tok", f"tok.{THUMB}") == f"tok.{THUMB}"
    for bad in [
        f"other.{THUMB}",
        f"tok{THUMB}",
        "tok.",
        f"tok.{THUMB}x",
        f"tok.{THUMB[:-1]}=",
        f"tok.{THUMB}\n",
        f"tok..{THUMB[1:]}",
    ]:
        with pytest.raises(InputError, match="key authorization"):
            validate_key_authorization("tok", bad)
    with pytest.raises(InputError, match="challenge token"):
        validate_key_authorization("bad token", f"bad token.{THUMB}")


# --- safe_text ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("plain text", "plain text"),
        ("line1\nline2\r\n\nline3", "line1 line2 line3"),
        ("red \x1b[31mALERT\x1b[0m", "red ?ALERT?"),
        ("title \x1b]0;pwned\x07 done", "title ? done"),
        ("link \x1b]8;;http://evil\x1b\\text", "link ?text"),
        ("unterminated \x1b]0;rest", "unterminated ?0;rest"),
        ("bell\x07 nul\x00 del\x7f c1\x9b", "bell? nul? del? c1?"),
        ("bidi \u202egnp.exe", "bidi ?gnp.exe"),
        ("zero\u200bwidth", "zero?width"),
        ("tab\there", "tab here"),
        ("sep\u2028x", "sep x"),
        ("lone \ud800 surrogate", "lone ? surrogate"),
    ],
)
def test_safe_text(raw, expected):
    assert safe_text(raw) == expected


def test_safe_text_truncates():
    assert safe_text("a" * 10, 5) == "aaaa…"
    assert safe_text("a" * 5, 5) == "aaaaa"
    assert len(safe_text("x" * 10000)) == 500


@given(st.text(), st.integers(min_value=1, max_value=600))
def test_safe_text_property(text, limit):
    result = safe_text(text, limit)
    assert len(result) <= limit
    assert "\n" not in result and "\r" not in result
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Cs") for c in result)
    result.encode("utf-8")  # no lone surrogates survive


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=100))
def test_safe_text_keeps_printable_ascii(text):
    assert safe_text(text) == text


def test_errors_share_a_base():
    assert issubclass(InputError, LetskencryptError)


def test_safe_text_treats_ascii_as_the_unicode_categories_do() -> None:
    """The ASCII fast path replaces exactly what the per-character one would."""
    from letskencrypt import validate

    for code in range(0x80):
        char = chr(code)
        unsafe = unicodedata.category(char) in validate._UNSAFE_CATEGORIES
        assert validate._replace_unsafe(f"a{char}b") == ("a?b" if unsafe else f"a{char}b")
    assert validate._replace_unsafe("é\u202eb\x1b") == "é?b?"
