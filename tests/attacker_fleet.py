"""A compromised netproc in a `--config` run of two certificates, a and b,
that shares its roles between them (host.py).

tests/compromised_fleet.py starts a real run whose supervisor starts this
file, `python tests/attacker_fleet.py`, in netproc's place.  It reads the
run as the real netproc does, confines itself the same way (every
certificate's paths, namespaces, Landlock, seccomp), waits until it holds
both certificates' edge tokens, and then, from inside that sandbox, tries
to use what one certificate's run gives against the other's, one line per
attempt on stderr:

    ATTACK {"name": ..., "expect": "refused"|"allowed", "outcome": ..., "detail": ...}

Then it goes on as the real netproc (netproc.drive_each), so the run ends
as a normal one if the attacks changed nothing.
"""

import json
import os
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from letskencrypt import host, process, rpc
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.roles import netproc
from letskencrypt.v1 import account_pb2, account_pb2_grpc, domainkey_pb2, domainkey_pb2_grpc

NONCE = "QUJDREVGR0hJSktMTU5PUA"


class Replay:
    """host.Lines that gives the documents already read first."""

    def __init__(self, documents: list[dict[str, Any]], lines: host.Lines) -> None:
        self.documents = list(documents)
        self.lines = lines

    def next(self, limit: int) -> dict[str, Any] | None:
        if self.documents:
            return self.documents.pop(0)
        return self.lines.next(limit)


def report(name: str, expect: str, attempt: Callable[[], str]) -> None:
    try:
        detail = attempt()
        outcome = "succeeded"
    except rpc.RpcError as error:
        outcome, detail = "refused", str(error)
    except Exception as error:
        outcome, detail = "error", f"{type(error).__name__}: {error}"
    line = {"name": name, "expect": expect, "outcome": outcome, "detail": detail[:400]}
    sys.stderr.write(f"ATTACK {json.dumps(line)}\n")
    sys.stderr.flush()


def attack(
    configs: dict[int, RoleConfig],
    certificates: dict[int, rpc.Certificate],
    anchors: dict[int, bytes],
) -> None:
    run_dir = configs[0].run_dir
    a, b = certificates[0], certificates[1]
    settings_a, settings_b = configs[0].settings, configs[1].settings
    log = Logger("netproc", 0, 1)
    with rpc.for_certificate(a):
        peers_a = netproc.Peers(run_dir, 0)
        rpc.wait_ready(peers_a.channels, 20)
    with rpc.for_certificate(b):
        peers_b = netproc.Peers(run_dir, 1)
        rpc.wait_ready(peers_b.channels, 20)
    csr_a: list[bytes] = []

    def csr_of_a() -> str:
        csr_a.append(peers_a.csr())
        return f"keyproc a built a CSR of {len(csr_a[0])} bytes"

    report("key-a-csr", "allowed", csr_of_a)
    report("key-b-csr", "allowed", lambda: f"{len(peers_b.csr())} bytes")

    def keyproc_b_with_a_token() -> str:
        crossed = rpc.Certificate(1, a.edge_tokens, a.server_tokens, a.shared_edges)
        with rpc.for_certificate(crossed):
            channel = rpc.connect(run_dir, "key", 1)
        stub = domainkey_pb2_grpc.DomainKeyStub(channel)
        reply = rpc.call(stub.Csr, domainkey_pb2.CsrRequest(), peer="keyproc")
        return f"keyproc b built a CSR for a's token: {len(reply.der)} bytes"

    report("key-b-with-a-token", "refused", keyproc_b_with_a_token)

    with rpc.for_certificate(b):
        client_b = netproc.connect_ca(peers_b, settings_b, anchors[1], log)
        kid = client_b.account(list(settings_b.contact))
    parts = urlsplit(settings_b.directory_url)
    origin = f"{parts.scheme}://{parts.netloc}"

    def order_a_names_with_b() -> str:
        identifiers = [{"type": "dns", "value": name} for name in settings_a.names]
        payload = json.dumps({"identifiers": identifiers}).encode()
        request = account_pb2.SignRequest(url=origin + "/order-plz", nonce=NONCE, kid=kid,
                                          payload=payload)  # fmt: skip
        reply = rpc.call(peers_b.signer.stub.Sign, request, peer="acctproc")
        return f"acctproc signed an order for a's names as b's: {reply.protected[:60]}"

    report("acct-b-order-for-a-names", "refused", order_a_names_with_b)

    def account_a_signs_for_b() -> str:
        # a and b sign with two authorities' accounts: each has an acctproc of
        # its own (RoleSpec.one_process_per), which knows its certificates'
        # tokens only.  b's token at a's acctproc: no answer (it waits for a
        # turn of b that never comes, then refuses), never a signature.
        assert a.parts["acct"] != b.parts["acct"], (a.parts, b.parts)
        crossed = rpc.Certificate(1, b.edge_tokens, b.server_tokens, b.shared_edges, a.parts)
        with rpc.for_certificate(crossed):
            stub = account_pb2_grpc.AccountStub(rpc.connect(run_dir, "acct", 1))
        identifiers = [{"type": "dns", "value": name} for name in settings_b.names]
        payload = json.dumps({"identifiers": identifiers}).encode()
        request = account_pb2.SignRequest(url=origin + "/order-plz", nonce=NONCE, kid=kid,
                                          payload=payload)  # fmt: skip
        reply = rpc.call(stub.Sign, request, peer="acctproc", timeout=3)
        return f"a's acctproc signed for b with b's token: {reply.protected[:60]}"

    report("acct-a-with-b-token", "refused", account_a_signs_for_b)

    def finalize_b_with_a_csr() -> str:
        with rpc.for_certificate(b):
            chain = client_b.issue(
                list(settings_b.names),
                csr_provider=lambda: csr_a[0],
                publish=peers_b.publish,
                withdraw=peers_b.withdraw,
                thumbprint=peers_b.signer.thumbprint(),
            ).default
        return f"pebble issued b's names for a's key: {chain[:80]!r}"

    report("acct-b-finalize-with-a-csr", "refused", finalize_b_with_a_csr)
    peers_a.close()
    peers_b.close()


def main() -> None:
    process.begin("netproc")
    lines = host.Lines(0)
    run = host.read_run("netproc", lines)
    configs, shared = run.configs, run.shared
    process.settle()
    anchors, problems = netproc.every_ca_bundle(configs)
    process.confine(host.union(configs))
    documents: list[dict[str, Any]] = []
    certificates: dict[int, rpc.Certificate] = {}
    while len(certificates) < 2:
        document = lines.next(host.MAX_CERTIFICATE_DOCUMENT)
        assert document is not None, "the run ended before both certificates started"
        documents.append(document)
        certificate = host.read_certificate(document, configs, shared)
        certificates[certificate.instance] = certificate
    attack(configs, certificates, anchors)
    sys.stderr.write("ATTACK-DONE\n")
    sys.stderr.flush()
    code = netproc.drive_each(configs, shared, Replay(documents, lines), anchors, problems)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
