"""acctproc: holds the account key and signs only what this run asked for.

Holds: the account private key (read, or created with mode 0400 under -n),
and the audit log (opened for appending before the sandbox closes).
Network: none.  Serves: Account on the `acct` edge.
Calls: KeyInfo on the `keyacct` edge (keyproc: the domain public key and the
names of this run), once, at the first finalize.

acctproc never sees the CA's directory, so it judges each request by its
payload (RFC 8555): a netproc under an attacker's control gets signatures
only for URLs on the directory's origin, for the kinds of request this
run's operation needs (see POLICY), for orders and CSRs naming exactly this
run's names, each as what it is (RFC 8738: an IP address as an "ip"
identifier and an iPAddress entry, never in the CSR's subject; a domain
name as "dns" and a dNSName), for CSRs of the domain key that keyproc
holds (learned from keyproc, never from netproc), for an account update
that sets exactly this run's --contact (posted to the account URL), for a
newOrder's profile only this run's --profile, for a newOrder's `replaces`
(RFC 9773) only the ARI identifier of the certificate this run replaces,
for a challenge response only one that netproc says is of this run's
--challenge type (or http-01, for the addresses of a dns-01 run) (its
word, which the audit log keeps: every type's
response is the same {}, so a lying netproc is not stopped, but an honest
one never answers, say, a dns-persist-01 challenge that a standing record
would pass in a run told to use http-01), and never the key itself.  An
issue run that fails may have its order's pending authorizations
deactivated (RFC 8555 7.5.2: {"status": "deactivated"} posted to an
authorization): which URL is an authorization of this run's order is
netproc's word, so an attacker who owns it can have other authorizations
of this account deactivated on the CA's origin — names then validated
again, no certificate for anyone.  A
persist-record run has only the account found (or registered) and looked
at: it orders nothing.
An external account binding (RFC 8555 7.3.4) is built here, from the kid
and HMAC key of this run's configuration (the key file is read before the
sandbox, like the account key): netproc only asks for "a newAccount with
the binding", and never sees the HMAC key.  Every request, signed or
refused, is one JSON line in the audit log, which netproc cannot reach.

In a revocation with the domain key (--revoke-with domain-key) no account
is used: acctproc starts (its edge is part of every run) but reads no key,
which may be lost, opens no audit log, and refuses every request.

A key rollover run (--rollover-account-key NEWKEY, RFC 8555 7.3.5) reads
the new key before the sandbox too.  netproc asks only for "the key change
of account KID at URL U with nonce N" (SignRequest.key_change): acctproc
builds both JWSs itself, the inner one (jwk = the new key, url = U, payload
{"account": KID, "oldKey": the old JWK}) signed by the new key, the outer
one (kid = KID) by the old key; it refuses a key change that netproc built,
one in any other run, to a URL off the CA's origin, with a new key that is
keyproc's domain key, and any once the key was changed.  When netproc says
the CA accepted it (KeyChanged, for that same KID), acctproc signs with the
new key only and tells its supervisor so, on its stdout (the supervisor's
relay, relay.REPORT_MARKER: {"account_key_changed": SHA-256 of the new
public key}); the command line then puts the new key at the account key's
path and keeps the old one as KEY.old-TIME (keyfiles.replace_account_key).
A lying netproc can have that done without the CA's consent: at worst the
account key file then holds a key that the CA does not know, and the old
key, still known to the CA, is kept beside it.

`replaces`: the supervisor computes the identifier from the installed
certificate when it builds the settings (options.role_settings), so netproc
cannot choose it.  Where the settings cannot know the certificate - a
--daemon run, whose certificate changes while acctproc runs, and a role in
its own container, which cannot read the certificate directory - any
well-formed identifier is signed (settings.replaces_any).  The residual
risk there: an attacker in netproc can have an order for this run's names
claim to replace another certificate of the same account, which at worst
makes the CA treat that one as replaced (no renewal exemption, no second
replacement for it); it gains no certificate and no names.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import hmac
import ipaddress
import json
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from letskencrypt import ari, fsutil, keyfiles, keys, process, rpc
from letskencrypt.b64 import b64url, b64url_decode
from letskencrypt.certs import san_names
from letskencrypt.constants import (
    CHALLENGE_DNS_01,
    CHALLENGE_HTTP_01,
    REVOCATION_REASON_CODES,
    default_audit_log,
)
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import InputError, LetskencryptError
from letskencrypt.relay import REPORT_MARKER
from letskencrypt.settings import ACCOUNT_OPERATIONS, AcctprocSettings
from letskencrypt.spec import Fs, Grant, RoleSpec
from letskencrypt.urls import MAX_URL_LENGTH, require_same_origin, well_formed
from letskencrypt.v1 import account_pb2, account_pb2_grpc, keyinfo_pb2, keyinfo_pb2_grpc
from letskencrypt.validate import DNS, IP, identifier_type, is_nonce, safe_text

# The key is read (or created, -n) and the audit log opened for appending
# before the sandbox: no path after.
SPEC = RoleSpec(
    name="acctproc",
    summary="holds the account key and signs ACME requests for netproc",
    settings=AcctprocSettings,
    serves=("acct",),
    calls=("keyacct",),
    opens=lambda settings: [] if settings.idle else [
        Grant(os.path.dirname(settings.key_path), Fs.READ_FILE | Fs.MAKE_REG, "account key"),
        Grant(
            os.path.dirname(settings.audit_log or default_audit_log(settings.key_path)),
            Fs.MAKE_REG | Fs.WRITE_FILE,
            "audit log",
        ),
        *(
            [Grant(settings.eab_hmac_key, Fs.READ_FILE, "EAB HMAC key")]
            if settings.eab_hmac_key
            else []
        ),
        *(
            [Grant(settings.new_key_path, Fs.READ_FILE, "new account key")]
            if settings.new_key_path
            else []
        ),
    ],
    wheels=("cryptography",),
    # No process holds two accounts' secrets (a run's account key, its new
    # key for a rollover and its EAB key are one account's).
    one_process_per=lambda settings: (
        settings.key_path, settings.new_key_path, settings.eab_hmac_key
    ),
)

MAX_PAYLOAD = 32 * 1024
MAX_IDENTIFIERS = 100
MAX_CSR = 16 * 1024
MAX_CERTIFICATE = 16 * 1024
MAX_TIMESTAMP = 64
MAX_PROFILE = 64
# The file of an EAB HMAC key: base64url text, a line at most.
MAX_HMAC_KEY_FILE = 1024
MIN_HMAC_KEY = 16
AUDIT_LOG_MODE = 0o600
AUDIT_FLAGS = (
    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
)
# keyproc is up by the time of a finalize (netproc got the CSR from it), so
# this is ample; it stays well below netproc's deadline for the Sign call.
KEYPROC_DEADLINE = 10.0

# --- what a run may have signed ------------------------------------------------------

# The operations a run can be (settings.ACCOUNT_OPERATIONS; options.role_settings
# says which).  "update-account" has no command line of its own: an issue
# or revoke run sets its --contact.
ISSUE, REVOKE, ROLLOVER, DEACTIVATE, UPDATE_ACCOUNT, PERSIST_RECORD = ACCOUNT_OPERATIONS
OPERATIONS = ACCOUNT_OPERATIONS

# The kinds of request, told apart by their payload (and by kid for
# termsOfServiceAgreed, which a newAccount and an account update share).
POST_AS_GET = "post-as-get"
NEW_ACCOUNT = "newAccount"
NEW_ORDER = "newOrder"
CHALLENGE = "challenge"
FINALIZE = "finalize"
REVOKE_CERT = "revokeCert"
ACCOUNT_UPDATE = "accountUpdate"
DEACTIVATION = "deactivate"
# The same payload posted to an authorization's URL (RFC 8555 7.5.2).
AUTHZ_DEACTIVATION = "authzDeactivate"
KEY_CHANGE = "keyChange"
# Not a request to sign: netproc saying that the CA accepted the key change.
KEY_CHANGED = "keyChanged"
UNKNOWN = "unknown"
MALFORMED = "malformed"

# kind -> the operations whose runs may have it signed.  Anything else,
# UNKNOWN and MALFORMED included, is refused.
POLICY: dict[str, frozenset[str]] = {
    POST_AS_GET: frozenset(OPERATIONS),
    NEW_ACCOUNT: frozenset(OPERATIONS),
    NEW_ORDER: frozenset({ISSUE}),
    CHALLENGE: frozenset({ISSUE}),
    FINALIZE: frozenset({ISSUE}),
    REVOKE_CERT: frozenset({REVOKE}),
    # Issue and revoke runs: only to set the contact to this run's --contact
    # (check_account_update), when the CA's account shows another.
    ACCOUNT_UPDATE: frozenset({ISSUE, REVOKE, UPDATE_ACCOUNT}),
    DEACTIVATION: frozenset({DEACTIVATE}),
    # An issue run that failed gives up its order's pending authorizations
    # (check_content: the payload only; the URL is netproc's word).
    AUTHZ_DEACTIVATION: frozenset({ISSUE}),
    KEY_CHANGE: frozenset({ROLLOVER}),
}
# newAccount is the only request signed with the JWK embedded (acctproc
# holds no certificate key, so no revokeCert by certificate key either).
EMBEDS_JWK = frozenset({NEW_ACCOUNT})

NEW_ACCOUNT_FIELDS = frozenset({"termsOfServiceAgreed", "onlyReturnExisting", "contact"})
NEW_ORDER_FIELDS = frozenset({"identifiers", "notBefore", "notAfter", "profile", "replaces"})
REVOKE_FIELDS = frozenset({"certificate", "reason"})
ACCOUNT_UPDATE_FIELDS = frozenset({"contact", "termsOfServiceAgreed"})
JWS_FIELDS = frozenset({"protected", "payload", "signature"})
# Each badNonce and busy retry of the key change is signed anew (see
# acme.client): a handful, never an unbounded supply.
MAX_KEY_CHANGE_SIGNATURES = 10


class Refused(InputError):
    """acctproc will not sign this request; `kind` is what it looked like."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"refused to sign {kind}: {reason}")
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class Request:
    """One Sign call, as netproc sent it."""

    url: str
    nonce: str
    kid: str
    payload: bytes
    post_as_get: bool
    # netproc asks for a newAccount with this run's external account binding.
    external_account_binding: bool = False
    # netproc asks for this run's key change (acctproc builds its payload).
    key_change: bool = False
    # A challenge response: the type netproc says it answers ("": http-01).
    challenge_type: str = ""


@dataclass(frozen=True)
class ExternalAccountBinding:
    """This run's external account binding (RFC 8555 7.3.4): the key ID
    and the HMAC key the CA gave, from acctproc's own settings."""

    kid: str
    hmac_key: bytes = field(repr=False)

    @classmethod
    def read(cls, kid: str, path: str) -> "ExternalAccountBinding":
        """The binding of `kid` with the base64url HMAC key in the file at
        `path` (read now, before the sandbox: it is out of reach afterwards)."""
        try:
            data = fsutil.read_file(path, MAX_HMAC_KEY_FILE, follow_symlinks=True)
        except fsutil.FileTooLarge:
            raise InputError(f"EAB HMAC key {path}: larger than {MAX_HMAC_KEY_FILE} bytes, "
                             "not a base64url key") from None
        except fsutil.NotRegularFile:
            raise InputError(f"EAB HMAC key {path}: not a regular file") from None
        except OSError as error:
            raise InputError(f"EAB HMAC key {path}: {error.strerror or error}") from None
        try:
            text = data.decode("ascii").strip().rstrip("=")
            key = b64url_decode(text)
        except (UnicodeDecodeError, InputError):
            raise InputError(f"EAB HMAC key {path}: not base64url text (give the key as the "
                             "CA hands it out)") from None
        if len(key) < MIN_HMAC_KEY:
            raise InputError(f"EAB HMAC key {path}: {len(key)} bytes, too short for an HMAC "
                             f"key (at least {MIN_HMAC_KEY})")
        return cls(kid=kid, hmac_key=key)

    def jws(self, url: str, account_jwk: dict[str, str]) -> dict[str, str]:
        """The binding as a flattened JWS: {alg HS256, kid, url} over the
        account's public JWK, MACed with the HMAC key."""
        header = {"alg": "HS256", "kid": self.kid, "url": url}
        protected = b64url(json.dumps(header, separators=(",", ":")).encode())
        payload = b64url(json.dumps(account_jwk, separators=(",", ":")).encode())
        mac = hmac.new(self.hmac_key, f"{protected}.{payload}".encode(), hashlib.sha256)
        return {"protected": protected, "payload": payload, "signature": b64url(mac.digest())}


# The domain public key (SubjectPublicKeyInfo DER) a finalize's CSR must
# carry; raises a LetskencryptError when it cannot be known.
DomainKeySource = Callable[[], bytes]


class KeyprocDomainKey:
    """The domain public key, as keyproc (not netproc) holds it.

    Asked for over the `keyacct` edge at the first call and then kept: it is
    fixed for the run.  The channel, too, is opened at the first call, which
    comes from a serving thread, so after the sandbox (gRPC starts threads
    when a channel is made).  A failure is not kept: the next finalize asks
    again, and until keyproc answers every finalize is refused.
    """

    def __init__(
        self,
        connect: Callable[[], grpc.Channel],
        names: Iterable[str],
        account_public_key_der: bytes,
        timeout: float = KEYPROC_DEADLINE,
    ) -> None:
        self.connect = connect
        self.names = tuple(names)
        self.account_public_key_der = account_public_key_der
        self.timeout = timeout
        self.channel: grpc.Channel | None = None
        self.key_der: bytes | None = None
        self.lock = threading.Lock()

    def __call__(self) -> bytes:
        with self.lock:
            if self.key_der is None:
                self.key_der = self.fetch()
            return self.key_der

    def fetch(self) -> bytes:
        if self.channel is None:
            self.channel = self.connect()
        stub = keyinfo_pb2_grpc.KeyInfoStub(self.channel)
        reply = rpc.call(
            stub.Describe, keyinfo_pb2.KeyInfoRequest(), peer="keyproc", timeout=self.timeout
        )
        der = reply.public_key_der
        try:
            canonical = keys.public_key_der(serialization.load_der_public_key(der))
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise InputError("keyproc's public key is not a DER public key") from None
        if canonical != der:
            raise InputError("keyproc's public key is not in canonical DER")
        if der == self.account_public_key_der:
            raise InputError("keyproc's public key is the account key")
        # Both come from the run's configuration: a difference means a mix-up.
        if tuple(reply.names) != self.names:
            raise InputError(
                f"keyproc's names {show_names(reply.names)} are not this run's names "
                f"{show_names(self.names)}"
            )
        return der

    def close(self) -> None:
        with self.lock:
            if self.channel is not None:
                self.channel.close()
                self.channel = None


@dataclass(frozen=True)
class RunPolicy:
    """What this run may have signed: from acctproc's own settings, never netproc."""

    operation: str
    names: tuple[str, ...]
    contact: tuple[str, ...]
    directory_url: str
    account_jwk: dict[str, str]
    account_public_key_der: bytes
    domain_key: DomainKeySource
    # The external account binding a registration carries (None: none).
    binding: ExternalAccountBinding | None = None
    # The one profile a newOrder must ask for (None: it asks for none).
    profile: str | None = None
    # The ARI identifier of the certificate this run replaces, the only
    # `replaces` a newOrder may carry (None: none); `replaces_any`: any
    # well-formed one (see check_replaces).
    replaces: str | None = None
    replaces_any: bool = False
    # The challenge type whose responses this run signs (--challenge).
    challenge: str = CHALLENGE_HTTP_01

    @classmethod
    def from_settings(
        cls,
        settings: AcctprocSettings,
        key: keys.PrivateKey,
        domain_key: DomainKeySource,
        binding: ExternalAccountBinding | None = None,
    ) -> "RunPolicy":
        if not settings.names or not all(settings.names):
            raise InputError("settings give no names for this run")
        if (binding is None) != (settings.eab_kid is None) or (
            binding is not None and binding.kid != settings.eab_kid
        ):
            raise InputError("settings: the external account binding is not this run's")
        return cls(
            operation=settings.operation,
            names=settings.names,
            contact=settings.contact,
            directory_url=settings.directory_url,
            account_jwk=keys.jwk(key.public_key()),
            account_public_key_der=keys.public_key_der(key),
            domain_key=domain_key,
            binding=binding,
            profile=settings.profile,
            replaces=settings.replaces,
            replaces_any=settings.replaces_any,
            challenge=settings.challenge,
        )

    def judge(self, request: Request) -> str:
        """The request's kind if it may be signed; Refused (naming the kind) if not."""
        document = parse_payload(request)
        kind = classify(document, has_kid=bool(request.kid))
        if kind == DEACTIVATION and request.url != request.kid:
            kind = AUTHZ_DEACTIVATION
        refuse = Refuser(kind)
        check_envelope(request, self.directory_url, refuse)
        if kind == UNKNOWN:
            shown = ", ".join(sorted(safe_text(k, 40) for k in document or {})[:8])
            raise refuse(f"not an ACME request acctproc signs (fields: {shown})")
        if kind in EMBEDS_JWK and request.kid:
            raise refuse("must be signed with the JWK embedded, not with a kid")
        if kind not in EMBEDS_JWK and not request.kid:
            raise refuse("needs the account URL (kid); only newAccount embeds the JWK")
        if self.operation not in POLICY[kind]:
            raise refuse(f"not part of this run (operation {self.operation})")
        if request.external_account_binding and kind != NEW_ACCOUNT:
            raise refuse("only a newAccount carries an external account binding")
        if request.challenge_type and kind != CHALLENGE:
            raise refuse("only a challenge response names a challenge type")
        self.check_content(kind, document, request, refuse)
        return kind

    def payload_to_sign(self, request: Request) -> bytes:
        """What is signed for a request `judge` passed: netproc's payload, or
        for a newAccount with this run's binding, that payload with the
        binding acctproc builds added as externalAccountBinding."""
        if not request.external_account_binding:
            return request.payload
        if self.binding is None:  # judge refused it already
            raise Refused(NEW_ACCOUNT, "this run has no external account binding")
        document = json.loads(request.payload)
        document["externalAccountBinding"] = self.binding.jws(request.url, self.account_jwk)
        return json.dumps(document, separators=(",", ":")).encode()

    def check_content(
        self, kind: str, document: dict[str, Any] | None, request: Request, refuse: "Refuser"
    ) -> None:
        if kind == CHALLENGE:
            self.check_challenge(request, refuse)
            return
        if document is None:
            return
        if kind == NEW_ACCOUNT:
            self.check_new_account(document, request, refuse)
        elif kind == NEW_ORDER:
            self.check_new_order(document, refuse)
        elif kind == FINALIZE:
            self.check_finalize(document, refuse)
        elif kind == REVOKE_CERT:
            self.check_revocation(document, refuse)
        elif kind == ACCOUNT_UPDATE:
            self.check_account_update(document, request, refuse)
        elif kind == DEACTIVATION:
            if len(document) != 1 or document["status"] != "deactivated" or (
                request.url != request.kid
            ):
                raise refuse('only {"status": "deactivated"} posted to the account URL')
        elif kind == AUTHZ_DEACTIVATION:
            if len(document) != 1 or document["status"] != "deactivated":
                raise refuse('only {"status": "deactivated"} posted to an authorization')
        elif kind == KEY_CHANGE:
            raise refuse("the inner JWS of a key change is built by acctproc from this run's "
                         "new key, never taken from netproc")

    # -- one check per kind --

    def check_challenge(self, request: Request, refuse: "Refuser") -> None:
        """A response ({}) to a challenge of this run's type only.  Every type's
        response is the same {}: the type is netproc's word, which binds it
        (and the audit log keeps), so that a run told to use one type never
        answers another's challenge (a standing dns-persist-01 record, say)."""
        kind = request.challenge_type or CHALLENGE_HTTP_01
        # dns-01 validates no IP address (RFC 8738): a dns-01 run's addresses go by http-01.
        addresses = any(identifier_type(name) == IP for name in self.names)
        if kind == CHALLENGE_HTTP_01 and self.challenge == CHALLENGE_DNS_01 and addresses:
            return
        if kind != self.challenge:
            shown = safe_text(kind, 40)
            raise refuse(f"a {shown} challenge response; this run answers {self.challenge} only")

    def check_contact(self, contact: object, refuse: "Refuser") -> None:
        if not isinstance(contact, list) or tuple(contact) != self.contact:
            raise refuse("contact differs from the configured --contact")

    def check_new_account(
        self, document: dict[str, Any], request: Request, refuse: "Refuser"
    ) -> None:
        if "externalAccountBinding" in document:
            raise refuse("an external account binding is built by acctproc from this run's "
                         "configuration, never taken from netproc")
        extra = set(document) - NEW_ACCOUNT_FIELDS
        if extra:
            raise refuse(f"unexpected field {safe_text(sorted(extra)[0], 40)!r}")
        if "onlyReturnExisting" in document:
            if len(document) != 1 or document["onlyReturnExisting"] is not True:
                raise refuse('a lookup is exactly {"onlyReturnExisting": true}')
            if request.external_account_binding:
                raise refuse("a lookup carries no external account binding")
            return
        if document.get("termsOfServiceAgreed") is not True:
            raise refuse("termsOfServiceAgreed must be true")
        if "contact" in document:
            self.check_contact(document["contact"], refuse)
        if request.external_account_binding and self.binding is None:
            raise refuse("this run has no external account binding (--eab-kid)")
        if self.binding is not None and not request.external_account_binding:
            raise refuse("this run registers its account with its external account binding")

    def check_new_order(self, document: dict[str, Any], refuse: "Refuser") -> None:
        extra = set(document) - NEW_ORDER_FIELDS
        if extra:
            raise refuse(f"unexpected field {safe_text(sorted(extra)[0], 40)!r}")
        for name in ("notBefore", "notAfter"):
            value = document.get(name)
            if value is not None and (
                not isinstance(value, str) or not 0 < len(value) <= MAX_TIMESTAMP
            ):
                raise refuse(f"{name} is not a timestamp")
        self.check_profile(document.get("profile"), refuse)
        if "replaces" in document:
            self.check_replaces(document["replaces"], refuse)
        identifiers = document["identifiers"]
        if not isinstance(identifiers, list) or not 0 < len(identifiers) <= MAX_IDENTIFIERS:
            raise refuse(f"identifiers is not a list of 1 to {MAX_IDENTIFIERS} identifiers")
        values: list[str] = []
        for identifier in identifiers:
            if (
                not isinstance(identifier, dict)
                or set(identifier) != {"type", "value"}
                or not isinstance(identifier["value"], str)
            ):
                raise refuse('each identifier must be exactly {"type", "value"}')
            if identifier["type"] not in (DNS, IP):
                raise refuse(
                    f"identifier type {safe_text(str(identifier['type']), 20)!r} is not dns or ip"
                )
            # RFC 8738: an address is ordered as "ip", a domain name as "dns".
            if identifier["type"] != identifier_type(identifier["value"]):
                what = "an IP address" if identifier["type"] == DNS else "no IP address"
                raise refuse(f"identifier {safe_text(identifier['value'], 100)!r} is {what}, "
                             f"not of type {identifier['type']!r}")
            values.append(identifier["value"])
        self.check_names(values, "identifiers", refuse)

    def check_profile(self, profile: object, refuse: "Refuser") -> None:
        """A newOrder asks for exactly this run's --profile, or for none without one."""
        if profile is None:
            if self.profile is not None:
                raise refuse(f"the order must ask for this run's profile {self.profile!r}")
            return
        shown = safe_text(profile, MAX_PROFILE) if isinstance(profile, str) else "(not text)"
        if self.profile is None:
            raise refuse(f"profile {shown!r}: this run asks for no profile (--profile)")
        if profile != self.profile:
            raise refuse(f"profile {shown!r} is not this run's profile {self.profile!r}")

    def check_replaces(self, replaces: object, refuse: "Refuser") -> None:
        """A newOrder's `replaces` (RFC 9773 5): a well-formed ARI identifier,
        and the one of the certificate this run replaces (its settings')."""
        if not ari.is_cert_id(replaces):
            raise refuse("replaces is not an ARI certificate identifier")
        if self.replaces_any:
            return
        if self.replaces is None:
            raise refuse("replaces: this run replaces no certificate")
        if replaces != self.replaces:
            raise refuse(f"replaces {replaces!r} is not the installed certificate's "
                         f"{self.replaces!r}")  # fmt: skip

    def check_names(self, names: list[str], what: str, refuse: "Refuser") -> None:
        if len(set(names)) != len(names) or set(names) != set(self.names):
            raise refuse(
                f"{what} {show_names(names)} are not this run's names {show_names(self.names)}"
            )

    def check_finalize(self, document: dict[str, Any], refuse: "Refuser") -> None:
        if set(document) != {"csr"}:
            raise refuse("a finalize payload is exactly {\"csr\"}")
        der = decode_base64url(document["csr"], MAX_CSR, "csr", refuse)
        try:
            csr = x509.load_der_x509_csr(der)
            signed = csr.is_signature_valid
            public_key = csr.public_key()
        except (ValueError, TypeError, x509.UnsupportedGeneralNameType):
            raise refuse("csr is not a DER certificate signing request") from None
        except UnsupportedAlgorithm:
            raise refuse("csr uses an unsupported key or signature") from None
        if not signed:
            raise refuse("csr signature does not verify")
        try:
            key_der = public_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        except (ValueError, UnsupportedAlgorithm):
            raise refuse("csr key is of an unsupported type") from None
        if key_der == self.account_public_key_der:
            raise refuse("csr is for the account key, which must never be a certificate key")
        names = csr_names(csr, refuse)
        self.check_names(names, "csr names", refuse)
        for attribute in csr.subject:
            if attribute.oid != x509.NameOID.COMMON_NAME or attribute.value not in self.names:
                raise refuse("csr subject holds something other than one of this run's names")
            if identifier_type(str(attribute.value)) == IP:
                raise refuse("csr subject names an IP address: addresses go in subjectAltName")
        # Last, as it may ask keyproc: the certificate's key must be the one
        # keyproc holds, or a netproc that made its own key would hold the
        # private half of a trusted certificate for our names.
        try:
            domain_key_der = self.domain_key()
        except LetskencryptError as error:
            raise refuse(f"cannot learn the domain key from keyproc: {error}") from None
        if key_der != domain_key_der:
            raise refuse("csr key is not the domain key held by keyproc")

    def check_revocation(self, document: dict[str, Any], refuse: "Refuser") -> None:
        extra = set(document) - REVOKE_FIELDS
        if extra:
            raise refuse(f"unexpected field {safe_text(sorted(extra)[0], 40)!r}")
        reason = document.get("reason", 0)
        if type(reason) is not int or reason not in REVOCATION_REASON_CODES:
            raise refuse("reason is not an RFC 5280 revocation reason")
        der = decode_base64url(document["certificate"], MAX_CERTIFICATE, "certificate", refuse)
        try:
            certificate = x509.load_der_x509_certificate(der)
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = san_names(san.value)
        except x509.ExtensionNotFound:
            raise refuse("certificate has no subjectAltName") from None
        except (ValueError, x509.InvalidVersion, x509.DuplicateExtension,
                x509.UnsupportedGeneralNameType):
            raise refuse("certificate is not a DER certificate") from None
        self.check_names(names, "certificate names", refuse)

    def check_account_update(
        self, document: dict[str, Any], request: Request, refuse: "Refuser"
    ) -> None:
        extra = set(document) - ACCOUNT_UPDATE_FIELDS
        if extra:
            raise refuse(f"unexpected field {safe_text(sorted(extra)[0], 40)!r}")
        if request.url != request.kid:
            raise refuse("an account update is posted to the account URL (kid)")
        if self.operation != UPDATE_ACCOUNT:
            # An issue or revoke run sets the contact the operator gave, nothing else.
            if set(document) != {"contact"}:
                raise refuse('an issue or revoke run updates exactly {"contact"}')
            if not self.contact:
                raise refuse("this run has no --contact to set")
        if "termsOfServiceAgreed" in document and document["termsOfServiceAgreed"] is not True:
            raise refuse("termsOfServiceAgreed must be true")
        if "contact" in document:
            self.check_contact(document["contact"], refuse)

    def judge_key_change(self, request: Request, new_key: keys.PrivateKey) -> None:
        """Whether this run's key change (to `new_key`) may be signed for
        `request`; Refused (as keyChange) if not.  The payload acctproc
        builds, so netproc sends none."""
        refuse = Refuser(KEY_CHANGE)
        if request.payload or request.post_as_get:
            raise refuse("the key change's payload is built by acctproc; netproc sends none")
        check_envelope(request, self.directory_url, refuse)
        if not request.kid:
            raise refuse("needs the account URL (kid)")
        if self.operation not in POLICY[KEY_CHANGE]:
            raise refuse(f"not part of this run (operation {self.operation})")
        if request.external_account_binding:
            raise refuse("only a newAccount carries an external account binding")
        new_der = keys.public_key_der(new_key)
        if new_der == self.account_public_key_der:
            raise refuse("the new key is the account key")
        try:
            domain_key_der = self.domain_key()
        except LetskencryptError as error:
            raise refuse(f"cannot learn the domain key from keyproc: {error}") from None
        if new_der == domain_key_der:
            raise refuse("the new key is the domain key held by keyproc")


class Refuser:
    """Makes the Refused of one kind (a callable, so checks read `raise refuse(...)`)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, reason: str) -> Refused:
        return Refused(self.kind, reason)


def show_names(names: Iterable[str]) -> str:
    shown = [repr(name) for name in sorted(safe_text(name, 100) for name in names)]
    if len(shown) > 5:
        shown = [*shown[:5], f"... ({len(shown)} in all)"]
    return "[" + ", ".join(shown) + "]"


def parse_payload(request: Request) -> dict[str, Any] | None:
    """The payload as one JSON object (None for POST-as-GET); Refused as MALFORMED."""
    refuse = Refuser(MALFORMED)
    if request.post_as_get:
        if request.payload:
            raise refuse("a POST-as-GET carries an empty payload")
        return None
    if len(request.payload) > MAX_PAYLOAD:
        raise refuse(f"payload larger than {MAX_PAYLOAD} bytes")
    try:
        document = json.loads(
            request.payload.decode("utf-8"),
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
        )
    except (UnicodeDecodeError, ValueError):
        raise refuse("payload is not JSON") from None
    except _DuplicateKey as error:
        raise refuse(f"payload repeats the field {safe_text(str(error), 40)!r}") from None
    if not isinstance(document, dict):
        raise refuse("payload is not a JSON object")
    return document


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Two parsers may keep different copies of a repeated field: refuse them."""
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _DuplicateKey(key)
        document[key] = value
    return document


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def classify(document: dict[str, Any] | None, has_kid: bool) -> str:
    """What an RFC 8555 request with this payload is (see POLICY)."""
    if document is None:
        return POST_AS_GET
    fields = set(document)
    if not fields:
        return CHALLENGE
    if fields & JWS_FIELDS:
        return KEY_CHANGE
    if "identifiers" in fields:
        return NEW_ORDER
    if "csr" in fields:
        return FINALIZE
    if "certificate" in fields:
        return REVOKE_CERT
    if "status" in fields:
        return DEACTIVATION
    if fields & {"onlyReturnExisting", "externalAccountBinding"}:
        return NEW_ACCOUNT
    if "termsOfServiceAgreed" in fields and not has_kid:
        return NEW_ACCOUNT
    if fields & ACCOUNT_UPDATE_FIELDS:
        return ACCOUNT_UPDATE
    return UNKNOWN


def check_envelope(request: Request, directory_url: str, refuse: Refuser) -> None:
    """The protected header's url, kid and nonce."""
    refuse_off_origin(request.url, directory_url, "request", refuse)
    if request.kid:
        refuse_off_origin(request.kid, directory_url, "account", refuse)
    nonce = request.nonce
    if not is_nonce(nonce):
        raise refuse("nonce is not base64url of at most 128 characters")


def refuse_off_origin(url: str, directory_url: str, what: str, refuse: Refuser) -> None:
    """A URL to sign for: well formed and on the CA directory's origin, or refused."""
    if not well_formed(url):
        raise refuse(
            f"{what} URL is empty, longer than {MAX_URL_LENGTH}, not printable ASCII "
            "or has characters URL parsers read differently"
        )
    try:
        require_same_origin(url, directory_url, what)
    except InputError as error:
        raise refuse(str(error)) from None


def decode_base64url(value: object, limit: int, what: str, refuse: Refuser) -> bytes:
    if not isinstance(value, str) or not 0 < len(value) <= limit * 4 // 3 + 4:
        raise refuse(f"{what} is not base64url of at most {limit} bytes")
    try:
        return b64url_decode(value)
    except InputError:
        raise refuse(f"{what} is not base64url") from None


def csr_names(csr: x509.CertificateSigningRequest, refuse: Refuser) -> list[str]:
    """The CSR's DNS names and IP addresses (as canonical text); refused if
    it asks for anything else, or for an address as a DNS name."""
    try:
        extensions = list(csr.extensions)
    except (ValueError, x509.UnsupportedGeneralNameType):
        raise refuse("csr has malformed extensions") from None
    names: list[str] = []
    for extension in extensions:
        if not isinstance(extension.value, x509.SubjectAlternativeName):
            raise refuse(f"csr asks for an extension other than subjectAltName "
                         f"({extension.oid.dotted_string})")
        for general_name in extension.value:
            if isinstance(general_name, x509.IPAddress) and isinstance(
                general_name.value, ipaddress.IPv4Address | ipaddress.IPv6Address
            ):
                names.append(str(general_name.value))
            elif not isinstance(general_name, x509.DNSName):
                raise refuse("csr subjectAltName holds something other than DNS names "
                             "and IP addresses")
            elif identifier_type(general_name.value) == IP:
                raise refuse(f"csr asks for the IP address {safe_text(general_name.value, 60)!r} "
                             "as a DNS name")
            else:
                names.append(general_name.value)
    return names


# --- the audit log ---------------------------------------------------------------


def replaces_field(request: Request) -> str | None:
    """What a request's payload says it `replaces` (RFC 9773), for the audit
    log: the value made terminal-safe, "(not text)", or None without one."""
    if request.post_as_get or len(request.payload) > MAX_PAYLOAD:
        return None
    try:
        document = json.loads(request.payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or "replaces" not in document:
        return None
    value = document["replaces"]
    return safe_text(value, 200) if isinstance(value, str) else "(not text)"


class AuditLog:
    """One JSON line per Sign request, appended through a descriptor opened
    before the sandbox: netproc never learns where it is, and cannot write it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    @classmethod
    def open(cls, path: str, account_key_path: str) -> "AuditLog":
        try:
            # O_NONBLOCK: a FIFO planted at the path must not hang us.
            fd = os.open(path, AUDIT_FLAGS | os.O_NONBLOCK, AUDIT_LOG_MODE)
        except OSError as error:
            raise InputError(f"audit log {path}: {error.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InputError(f"audit log {path}: not a regular file")
            if info.st_nlink != 1:
                raise InputError(f"audit log {path}: has other hard links, refusing it")
            with contextlib.suppress(FileNotFoundError):
                key = os.stat(account_key_path)
                if (key.st_dev, key.st_ino) == (info.st_dev, info.st_ino):
                    raise InputError(f"audit log {path} is the account key")
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def record(
        self,
        url: str,
        kind: str,
        payload: bytes,
        decision: str,
        reason: str | None = None,
        *,
        binding: str | None = None,
        asked_binding: bool = False,
        new_key: str | None = None,
        replaces: str | None = None,
        challenge_type: str = "",
    ) -> None:
        """One line: `payload` is netproc's (for a key change, what acctproc
        built); `binding`, the kid of the external account binding acctproc
        added to what it signed; `asked_binding`, that netproc asked for one;
        `new_key`, the SHA-256 of a rollover's new public key; `replaces`,
        the `replaces` of a newOrder (see replaces_field); `challenge_type`,
        the type netproc gave a challenge response."""
        entry: dict[str, str] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "url": url[:MAX_URL_LENGTH],
            "kind": kind,
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "decision": decision,
        }
        if asked_binding:
            entry["external_account_binding"] = "asked"
        if binding is not None:
            entry["external_account_binding"] = safe_text(binding, 200)
        if replaces is not None:
            entry["replaces"] = replaces
        if new_key is not None:
            entry["new_key_sha256"] = new_key
        if challenge_type:
            entry["challenge_type"] = safe_text(challenge_type, 40)
        if reason is not None:
            entry["reason"] = safe_text(reason, 500)
        line = json.dumps(entry, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
        with self.lock:
            try:
                fsutil.write_all(self.fd, line)
                os.fsync(self.fd)
            except OSError as error:
                # No record, no signature.
                raise InputError(f"cannot write the audit log: {error.strerror}") from None


# --- the service -------------------------------------------------------------------


class AccountService(rpc.Servicer, account_pb2_grpc.AccountServicer):
    def __init__(
        self,
        key: keys.PrivateKey,
        policy: RunPolicy,
        audit: AuditLog,
        log: Logger,
        new_key: keys.PrivateKey | None = None,
    ) -> None:
        super().__init__(log)
        self.key = key
        self.policy = policy
        self.audit = audit
        self.jwk = keys.jwk(key.public_key())
        self.thumbprint = keys.thumbprint(key.public_key())
        # A rollover run's new key, until the CA accepted the key change.
        self.new_key = new_key
        # The account of the key change signed so far, and how many times.
        self.key_change_kid: str | None = None
        self.key_change_signatures = 0
        self.key_changed = False
        # The key and the policy change together, once: no signature in between.
        self.lock = threading.Lock()

    def describe(self) -> account_pb2.DescribeReply:
        return account_pb2.DescribeReply(
            jwk_json=json.dumps(self.jwk, sort_keys=True),
            thumbprint=self.thumbprint,
            algorithm=keys.jws_alg(self.key),
        )

    @rpc.guarded
    def Describe(
        self, request: account_pb2.DescribeRequest, context: grpc.ServicerContext
    ) -> account_pb2.DescribeReply:
        with self.lock:
            return self.describe()

    @rpc.guarded
    def Sign(
        self, request: account_pb2.SignRequest, context: grpc.ServicerContext
    ) -> account_pb2.SignReply:
        asked = Request(
            url=request.url,
            nonce=request.nonce,
            kid=request.kid,
            payload=request.payload,
            post_as_get=request.post_as_get,
            external_account_binding=request.external_account_binding,
            key_change=request.key_change,
            challenge_type=request.challenge_type,
        )
        with self.lock:
            if asked.key_change:
                return self.sign_key_change(asked)
            return self.sign(asked)

    def sign(self, asked: Request) -> account_pb2.SignReply:
        bound = asked.external_account_binding
        replaces = replaces_field(asked)
        try:
            kind = self.policy.judge(asked)
        except Refused as refusal:
            self.audit.record(asked.url, refusal.kind, asked.payload, "refused", refusal.reason,
                              asked_binding=bound, replaces=replaces,
                              challenge_type=asked.challenge_type)  # fmt: skip
            self.log.info(str(refusal))
            raise
        payload = self.policy.payload_to_sign(asked)
        protected: dict[str, object] = {"nonce": asked.nonce, "url": asked.url}
        if asked.kid:
            protected["kid"] = asked.kid
        else:
            protected["jwk"] = self.jwk
        jws = keys.sign_jws(self.key, protected, None if asked.post_as_get else payload)
        binding = self.policy.binding
        # Recorded before netproc can use it: no line, no signature.
        self.audit.record(asked.url, kind, asked.payload, "signed",
                          binding=binding.kid if bound and binding else None,
                          replaces=replaces, challenge_type=asked.challenge_type)  # fmt: skip
        return account_pb2.SignReply(
            protected=jws["protected"], payload=jws["payload"], signature=jws["signature"]
        )

    def sign_key_change(self, asked: Request) -> account_pb2.SignReply:
        """RFC 8555 7.3.5: the inner JWS by the new key, inside the outer by the old."""
        try:
            new_key = self.key_change_allowed(asked)
            self.policy.judge_key_change(asked, new_key)
        except Refused as refusal:
            self.audit.record(asked.url, refusal.kind, asked.payload, "refused", refusal.reason)
            self.log.info(str(refusal))
            raise
        inner = keys.sign_jws(
            new_key,
            {"jwk": keys.jwk(new_key.public_key()), "url": asked.url},
            json.dumps({"account": asked.kid, "oldKey": self.jwk}, separators=(",", ":")).encode(),
        )
        payload = json.dumps(inner, separators=(",", ":")).encode()
        jws = keys.sign_jws(self.key, {"nonce": asked.nonce, "url": asked.url, "kid": asked.kid},
                            payload)  # fmt: skip
        self.audit.record(asked.url, KEY_CHANGE, payload, "signed",
                          new_key=keys.spki_sha256(new_key))  # fmt: skip
        self.key_change_kid = asked.kid
        self.key_change_signatures += 1
        return account_pb2.SignReply(
            protected=jws["protected"], payload=jws["payload"], signature=jws["signature"]
        )

    def key_change_allowed(self, asked: Request) -> keys.PrivateKey:
        """This run's new key, if one more signature of its key change may be made."""
        refuse = Refuser(KEY_CHANGE)
        if self.key_changed:
            raise refuse("the account key was changed already in this run")
        if self.new_key is None:
            raise refuse(f"not part of this run (operation {self.policy.operation})")
        if self.key_change_kid is not None and asked.kid != self.key_change_kid:
            raise refuse("a key change for another account than the first one asked for")
        if self.key_change_signatures >= MAX_KEY_CHANGE_SIGNATURES:
            raise refuse(f"more than {MAX_KEY_CHANGE_SIGNATURES} signatures of the key change")
        return self.new_key

    @rpc.guarded
    def KeyChanged(
        self, request: account_pb2.KeyChangedRequest, context: grpc.ServicerContext
    ) -> account_pb2.DescribeReply:
        """netproc says the CA accepted the key change: the new key from now on."""
        with self.lock:
            url = request.account_url
            refuse = Refuser(KEY_CHANGED)
            try:
                if self.key_changed:
                    raise refuse("the account key was changed already in this run")
                if self.new_key is None or self.key_change_kid is None:
                    raise refuse("no key change was signed in this run")
                if url != self.key_change_kid:
                    raise refuse("not the account whose key change was signed")
            except Refused as refusal:
                self.audit.record(url, KEY_CHANGED, b"", "refused", refusal.reason)
                self.log.info(str(refusal))
                raise
            new_key, digest = self.new_key, keys.spki_sha256(self.new_key)
            self.audit.record(url, KEY_CHANGED, b"", "switched", new_key=digest)
            self.key, self.new_key, self.key_changed = new_key, None, True
            self.jwk = keys.jwk(new_key.public_key())
            self.thumbprint = keys.thumbprint(new_key.public_key())
            self.policy = dataclasses.replace(self.policy, account_jwk=self.jwk,
                                              account_public_key_der=keys.public_key_der(new_key))
            # For the command line, which puts the new key in place (see the docstring).
            sys.stdout.write(f"{REPORT_MARKER}{json.dumps({'account_key_changed': digest})}\n")
            sys.stdout.flush()
            self.log.notice(f"account {url}: the CA changed its key; signing with the new key")
            return self.describe()


def read_new_key(path: str, key: keys.PrivateKey) -> keys.PrivateKey:
    """A rollover's new key (read now, before the sandbox): a key we support,
    not the account key (the command line checked it too, and that it is
    the owner's alone; keyproc's domain key is checked at the key change)."""
    new_key = keys.load_key(path, "new account key", "--rollover-account-key")
    if keys.public_key_der(new_key) == keys.public_key_der(key):
        raise InputError(f"new account key {path} is the account key")
    return new_key


class IdleAccountService(rpc.Servicer, account_pb2_grpc.AccountServicer):
    """A run that revokes with the domain key: no account key, nothing signed."""

    def refuse(self, what: str) -> InputError:
        refusal = InputError(
            f"refused to {what}: this run revokes with the domain key and uses no account"
        )
        self.log.info(str(refusal))
        return refusal

    @rpc.guarded
    def Describe(
        self, request: account_pb2.DescribeRequest, context: grpc.ServicerContext
    ) -> account_pb2.DescribeReply:
        raise self.refuse("describe the account key")

    @rpc.guarded
    def Sign(
        self, request: account_pb2.SignRequest, context: grpc.ServicerContext
    ) -> account_pb2.SignReply:
        raise self.refuse("sign")


def prepare(config: RoleConfig[AcctprocSettings], log: Logger) -> Callable[[], rpc.Serving]:
    """Read (or create) the account key, the new key of a rollover, the
    external account binding and the audit log; once confined, what it serves."""
    settings = config.settings
    if settings.idle:
        idle = IdleAccountService(log)
        return lambda: rpc.Serving(
            {"acct": [(account_pb2_grpc.add_AccountServicer_to_server, idle)]}
        )
    key_path = settings.key_path
    key, created = keys.load_or_create_key(
        key_path, settings.create, settings.key_type, "account key", "-n"
    )
    if created:
        log.info(f"created account key {key_path}")
    if settings.require_key_type:
        keyfiles.check_key_type("account key", key_path, keys.key_type_of(key), settings.key_type)
    # No channel yet: it is made at the first finalize, after the sandbox.
    domain_key = KeyprocDomainKey(
        lambda: rpc.connect(config.run_dir, "keyacct", config.instance),
        settings.names,
        keys.public_key_der(key),
    )
    binding = None
    if settings.eab_kid is not None and settings.eab_hmac_key is not None:
        binding = ExternalAccountBinding.read(settings.eab_kid, settings.eab_hmac_key)
    policy = RunPolicy.from_settings(settings, key, domain_key, binding)
    new_key = None
    if settings.new_key_path is not None:
        new_key = read_new_key(settings.new_key_path, key)
    # Opened while we may still reach it: the sandbox keeps the descriptor.
    audit = AuditLog.open(settings.audit_log or default_audit_log(key_path), key_path)
    service = AccountService(key, policy, audit, log, new_key)
    return lambda: rpc.Serving(
        {"acct": [(account_pb2_grpc.add_AccountServicer_to_server, service)]},
        finish=lambda _failed: domain_key.close(),
    )


def run(config: RoleConfig[AcctprocSettings], log: Logger) -> int:
    serving = prepare(config, log)
    process.confine(config)
    return process.serve(config, serving())
