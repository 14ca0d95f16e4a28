"""Tests of the authoritative DNS fixture (they start the real named), and of
pebble resolving through it."""

from __future__ import annotations

import base64
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest
import requests
from cryptography import x509

from tests import dnsserver
from tests.conftest import ROOT, Paths, run_client
from tests.dnsserver import (
    SERVICE_USERS,
    AuthoritativeDns,
    DnsServerError,
    DnsUpdateError,
    ipv6_loopback,
    read_tsig_key,
)
from tests.pebble import Pebble

CHALLENGE = "_acme-challenge.web.example.test"
# /proc/net/{tcp,udp}[6]: st 0A is LISTEN (TCP); 07 is an unconnected UDP socket.
TCP_LISTEN, UDP_UNCONNECTED = "0A", "07"


@pytest.fixture(scope="module")
def server() -> Iterator[AuthoritativeDns]:
    with AuthoritativeDns() as instance:
        yield instance


def serial(server: AuthoritativeDns) -> int:
    """The zone's SOA serial (named bumps it at every update it applies)."""
    (soa,) = server.query(server.zone, "SOA").answer
    return int(soa[0].serial)


def other_keyring(name: str, secret: bytes) -> dict[dns.name.Name, dns.tsig.Key]:
    return dns.tsigkeyring.from_text({name: ("hmac-sha256", base64.b64encode(secret).decode())})


def udp_exchange(server: AuthoritativeDns, wire: bytes) -> dns.message.Message:
    """Send raw wire over UDP; parse the answer without checking its TSIG."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(wire, (server.address, server.port))
        data = s.recv(65535)
    return dns.message.from_wire(data, keyring=False)


# -- answers -----------------------------------------------------------------


def test_soa_ns_and_a_answers_authoritative_on_every_address_and_transport(
    server: AuthoritativeDns,
) -> None:
    addresses = ["127.0.0.1", *(["::1"] if ipv6_loopback() else [])]
    assert server.addresses == addresses
    for address in addresses:
        for tcp in (False, True):
            response = server.query(server.zone, "SOA", tcp=tcp, address=address)
            assert response.rcode() == dns.rcode.NOERROR
            assert response.flags & dns.flags.AA
            (soa,) = response.answer
            assert soa[0].mname == dns.name.from_text("ns1.example.test")
    assert server.records("example.test", "NS") == ["ns1.example.test."]
    assert server.records("ns1.example.test", "A") == ["127.0.0.1"]
    assert server.records("web.example.test", "A") == ["127.0.0.1"]
    assert server.records("www.example.test", "A") == ["127.0.0.1"]
    assert server.query("absent.example.test", "A").rcode() == dns.rcode.NXDOMAIN
    assert server.txt("absent.example.test") == []


def test_no_recursion_and_no_zone_transfer(server: AuthoritativeDns) -> None:
    response = server.query("example.org", "A")
    assert response.rcode() == dns.rcode.REFUSED
    assert not response.flags & dns.flags.RA
    axfr = dns.message.make_query(server.zone, "AXFR")
    assert dns.query.tcp(axfr, server.address, port=server.port, timeout=2).rcode() == (
        dns.rcode.REFUSED
    )


def test_tsig_key_file_is_tsig_keygens_key_statement(server: AuthoritativeDns) -> None:
    text = Path(server.tsig_key_file).read_text()
    statement = r'key "letskencrypt-test" \{\n\talgorithm hmac-sha256;\n\tsecret "[\w+/]+=*";\n'
    statement += r"\};\n"
    assert re.fullmatch(statement, text, re.ASCII), text
    assert read_tsig_key(server.tsig_key_file) == (
        server.tsig_key_name,
        server.algorithm,
        server.tsig_secret,
    )
    assert (server.tsig_key_name, server.algorithm) == ("letskencrypt-test", "hmac-sha256")
    assert len(base64.b64decode(server.tsig_secret)) == 32


# -- updates -----------------------------------------------------------------


def test_signed_update_adds_a_txt_record_and_a_signed_delete_removes_it(
    server: AuthoritativeDns,
) -> None:
    before = serial(server)
    server.add_txt(CHALLENGE, "first-digest")
    assert server.txt(CHALLENGE) == ["first-digest"]
    server.add_txt(CHALLENGE, "second-digest")
    assert sorted(server.txt(CHALLENGE)) == ["first-digest", "second-digest"]
    long_value = "x" * 300  # more than one character-string
    server.add_txt(CHALLENGE, long_value)
    assert long_value in server.txt(CHALLENGE)
    assert serial(server) > before

    server.delete_txt(CHALLENGE, "first-digest")
    assert sorted(server.txt(CHALLENGE)) == ["second-digest", long_value]
    server.delete_txt(CHALLENGE)
    assert server.txt(CHALLENGE) == []
    assert server.query(CHALLENGE, "TXT").rcode() == dns.rcode.NXDOMAIN
    # Over TCP too, and the journal is in the fixture's directory.
    assert not server.query(CHALLENGE, "TXT", tcp=True).answer
    assert server.workdir is not None
    assert (server.workdir / "example.test.zone.jnl").is_file()


def test_update_with_a_wrong_secret_is_refused_and_changes_nothing(
    server: AuthoritativeDns,
) -> None:
    server.add_txt(CHALLENGE, "kept")
    before = serial(server)
    wrong = other_keyring(server.tsig_key_name, os.urandom(32))
    for make in (
        lambda u: u.add(CHALLENGE, 60, "TXT", '"forged"'),
        lambda u: u.delete(CHALLENGE, "TXT"),
    ):
        update = server.update_message(CHALLENGE, keyring=wrong)
        make(update)
        # dnspython: the server's answer says it did not like our signature...
        with pytest.raises(dns.tsig.PeerBadSignature):
            server.send_update(update)
        # ... which on the wire is NOTAUTH with the TSIG error BADSIG.
        update = server.update_message(CHALLENGE, keyring=wrong)
        make(update)
        response = udp_exchange(server, update.to_wire())
        assert response.rcode() == dns.rcode.NOTAUTH
        assert response.tsig_error == dns.rcode.BADSIG
    assert server.txt(CHALLENGE) == ["kept"]
    assert serial(server) == before
    assert "tsig verify failure (BADSIG)" in server.log_text()
    server.delete_txt(CHALLENGE)


def test_update_signed_with_an_unknown_key_name_is_refused(server: AuthoritativeDns) -> None:
    before = serial(server)
    secret = base64.b64decode(server.tsig_secret)  # the right secret, another name
    update = server.update_message(CHALLENGE, keyring=other_keyring("someone-else", secret))
    update.add(CHALLENGE, 60, "TXT", '"forged"')
    response = udp_exchange(server, update.to_wire())
    assert response.rcode() == dns.rcode.NOTAUTH
    assert response.tsig_error == dns.rcode.BADKEY
    assert server.txt(CHALLENGE) == []
    assert serial(server) == before


def test_unsigned_update_is_refused_and_changes_nothing(server: AuthoritativeDns) -> None:
    server.add_txt(CHALLENGE, "kept")
    before = serial(server)
    for transport in ("udp", "tcp"):
        for make in (
            lambda u: u.add(CHALLENGE, 60, "TXT", '"forged"'),
            lambda u: u.delete(CHALLENGE),
            lambda u: u.replace("web", 60, "A", "192.0.2.1"),
        ):
            update = server.update_message(CHALLENGE, keyring={})
            make(update)
            assert update.keyring is None
            send = dns.query.udp if transport == "udp" else dns.query.tcp
            response = send(update, server.address, port=server.port, timeout=2)
            assert response.rcode() == dns.rcode.REFUSED
    assert server.txt(CHALLENGE) == ["kept"]
    assert server.records("web.example.test", "A") == ["127.0.0.1"]
    assert serial(server) == before
    with pytest.raises(DnsUpdateError) as info:
        server._check(server.update_message(CHALLENGE, keyring={}), "unsigned")
    assert info.value.rcode == dns.rcode.REFUSED
    server.delete_txt(CHALLENGE)


def test_a_second_zone_takes_updates_of_its_own() -> None:
    with AuthoritativeDns(zones=("example.test", "second.test")) as two:
        assert two.zone == "example.test"
        assert two.records("web.second.test", "A") == ["127.0.0.1"]
        assert two.zone_of("_acme-challenge.web.second.test") == "second.test"
        two.add_txt("_acme-challenge.web.second.test", "in-second")
        assert two.txt("_acme-challenge.web.second.test") == ["in-second"]
        assert two.txt(CHALLENGE) == []
        with pytest.raises(ValueError, match="none of the zones"):
            two.add_txt("_acme-challenge.example.org", "nowhere")


# -- the process ---------------------------------------------------------------


def sockets_of(pid: int) -> set[tuple[str, str, int, str]]:
    """(protocol, address, port, state) of every IP socket process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode not in inodes:
                continue
            hex_address, hex_port = local.split(":")
            raw = bytes.fromhex(hex_address)
            # /proc/net prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            family = socket.AF_INET6 if proto.endswith("6") else socket.AF_INET
            found.add((proto, socket.inet_ntop(family, raw), int(hex_port, 16), state))
    return found


def test_named_listens_on_loopback_only_on_its_port(server: AuthoritativeDns) -> None:
    found = sockets_of(server.pid)
    expected = {
        ("tcp", "127.0.0.1", server.port, TCP_LISTEN),
        ("udp", "127.0.0.1", server.port, UDP_UNCONNECTED),
    }
    if "::1" in server.addresses:
        expected |= {
            ("tcp6", "::1", server.port, TCP_LISTEN),
            ("udp6", "::1", server.port, UDP_UNCONNECTED),
        }
    assert found == expected
    # The same seen by ss(8), filtered by named's pid.
    ss = subprocess.run(["ss", "-Hlnptu"], capture_output=True, text=True, check=True)
    mine = [line.split() for line in ss.stdout.splitlines() if f"pid={server.pid}," in line]
    assert sorted(line[4] for line in mine) == sorted(
        f"[{a}]:{server.port}" if ":" in a else f"{a}:{server.port}"
        for a in server.addresses
        for _ in ("tcp", "udp")
    )


def test_named_runs_in_the_foreground_without_root_or_capabilities(
    server: AuthoritativeDns,
) -> None:
    assert server.argv[:2] == ["named", "-g"]
    assert "-u" not in server.argv
    status = Path(f"/proc/{server.pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", status, re.M)
    assert uids is not None
    expected = pwd.getpwnam(server.user).pw_uid
    assert {int(u) for u in uids.groups()} == {expected}
    if os.geteuid() == 0:
        assert server.user in SERVICE_USERS
        assert expected != 0
        assert re.search(r"^Groups:\s*$", status, re.M)
    for field in ("CapPrm", "CapEff", "CapAmb"):
        assert re.search(rf"^{field}:\s+0+$", status, re.M), field
    assert Path(f"/proc/{server.pid}/cwd").resolve() == server.workdir


def test_stop_kills_named_and_removes_its_directory() -> None:
    instance = AuthoritativeDns()
    with instance:
        pid, workdir = instance.pid, instance.workdir
        assert instance.running
    assert not instance.running
    assert workdir is not None and not workdir.exists()
    assert not Path(f"/proc/{pid}").exists()
    assert "exiting" in instance.log_text()
    instance.stop()  # idempotent


def test_a_port_taken_before_named_binds_it_is_retried_with_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        offered: list[int] = []
        real = dnsserver._free_port

        def first_taken(addresses: list[str]) -> int:
            offered.append(taken if not offered else real(addresses))
            return offered[-1]

        monkeypatch.setattr(dnsserver, "_free_port", first_taken)
        with AuthoritativeDns() as instance:
            assert offered[0] == taken and instance.port == offered[-1] != taken
            assert instance.records("web.example.test", "A") == ["127.0.0.1"]


def test_a_missing_named_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dnsserver, "NAMED_BIN", "/nonexistent/named")
    instance = AuthoritativeDns()
    with pytest.raises(DnsServerError, match="not found"):
        instance.start()
    assert instance.workdir is None and not instance.running


CHILD = """
import sys, time
from tests.dnsserver import AuthoritativeDns
server = AuthoritativeDns().start()
print(server.pid, server.workdir, flush=True)
time.sleep(60)
"""


def test_named_dies_with_the_process_that_started_it() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        pid_text, workdir = child.stdout.readline().split()
        pid = int(pid_text)
        assert Path(f"/proc/{pid}").exists()
        child.kill()  # no atexit, no stop(): only the parent-death signal
        child.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists()
    finally:
        child.kill()
        child.wait()
        if "workdir" in locals():
            shutil.rmtree(workdir, ignore_errors=True)


def test_python_m_tests_dnsserver_writes_a_state_file(tmp_path: Path) -> None:
    state = tmp_path / "dns.env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.dnsserver", "--state-file", str(state)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert state.exists(), proc.stderr.read() if proc.stderr else ""
        values = dict(line.split("=", 1) for line in state.read_text().splitlines())
        assert {"ADDRESS", "PORT", "ZONE", "TSIG_KEY_FILE"} <= values.keys()
        assert values["ADDRESS"] == "127.0.0.1"
        assert values["ZONE"] == "example.test"
        name, algorithm, _ = read_tsig_key(values["TSIG_KEY_FILE"])
        assert (values["TSIG_KEY_NAME"], values["TSIG_ALGORITHM"]) == (name, algorithm)
        query = dns.message.make_query("example.test", "SOA")
        response = dns.query.udp(query, values["ADDRESS"], port=int(values["PORT"]), timeout=2)
        assert response.rcode() == dns.rcode.NOERROR and response.answer
        # nsupdate (bind9-dnsutils) with the key file as it is.
        script = (
            f"server {values['ADDRESS']} {values['PORT']}\n"
            f"update add {CHALLENGE} 60 TXT by-nsupdate\nsend\n"
        )
        nsupdate = subprocess.run(
            ["nsupdate", "-k", values["TSIG_KEY_FILE"]],
            input=script,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert nsupdate.returncode == 0, nsupdate.stderr
        query = dns.message.make_query(CHALLENGE, "TXT")
        response = dns.query.udp(query, values["ADDRESS"], port=int(values["PORT"]), timeout=2)
        assert [r.to_text() for r in response.answer[0]] == ['"by-nsupdate"']
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    assert code == 0
    assert not state.exists()
    assert not Path(values["TSIG_KEY_FILE"]).exists()


# -- pebble resolving through it -------------------------------------------------


@pytest.fixture(scope="module")
def pebble_on_named(server: AuthoritativeDns) -> Iterator[Pebble]:
    with Pebble(dns_server=server.dns_server) as instance:
        os.chmod(instance.challenge_dir, 0o755)
        yield instance


def test_pebble_with_dnsserver_answers_and_starts_no_challtestsrv(
    server: AuthoritativeDns, pebble_on_named: Pebble
) -> None:
    session = requests.Session()
    session.trust_env = False
    directory = session.get(pebble_on_named.directory_url, verify=pebble_on_named.ca_bundle)
    assert directory.status_code == 200
    assert "newOrder" in directory.json()
    (pid,) = pebble_on_named.pids  # pebble alone
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"-dnsserver") + 1].decode() == f"127.0.0.1:{server.port}"
    assert f"DNS_SERVER=127.0.0.1:{server.port}" in pebble_on_named.state_lines()
    assert pebble_on_named.challtestsrv_management_url == ""


def test_pebble_dns_server_must_be_loopback() -> None:
    for bad in ("192.0.2.1:53", "localhost:53", "127.0.0.1", "127.0.0.1:0", "[::2]:53"):
        with pytest.raises(ValueError, match="dns_server"):
            Pebble(dns_server=bad)
    assert Pebble(dns_server="[::1]:5353").dns_server == ("::1", 5353)


def test_http01_for_a_name_only_named_resolves(
    server: AuthoritativeDns, pebble_on_named: Pebble, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    paths = Paths(base=tmp_path, challenge_dir=pebble_on_named.challenge_dir)
    result = run_client(pebble_on_named, paths, "-n", "-N", "web.example.test")
    assert result.code == 0, result.stderr
    certificate = x509.load_pem_x509_certificate((paths.cert_dir / "cert.pem").read_bytes())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web.example.test"]
    # pebble's validation asked named (querylog) for the name's address.
    assert re.search(r"query: web\.example\.test IN A\b", server.log_text())


def test_http01_fails_for_a_name_named_does_not_know(
    server: AuthoritativeDns, pebble_on_named: Pebble, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    paths = Paths(base=tmp_path, challenge_dir=pebble_on_named.challenge_dir)
    result = run_client(pebble_on_named, paths, "-n", "-N", "absent.example.test")
    assert result.code != 0
    assert "http-01 challenge" in result.stderr, result.stderr
    assert 'could not resolve URL "http://absent.example.test:' in result.stderr
    assert not (paths.cert_dir / "cert.pem").exists()
    assert re.search(r"query: absent\.example\.test IN A\b", server.log_text())
