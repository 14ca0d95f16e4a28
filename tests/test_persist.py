"""dns-persist-01's record (letskencrypt/persist.py), built and read; the
CA's issuer domain names and caaIdentities, parsed; dnsproc's read-only TXT
lookup against a real server (tests/dnsserver.py) holding hostile records;
and the command line's --dns-check-server and persist-record output."""

from collections.abc import Iterator
from datetime import UTC, datetime

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import pytest
from hypothesis import given
from hypothesis import strategies as st
from letskencrypt import cli, dnsquery, options, persist
from letskencrypt.acme.messages import AcmeError, Authorization, Directory
from letskencrypt.errors import InputError
from letskencrypt.roles import dnsproc

from tests.dnsserver import AuthoritativeDns

ISSUER = "ca.example"
ACCOUNT = "https://ca.example/acct/123"
NOW = 1_800_000_000


# --- building ---------------------------------------------------------------------


def test_the_record_of_a_name() -> None:
    value = persist.issue_value(ISSUER, ACCOUNT)
    assert value == "ca.example; accounturi=https://ca.example/acct/123"
    assert persist.zone_line("www.example.org", value) == (
        '_validation-persist.www.example.org. IN TXT '
        '"ca.example; accounturi=https://ca.example/acct/123"'
    )


def test_wildcard_and_persist_until() -> None:
    value = persist.issue_value(ISSUER, ACCOUNT, wildcard=True, persist_until=1767225600)
    assert value.endswith("; policy=wildcard; persistUntil=1767225600")
    # A wildcard's record is at the name below it, and says policy=wildcard.
    assert persist.expected_line("*.example.org", ISSUER, ACCOUNT) == (
        '_validation-persist.example.org. IN TXT '
        '"ca.example; accounturi=https://ca.example/acct/123; policy=wildcard"'
    )


def test_a_long_value_is_split_into_character_strings() -> None:
    account = "https://ca.example/acct/" + "7" * 400
    line = persist.zone_line("example.org", persist.issue_value(ISSUER, account))
    strings = line.split(" IN TXT ", 1)[1]
    parts = [part.strip('"') for part in strings.split('" "')]
    assert len(parts) == 2 and len(parts[0]) == 255
    assert "".join(parts) == persist.issue_value(ISSUER, account)


@pytest.mark.parametrize("account", [
    "http://ca.example/acct/1",  # not https
    "https://ca.example/acct/1;policy=wildcard",  # would add a parameter
    'https://ca.example/acct/"1',  # would end the zone file's string
    "https://ca.example/acct/\\1",
    "https://ca.example/acct/ 1",
    "https://ca.example/acct/\n1",
    "https://ca.example/acct/é",
    "https://ca.example/" + "a" * 1100,
    "",
])
def test_an_account_url_a_record_cannot_carry_is_refused(account: str) -> None:
    with pytest.raises(InputError, match="cannot go in a dns-persist-01 record"):
        persist.issue_value(ISSUER, account)


def test_persist_until_is_a_future_date_or_time() -> None:
    now = datetime(2026, 11, 30, tzinfo=UTC)
    assert persist.parse_persist_until("2027-01-01", now) == 1798761600
    assert persist.parse_persist_until("2027-01-01T01:00:00+01:00", now) == 1798761600
    with pytest.raises(InputError, match="not in the future"):
        persist.parse_persist_until("2026-01-01", now)
    with pytest.raises(InputError, match="give a date"):
        persist.parse_persist_until("next year", now)


# --- the CA's issuer domain names ---------------------------------------------------


@pytest.mark.parametrize("names", [
    [], [ISSUER] * 11, "ca.example", None, [1], ["CA.example"], ["ca.example."],
    ["ca..example"], ["-ca.example"], ["ca_example.org"], ["a" * 254], ["ca.exämple"],
    ["ca.example\x1b[2J"],
])
def test_malformed_issuer_domain_names_are_refused(names: object) -> None:
    with pytest.raises(InputError):
        persist.check_issuer_names(names)


def test_a_challenge_of_the_run_type_is_parsed_and_a_malformed_one_refused() -> None:
    base = "https://ca.example/dir"
    document = {
        "status": "pending",
        "identifier": {"type": "dns", "value": "example.org"},
        "challenges": [
            {"type": "http-01", "url": f"{base}/c/1", "status": "pending", "token": "t" * 43},
            {"type": "dns-persist-01", "url": f"{base}/c/2", "status": "pending",
             "issuer-domain-names": [ISSUER, "ca.example.net"]},
        ],
    }  # fmt: skip
    authz = Authorization.from_json(f"{base}/a/1", document, base, "dns-persist-01")
    assert authz.challenge is not None
    assert authz.challenge.issuer_names == (ISSUER, "ca.example.net")
    assert authz.challenge.url == f"{base}/c/2"
    assert Authorization.from_json(f"{base}/a/1", document, base).challenge.token == "t" * 43
    document["challenges"][1]["issuer-domain-names"] = [f"n{i}.example" for i in range(11)]
    with pytest.raises(AcmeError, match="unusable dns-persist-01 challenge: issuer-domain"):
        Authorization.from_json(f"{base}/a/1", document, base, "dns-persist-01")
    # An http-01 run does not care what the other challenge says.
    assert Authorization.from_json(f"{base}/a/1", document, base).challenge is not None


def test_the_directory_caa_identities() -> None:
    base = "https://ca.example/dir"
    urls = {key: f"{base}/{key}" for key in ("newNonce", "newAccount", "newOrder")}
    assert Directory.from_json({**urls, "meta": {"caaIdentities": [ISSUER]}},
                               base).caa_identities == (ISSUER,)  # fmt: skip
    for bad in (None, [], ["CA.EXAMPLE"], "ca.example", [ISSUER] * 11):
        assert Directory.from_json({**urls, "meta": {"caaIdentities": bad}},
                                   base).caa_identities == ()  # fmt: skip


# --- reading ------------------------------------------------------------------------


def test_parse_an_issue_value() -> None:
    value = persist.parse_issue_value(
        " CA.Example ;AccountURI = https://ca.example/acct/123 ; POLICY=Wildcard;"
        "persistuntil=1767225600; future=thing"
    )
    assert value == persist.IssueValue(ISSUER, ACCOUNT, True, 1767225600)
    other = persist.parse_issue_value(f"{ISSUER};accounturi={ACCOUNT};policy=other")
    assert other.wildcard is False


@pytest.mark.parametrize(("text", "why"), [
    ("", "no issuer domain name"),
    ("; accounturi=x", "no issuer domain name"),
    ("ca example; accounturi=x", "no issuer domain name"),
    ("ca.example", "no accounturi"),
    ("ca.example; policy=wildcard", "no accounturi"),
    ("ca.example; accounturi=", "no accounturi"),
    ("ca.example; accounturi=a; accounturi=b", "given twice"),
    ("ca.example; accounturi=a; ACCOUNTURI=a", "given twice"),
    ("ca.example; accounturi=a;", "malformed parameter"),
    ("ca.example; accounturi", "malformed parameter"),
    ("ca.example; =x; accounturi=a", "malformed parameter"),
    ("ca.example; accounturi=a; policy=wild card", "malformed value"),
    ("ca.example; accounturi=a\x00", "malformed value"),
    ("ca.example; accounturi=a; persistUntil=soon", "not a UNIX time"),
    ("ca.example; accounturi=a; persistUntil=-1", "not a UNIX time"),
    ("ca.example; accounturi=" + "a" * 600, "longer than 512"),
])
def test_malformed_values_are_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        persist.parse_issue_value(text)


@given(st.text(max_size=600))
def test_any_text_parses_or_is_refused_in_a_few_words(text: str) -> None:
    try:
        value = persist.parse_issue_value(text)
    except ValueError as error:
        assert "\n" not in str(error) and len(str(error)) < 100
    else:
        assert value.account_uri and persist.ISSUER_NAME.fullmatch(value.issuer)


GOOD = f"{ISSUER}; accounturi={ACCOUNT}"


def problem(values: list[str], wildcard: bool = False) -> str | None:
    return persist.problem(values, (ISSUER, "ca.example.net"), ACCOUNT, wildcard, NOW)


def test_one_good_record_among_many_is_enough() -> None:
    assert problem([GOOD]) is None
    assert problem(["junk", "other.example; accounturi=x", "x" * 512, GOOD]) is None
    assert problem([f"ca.example.net; accounturi={ACCOUNT}"]) is None
    assert problem([f"{GOOD}; policy=wildcard"], wildcard=True) is None
    assert problem([f"{GOOD}; persistUntil={NOW}"]) is None


def test_what_is_wrong_is_said() -> None:
    assert problem([]) == "there is no TXT record"
    assert problem([f"{ISSUER}; accounturi=https://ca.example/acct/9"]) == (
        "the record for ca.example names another account (https://ca.example/acct/9)"
    )
    assert problem(["other.example; accounturi=x", "b.example; accounturi=y"]) == (
        "its records name other CAs (b.example, other.example), not ca.example"
    )
    assert problem([GOOD], wildcard=True) == "the record for ca.example has no policy=wildcard"
    assert problem([f"{GOOD}; persistUntil={NOW - 1}"]) == (
        "the record for ca.example ended at persistUntil 2027-01-15T07:59:59Z"
    )
    assert problem([f"{GOOD}; accounturi=again"]) == (
        "a record is malformed (accounturi given twice)"
    )
    # The closest record is named, not the first malformed one.
    assert problem(["junk", f"{ISSUER}; accounturi=https://x.example/1"]).startswith(
        "the record for ca.example names another account"
    )
    # A hostile value is shown terminal-safe and bounded.
    said = problem([f"{ISSUER}; accounturi=https://x/\x1b]0;pwned\x07" + "z" * 400])
    assert "\x1b" not in said and "\x07" not in said and len(said) < 300


def test_only_the_first_values_are_read() -> None:
    assert problem(["junk"] * persist.MAX_TXT_VALUES + [GOOD]) is not None


# --- dnsproc's lookup, against a real server ----------------------------------------


@pytest.fixture(scope="module")
def named() -> Iterator[AuthoritativeDns]:
    with AuthoritativeDns(zones=("example.test",)) as server:
        yield server


def add_strings(named: AuthoritativeDns, name: str, strings: list[bytes]) -> None:
    update = named.update_message(name)
    record = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings)
    update.add(dns.name.from_text(name), 60, record)
    named._check(update, f"add TXT at {name}")


def test_dnsproc_reads_every_record_bounded(named: AuthoritativeDns) -> None:
    name = "_validation-persist.web.example.test"
    add_strings(named, name, [GOOD[:10].encode(), GOOD[10:].encode()])  # two strings, one value
    add_strings(named, name, [b"x" * 255, b"y" * 255, b"z" * 10])  # 520 bytes: left out
    add_strings(named, name, [b"\xff\xfe not ascii"])
    values = dnsquery.lookup_txt(name + ".", named.address, named.port)
    assert sorted(values) == sorted([GOOD, "\ufffd\ufffd not ascii"])
    # More records than it hands on: the first MAX_TXT_VALUES in the server's
    # order (BIND's varies), each bounded.
    for i in range(40):
        add_strings(named, name, [f"other{i:02}.example; accounturi=x".encode()])
    values = dnsquery.lookup_txt(name + ".", named.address, named.port)
    assert len(values) == persist.MAX_TXT_VALUES
    assert all(len(value.encode()) <= persist.MAX_TXT_VALUE for value in values)
    assert not any(value.startswith("xxx") for value in values)
    assert all(value.isprintable() for value in values)


def test_dnsproc_says_none_for_a_name_without_records(named: AuthoritativeDns) -> None:
    assert dnsquery.lookup_txt("_validation-persist.www.example.test.", named.address,
                              named.port) == []  # fmt: skip
    assert dnsquery.lookup_txt("_validation-persist.nowhere.example.test.", named.address,
                              named.port) == []  # fmt: skip


def test_dnsproc_reports_a_refusal_in_one_line(named: AuthoritativeDns) -> None:
    # Not one of the server's zones, and it does not recurse.
    with pytest.raises(InputError, match="REFUSED") as info:
        dnsquery.lookup_txt("_validation-persist.example.org.", named.address, named.port)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", [
    "", "example", "a..example.test", "a b.example.test", "é.example.test",
    "a" * 64 + ".example.test", ("a" * 60 + ".") * 5 + "test", "x.example.test\x00",
])
def test_dnsproc_refuses_a_name_that_is_no_name(name: str) -> None:
    with pytest.raises(InputError, match="invalid TXT record name"):
        dnsproc.check_txt_name(name)


def test_dnsproc_asks_only_an_address() -> None:
    assert dnsproc.check_server("127.0.0.1", 0) == ("127.0.0.1", 53)
    assert dnsproc.check_server("::1", 5353) == ("::1", 5353)
    with pytest.raises(InputError, match="not an IP address"):
        dnsproc.check_server("ns1.example.test", 53)


# --- the command line ---------------------------------------------------------------


@pytest.mark.parametrize(("texts", "expected"), [
    ([], ()),
    (["127.0.0.1"], ("127.0.0.1:53",)),
    (["127.0.0.1:5353", "127.0.0.1:5353", "::1"], ("127.0.0.1:5353", "[::1]:53")),
    (["[::1]:5353"], ("[::1]:5353",)),
    (["[::1]"], ("[::1]:53",)),
])
def test_dns_check_servers(texts: list[str], expected: tuple[str, ...]) -> None:
    assert options.check_dns_servers(texts) == expected


@pytest.mark.parametrize("text", [
    "ns1.example.test", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:x", "[::1]x",
    "::1:53:", "", "127.0.0.1:", "[fe80::1%eth0]:53",
])
def test_a_bad_dns_check_server_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(InputError, match="--dns-check-server"):
        options.check_dns_servers([text])


def test_at_most_eight_dns_check_servers() -> None:
    with pytest.raises(InputError, match="at most 8 --dns-check-server"):
        options.check_dns_servers([f"127.0.0.{i}" for i in range(1, 10)])


def test_persist_records_one_per_name_wildcards_folded() -> None:
    report = {"account": ACCOUNT, "issuers": [ISSUER, "ca.example.net"]}
    lines = cli.persist_records(report, ("a.example.org", "*.a.example.org", "b.example.org"),
                                False, None)  # fmt: skip
    assert lines == [
        '_validation-persist.a.example.org. IN TXT '
        '"ca.example; accounturi=https://ca.example/acct/123; policy=wildcard"',
        '_validation-persist.b.example.org. IN TXT '
        '"ca.example; accounturi=https://ca.example/acct/123"',
    ]
    assert cli.persist_records(report, ("b.example.org",), True, 1767225600) == [
        '_validation-persist.b.example.org. IN TXT '
        '"ca.example; accounturi=https://ca.example/acct/123; policy=wildcard; '
        'persistUntil=1767225600"'
    ]


@pytest.mark.parametrize("report", [
    None, {}, {"account": ACCOUNT}, {"account": ACCOUNT, "issuers": []},
    {"account": ACCOUNT, "issuers": ["CA.EXAMPLE"]},
    {"account": "https://x/;policy=wildcard", "issuers": [ISSUER]},
    {"account": 1, "issuers": [ISSUER]},
])
def test_a_report_netproc_could_fake_is_checked_for_form(report: object) -> None:
    with pytest.raises(InputError):
        cli.persist_records(report, ("a.example.org",), False, None)


@pytest.mark.parametrize(("argv", "said"), [
    (["--wildcard", "a.example.org"], "--wildcard and --persist-until go with persist-record"),
    (["--persist-until", "2099-01-01", "a.example.org"], "go with persist-record"),
    (["--dns-check-server", "127.0.0.1", "a.example.org"],
     "--dns-check-server goes with --challenge dns-01 or dns-persist-01"),
    (["--challenge", "dns-persist-01", "192.0.2.1"],
     "192.0.2.1: dns-persist-01 validates domain names, not IP addresses"),
    (["*.a.example.org"], "a wildcard name needs --challenge dns-01 or dns-persist-01"),
])
def test_the_command_line_refuses_in_one_line(argv: list[str], said: str) -> None:
    args = options.build_parser().parse_args(["--server", "https://ca.test/dir", "--trust-anchors",
                                          "/nonexistent", *argv])  # fmt: skip
    with pytest.raises(InputError, match=said.replace("*", r"\*")):
        options.role_settings(args, trust_anchors=False)
