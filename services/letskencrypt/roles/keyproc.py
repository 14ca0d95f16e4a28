"""keyproc: holds the domain key and builds the CSR for the names of this run.

Holds: the domain private key (read, or created with mode 0400 under -N).
Network: none.  Serves: DomainKey (the CSR) to netproc on the `key` edge, and
KeyInfo (public key and names only) to certproc on the `keyinfo` edge and to
acctproc on the `keyacct` edge (acctproc signs a finalize only for this key).
The names come from keyproc's own configuration, never from a caller, so a
netproc under an attacker's control cannot get a CSR for other names.
"""

import os

import grpc

from letskencrypt import keys, process, rpc
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.settings import KeyprocSettings
from letskencrypt.spec import Fs, Grant, RoleSpec
from letskencrypt.v1 import domainkey_pb2, domainkey_pb2_grpc, keyinfo_pb2, keyinfo_pb2_grpc

# The key is read (or created, -N) before the sandbox: no path after it.
SPEC = RoleSpec(
    name="keyproc",
    summary="holds the domain key, builds the CSR, tells certproc the public key and names",
    settings=KeyprocSettings,
    serves=("key", "keyinfo", "keyacct"),
    opens=lambda settings: [
        Grant(os.path.dirname(settings.key_path), Fs.READ_FILE | Fs.MAKE_REG, "domain key")
    ],
    wheels=("cryptography",),
)


class DomainKeyService(rpc.Servicer, domainkey_pb2_grpc.DomainKeyServicer):
    def __init__(self, csr_der: bytes, log: Logger) -> None:
        super().__init__(log)
        self.csr_der = csr_der

    @rpc.guarded
    def Csr(
        self, request: domainkey_pb2.CsrRequest, context: grpc.ServicerContext
    ) -> domainkey_pb2.CsrReply:
        return domainkey_pb2.CsrReply(der=self.csr_der)


class KeyInfoService(rpc.Servicer, keyinfo_pb2_grpc.KeyInfoServicer):
    def __init__(self, public_key_der: bytes, names: list[str], log: Logger) -> None:
        super().__init__(log)
        self.public_key_der = public_key_der
        self.names = names

    @rpc.guarded
    def Describe(
        self, request: keyinfo_pb2.KeyInfoRequest, context: grpc.ServicerContext
    ) -> keyinfo_pb2.KeyInfoReply:
        return keyinfo_pb2.KeyInfoReply(public_key_der=self.public_key_der, names=self.names)


def run(config: RoleConfig[KeyprocSettings], log: Logger) -> int:
    settings = config.settings
    names = list(settings.names)
    key, created = keys.load_or_create_key(
        settings.key_path, settings.create, settings.key_type, "domain key", "-N"
    )
    if created:
        log.info(f"created domain key {settings.key_path}")
    process.confine(config)
    # Both answers are fixed for the run: compute them once, before serving.
    csr_der = keys.build_csr(key, names)
    public_key_der = keys.public_key_der(key)
    key_info = KeyInfoService(public_key_der, names, log)
    rpc.serve_until_stopped(
        config.run_dir,
        {
            "key": [
                (domainkey_pb2_grpc.add_DomainKeyServicer_to_server, DomainKeyService(csr_der, log))
            ],
            "keyinfo": [(keyinfo_pb2_grpc.add_KeyInfoServicer_to_server, key_info)],
            "keyacct": [(keyinfo_pb2_grpc.add_KeyInfoServicer_to_server, key_info)],
        },
    )
    return 0

