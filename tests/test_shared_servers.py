"""A role that serves every certificate of a run (host.py) has one server per
edge; each call reaches the servicers of the certificate whose edge token it
carries, and nobody else's (rpc.SharedServers)."""

import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from letskencrypt import rpc
from letskencrypt.v1 import (
    domainkey_pb2,
    domainkey_pb2_grpc,
    keyinfo_pb2,
    keyinfo_pb2_grpc,
    resolver_pb2,
    resolver_pb2_grpc,
)


class Answers(resolver_pb2_grpc.ResolverServicer):
    """Resolves every name to one address that says whose servicer it is,
    and to which certificate's context the call ran in."""

    def __init__(self, instance: int) -> None:
        self.instance = instance

    def Resolve(
        self, request: resolver_pb2.ResolveRequest, context: grpc.ServicerContext
    ) -> resolver_pb2.ResolveReply:
        current = rpc._current.certificate
        running_as = current.instance if current is not None else -1
        return resolver_pb2.ResolveReply(
            addresses=[f"10.0.{self.instance}.1", f"10.1.{running_as}.1"]
        )


def certificate(instance: int) -> rpc.Certificate:
    return rpc.Certificate(
        instance,
        {"dns": secrets.token_urlsafe(32)},
        {"dns": secrets.token_urlsafe(32)},
        frozenset({"dns"}),
    )


@pytest.fixture
def run_dir() -> Iterator[str]:
    # A short path: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="lk-", dir="/tmp") as directory:
        (Path(directory) / "dns").mkdir()
        yield directory


@pytest.fixture
def servers(run_dir: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[rpc.SharedServers]:
    monkeypatch.setattr(rpc, "TURN_WAIT", 1.0)
    shared = rpc.SharedServers(run_dir, ["dns"])
    yield shared
    shared.stop()


def serve(servers: rpc.SharedServers, cert: rpc.Certificate) -> rpc.Stopper:
    stopper = rpc.Stopper()
    servers.expect(cert)
    registrar = resolver_pb2_grpc.add_ResolverServicer_to_server
    servers.add(cert.instance, stopper, {"dns": [(registrar, Answers(cert.instance))]})
    return stopper


def resolve(run_dir: str, cert: rpc.Certificate) -> list[str]:
    with rpc.for_certificate(cert):
        channel = rpc.connect(run_dir, "dns", cert.instance)
    try:
        stub = resolver_pb2_grpc.ResolverStub(channel)
        reply = rpc.call(stub.Resolve, resolver_pb2.ResolveRequest(host="a.test"), peer="dnsproc")
        return list(reply.addresses)
    finally:
        rpc.release(channel)


def test_each_call_reaches_its_own_certificate_s_servicer(
    run_dir: str, servers: rpc.SharedServers
) -> None:
    first, second = certificate(0), certificate(1)
    serve(servers, first)
    serve(servers, second)
    # The one socket of the edge, not a socket per certificate.
    assert sorted(p.name for p in (Path(run_dir) / "dns").iterdir()) == ["sock"]
    for _ in range(3):
        assert resolve(run_dir, first) == ["10.0.0.1", "10.1.0.1"]
        assert resolve(run_dir, second) == ["10.0.1.1", "10.1.1.1"]


def test_a_token_of_no_certificate_is_refused(run_dir: str, servers: rpc.SharedServers) -> None:
    serve(servers, certificate(0))
    stranger = certificate(7)
    started = time.monotonic()
    with pytest.raises(rpc.RpcError, match="failed to authenticate"):
        resolve(run_dir, stranger)
    # It waited for the certificate's turn (TURN_WAIT), then said no.
    assert time.monotonic() - started >= 0.9
    with (
        grpc.insecure_channel(f"unix:{rpc.socket_path(run_dir, 'dns')}") as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        resolver_pb2_grpc.ResolverStub(channel).Resolve(
            resolver_pb2.ResolveRequest(host="a.test"), timeout=5
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_reply_with_another_certificate_s_server_token_is_not_believed(
    run_dir: str, servers: rpc.SharedServers
) -> None:
    first, second = certificate(0), certificate(1)
    serve(servers, first)
    serve(servers, second)
    # First's edge token, but expecting second's server token: the server
    # proves itself as first's, which this caller does not take.
    crossed = rpc.Certificate(
        0, first.edge_tokens, second.server_tokens, frozenset({"dns"})
    )
    with pytest.raises(rpc.RpcError, match="failed to authenticate"):
        resolve(run_dir, crossed)


def test_a_call_before_the_certificate_s_turn_waits_for_it(
    run_dir: str, servers: rpc.SharedServers
) -> None:
    cert = certificate(3)
    answers: list[list[str]] = []
    caller = threading.Thread(target=lambda: answers.append(resolve(run_dir, cert)))
    caller.start()
    time.sleep(0.2)
    serve(servers, cert)
    caller.join(timeout=10)
    assert answers == [["10.0.3.1", "10.1.3.1"]]


def test_a_refused_certificate_says_why_and_can_still_be_stopped(
    run_dir: str, servers: rpc.SharedServers
) -> None:
    refused, served = certificate(0), certificate(1)
    refused_stopper, served_stopper = rpc.Stopper(), serve(servers, served)
    servers.expect(refused)
    servers.add(0, refused_stopper, refusal="could not start: the key is not ECDSA")
    with pytest.raises(rpc.RpcError, match="dnsproc: could not start: the key is not ECDSA"):
        resolve(run_dir, refused)
    with rpc.for_certificate(refused):
        channel = rpc.connect(run_dir, "dns", 0)
    rpc.stop_peer(channel, "dnsproc", failed=True)
    rpc.release(channel)
    assert refused_stopper.wait(5) and refused_stopper.failed
    # Stopping one certificate stops nothing of another's.
    assert not served_stopper.wait(0.1)
    assert resolve(run_dir, served) == ["10.0.1.1", "10.1.1.1"]


def test_a_certificate_removed_is_refused(run_dir: str, servers: rpc.SharedServers) -> None:
    cert = certificate(0)
    serve(servers, cert)
    assert resolve(run_dir, cert)
    servers.remove(0)
    with pytest.raises(rpc.RpcError, match="failed to authenticate"):
        resolve(run_dir, cert)


def test_certificates_share_one_connection_to_a_shared_edge(
    run_dir: str, servers: rpc.SharedServers
) -> None:
    first, second = certificate(0), certificate(1)
    serve(servers, first)
    serve(servers, second)
    channels = []
    for cert in (first, second):
        with rpc.for_certificate(cert):
            channels.append(rpc.connect(run_dir, "dns", cert.instance))
    socket = rpc.socket_path(run_dir, "dns")
    assert socket in rpc._shared_connections
    for channel in channels:
        rpc.release(channel)
    # Released, each certificate's channel leaves the connection to the others.
    assert resolve(run_dir, second) == ["10.0.1.1", "10.1.1.1"]


# --- host.Host: one certificate that cannot be served, the others served ---------


def test_a_certificate_a_shared_role_cannot_prepare_is_refused_with_why(
    run_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dnsproc serving two certificates, whose prepare fails for the second:
    the first is served, the second's calls get the failure (and Stop)."""
    import json
    import os

    from letskencrypt import host
    from letskencrypt.context import RoleConfig
    from letskencrypt.roles import dnsproc
    from letskencrypt.settings import DnsprocSettings

    real_prepare = dnsproc.prepare

    def prepare(config: RoleConfig, log: object) -> object:
        if config.instance == 1:
            raise rpc.RpcError("resolver configuration unreadable")
        return real_prepare(config, log)  # type: ignore[arg-type]

    monkeypatch.setattr(dnsproc, "prepare", prepare)
    monkeypatch.setattr(rpc, "_after_serving", None)
    configs = {i: RoleConfig("dnsproc", run_dir, DnsprocSettings(), instance=i) for i in (0, 1)}
    served = host.Host("dnsproc", host.Run(configs, frozenset({"dns"}), None))
    served.prepare()
    assert served.prepared[1] == "resolver configuration unreadable"
    read_end, write_end = os.pipe()
    certificates = [certificate(0), certificate(1)]
    for cert in certificates:
        document = {"certificate": cert.instance, "edge_tokens": dict(cert.edge_tokens),
                    "server_tokens": dict(cert.server_tokens)}  # fmt: skip
        os.write(write_end, (json.dumps(document) + "\n").encode())
    os.close(write_end)
    thread = threading.Thread(target=served.serve, args=(host.Lines(read_end),), daemon=True)
    monkeypatch.setattr(host.signal, "signal", lambda *_args: None)  # not the main thread
    thread.start()
    try:
        with rpc.for_certificate(certificates[0]):
            channel = rpc.connect(run_dir, "dns", 0)
        stub = resolver_pb2_grpc.ResolverStub(channel)
        reply = rpc.call(stub.Resolve, resolver_pb2.ResolveRequest(host="localhost"),
                         peer="dnsproc")  # fmt: skip
        assert reply.addresses
        with pytest.raises(rpc.RpcError, match="dnsproc: resolver configuration unreadable"):
            resolve(run_dir, certificates[1])
    finally:
        for cert in certificates:
            with rpc.for_certificate(cert):
                channel = rpc.connect(run_dir, "dns", cert.instance)
            rpc.stop_peer(channel, "dnsproc", failed=False)
        thread.join(timeout=10)
        os.close(read_end)
    assert not thread.is_alive()


# --- one server for a role's several edges (keyproc) ----------------------------------


class KeyInfo(keyinfo_pb2_grpc.KeyInfoServicer):
    def Describe(
        self, request: keyinfo_pb2.KeyInfoRequest, context: grpc.ServicerContext
    ) -> keyinfo_pb2.KeyInfoReply:
        return keyinfo_pb2.KeyInfoReply(public_key_der=b"public", names=["a.test"])


class DomainKey(domainkey_pb2_grpc.DomainKeyServicer):
    def Csr(
        self, request: domainkey_pb2.CsrRequest, context: grpc.ServicerContext
    ) -> domainkey_pb2.CsrReply:
        return domainkey_pb2.CsrReply(der=b"csr")


@pytest.fixture
def keyproc_like() -> Iterator[tuple[str, dict[str, str]]]:
    run_dir = tempfile.mkdtemp(prefix="lk-", dir="/tmp")
    for edge in ("key", "keyinfo"):
        (Path(run_dir) / edge).mkdir()
    tokens = {edge: secrets.token_urlsafe(32) for edge in ("key", "keyinfo")}
    servers = {edge: secrets.token_urlsafe(32) for edge in ("key", "keyinfo")}
    rpc.use_edge_tokens(tokens, servers)
    services = {
        "key": [(domainkey_pb2_grpc.add_DomainKeyServicer_to_server, DomainKey())],
        "keyinfo": [(keyinfo_pb2_grpc.add_KeyInfoServicer_to_server, KeyInfo())],
    }
    server = rpc._serve_by_token(run_dir, services, rpc.Stopper(), None)
    try:
        yield run_dir, tokens
    finally:
        server.stop(None)
        rpc.use_edge_tokens({})
        shutil.rmtree(run_dir, ignore_errors=True)


def test_one_server_serves_each_edge_what_its_token_allows(
    keyproc_like: tuple[str, dict[str, str]],
) -> None:
    run_dir, tokens = keyproc_like
    key = rpc.connect(run_dir, "key")
    info = rpc.connect(run_dir, "keyinfo")
    assert rpc.call(domainkey_pb2_grpc.DomainKeyStub(key).Csr, domainkey_pb2.CsrRequest(),
                    peer="keyproc").der == b"csr"  # fmt: skip
    assert rpc.call(keyinfo_pb2_grpc.KeyInfoStub(info).Describe, keyinfo_pb2.KeyInfoRequest(),
                    peer="keyproc").names == ["a.test"]  # fmt: skip
    # The keyinfo edge's caller (certproc) reaches no DomainKey method, even
    # on the key edge's socket.
    socket = f"unix:{rpc.socket_path(run_dir, 'key')}"
    for token, code in (
        (tokens["keyinfo"], grpc.StatusCode.UNIMPLEMENTED),
        ("x" * 43, grpc.StatusCode.UNAUTHENTICATED),
    ):
        with grpc.insecure_channel(socket) as channel, pytest.raises(grpc.RpcError) as refused:
            domainkey_pb2_grpc.DomainKeyStub(channel).Csr(
                domainkey_pb2.CsrRequest(), timeout=5,
                metadata=((rpc.TOKEN_METADATA, token),),
            )  # fmt: skip
        assert refused.value.code() == code
    key.close()
    info.close()


def test_each_edge_keeps_its_own_size_cap_on_a_shared_server(
    keyproc_like: tuple[str, dict[str, str]],
) -> None:
    run_dir, tokens = keyproc_like
    # Under the key edge's 64 KiB, over the keyinfo edge's 16 KiB.
    # An unknown field 99 (length-delimited) of 32 KiB: still a valid request.
    padded = b"\x9a\x06\x80\x80\x02" + b"x" * 32768
    socket = f"unix:{rpc.socket_path(run_dir, 'keyinfo')}"
    with grpc.insecure_channel(socket) as channel, pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary("/letskencrypt.v1.KeyInfo/Describe")(
            padded, timeout=5, metadata=((rpc.TOKEN_METADATA, tokens["keyinfo"]),)
        )
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED



# A SIGTERM that lands on a thread other than the main one (gRPC's, a
# certificate's) while the main thread waits on stdin or for the threads.
SIGTERM_ON_ANOTHER_THREAD = """
import os, signal, sys, threading, time
from letskencrypt import host, process

def on_sigterm(_signum, _frame):
    raise host.Stopped

def sigterm_from_here():
    time.sleep(0.3)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

signal.signal(signal.SIGTERM, on_sigterm)
never = threading.Thread(target=threading.Event().wait, daemon=True)
never.start()
started = time.monotonic()
threading.Thread(target=sigterm_from_here).start()
try:
    if sys.argv[1] == "stdin":
        read_end, _write_end = os.pipe()
        host.Lines(read_end).next(1024)
    elif sys.argv[1] == "threads":
        process.join_all([never])
    else:
        process.sleep(30)
except host.Stopped:
    print(f"stopped after {time.monotonic() - started:.2f} s")
"""


@pytest.mark.parametrize("waiting_on", ["stdin", "threads", "sleep"])
def test_a_sigterm_on_another_thread_reaches_a_main_thread_that_waits(waiting_on: str) -> None:
    """CPython runs a handler in the main thread only once it is back in
    Python code: a shared role waiting on stdin or for its certificates'
    threads, or netproc between two polls of the CA, must still stop at once
    (a shared role sat until the supervisor's SIGKILL)."""
    completed = subprocess.run(
        [sys.executable, "-c", SIGTERM_ON_ANOTHER_THREAD, waiting_on],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert completed.stdout.startswith("stopped after "), completed
    assert float(completed.stdout.split()[2]) < 5, completed.stdout


def test_a_wait_for_a_peer_that_never_comes_ends_when_the_role_is_told_to_stop(
    run_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """certproc waits for fileproc's socket; stopped meanwhile (fileproc is
    stopping too and may never bind it), it gives up at once, not after its
    ready timeout."""
    monkeypatch.setattr(rpc, "STOPPING", threading.Event())
    channel = rpc.connect(run_dir, "dns", 0)
    threading.Timer(0.2, rpc.STOPPING.set).start()
    started = time.monotonic()
    with pytest.raises(rpc.RpcError, match="stopped while waiting"):
        rpc.wait_ready({"dns": channel}, 30)
    assert time.monotonic() - started < 10
    channel.close()
