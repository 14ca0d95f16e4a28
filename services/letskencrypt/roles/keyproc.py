"""keyproc: holds the domain key and builds the CSR for the names of this run.

Holds: the domain private key (read, or created with mode 0400 under -N).
Network: none.  Serves: DomainKey (the CSR; in a run that revokes with the
domain key, the signed revokeCert) to netproc on the `key` edge, and
KeyInfo (public key and names only) to certproc on the `keyinfo` edge and to
acctproc on the `keyacct` edge (acctproc signs a finalize only for this key).
The names come from keyproc's own configuration, never from a caller, so a
netproc under an attacker's control cannot get a CSR for other names.

A revocation signed with the domain key (RFC 8555 7.6: for when the account
key is lost or compromised) is built here, payload and protected header
both, and signed only as this run's settings allow (RevocationPolicy): in a
run that revokes with the domain key, for a certificate of this key, to a
URL on the CA's origin, with a well-formed nonce, with the run's reason, and
at most MAX_REVOCATION_SIGNATURES times (a badNonce retry needs another).
An attacker who owns netproc gets at most the revocation the operator asked
for, of a certificate of this key: the same end, sooner or later.

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

import json
import os
import threading
from collections.abc import Callable

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from letskencrypt import keyfiles, keys, process, rpc
from letskencrypt.b64 import b64url
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import InputError, KeyFileError, KeyFileMissing
from letskencrypt.settings import KeyprocSettings
from letskencrypt.spec import Fs, Grant, RoleSpec
from letskencrypt.urls import MAX_URL_LENGTH, require_same_origin, well_formed
from letskencrypt.v1 import domainkey_pb2, domainkey_pb2_grpc, keyinfo_pb2, keyinfo_pb2_grpc
from letskencrypt.validate import is_nonce

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
    per_certificate=True,
)

# One revokeCert and a retry for each badNonce netproc retries
# (acme.client.MAX_BAD_NONCE_RETRIES; a busy CA's retries count too).
MAX_REVOCATION_SIGNATURES = 6
MAX_CERTIFICATE = 16 * 1024


class Refused(InputError):
    """keyproc will not sign this revocation."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"refused to sign a revocation with the domain key: {reason}")


class RevocationPolicy:
    """What revokeCert this run may have signed with the domain key, from
    keyproc's own settings and key, never from netproc."""

    def __init__(self, settings: KeyprocSettings, key: keys.PrivateKey) -> None:
        self.allowed = settings.operation == "revoke" and settings.revoke_with_domain_key
        self.operation = settings.operation
        self.ca_origin = settings.ca_origin or ""
        self.reason = settings.revoke_reason
        self.public_key_der = keys.public_key_der(key)
        self.signed = 0
        self.lock = threading.Lock()

    def judge(self, url: str, nonce: str, certificate_der: bytes, reason: int | None) -> None:
        """Passes a request it may sign, and counts it; Refused if not."""
        if not self.allowed:
            what = (
                "an issue run" if self.operation == "issue" else "a revocation with the account key"
            )
            raise Refused(f"this run is {what}")
        if not well_formed(url):
            raise Refused(
                f"the URL is empty, longer than {MAX_URL_LENGTH}, not printable ASCII or has "
                "characters URL parsers read differently"
            )
        try:
            require_same_origin(url, self.ca_origin, "request")
        except InputError as error:
            raise Refused(str(error)) from None
        if not is_nonce(nonce):
            raise Refused("the nonce is not base64url of at most 128 characters")
        if reason != self.reason:
            raise Refused(
                f"reason {show_reason(reason)} is not this run's ({show_reason(self.reason)})"
            )
        self.check_certificate(certificate_der)
        with self.lock:
            if self.signed >= MAX_REVOCATION_SIGNATURES:
                raise Refused(f"signed {MAX_REVOCATION_SIGNATURES} already in this run")
            self.signed += 1

    def check_certificate(self, der: bytes) -> None:
        if not 0 < len(der) <= MAX_CERTIFICATE:
            raise Refused(f"the certificate is empty or larger than {MAX_CERTIFICATE} bytes")
        try:
            certificate = x509.load_der_x509_certificate(der)
            spki = keys.public_key_der(certificate.public_key())
        except (ValueError, TypeError, InputError, UnsupportedAlgorithm, x509.InvalidVersion):
            raise Refused("the certificate is not a DER certificate of an RSA or EC key") from None
        if certificate.public_bytes(serialization.Encoding.DER) != der:
            raise Refused("the certificate is not in canonical DER")
        if spki != self.public_key_der:
            raise Refused(
                f"certificate serial {certificate.serial_number:x} is not for the domain key"
            )


def show_reason(reason: int | None) -> str:
    return "none" if reason is None else str(reason)


class DomainKeyService(rpc.Servicer, domainkey_pb2_grpc.DomainKeyServicer):
    def __init__(
        self, key: keys.PrivateKey, csr_der: bytes, revocation: RevocationPolicy, log: Logger
    ) -> None:
        super().__init__(log)
        self.key = key
        self.csr_der = csr_der
        self.revocation = revocation
        self.jwk = keys.jwk(key.public_key())

    @rpc.guarded
    def Csr(
        self, request: domainkey_pb2.CsrRequest, context: grpc.ServicerContext
    ) -> domainkey_pb2.CsrReply:
        return domainkey_pb2.CsrReply(der=self.csr_der)

    @rpc.guarded
    def SignRevocation(
        self, request: domainkey_pb2.SignRevocationRequest, context: grpc.ServicerContext
    ) -> domainkey_pb2.SignRevocationReply:
        reason = request.reason if request.HasField("reason") else None
        der = request.certificate_der
        try:
            self.revocation.judge(request.url, request.nonce, der, reason)
        except Refused as refusal:
            self.log.info(str(refusal))
            raise
        payload: dict[str, object] = {"certificate": b64url(der)}
        if reason is not None:
            payload["reason"] = reason
        jws = keys.sign_jws(
            self.key,
            {"jwk": self.jwk, "nonce": request.nonce, "url": request.url},
            json.dumps(payload, separators=(",", ":")).encode(),
        )
        self.log.info(
            f"signed the revocation of the certificate with the domain key ({request.url})"
        )
        return domainkey_pb2.SignRevocationReply(
            protected=jws["protected"], payload=jws["payload"], signature=jws["signature"]
        )


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


def prepare(config: RoleConfig[KeyprocSettings], log: Logger) -> Callable[[], rpc.Serving]:
    """Read (or create) the domain key; once confined, what it serves."""
    settings = config.settings
    names = list(settings.names)
    key = open_key(settings, log)

    def serving() -> rpc.Serving:
        # Both answers are fixed for the run: compute them once, before serving.
        csr_der = keys.build_csr(key, names)
        key_info = KeyInfoService(keys.public_key_der(key), names, log)
        domain_key = DomainKeyService(key, csr_der, RevocationPolicy(settings, key), log)
        return rpc.Serving({
            "key": [(domainkey_pb2_grpc.add_DomainKeyServicer_to_server, domain_key)],
            "keyinfo": [(keyinfo_pb2_grpc.add_KeyInfoServicer_to_server, key_info)],
            "keyacct": [(keyinfo_pb2_grpc.add_KeyInfoServicer_to_server, key_info)],
        })  # fmt: skip

    return serving


def run(config: RoleConfig[KeyprocSettings], log: Logger) -> int:
    serving = prepare(config, log)
    process.confine(config)
    return process.serve(config, serving())
