"""revokeproc: reads the current certificate and says whether a new one is due.

Holds: read access to the current certificate (read again for every question,
so a long-running pod sees the certificate fileproc installed since).
Network: none.  Serves: Renewal on the `rvk` edge.
The names, the -F switch and the CA's trust anchors come from its own
configuration, so netproc cannot talk it into or out of a renewal; it only
learns the answer.  A certificate whose chain (cert.pem, then chain.pem)
does not lead to a trust anchor, that lives longer than 398 days or is not
valid yet is never current: the answer is RENEW, saying why.

A certificate an earlier run was issued but could not install stays in the
certificate directory as a pending set (see filestore).  If the newest one
chains to a trust anchor, is for exactly this run's names and is not yet due
for renewal, Check hands it to netproc with the decision (kept_chain_pem),
and netproc submits it to certproc, which checks it again, key included,
before fileproc installs it: no new order.  Anything less is only logged,
and the run goes on as it would have.

Check also gives the certificate's ARI identifier (RFC 9773 4.1) and when
the lifetime rule makes it due: netproc asks the CA's renewal information
with the one and weighs it against the other, and a renewal's newOrder says
it `replaces` the certificate (acctproc signs only the identifier its own
configuration names).  Only for a trusted certificate for this run's names.
"""

import os
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from letskencrypt import process, rpc
from letskencrypt.certs import ari_cert_id, configured_anchors, parse_pem_chain, trust_problem
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import (
    CertificateFileError,
    CertificateRejected,
    FileStoreError,
    InputError,
)
from letskencrypt.filestore import read_pending
from letskencrypt.renewal import (
    Decision,
    decide,
    load_certificate_file,
    load_chain_file,
    renewal_due,
)
from letskencrypt.settings import RevokeprocSettings
from letskencrypt.spec import Fs, Grant, RoleSpec
from letskencrypt.v1 import renewal_pb2, renewal_pb2_grpc

# Read the certificates (cert.pem -> .live/cert.pem -> .sets/<id>/cert.pem;
# symlinks are resolved without any Landlock right).  No key lives beneath
# the certificate directory: options.check_key_places refuses one.
SPEC = RoleSpec(
    name="revokeproc",
    summary="reads the current certificate and says whether a new one is due",
    settings=RevokeprocSettings,
    serves=("rvk",),
    paths=lambda settings: [Grant(settings.cert_dir, Fs.READ_FILE | Fs.READ_DIR)],
    wheels=("cryptography",),
)

DECISIONS = {
    Decision.ISSUE: renewal_pb2.DECISION_ISSUE,
    Decision.RENEW: renewal_pb2.DECISION_RENEW,
    Decision.UP_TO_DATE: renewal_pb2.DECISION_UP_TO_DATE,
}


class RenewalService(rpc.Servicer, renewal_pb2_grpc.RenewalServicer):
    def __init__(
        self,
        cert_dir_fd: int,
        cert_path: str,
        names: list[str],
        force: bool,
        anchors: list[x509.Certificate],
        log: Logger,
    ) -> None:
        super().__init__(log)
        self.cert_dir_fd = cert_dir_fd
        self.cert_path = cert_path
        self.cert_dir = os.path.dirname(cert_path)
        self.chain_path = os.path.join(os.path.dirname(cert_path), "chain.pem")
        self.anchors = anchors
        self.names = names
        self.force = force

    def read_certificate(self) -> x509.Certificate | None:
        return load_certificate_file(self.cert_path, dir_fd=self.cert_dir_fd)

    def distrust(self, certificate: x509.Certificate, now: datetime) -> str | None:
        """Why the installed set is not one certproc would accept, or None."""
        try:
            chain = load_chain_file(self.chain_path, dir_fd=self.cert_dir_fd)
        except CertificateFileError as error:
            return f"certificate chain is unusable: {error}"
        return trust_problem([certificate, *chain], self.anchors, now)

    def kept_chain(self, now: datetime) -> bytes:
        """The newest pending set's chain if it would do for this run, else b""."""
        try:
            pending = read_pending(self.cert_dir_fd, self.cert_dir)
        except FileStoreError as error:
            self.log.info(f"{error}; not using it")
            return b""
        if pending is None:
            return b""
        set_id, pem_chain = pending
        where = f"{self.cert_dir}/.sets/{set_id}"
        try:
            chain = parse_pem_chain(pem_chain)
        except CertificateRejected as error:
            problem: str | None = str(error)
        else:
            problem = trust_problem(chain, self.anchors, now)
        if problem is None:
            decision, problem = decide(chain[0], self.names, now, force=False)
            if decision == Decision.UP_TO_DATE:
                self.log.info(f"offering the certificate kept in {where}: {problem}")
                return pem_chain
        self.log.info(f"not offering the certificate kept in {where}: {problem}")
        return b""

    @rpc.guarded
    def Check(
        self, request: renewal_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> renewal_pb2.CheckReply:
        certificate = self.read_certificate()
        now = datetime.now(UTC)
        distrust = None if certificate is None else self.distrust(certificate, now)
        decision, reason = decide(certificate, self.names, now, self.force, distrust)
        # -F forces one renewal, not one per check of a long-running pod.
        self.force = False
        self.log.info(f"{decision.name.lower().replace('_', ' ')}: {reason}")
        ari_cert_id, due_at = replaced(certificate, self.names, distrust)
        return renewal_pb2.CheckReply(
            decision=DECISIONS[decision],
            reason=reason,
            kept_chain_pem=self.kept_chain(now),
            ari_cert_id=ari_cert_id,
            due_at=due_at,
        )

    @rpc.guarded
    def Current(
        self, request: renewal_pb2.CurrentRequest, context: grpc.ServicerContext
    ) -> renewal_pb2.CurrentReply:
        certificate = self.read_certificate()
        if certificate is None:
            return renewal_pb2.CurrentReply()
        return renewal_pb2.CurrentReply(certificate_der=certificate.public_bytes(Encoding.DER))


def replaced(
    certificate: x509.Certificate | None, names: list[str], distrust: str | None
) -> tuple[str, int]:
    """The ARI identifier of the certificate a renewal replaces and when the
    lifetime rule makes it due (unix seconds): ("", 0) unless it is a
    trusted certificate for this run's names (a CA is not told that an
    order replaces a certificate for other names, or one it did not issue)."""
    due = renewal_due(certificate, names, distrust)
    if certificate is None or due.at is None:
        return "", 0
    return ari_cert_id(certificate) or "", int(due.at.timestamp())


def prepare(config: RoleConfig[RevokeprocSettings], log: Logger) -> Callable[[], rpc.Serving]:
    """Open the certificate directory (the certificate is read once confined)."""
    settings = config.settings
    anchors = configured_anchors(settings.trust_anchors)
    cert_dir = settings.cert_dir
    cert_path = os.path.join(cert_dir, "cert.pem")
    # Opened while we may still traverse the directories above it.
    try:
        cert_dir_fd = os.open(cert_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise InputError(f"certificate directory {cert_dir}: {error.strerror}") from None

    def serving() -> rpc.Serving:
        service = RenewalService(
            cert_dir_fd, cert_path, list(settings.names), settings.force, anchors, log
        )
        # An unreadable certificate fails the run before anything else happens.
        service.read_certificate()
        return rpc.Serving(
            {"rvk": [(renewal_pb2_grpc.add_RenewalServicer_to_server, service)]},
            finish=lambda _failed: os.close(cert_dir_fd),
        )

    return serving


def run(config: RoleConfig[RevokeprocSettings], log: Logger) -> int:
    serving = prepare(config, log)
    process.confine(config)
    return process.serve(config, serving())

