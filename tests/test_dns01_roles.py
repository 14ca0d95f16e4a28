"""dns-01's confinement claims, on the real roles:

- chngproc, which holds the TSIG key, runs in its real sandbox and is driven
  here as a hostile netproc would: it signs updates of this run's
  `_acme-challenge` TXT records only, and of nothing else (another name,
  another zone, a key authorisation that is not one), and believes only the
  server's signed answer;
- chngproc, confined with the key in memory, cannot open a network socket,
  nor read the key file again;
- netproc, confined, cannot read the TSIG key file.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.name
import dns.rdatatype
import grpc
import pytest
from letskencrypt import sandbox_check
from letskencrypt.settings import ChngprocSettings
from letskencrypt.v1 import challenge_pb2, challenge_pb2_grpc

from tests.dnsserver import AuthoritativeDns
from tests.test_sandbox import RoleProcess, wait_for_socket

NAMES = ("web.example.test", "*.example.test", "127.0.0.1")
TOKEN = "token_of-the-ca"
KEY_AUTHORIZATION = f"{TOKEN}.{'T' * 43}"
TIMEOUT = 10


@pytest.fixture(scope="module")
def named() -> Iterator[AuthoritativeDns]:
    with AuthoritativeDns() as server:
        yield server


@pytest.fixture
def chngproc(named: AuthoritativeDns) -> Iterator[RoleProcess]:
    top = Path(tempfile.mkdtemp(prefix="letskencrypt-test-dns01-"))
    top.chmod(0o711)
    identity = sandbox_check.Identity(os.getuid(), os.getgid())  # chngproc keeps its uid
    base = sandbox_check.make_base(top, "chngproc", identity)
    settings = ChngprocSettings(
        challenge="dns-01", names=NAMES, dns_server=named.dns_server,
        tsig_key=named.tsig_key_file,
    )  # fmt: skip
    process = RoleProcess("chngproc", base, settings)
    try:
        wait_for_socket(process)
        yield process
    finally:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()
        shutil.rmtree(top, ignore_errors=True)


def update(process: RoleProcess, **fields: object) -> challenge_pb2.DnsUpdateReply:
    with process.channel("chng") as channel:
        stub = challenge_pb2_grpc.ChallengeStub(channel)
        return stub.DnsUpdate(challenge_pb2.DnsUpdateRequest(**fields), timeout=TIMEOUT)


def answer(process: RoleProcess, wire: bytes) -> None:
    with process.channel("chng") as channel:
        stub = challenge_pb2_grpc.ChallengeStub(channel)
        stub.DnsAnswer(challenge_pb2.DnsAnswerRequest(answer=wire), timeout=TIMEOUT)


def refused(process: RoleProcess, **fields: object) -> str:
    with pytest.raises(grpc.RpcError) as info:
        update(process, **fields)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return str(info.value.details())


def carry(named: AuthoritativeDns, wire: bytes) -> bytes:
    """What netproc and dnsproc do with a signed update: take it to the server."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(3)
        udp.sendto(wire, (named.address, named.port))
        return udp.recv(4096)


PUBLISH = challenge_pb2.DNS_ACTION_PUBLISH


def test_a_hostile_netproc_gets_only_this_runs_records_signed(
    chngproc: RoleProcess, named: AuthoritativeDns
) -> None:
    good = {"action": PUBLISH, "token": TOKEN, "key_authorization": KEY_AUTHORIZATION,
            "zone": "example.test"}  # fmt: skip
    for name in ("other.example.test", "example.org", "*.example.test", "_acme-challenge.web",
                 "web.example.test.", "WEB.example.test", "", "127.0.0.1"):
        assert "is not one of this run's names" in refused(chngproc, **{**good, "name": name})
    # The wildcard's record is at the name below it: allowed.  Another zone is not.
    assert "does not hold" in refused(chngproc, **{**good, "name": "example.test",
                                                   "zone": "other.test"})
    for bad in ("x" * 60, f"{TOKEN}.short", f"other.{'T' * 43}"):
        refused(chngproc, **{**good, "name": "web.example.test", "key_authorization": bad})
    assert "without an action" in refused(chngproc, name="web.example.test")
    # Withdrawing what was never published signs nothing.
    assert "was published" in refused(
        chngproc, action=challenge_pb2.DNS_ACTION_WITHDRAW, name="web.example.test", token=TOKEN)

    reply = update(chngproc, **{**good, "name": "web.example.test"})
    message = dns.message.from_wire(reply.message, keyring=False)
    assert message.had_tsig
    owner = dns.name.from_text("_acme-challenge.web.example.test")
    assert {(rrset.name, rrset.rdtype) for rrset in message.authority} == {
        (owner, dns.rdatatype.TXT)}
    assert reply.owner == "_acme-challenge.web.example.test"
    # Another answer than the server's is not believed; the server's is.
    with pytest.raises(grpc.RpcError, match="no update chngproc signed"):
        answer(chngproc, b"\x00\x01" + bytes(10))
    answer(chngproc, carry(named, reply.message))
    assert named.txt(reply.owner) == [reply.txt_value]
    assert "published already" in refused(chngproc, **{**good, "name": "web.example.test"})

    withdraw = update(chngproc, action=challenge_pb2.DNS_ACTION_WITHDRAW,
                      name="web.example.test", token=TOKEN)  # fmt: skip
    answer(chngproc, carry(named, withdraw.message))
    assert named.txt(reply.owner) == []
    nothing_left = update(chngproc, action=challenge_pb2.DNS_ACTION_WITHDRAW_NEXT)
    assert nothing_left.message == b""
    # No challenge directory in this run: no file either.
    with chngproc.channel("chng") as channel, pytest.raises(grpc.RpcError, match="no http-01"):
        challenge_pb2_grpc.ChallengeStub(channel).Publish(
            challenge_pb2.PublishRequest(token=TOKEN, key_authorization=KEY_AUTHORIZATION),
            timeout=TIMEOUT,
        )
    code, stderr = chngproc.stop()
    assert (code, stderr) == (0, "")


def test_a_record_left_when_chngproc_stops_is_said(
    chngproc: RoleProcess, named: AuthoritativeDns
) -> None:
    reply = update(chngproc, action=PUBLISH, name="example.test", token=TOKEN,
                   key_authorization=KEY_AUTHORIZATION, zone="example.test")  # fmt: skip
    answer(chngproc, carry(named, reply.message))
    code, stderr = chngproc.stop()
    named.delete_txt(reply.owner)
    assert code == 0
    assert stderr == (
        f"letskencrypt: chngproc: left _acme-challenge.example.test TXT {reply.txt_value} in "
        "DNS: the next run for this name removes it\n"
    )


CONFINED = """
import json, socket, sys
from letskencrypt import process
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.roles import spec_of
from letskencrypt import settings as model
role, document, key = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
settings = model.decode(spec_of(role).settings, document)
held = None
if role == "chngproc":
    from letskencrypt.roles.chngproc import DnsRecords
    held = DnsRecords(settings, settings.dns_server)
from letskencrypt import sandbox
sandbox.apply(RoleConfig(role, "/nonexistent", settings=settings), Logger(role, 0), strict=True)
outcome = {"key held": held is not None and len(held.key.secret) >= 16}
try:
    open(key).read()
    outcome["read key"] = "read"
except PermissionError:
    outcome["read key"] = "denied"
for family in (socket.AF_INET, socket.AF_INET6):
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        try:
            socket.socket(family, kind).close()
            outcome[f"socket {family.name} {kind.name}"] = "made"
        except PermissionError:
            outcome[f"socket {family.name} {kind.name}"] = "denied"
print(json.dumps(outcome))
"""


def confined(role: str, settings: dict[str, object], key: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", CONFINED, role, json.dumps(settings), key],
        cwd="/", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_chngproc_with_the_key_cannot_open_a_network_socket(named: AuthoritativeDns) -> None:
    outcome = confined("chngproc", {
        "challenge": "dns-01", "names": list(NAMES), "dns_server": named.dns_server,
        "tsig_key": named.tsig_key_file,
    }, named.tsig_key_file)  # fmt: skip
    assert outcome == {
        "key held": True,
        "read key": "denied",
        "socket AF_INET SOCK_DGRAM": "denied",
        "socket AF_INET SOCK_STREAM": "denied",
        "socket AF_INET6 SOCK_DGRAM": "denied",
        "socket AF_INET6 SOCK_STREAM": "denied",
    }


def test_netproc_cannot_read_the_tsig_key(named: AuthoritativeDns) -> None:
    outcome = confined("netproc", {
        "directory_url": "https://localhost:14000/dir", "names": list(NAMES),
        "challenge": "dns-01", "dns_server": named.dns_server,
        "dns_check_servers": [named.dns_server],
    }, named.tsig_key_file)  # fmt: skip
    assert outcome["read key"] == "denied"
    # The only role with the network: its sockets are not what keeps the key from it.
    assert outcome["socket AF_INET SOCK_STREAM"] == "made"

