"""keyproc: holds the domain key and builds the CSR for the names of this run.

Holds: the domain private key (read, or created with mode 0400 under -N).
Network: none.  Serves: DomainKey (the CSR) to netproc on the `key` edge, and
KeyInfo (public key and names only) to certproc on the `keyinfo` edge and to
acctproc on the `keyacct` edge (acctproc signs a finalize only for this key).
The names come from keyproc's own configuration, never from a caller, so a
netproc under an attacker's control cannot get a CSR for other names.

What it does to the key directory is decided by its settings alone, at its
start, before it confines itself and before any peer can reach it (no RPC
writes anything; see keyfiles.py):
- --key-type given: an existing key of another type is refused.
- An issue run refuses a key listed in `compromised-keys` next to it; a
  revocation for keyCompromise adds the key to that list, before netproc
  can send the revocation.
- --rotate-domain-key: a new key of --key-type is made and written as
  `<key>.new`; the CSR and KeyInfo are for it.  The live key is not read
  (it may be unusable: that may be why it is replaced) nor touched; the
  command line renames the new key into place once a certificate for it
  is installed.
"""

import os

import grpc

from letskencrypt import keyfiles, keys, process, rpc
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import KeyFileError, KeyFileMissing
from letskencrypt.settings import KeyprocSettings
from letskencrypt.spec import Fs, Grant, RoleSpec
from letskencrypt.v1 import domainkey_pb2, domainkey_pb2_grpc, keyinfo_pb2, keyinfo_pb2_grpc

# The key is read (or created, -N), a rotation's new key and the list of
# compromised keys written, before the sandbox: no path after it.
SPEC = RoleSpec(
    name="keyproc",
    summary="holds the domain key, builds the CSR, tells certproc the public key and names",
    settings=KeyprocSettings,
    serves=("key", "keyinfo", "keyacct"),
    opens=lambda settings: [
        Grant(
            os.path.dirname(settings.key_path),
            Fs.READ_FILE | Fs.MAKE_REG | Fs.REMOVE_FILE,
            "domain key",
        )
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


def open_key(settings: KeyprocSettings, log: Logger) -> keys.PrivateKey:
    """The key this run serves, after what the settings ask of the key files."""
    path = settings.key_path
    if settings.rotate:
        return start_rotation(settings, log)
    key, created = keys.load_or_create_key(
        path, settings.create, settings.key_type, "domain key", "-N"
    )
    if created:
        log.info(f"created domain key {path}")
    if settings.require_key_type:
        keyfiles.check_key_type("domain key", path, keys.key_type_of(key), settings.key_type)
    digest = keys.spki_sha256(key)
    if settings.key_compromised:
        listed = keyfiles.compromised_list(path)
        if keyfiles.record_compromised(path, digest):
            log.notice(
                f"domain key {path} recorded as compromised in {listed}: it is never used "
                "again (--rotate-domain-key makes a new one)"
            )
        else:
            log.info(f"domain key {path} is already listed as compromised in {listed}")
    elif settings.operation == "issue" and keyfiles.is_compromised(path, digest):
        raise KeyFileError(keyfiles.compromised_message(path))
    return key


def start_rotation(settings: KeyprocSettings, log: Logger) -> keys.PrivateKey:
    """A new key, written as <key>.new: the live key stays as it is."""
    path = settings.key_path
    try:
        keys.require_key_file(path, "domain key", "-N")
    except KeyFileMissing:
        if not settings.create:
            raise
    pending = keyfiles.pending_key(path)
    key = keys.write_key(pending, settings.key_type, "new domain key")
    log.info(
        f"made a new {settings.key_type} domain key {pending}; it replaces {path} once "
        "a certificate for it is installed"
    )
    return key


def run(config: RoleConfig[KeyprocSettings], log: Logger) -> int:
    settings = config.settings
    names = list(settings.names)
    key = open_key(settings, log)
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
        config.instance,
    )
    return 0

