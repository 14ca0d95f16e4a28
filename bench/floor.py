"""The memory floor of the native design: what eight forked roles cost in
total PSS before they do any work of their own.

Run by hand:  .venv/bin/python -m bench.floor [--children 8] [--runs 3]

It prepares a fork server exactly as the supervisor does
(`launch.prepare_to_fork` after importing the command line), forks
`--children` children from it and measures the summed PSS of the server and
its children, twice:

- "idle": each child only sleeps: the cost of the processes themselves;
- "one gRPC call": each child serves one gRPC method on a unix socket and
  answers one call from a channel of its own (what every role does at least
  once), then sleeps.

No sandbox, no ACME, no key: a real role does all that on top.  Compare the
figures with issue 10's target (1.5x certbot's PSS, about 66 MiB here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent import futures

SETTLE = 2.0  # seconds the children get before they are measured


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def idle(_index: int, _directory: str) -> None:
    return None


def one_grpc_call(index: int, directory: str) -> None:
    import grpc
    from letskencrypt.v1 import certificate_pb2, certificate_pb2_grpc

    class Certificate(certificate_pb2_grpc.CertificateServicer):
        def Retire(
            self, request: certificate_pb2.RetireRequest, context: grpc.ServicerContext
        ) -> certificate_pb2.RetireReply:
            return certificate_pb2.RetireReply()

    address = f"unix:{directory}/role-{index}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    certificate_pb2_grpc.add_CertificateServicer_to_server(Certificate(), server)
    server.add_insecure_port(address)
    server.start()
    with grpc.insecure_channel(address) as channel:
        certificate_pb2_grpc.CertificateStub(channel).Retire(
            certificate_pb2.RetireRequest(), timeout=10
        )


def total_pss_mib(children: int, work: Callable[[int, str], None]) -> float:
    """Summed PSS of this (prepared) process and `children` forks doing `work`."""
    directory = tempfile.mkdtemp(prefix="lk-floor-")
    pids = []
    for index in range(children):
        pid = os.fork()
        if pid == 0:
            try:
                work(index, directory)
                time.sleep(SETTLE + 2)
            finally:
                os._exit(0)
        pids.append(pid)
    time.sleep(SETTLE)
    total = pss_kib(os.getpid()) + sum(pss_kib(pid) for pid in pids)
    for pid in pids:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import letskencrypt.cli  # noqa: F401 - what the supervisor has imported when it forks
    from letskencrypt import launch

    launch.prepare_to_fork()
    for label, work in (("idle", idle), ("one gRPC call", one_grpc_call)):
        figures = [total_pss_mib(args.children, work) for _ in range(args.runs)]
        print(
            f"fork server + {args.children} children, {label}: total PSS median "
            f"{statistics.median(figures):.1f} MiB ({min(figures):.1f}-{max(figures):.1f})"
        )


if __name__ == "__main__":
    main()
