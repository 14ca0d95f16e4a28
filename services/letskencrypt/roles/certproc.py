"""certproc: refuses any certificate that is not for our key and our names, or
that does not chain to one of the CA's trust anchors.

Holds: the CA's trust anchors (PEM text in its settings).  Network: none.
Serves: Certificate on the `cert` edge (from netproc).
Calls: KeyInfo on the `keyinfo` edge (keyproc: the public key and names of
this run) and Files on the `file` edge (fileproc: the writer).
netproc is the role most exposed to attack, so the expected key and names
come from keyproc, the anchors and the run's operation (issue or revoke)
from our own settings, and only a chain that passes every check reaches
fileproc: in an issue run nothing is ever removed, in a revoke run nothing
is installed.

certproc serves only once fileproc does: fileproc holds the certificate
directory's lock by then (one run at a time, see roles/fileproc.py), and
netproc, which waits for certproc, reaches the CA only after that.
A chain netproc marks as kept (an earlier run's, that revokeproc found) is
checked the same way; if it does not fit this run, the reply says why
instead of failing the run, and netproc goes on as if there were none.

The CA's alternate chains (RFC 8555 7.4.2) come with the default one; each
must carry the same leaf and is verified like the default, and one that
fails is said and left out.  The chain installed is the first verified one
(default first) whose topmost certificate's issuer has the Common Name of
our own settings' preferred chain, else the default: which chain is
installed is never netproc's choice.
"""

from collections.abc import Callable

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from letskencrypt import pem, process, rpc
from letskencrypt.certs import (
    check_chain,
    configured_anchors,
    parse_pem_chain,
    split_leaf_and_chain,
)
from letskencrypt.constants import MAX_ALTERNATES
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import CertificateRejected, InputError, NotThisRun
from letskencrypt.settings import CertprocSettings
from letskencrypt.spec import RoleSpec
from letskencrypt.v1 import (
    certificate_pb2,
    certificate_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    keyinfo_pb2,
    keyinfo_pb2_grpc,
)

# The anchors come as text in the settings: no path at all.
SPEC = RoleSpec(
    name="certproc",
    summary="checks the CA's chain against keyproc's key and names, hands it to fileproc",
    settings=CertprocSettings,
    serves=("cert",),
    calls=("keyinfo", "file"),
    wheels=("cryptography",),
)


class CertificateService(rpc.Servicer, certificate_pb2_grpc.CertificateServicer):
    def __init__(
        self,
        key_info: grpc.Channel,
        files: grpc.Channel,
        anchors: list[x509.Certificate],
        operation: str,
        preferred_chain: str | None,
        log: Logger,
    ) -> None:
        super().__init__(log)
        self.key_info = keyinfo_pb2_grpc.KeyInfoStub(key_info)
        self.files = files_pb2_grpc.FilesStub(files)
        self.anchors = anchors
        self.operation = operation
        self.preferred_chain = preferred_chain

    @rpc.guarded
    def Submit(
        self, request: certificate_pb2.SubmitRequest, context: grpc.ServicerContext
    ) -> certificate_pb2.SubmitReply:
        if self.operation != "issue":
            raise NotThisRun(f"this is a {self.operation} run: no certificate is installed")
        alternates = list(request.alternate_pem_chains)
        if len(alternates) > MAX_ALTERNATES or (request.kept and alternates):
            raise InputError(f"netproc sent {len(alternates)} alternate chains")
        try:
            chain = parse_pem_chain(request.pem_chain)
            expected = rpc.call(
                self.key_info.Describe, keyinfo_pb2.KeyInfoRequest(), peer="keyproc"
            )
            anchor = check_chain(
                chain, expected.public_key_der, list(expected.names), self.anchors
            )
        except CertificateRejected as error:
            if not request.kept:
                raise
            self.log.info(f"the kept certificate does not fit this run: {error}")
            return certificate_pb2.SubmitReply(unfit=str(error))
        verified = [(request.pem_chain, chain, anchor)]
        for number, pem_chain in enumerate(alternates, 1):
            try:
                alternate = parse_pem_chain(pem_chain)
                if alternate[0] != chain[0]:
                    raise CertificateRejected("its leaf is not the default chain's")
                found = check_chain(
                    alternate, expected.public_key_der, list(expected.names), self.anchors
                )
            except CertificateRejected as error:
                self.log.notice(f"alternate chain {number}: {error}; left out")
                continue
            verified.append((pem_chain, alternate, found))
        pem_chain, chain, anchor = self.choose(verified)
        leaf_pem, chain_pem = split_leaf_and_chain(pem_chain)
        rpc.call(
            self.files.Install,
            files_pb2.InstallRequest(certificate_pem=leaf_pem, chain_pem=chain_pem),
            peer="fileproc",
        )
        leaf = chain[0]
        self.log.info(
            f"installed certificate serial {leaf.serial_number:x}, "
            f"trust anchor {anchor.subject.rfc4514_string()}"
        )
        return certificate_pb2.SubmitReply(
            serial_hex=f"{leaf.serial_number:x}",
            not_after=leaf.not_valid_after_utc.isoformat(),
        )

    def choose(
        self, verified: list[tuple[bytes, list[x509.Certificate], x509.Certificate]]
    ) -> tuple[bytes, list[x509.Certificate], x509.Certificate]:
        """The first verified chain (the default first) that ends in a
        certificate issued by the preferred chain's Common Name, else the
        default."""
        if self.preferred_chain is None:
            return verified[0]
        for number, candidate in enumerate(verified):
            topmost = candidate[1][-1].public_bytes(serialization.Encoding.DER)
            if pem.issuer_common_name(topmost) == self.preferred_chain:
                if number:
                    self.log.info(f"chose alternate chain {number} (--preferred-chain)")
                return candidate
        self.log.info(
            f"no verified chain of the {len(verified)} ends in a certificate issued by "
            f"{self.preferred_chain!r} (--preferred-chain): the default chain"
        )
        return verified[0]

    @rpc.guarded
    def Retire(
        self, request: certificate_pb2.RetireRequest, context: grpc.ServicerContext
    ) -> certificate_pb2.RetireReply:
        # netproc calls this once the CA accepted a revocation; in an issue
        # run it is an attempt to delete the installed certificate.
        if self.operation != "revoke":
            raise NotThisRun(f"this is an {self.operation} run: no certificate is removed")
        rpc.call(self.files.Remove, files_pb2.RemoveRequest(), peer="fileproc")
        return certificate_pb2.RetireReply()


def prepare(config: RoleConfig[CertprocSettings], log: Logger) -> Callable[[], rpc.Serving]:
    """Read the trust anchors (checked before anything is served); once
    confined, reach keyproc and fileproc and serve Certificate."""
    anchors = configured_anchors(config.settings.trust_anchors)
    settings = config.settings

    def serving() -> rpc.Serving:
        key_info = rpc.connect(config.run_dir, "keyinfo", config.instance)
        files = rpc.connect(config.run_dir, "file", config.instance)
        rpc.wait_ready({"file": files}, settings.ready_timeout)
        service = CertificateService(
            key_info, files, anchors, settings.operation, settings.preferred_chain, log
        )
        return rpc.Serving(
            {"cert": [(certificate_pb2_grpc.add_CertificateServicer_to_server, service)]},
            finish=lambda failed: finish(key_info, files, failed),
        )

    return serving


def finish(key_info: grpc.Channel, files: grpc.Channel, failed: bool) -> None:
    # fileproc has no edge to netproc: the end of the run reaches it through us.
    rpc.stop_peer(files, "fileproc", failed)
    rpc.release(files)
    rpc.release(key_info)


def run(config: RoleConfig[CertprocSettings], log: Logger) -> int:
    serving = prepare(config, log)
    process.confine(config)
    return process.serve(config, serving())

