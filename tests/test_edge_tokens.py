"""No role can call a role it has no edge to: in native mode the unprivileged
roles share a user, so each edge carries a secret only its two ends know."""

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from letskencrypt import keys, launch, options, rpc
from letskencrypt.b64 import b64url
from letskencrypt.roles import ROLES
from letskencrypt.rpc import EDGES
from letskencrypt.settings import AcctprocSettings, CertprocSettings, RoleSettings
from letskencrypt.supervisor import Supervisor
from letskencrypt.v1 import (
    account_pb2,
    account_pb2_grpc,
    certificate_pb2,
    certificate_pb2_grpc,
    domainkey_pb2,
    domainkey_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    keyinfo_pb2,
    keyinfo_pb2_grpc,
)

from tests.certfactory import make_pki, pem


def test_each_role_learns_only_the_tokens_of_its_own_edges(tmp_path: Path) -> None:
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(pem(make_pki().root))
    settings = options.role_settings(options.build_parser().parse_args(
        ["--server", "https://ca.example.org/dir", "--trust-anchors", str(anchors),
         "-f", str(tmp_path / "a.pem"), "-k", str(tmp_path / "d.pem"), "a.example.org"]))
    supervisor = Supervisor(settings=settings)
    supervisor.run_dir = "/nonexistent"
    supervisor.make_tokens()
    assert len(set(supervisor.edge_tokens.values())) == len(EDGES)
    for role in ROLES:
        tokens = supervisor.role_document(role)["edge_tokens"]
        own = {name for name, edge in EDGES.items() if role in (edge.client, edge.server)}
        assert set(tokens) == own, role
        assert all(tokens[name] == supervisor.edge_tokens[name] for name in own)
    # dnsproc, say, knows nothing that opens acctproc's or keyproc's socket.
    assert set(supervisor.role_document("dnsproc")["edge_tokens"]) == {"dns"}
    # acctproc asks keyproc for the domain key on an edge netproc cannot call.
    assert set(supervisor.role_document("acctproc")["edge_tokens"]) == {"acct", "keyacct"}
    assert set(supervisor.role_document("keyproc")["edge_tokens"]) == {
        "key", "keyinfo", "keyacct"}  # fmt: skip
    for role in ROLES:
        if role not in ("acctproc", "keyproc"):
            assert "keyacct" not in supervisor.role_document(role)["edge_tokens"], role


@pytest.fixture
def acctproc() -> Iterator[tuple[str, str]]:
    """A real acctproc serving on a run directory, with an edge token."""
    base = Path(tempfile.mkdtemp(prefix="lk-token-"))
    (base / "acct").mkdir()
    token = "t" * 43
    settings = AcctprocSettings(
        key_path=str(base / "account.pem"),
        create=True,
        key_type="ecdsa256",
        directory_url="https://ca.example.org/dir",
        names=("a.example.org",),
        operation="issue",
        audit_log=str(base / "audit.log"),
    )
    document = launch.role_document("acctproc", str(base), settings, edge_tokens={"acct": token})
    process = launch.start_role("acctproc", document, stdout=None, stderr=None)
    deadline = time.monotonic() + 20
    while not os.path.exists(rpc.socket_path(str(base), "acct")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    yield str(base), token
    process.terminate()
    process.wait(timeout=10)
    rpc.use_edge_tokens({})


def describe(channel: grpc.Channel) -> account_pb2.DescribeReply:
    stub = account_pb2_grpc.AccountStub(channel)
    return stub.Describe(account_pb2.DescribeRequest(), timeout=10, wait_for_ready=True)


def test_a_call_without_the_edge_token_is_refused(acctproc: tuple[str, str]) -> None:
    run_dir, token = acctproc
    socket = f"unix:{rpc.socket_path(run_dir, 'acct')}"
    for metadata in ((), (("letskencrypt-edge-token", "x" * 43),)):
        with grpc.insecure_channel(socket) as channel:
            stub = account_pb2_grpc.AccountStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Describe(
                    account_pb2.DescribeRequest(), timeout=10, wait_for_ready=True,
                    metadata=metadata,
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Lifecycle too: a stranger cannot stop the role either.
    with grpc.insecure_channel(socket) as channel:
        rpc.stop_peer(channel, "acctproc", failed=True)
    rpc.use_edge_tokens({"acct": token})
    channel = rpc.connect(run_dir, "acct")
    assert describe(channel).thumbprint
    channel.close()


# --- the server proves itself too ---------------------------------------------------


class FakeKeyInfo(keyinfo_pb2_grpc.KeyInfoServicer):
    """An impostor on keyproc's socket: answers with a key of its choosing."""

    def __init__(self, client_token: str | None, server_token: str | None) -> None:
        self.client_token = client_token
        self.server_token = server_token
        self.calls = 0

    def Describe(
        self, request: keyinfo_pb2.KeyInfoRequest, context: grpc.ServicerContext
    ) -> keyinfo_pb2.KeyInfoReply:
        self.calls += 1
        supplied = dict(context.invocation_metadata()).get(rpc.TOKEN_METADATA)
        if self.client_token is not None:
            # It even knows the caller's token (stolen from the client's side).
            assert supplied == self.client_token
        if self.server_token is not None:
            context.send_initial_metadata(((rpc.SERVER_TOKEN_METADATA, self.server_token),))
        return keyinfo_pb2.KeyInfoReply(public_key_der=b"attacker's key", names=["evil.example"])


class CountingFiles(files_pb2_grpc.FilesServicer):
    """On fileproc's socket (certproc serves only once fileproc does): counts
    what reaches it."""

    def __init__(self) -> None:
        self.calls = 0

    def Install(
        self, request: files_pb2.InstallRequest, context: grpc.ServicerContext
    ) -> files_pb2.InstallReply:
        self.calls += 1
        return files_pb2.InstallReply()


def fake_server(
    path: str,
    servicer: Any,
    register: Callable[[Any, grpc.Server], None] = keyinfo_pb2_grpc.add_KeyInfoServicer_to_server,
) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    register(servicer, server)
    server.add_insecure_port(f"unix:{path}")
    server.start()
    return server


@pytest.mark.parametrize(
    ("knows_client_token", "sends"), [(False, None), (True, None), (True, "s" * 43)]
)
def test_a_server_without_the_server_token_is_not_believed(
    tmp_path: Path, knows_client_token: bool, sends: str | None
) -> None:
    client_token, server_token = "c" * 43, "S" * 43
    (tmp_path / "keyinfo").mkdir()
    impostor = FakeKeyInfo(client_token if knows_client_token else None, sends)
    server = fake_server(rpc.socket_path(str(tmp_path), "keyinfo"), impostor)
    rpc.use_edge_tokens({"keyinfo": client_token}, {"keyinfo": server_token})
    try:
        with rpc.connect(str(tmp_path), "keyinfo") as channel:
            stub = keyinfo_pb2_grpc.KeyInfoStub(channel)
            with pytest.raises(rpc.RpcError, match=r"^keyproc on edge keyinfo failed to auth"):
                rpc.call(stub.Describe, keyinfo_pb2.KeyInfoRequest(), peer="keyproc")
        assert impostor.calls == 1
    finally:
        rpc.use_edge_tokens({})
        server.stop(None)


def test_the_real_server_sends_its_token_to_callers_only(tmp_path: Path) -> None:
    """rpc.serve sends the server token to a caller with the edge token, and
    nothing to a stranger (who could otherwise replay it as an impostor)."""
    (tmp_path / "keyinfo").mkdir()
    rpc.use_edge_tokens({"keyinfo": "c" * 43}, {"keyinfo": "S" * 43})
    servicer = FakeKeyInfo(None, None)
    server = rpc.serve(
        str(tmp_path), "keyinfo",
        [(keyinfo_pb2_grpc.add_KeyInfoServicer_to_server, servicer)], rpc.Stopper(),
    )  # fmt: skip
    try:
        with rpc.connect(str(tmp_path), "keyinfo") as channel:
            stub = keyinfo_pb2_grpc.KeyInfoStub(channel)
            reply = rpc.call(stub.Describe, keyinfo_pb2.KeyInfoRequest(), peer="keyproc")
            assert reply.names == ["evil.example"]
        with grpc.insecure_channel(f"unix:{rpc.socket_path(str(tmp_path), 'keyinfo')}") as raw:
            call = keyinfo_pb2_grpc.KeyInfoStub(raw).Describe.with_call
            with pytest.raises(grpc.RpcError) as refused:
                call(keyinfo_pb2.KeyInfoRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert rpc.SERVER_TOKEN_METADATA not in dict(refused.value.initial_metadata() or ())
    finally:
        rpc.use_edge_tokens({})
        server.stop(None)


def test_certproc_refuses_an_impostor_keyproc(tmp_path: Path) -> None:
    """The real certproc, its keyinfo socket taken by an impostor that knows
    certproc's edge token: the chain is refused naming keyproc, and nothing
    reaches fileproc."""
    base = Path(tempfile.mkdtemp(prefix="lk-impostor-"))
    for edge in ("cert", "keyinfo", "file"):
        (base / edge).mkdir()
    client = {edge: secrets.token_urlsafe(32) for edge in ("cert", "keyinfo", "file")}
    server = {edge: secrets.token_urlsafe(32) for edge in ("cert", "keyinfo", "file")}
    impostor = FakeKeyInfo(client["keyinfo"], "wrong")
    fake = fake_server(rpc.socket_path(str(base), "keyinfo"), impostor)
    files = CountingFiles()
    fileproc = fake_server(
        rpc.socket_path(str(base), "file"), files, files_pb2_grpc.add_FilesServicer_to_server
    )
    pki = make_pki()
    settings = CertprocSettings(operation="issue", trust_anchors=pem(pki.root).decode())
    document = launch.role_document(
        "certproc", str(base), settings, edge_tokens=client, server_tokens=server
    )
    process = launch.start_role("certproc", document, stdout=None)
    rpc.use_edge_tokens({"cert": client["cert"]}, {"cert": server["cert"]})
    try:
        with rpc.connect(str(base), "cert") as channel:
            stub = certificate_pb2_grpc.CertificateStub(channel)
            chain = pem(pki.leaf(["a.example.org"])) + pem(pki.intermediate)
            with pytest.raises(rpc.RpcError) as refused:
                rpc.call(stub.Submit, certificate_pb2.SubmitRequest(pem_chain=chain),
                         peer="certproc")  # fmt: skip
        assert "keyproc on edge keyinfo failed to authenticate" in str(refused.value)
        assert impostor.calls == 1
        assert files.calls == 0
    finally:
        rpc.use_edge_tokens({})
        process.terminate()
        process.wait(timeout=10)
        fake.stop(None)
        fileproc.stop(None)
        shutil.rmtree(base, ignore_errors=True)


# --- acctproc -> keyproc: the domain key for a finalize (issue 7) ------------------

NAMES = ["a.example.org", "b.example.org"]
NONCE = "bm9uY2U"
KID = "https://ca.example.org/acct/1"
ATTACKER_KEY = keys.generate_key("ecdsa256")


def start_role(role: str, run_dir: Path, settings: RoleSettings,
               tokens: dict[str, str]) -> subprocess.Popen[bytes]:
    """As the supervisor starts a role (staying root when we are: no run user)."""
    document = launch.role_document(role, str(run_dir), settings, edge_tokens=tokens)
    return launch.start_role(role, document, stdout=None, stderr=None)


def wait_for_socket(run_dir: Path, edge: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    path = rpc.socket_path(str(run_dir), edge)
    while not os.path.exists(path):
        assert process.poll() is None and time.monotonic() < deadline, edge
        time.sleep(0.02)


def stop(run_dir: Path, edge: str, process: subprocess.Popen[bytes]) -> None:
    channel = rpc.connect(str(run_dir), edge)
    rpc.stop_peer(channel, EDGES[edge].server, failed=False)
    channel.close()
    assert process.wait(timeout=15) == 0
    # serve() removes a stale socket; make sure the next role's is its own.
    path = rpc.socket_path(str(run_dir), edge)
    if os.path.lexists(path):
        os.unlink(path)


def finalize(run_dir: Path, csr: bytes) -> account_pb2.SignReply:
    payload = json.dumps({"csr": b64url(csr)}).encode()
    with rpc.connect(str(run_dir), "acct") as channel:
        stub = account_pb2_grpc.AccountStub(channel)
        return stub.Sign(
            account_pb2.SignRequest(url="https://ca.example.org/finalize/1", nonce=NONCE,
                                    kid=KID, payload=payload),
            timeout=30, wait_for_ready=True,
        )


def refused_finalize(run_dir: Path, csr: bytes) -> str:
    with pytest.raises(grpc.RpcError) as refused:
        finalize(run_dir, csr)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return str(refused.value.details())


@pytest.fixture
def run_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="lk-keyacct-"))
    for edge in EDGES:
        (base / edge).mkdir()
    yield base
    rpc.use_edge_tokens({})
    shutil.rmtree(base, ignore_errors=True)


def test_acctproc_learns_the_domain_key_from_keyproc_over_its_own_edge(run_dir: Path) -> None:
    """Real acctproc and keyproc, sandboxed, with the supervisor's kind of tokens:
    a finalize is signed for keyproc's key only, and only while acctproc can
    reach keyproc with the keyacct token."""
    anchors = run_dir / "anchors.pem"
    anchors.write_bytes(pem(make_pki().root))
    settings = options.role_settings(options.build_parser().parse_args([
        "--server", "https://ca.example.org/dir", "--trust-anchors", str(anchors), "-n", "-N",
        "-f", str(run_dir / "account.pem"), "-k", str(run_dir / "domain.pem"),
        "--audit-log", str(run_dir / "audit.log"), *NAMES,
    ]))  # fmt: skip
    tokens = {name: f"{name}-".ljust(43, "t") for name in EDGES}

    def own(role: str, **override: str) -> dict[str, str]:
        ends = {n: t for n, t in tokens.items() if role in (EDGES[n].client, EDGES[n].server)}
        return {**ends, **override}

    keyproc = start_role("keyproc", run_dir, settings["keyproc"], own("keyproc"))
    wait_for_socket(run_dir, "keyacct", keyproc)
    rpc.use_edge_tokens({"acct": tokens["acct"], "key": tokens["key"]})
    with rpc.connect(str(run_dir), "key") as channel:
        good_csr = domainkey_pb2_grpc.DomainKeyStub(channel).Csr(
            domainkey_pb2.CsrRequest(), timeout=10, wait_for_ready=True).der
    attacker_csr = keys.build_csr(ATTACKER_KEY, NAMES)

    acctproc = start_role("acctproc", run_dir, settings["acctproc"], own("acctproc"))
    wait_for_socket(run_dir, "acct", acctproc)
    assert finalize(run_dir, good_csr).signature
    assert "csr key is not the domain key held by keyproc" in refused_finalize(
        run_dir, attacker_csr)
    stop(run_dir, "acct", acctproc)

    # An acctproc without keyproc's token on the keyacct edge learns nothing.
    acctproc = start_role("acctproc", run_dir, settings["acctproc"],
                          own("acctproc", keyacct="w".ljust(43, "w")))
    wait_for_socket(run_dir, "acct", acctproc)
    details = refused_finalize(run_dir, good_csr)
    assert "cannot learn the domain key from keyproc" in details
    assert "unauthenticated" in details
    stop(run_dir, "acct", acctproc)

    # keyproc gone: every finalize is refused, in bounded time (fail closed).
    stop(run_dir, "key", keyproc)
    acctproc = start_role("acctproc", run_dir, settings["acctproc"], own("acctproc"))
    wait_for_socket(run_dir, "acct", acctproc)
    started = time.monotonic()
    assert "cannot learn the domain key from keyproc" in refused_finalize(run_dir, good_csr)
    assert time.monotonic() - started < 20
    stop(run_dir, "acct", acctproc)

    audit = [json.loads(line) for line in (run_dir / "audit.log").read_text().splitlines()]
    assert [(e["kind"], e["decision"]) for e in audit] == [
        ("finalize", "signed"), ("finalize", "refused"), ("finalize", "refused"),
        ("finalize", "refused"),
    ]
    attacker_payload = json.dumps({"csr": b64url(attacker_csr)}).encode()
    assert audit[1]["payload_sha256"] == hashlib.sha256(attacker_payload).hexdigest()
    assert audit[1]["reason"] == "csr key is not the domain key held by keyproc"
