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
"""

import grpc
from cryptography import x509

from letskencrypt import process, rpc
from letskencrypt.certs import (
    check_chain,
    configured_anchors,
    parse_pem_chain,
    split_leaf_and_chain,
)
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import CertificateRejected, NotThisRun
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
        log: Logger,
    ) -> None:
        super().__init__(log)
        self.key_info = keyinfo_pb2_grpc.KeyInfoStub(key_info)
        self.files = files_pb2_grpc.FilesStub(files)
        self.anchors = anchors
        self.operation = operation

    @rpc.guarded
    def Submit(
        self, request: certificate_pb2.SubmitRequest, context: grpc.ServicerContext
    ) -> certificate_pb2.SubmitReply:
        if self.operation != "issue":
            raise NotThisRun(f"this is a {self.operation} run: no certificate is installed")
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
        leaf_pem, chain_pem = split_leaf_and_chain(request.pem_chain)
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


def run(config: RoleConfig[CertprocSettings], log: Logger) -> int:
    # Checked before anything is served.
    anchors = configured_anchors(config.settings.trust_anchors)
    operation = config.settings.operation
    process.confine(config)
    key_info = rpc.connect(config.run_dir, "keyinfo", config.instance)
    files = rpc.connect(config.run_dir, "file", config.instance)
    rpc.wait_ready({"file": files}, config.settings.ready_timeout)
    failed = rpc.serve_until_stopped(
        config.run_dir,
        {
            "cert": [
                (
                    certificate_pb2_grpc.add_CertificateServicer_to_server,
                    CertificateService(key_info, files, anchors, operation, log),
                )
            ]
        },
        config.instance,
    )
    # fileproc has no edge to netproc: the end of the run reaches it through us.
    rpc.stop_peer(files, "fileproc", failed)
    return 0

