"""dns-01's parts: the TSIG key file parser (hostile input), the update
messages chngproc signs and the answers it accepts (against the real named
of tests/dnsserver.py), netproc's propagation wait, dnsproc's TXT and zone
look-ups, the command line's checks."""

import base64
import hashlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdatatype
import dns.resolver
import dns.update
import pytest
from letskencrypt import dnsquery, dnsupdate
from letskencrypt.b64 import b64url
from letskencrypt.errors import InputError
from letskencrypt.roles import dnsproc
from letskencrypt.roles.netproc import FIRST_CHECK_WAIT, MAX_CHECK_WAIT, wait_until_served
from letskencrypt.validate import parse_dns_server, validate_name

from tests.dnsserver import AuthoritativeDns

SECRET = base64.b64encode(bytes(range(32))).decode()
KEY = f'key "letskencrypt-test" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n'
OWNER = "_acme-challenge.web.example.test"


@pytest.fixture(scope="module")
def named() -> Iterator[AuthoritativeDns]:
    with AuthoritativeDns() as server:
        yield server


# --- the key file -------------------------------------------------------------------


def test_tsig_keygens_output_is_read(named: AuthoritativeDns) -> None:
    key = dnsupdate.read_tsig_key(named.tsig_key_file)
    assert (key.name, key.algorithm) == ("letskencrypt-test.", "hmac-sha256")
    assert key.secret == base64.b64decode(named.tsig_secret)
    assert named.tsig_secret not in repr(key)


@pytest.mark.parametrize("text", [
    KEY,
    KEY.replace("\n", " ").replace("\t", ""),
    KEY.replace("hmac-sha256", "HMAC-SHA512"),
    KEY.replace("hmac-sha256", '"hmac-sha384"'),
    KEY.replace('"letskencrypt-test"', '"update.example.test."'),
])
def test_good_key_statements(text: str) -> None:
    assert dnsupdate.parse_tsig_key(text, "k").secret == bytes(range(32))


@pytest.mark.parametrize(("text", "reason"), [
    ("", "not one BIND key statement"),
    (KEY + KEY, "not one BIND key statement"),
    (KEY.replace("};\n", "}\n"), "not one BIND key statement"),
    ("# a comment\n" + KEY, "not one BIND key statement"),
    (KEY.replace("key ", "server "), "not one BIND key statement"),
    (KEY.replace('"letskencrypt-test"', "letskencrypt-test"), "not one BIND key statement"),
    (KEY.replace('"letskencrypt-test"', '"a b"'), "the key name is not a domain name"),
    (KEY.replace('"letskencrypt-test"', '""'), "the key name is not a domain name"),
    (KEY.replace("hmac-sha256", "hmac-md5"), "algorithm 'hmac-md5' is not one of hmac-sha256"),
    (KEY.replace("hmac-sha256", "hmac-sha1"), "algorithm 'hmac-sha1' is not one of"),
    (KEY.replace("\talgorithm hmac-sha256;\n", ""), "the key has no algorithm"),
    (KEY.replace(f'\tsecret "{SECRET}";\n', ""), "the key has no secret"),
    (KEY.replace("algorithm hmac-sha256;", "algorithm hmac-sha256; algorithm hmac-sha256;"),
     "algorithm given twice"),
    (KEY.replace("algorithm", "owner"), "unknown clause 'owner'"),
    (KEY.replace(f'"{SECRET}"', SECRET), "the secret must be quoted base64"),
    (KEY.replace(SECRET, SECRET[:-2]), "the secret is not base64"),
    (KEY.replace(SECRET, "!" * 44), "the secret is not base64"),
    (KEY.replace(SECRET, base64.b64encode(b"short").decode()), "the secret is 5 bytes"),
    (KEY.replace(SECRET, base64.b64encode(bytes(600)).decode()), "the secret is 600 bytes"),
    (KEY.replace("algorithm hmac-sha256;", "algorithm hmac-sha256"), "expected 'algorithm"),
    (KEY.replace('key "', 'key "\x1b[31m'), "the key name is not a domain name"),
])
def test_hostile_key_files_fail_in_one_line_without_the_secret(text: str, reason: str) -> None:
    with pytest.raises(InputError) as info:
        dnsupdate.parse_tsig_key(text, "TSIG key /k")
    message = str(info.value)
    assert message.startswith("TSIG key /k: ")
    assert reason in message
    assert SECRET not in message and SECRET[:8] not in message
    assert "\n" not in message and "\x1b" not in message


def test_a_key_file_that_is_not_a_key(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_text(KEY + " " * 5000)
    with pytest.raises(InputError, match="larger than 4096 bytes, not a key"):
        dnsupdate.read_tsig_key(str(big))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff" + KEY.encode())
    with pytest.raises(InputError, match="not ASCII text"):
        dnsupdate.read_tsig_key(str(binary))
    with pytest.raises(InputError, match="not a regular file"):
        dnsupdate.read_tsig_key(str(tmp_path))
    with pytest.raises(InputError, match="No such file"):
        dnsupdate.read_tsig_key(str(tmp_path / "missing"))


# --- the updates ---------------------------------------------------------------------


def test_the_txt_value_is_rfc_8555s() -> None:
    """Section 8.4: base64url of the SHA-256 of the key authorisation, no padding."""
    key_authorization = "token." + "t" * 43
    expected = base64.urlsafe_b64encode(hashlib.sha256(key_authorization.encode()).digest())
    assert dnsupdate.txt_value(key_authorization) == expected.decode().rstrip("=")
    assert len(dnsupdate.txt_value(key_authorization)) == 43


def parsed(update: dnsupdate.Update) -> dns.message.Message:
    return dns.message.from_wire(update.wire, keyring=False)


def test_an_update_touches_one_txt_rrset_and_is_signed() -> None:
    key = dnsupdate.parse_tsig_key(KEY, "k")
    zone = dnsupdate.check_zone(OWNER, "example.test")
    update = dnsupdate.build_update(key, zone, OWNER, add="new", clear=True)
    message = parsed(update)
    assert message.opcode() == dns.opcode.UPDATE
    assert message.had_tsig and message.keyname == dns.name.from_text("letskencrypt-test")
    (question,) = message.question  # the zone section
    assert question.name == dns.name.from_text("example.test")
    assert question.rdtype == dns.rdatatype.SOA
    owners = {(rrset.name.to_text(True), rrset.rdtype) for rrset in message.authority}
    assert owners == {(OWNER, dns.rdatatype.TXT)}
    assert message.answer == []  # no prerequisites
    assert update.what == f"{OWNER} TXT: clear, add new"


@pytest.mark.parametrize(("zone", "reason"), [
    ("other.test", "does not hold"),
    (".", "does not hold"),
    ("web.example.test.x", "does not hold"),
])
def test_the_zone_must_hold_the_record(zone: str, reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        dnsupdate.check_zone(OWNER, zone)


def send(named: AuthoritativeDns, wire: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(3)
        udp.sendto(wire, (named.address, named.port))
        return udp.recv(4096)


def test_the_server_applies_signed_updates_and_their_answers_verify(
    named: AuthoritativeDns,
) -> None:
    key = dnsupdate.read_tsig_key(named.tsig_key_file)
    zone = dnsupdate.check_zone(OWNER, named.zone)
    named.add_txt(OWNER, "stale")
    add = dnsupdate.build_update(key, zone, OWNER, add="fresh", clear=True)
    dnsupdate.check_answer(add, key, send(named, add.wire), "named")
    assert named.txt(OWNER) == ["fresh"]
    remove = dnsupdate.build_update(key, zone, OWNER, remove="fresh")
    dnsupdate.check_answer(remove, key, send(named, remove.wire), "named")
    assert named.txt(OWNER) == []


def test_refusals_are_said_in_one_line(named: AuthoritativeDns) -> None:
    key = dnsupdate.read_tsig_key(named.tsig_key_file)
    zone = dnsupdate.check_zone(OWNER, named.zone)
    wrong = dnsupdate.TsigKey(key.name, key.algorithm, bytes(32))
    update = dnsupdate.build_update(wrong, zone, OWNER, add="x")
    with pytest.raises(dnsupdate.UpdateRefused, match=r"\(BADSIG\)"):
        dnsupdate.check_answer(update, wrong, send(named, update.wire), "named")
    unknown = dnsupdate.TsigKey("stranger.", key.algorithm, bytes(32))
    update = dnsupdate.build_update(unknown, zone, OWNER, add="x")
    with pytest.raises(dnsupdate.UpdateRefused, match=r"the TSIG key stranger \(BADKEY\)"):
        dnsupdate.check_answer(update, unknown, send(named, update.wire), "named")
    other_zone = dnsupdate.check_zone(OWNER, "web.example.test")
    update = dnsupdate.build_update(key, other_zone, OWNER, add="x")
    with pytest.raises(dnsupdate.UpdateRefused, match="NOTAUTH"):
        dnsupdate.check_answer(update, key, send(named, update.wire), "named")
    assert named.txt(OWNER) == []


def test_an_answer_that_is_not_the_servers_is_refused(named: AuthoritativeDns) -> None:
    """A carrier cannot pass off another answer as the server's: unsigned,
    signed over another request, or to another message."""
    key = dnsupdate.read_tsig_key(named.tsig_key_file)
    zone = dnsupdate.check_zone(OWNER, named.zone)
    first = dnsupdate.build_update(key, zone, OWNER, add="one")
    second = dnsupdate.build_update(key, zone, OWNER, remove="one")
    answer = send(named, first.wire)
    with pytest.raises(InputError, match=r"does not verify|another message"):
        dnsupdate.check_answer(second, key, answer, "named")
    forged = dns.update.UpdateMessage(named.zone, id=first.id)
    forged.flags |= dns.flags.QR
    with pytest.raises(InputError, match="an unsigned answer to a signed update"):
        dnsupdate.check_answer(first, key, forged.to_wire(), "named")
    with pytest.raises(InputError, match="not a DNS message"):
        dnsupdate.check_answer(first, key, b"\x00" * 5, "named")
    remove = dnsupdate.build_update(key, zone, OWNER, remove="one")
    dnsupdate.check_answer(remove, key, send(named, remove.wire), "named")


# --- the propagation wait ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_wait_backs_off_and_ends_when_every_server_serves() -> None:
    clock = Clock()
    asked: list[str] = []

    def serves(server: str, _port: int) -> bool:
        asked.append(server)
        return server == "a" or clock.now >= 3

    missing = wait_until_served(
        [("a", 53), ("b", 53)], serves, 60, sleep=clock.sleep, clock=lambda: clock.now
    )
    assert missing == []
    assert clock.sleeps == [FIRST_CHECK_WAIT, FIRST_CHECK_WAIT * 2, 1.0, 2.0]
    # A server that serves the record is not asked again.
    assert asked.count("a") == 1


def test_the_wait_is_bounded_and_says_who_is_missing_and_why() -> None:
    clock = Clock()

    def serves(server: str, _port: int) -> bool:
        if server == "b":
            raise InputError("DNS server b:53 did not answer within 3 s")
        return False

    missing = wait_until_served(
        [("a", 5353), ("b", 53)], serves, 30, sleep=clock.sleep, clock=lambda: clock.now
    )
    assert missing == [
        "a:5353 (it does not serve it yet)", "b:53 (DNS server b:53 did not answer within 3 s)"]
    assert clock.now == 30
    assert max(clock.sleeps) == MAX_CHECK_WAIT


# --- dnsproc's look-ups (dnsquery.py) and its carrying (dnsproc.exchange) -----------------


def test_txt_asks_a_server_directly(named: AuthoritativeDns) -> None:
    owner = "_acme-challenge.www.example.test."
    named.add_txt(owner, "v" * 300)  # two strings, joined
    try:
        assert dnsquery.lookup_txt(owner, named.address, named.port) == ["v" * 300]
        nothing = "_acme-challenge.nothing.example.test."
        assert dnsquery.lookup_txt(nothing, named.address, named.port) == []
    finally:
        named.delete_txt(owner)


def test_the_zone_and_its_servers_as_a_server_has_them(named: AuthoritativeDns) -> None:
    assert dnsquery.authoritative(OWNER, named.address, named.port) == (
        "example.test", ["127.0.0.1"])
    with pytest.raises(InputError, match="REFUSED"):
        dnsquery.authoritative("_acme-challenge.other.test", named.address, named.port)


def test_the_zone_and_its_servers_through_a_resolver(
    named: AuthoritativeDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The system-resolver path, with a resolver whose only server is named
    (the host's own resolver knows nothing of example.test)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [named.address]
    resolver.port = named.port
    monkeypatch.setattr(dnsquery, "system_resolver", lambda: resolver)
    assert dnsquery.authoritative(OWNER, "", 0) == ("example.test", ["127.0.0.1"])
    named.add_txt(OWNER, "through-the-resolver")
    try:
        assert dnsquery.lookup_txt(OWNER + ".", "", 0) == ["through-the-resolver"]
    finally:
        named.delete_txt(OWNER)


def test_exchange_carries_a_message_and_takes_only_its_answer(named: AuthoritativeDns) -> None:
    query = dns.message.make_query(named.zone, "SOA")
    answer = dns.message.from_wire(dnsproc.exchange(query.to_wire(), named.address, named.port))
    assert answer.id == query.id and answer.answer
    with pytest.raises(InputError, match="12 to 4096 bytes"):
        dnsproc.exchange(b"short", named.address, named.port)


@pytest.mark.parametrize("name", ["a..b", "*.example.test", "a b.example", "x" * 64 + ".test"])
def test_dnsproc_refuses_names_that_are_no_names(name: str) -> None:
    with pytest.raises(InputError, match="invalid TXT record name"):
        dnsproc.check_txt_name(name)


# --- names and servers ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("192.0.2.1", ("192.0.2.1", 53)),
    ("192.0.2.1:5353", ("192.0.2.1", 5353)),
    ("2001:db8::1", ("2001:db8::1", 53)),
    ("[2001:db8::1]", ("2001:db8::1", 53)),
    ("[2001:DB8::1]:53", ("2001:db8::1", 53)),
])
def test_dns_servers(text: str, expected: tuple[str, int]) -> None:
    assert parse_dns_server(text, "--dns-server") == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("ns1.example.test", "give an IP address"),
    ("192.0.2.1:", "no port after"),
    ("192.0.2.1:0", "the port is a number"),
    ("192.0.2.1:65536", "the port is a number"),
    ("[2001:db8::1", "give [IPV6]:PORT"),
    ("[2001:db8::1]x", "give [IPV6]:PORT"),
    ("fe80::1%eth0", "no zone id"),
])
def test_bad_dns_servers(text: str, reason: str) -> None:
    with pytest.raises(InputError, match=re.escape(reason)):
        parse_dns_server(text, "--dns-server")


def test_wildcards_are_names() -> None:
    assert validate_name("*.Example.Test.", wildcard=True) == "*.example.test"
    for bad in ("*.test", "*.*.example.test", "a.*.example.test", "*example.test"):
        with pytest.raises(InputError):
            validate_name(bad, wildcard=True)
    with pytest.raises(InputError, match="needs --challenge dns-01 or dns-persist-01"):
        validate_name("*.example.test")
    assert b64url(b"") == ""
