"""revokeproc: reads the current certificate and says whether a new one is due.

Holds: read access to the current certificate (read once, at start).
Network: none.  Serves: Renewal on the `rvk` edge.
The names and the -F switch come from its own configuration, so netproc
cannot talk it into or out of a renewal; it only learns the answer.
"""

from datetime import UTC, datetime

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from letskencrypt import process, rpc
from letskencrypt.process import Logger, RoleConfig
from letskencrypt.renewal import Decision, decide, load_certificate_file
from letskencrypt.v1 import renewal_pb2, renewal_pb2_grpc

DECISIONS = {
    Decision.ISSUE: renewal_pb2.DECISION_ISSUE,
    Decision.RENEW: renewal_pb2.DECISION_RENEW,
    Decision.UP_TO_DATE: renewal_pb2.DECISION_UP_TO_DATE,
}


class RenewalService(renewal_pb2_grpc.RenewalServicer):
    def __init__(
        self, certificate: x509.Certificate | None, names: list[str], force: bool, log: Logger
    ) -> None:
        self.certificate = certificate
        self.names = names
        self.force = force
        self.log = log.error
        self.info = log.info

    @rpc.guarded
    def Check(
        self, request: renewal_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> renewal_pb2.CheckReply:
        decision, reason = decide(self.certificate, self.names, datetime.now(UTC), self.force)
        self.info(f"{decision.name.lower().replace('_', ' ')}: {reason}")
        return renewal_pb2.CheckReply(decision=DECISIONS[decision], reason=reason)

    @rpc.guarded
    def Current(
        self, request: renewal_pb2.CurrentRequest, context: grpc.ServicerContext
    ) -> renewal_pb2.CurrentReply:
        if self.certificate is None:
            return renewal_pb2.CurrentReply()
        return renewal_pb2.CurrentReply(
            certificate_der=self.certificate.public_bytes(Encoding.DER)
        )


def run(config: RoleConfig, log: Logger) -> int:
    settings = config.settings
    certificate = load_certificate_file(settings["cert_path"])
    process.confine(config)
    service = RenewalService(certificate, settings["names"], settings["force"], log)
    rpc.serve_until_stopped(
        config.run_dir, {"rvk": [(renewal_pb2_grpc.add_RenewalServicer_to_server, service)]}
    )
    return 0


def main() -> None:
    process.run_role("revokeproc", run)


if __name__ == "__main__":
    main()
