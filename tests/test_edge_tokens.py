"""No role can call a role it has no edge to: in native mode the unprivileged
roles share a user, so each edge carries a secret only its two ends know."""

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from letskencrypt import rpc
from letskencrypt.rpc import EDGES, ROLES
from letskencrypt.supervisor import PASSED_ENVIRONMENT, Supervisor
from letskencrypt.v1 import account_pb2, account_pb2_grpc


def test_each_role_learns_only_the_tokens_of_its_own_edges() -> None:
    supervisor = Supervisor(settings={})
    supervisor.run_dir = "/nonexistent"
    assert len(set(supervisor.edge_tokens.values())) == len(EDGES)
    for role in ROLES:
        tokens = supervisor.role_document(role)["edge_tokens"]
        own = {name for name, edge in EDGES.items() if role in (edge.client, edge.server)}
        assert set(tokens) == own, role
        assert all(tokens[name] == supervisor.edge_tokens[name] for name in own)
    # dnsproc, say, knows nothing that opens acctproc's or keyproc's socket.
    assert set(supervisor.role_document("dnsproc")["edge_tokens"]) == {"dns"}


@pytest.fixture
def acctproc() -> Iterator[tuple[str, str]]:
    """A real acctproc serving on a run directory, with an edge token."""
    base = Path(tempfile.mkdtemp(prefix="lk-token-"))
    (base / "acct").mkdir()
    token = "t" * 43
    document = {
        "run_dir": str(base),
        "settings": {
            "key_path": str(base / "account.pem"),
            "create": True,
            "key_type": "ecdsa256",
            "directory_url": "https://ca.example.org/dir",
            "names": ["a.example.org"],
            "contact": [],
            "operation": "issue",
            "audit_log": str(base / "audit.log"),
        },
        "edge_tokens": {"acct": token},
    }
    environment = {k: os.environ[k] for k in PASSED_ENVIRONMENT if k in os.environ}
    process = subprocess.Popen(
        [sys.executable, "-m", "letskencrypt.roles.acctproc"],
        stdin=subprocess.PIPE, env=environment, cwd="/",
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(document).encode())
    process.stdin.close()
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
