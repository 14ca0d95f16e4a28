"""The settings model: what each role is told for one run, typed.

The command line (options.role_settings) or the container entry point builds one
frozen dataclass per role; the supervisor serialises each role's own to JSON
on the role's standard input, and `decode` turns it back into the same class,
checking every field's type on the way (a role trusts its supervisor, but a
mistake in either must fail in one line, not as a KeyError three calls later).

No imports beyond the standard library and constants: every role's image
carries this module.
"""

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from letskencrypt.constants import (
    CHALLENGE_DNS_01,
    CHALLENGE_HTTP_01,
    CHALLENGES,
    DEFAULT_DNS_PROPAGATION_TIMEOUT,
    DEFAULT_KEY_TYPE,
    DEFAULT_POLL_TIMEOUT,
    DEFAULT_READY_TIMEOUT,
)
from letskencrypt.errors import InputError

# What a run is for: certproc and fileproc know these two; acctproc also the
# account's own operations (options.role_settings says which a run is).
OPERATIONS = ("issue", "revoke")
ACCOUNT_OPERATIONS = (
    *OPERATIONS, "rollover", "deactivate", "update-account", "persist-record"
)


@dataclass(frozen=True, kw_only=True)
class RoleSettings:
    """What every role is told."""

    # A sandbox feature the kernel lacks is fatal.
    strict: bool = False


def check_challenge(challenge: str) -> None:
    if challenge not in CHALLENGES:
        raise InputError(f"settings: challenge must be one of {', '.join(CHALLENGES)}")


def check_operation(operation: str, known: tuple[str, ...] = OPERATIONS) -> None:
    if operation not in known:
        raise InputError(f"settings: operation must be one of {', '.join(known)}")


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """Daemon mode: renew every `interval` seconds plus up to `jitter`; after
    a failure retry after `backoff`, doubling, at most `interval`."""

    interval: float
    jitter: float
    backoff: float


@dataclass(frozen=True, kw_only=True)
class AriNote:
    """What a run learnt of the CA's renewal information (RFC 9773) for one
    certificate (see ari.py): its suggested window, the time picked in it
    and the time before which the CA is not asked again (unix times), and
    the CA's explanationURL.  cert_id "": the CA offers no renewalInfo."""

    cert_id: str
    start: float | None = None
    end: float | None = None
    chosen: float | None = None
    retry_until: float
    explanation: str | None = None


@dataclass(frozen=True, kw_only=True)
class NetprocSettings(RoleSettings):
    directory_url: str
    ca_bundle: str | None = None
    contact: tuple[str, ...] = ()
    names: tuple[str, ...]
    revoke: bool = False
    revoke_reason: int | None = None
    # -r --revoke-with domain-key: keyproc signs the revokeCert (RFC 8555
    # 7.6, the JWK embedded); no account is looked up, acctproc is not asked.
    revoke_with_domain_key: bool = False
    daemon: Schedule | None = None
    poll_timeout: float = DEFAULT_POLL_TIMEOUT
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    # The run has an external account binding (acctproc holds its kid and
    # key; netproc only asks for a newAccount with it).
    external_account_binding: bool = False
    # The certificate profile to order (--profile), checked against the directory.
    profile: str | None = None
    # Ask the CA's renewal information (RFC 9773) for a certificate that is
    # not due by its lifetime (--no-ari: never).
    ari: bool = True
    # What an earlier run learnt of it (a --config run's state file): used
    # instead of asking again while it holds for the installed certificate.
    ari_note: AriNote | None = None
    # The account's own operations (--rollover-account-key,
    # --deactivate-account): no order, no revocation.
    rollover: bool = False
    deactivate: bool = False
    # How names are validated (--challenge, constants.CHALLENGES).
    challenge: str = CHALLENGE_HTTP_01
    # dns-01: the DNS server that takes chngproc's updates ("ADDRESS:PORT"),
    # asked for the zone of each record.
    dns_server: str | None = None
    # The servers ("ADDRESS:PORT", "[ADDRESS]:PORT") a DNS challenge's
    # records are checked at, directly and without recursion
    # (--dns-check-server); none: the system's resolver (dns-persist-01) or
    # the zone's NS servers (dns-01).
    dns_check_servers: tuple[str, ...] = ()
    # dns-01: how long the servers get to serve a new record.
    dns_propagation_timeout: float = DEFAULT_DNS_PROPAGATION_TIMEOUT
    # `letskencrypt persist-record`: find the account (register it only
    # with `new_account`, -n) and report its URL and the CA's issuer
    # domain names; no order.
    persist_record: bool = False
    new_account: bool = False

    def __post_init__(self) -> None:
        check_challenge(self.challenge)
        if (self.challenge == CHALLENGE_DNS_01) != (self.dns_server is not None):
            raise InputError(
                "settings: NetprocSettings.dns_server goes with dns-01, and only there"
            )
        operations = [self.rollover, self.deactivate, self.persist_record]
        account = any(operations)
        if account and (self.revoke or self.daemon is not None or sum(operations) != 1):
            raise InputError("settings: NetprocSettings asks for more than one operation")


@dataclass(frozen=True, kw_only=True)
class AcctprocSettings(RoleSettings):
    key_path: str
    create: bool = False
    # The type of a key this run creates (-n).
    key_type: str = DEFAULT_KEY_TYPE
    # --key-type was given: an existing key of another type is refused.
    require_key_type: bool = False
    directory_url: str
    # What acctproc may sign: only what this run asked for.
    operation: str
    names: tuple[str, ...]
    contact: tuple[str, ...] = ()
    audit_log: str
    # External account binding (RFC 8555 7.3.4): the key ID the CA gave, and
    # the file of its base64url HMAC key, which acctproc alone reads.
    eab_kid: str | None = None
    eab_hmac_key: str | None = None
    # The only profile a newOrder may ask for (None: none at all).
    profile: str | None = None
    # The ARI identifier (RFC 9773) of the installed certificate: the only
    # `replaces` a newOrder may carry (None: none).  `replaces_any`: any
    # well-formed one (where the settings cannot know the certificate: a
    # daemon's, which changes while it runs; a container's).
    replaces: str | None = None
    replaces_any: bool = False
    # A revocation with the domain key needs no account: acctproc reads no
    # key (it may be lost: that may be why), opens no audit log, and refuses
    # every request.
    idle: bool = False
    # A rollover run (--rollover-account-key): the new key, read before the sandbox.
    new_key_path: str | None = None
    # The challenge type whose responses it signs (--challenge).
    challenge: str = CHALLENGE_HTTP_01

    def __post_init__(self) -> None:
        check_operation(self.operation, ACCOUNT_OPERATIONS)
        check_challenge(self.challenge)
        if self.idle and self.operation != "revoke":
            raise InputError("settings: AcctprocSettings.idle goes with a revoke run only")
        if (self.eab_kid is None) != (self.eab_hmac_key is None):
            raise InputError("settings: eab_kid and eab_hmac_key go together")
        if (self.new_key_path is not None) != (self.operation == "rollover"):
            raise InputError("settings: new_key_path goes with a rollover run, and only there")


@dataclass(frozen=True, kw_only=True)
class KeyprocSettings(RoleSettings):
    key_path: str
    create: bool = False
    # The type of a key this run creates (-N, --rotate-domain-key).
    key_type: str = DEFAULT_KEY_TYPE
    # --key-type was given: an existing key of another type is refused.
    require_key_type: bool = False
    names: tuple[str, ...]
    # issue: a key listed as compromised is refused; revoke: it is not.
    operation: str = "issue"
    # --rotate-domain-key (issue runs): a new key, written next to the key
    # as <key>.new; the command line puts it in place (keyfiles.py).
    rotate: bool = False
    # -r --revoke-reason keyCompromise: record the key as compromised.
    key_compromised: bool = False
    # -r --revoke-with domain-key: keyproc signs the revokeCert itself, for a
    # certificate of its key, to the CA's origin ("https://host:port"), with
    # the run's reason (None: the request names none).
    revoke_with_domain_key: bool = False
    ca_origin: str | None = None
    revoke_reason: int | None = None

    def __post_init__(self) -> None:
        check_operation(self.operation)
        if self.revoke_with_domain_key and (self.operation != "revoke" or not self.ca_origin):
            raise InputError(
                "settings: KeyprocSettings.revoke_with_domain_key goes with a revoke run "
                "and the CA's origin"
            )
        if self.rotate and self.operation != "issue":
            raise InputError("settings: KeyprocSettings.rotate goes with an issue run only")
        if self.key_compromised and self.operation != "revoke":
            raise InputError(
                "settings: KeyprocSettings.key_compromised goes with a revoke run only"
            )


@dataclass(frozen=True, kw_only=True)
class DnsprocSettings(RoleSettings):
    pass


@dataclass(frozen=True, kw_only=True)
class ChngprocSettings(RoleSettings):
    # http-01's directory the web server serves (with dns-01: for the
    # certificate's IP addresses, which only http-01 validates).
    challenge_dir: str | None = None
    challenge: str = CHALLENGE_HTTP_01
    # dns-01: this run's names (the only ones whose records it touches),
    # the DNS server that takes the updates ("ADDRESS:PORT") and the TSIG
    # key file (a BIND `key` statement), which chngproc alone reads.
    names: tuple[str, ...] = ()
    dns_server: str | None = None
    tsig_key: str | None = None

    def __post_init__(self) -> None:
        check_challenge(self.challenge)
        dns = self.challenge == CHALLENGE_DNS_01
        if dns != (self.dns_server is not None and self.tsig_key is not None and bool(self.names)):
            raise InputError(
                "settings: ChngprocSettings.names, dns_server and tsig_key go with dns-01, "
                "and only there"
            )
        if self.challenge == CHALLENGE_HTTP_01 and self.challenge_dir is None:
            raise InputError("settings: ChngprocSettings.challenge_dir is missing for http-01")


@dataclass(frozen=True, kw_only=True)
class CertprocSettings(RoleSettings):
    operation: str
    # PEM text of the CA's roots (see anchors.py); None: not given.
    trust_anchors: str | None = None
    # The issuer Common Name the chain's topmost certificate should have
    # (--preferred-chain), among the default chain and the CA's alternates.
    preferred_chain: str | None = None
    # How long it waits for fileproc (and so for the certificate directory's
    # lock) before it serves.
    ready_timeout: float = DEFAULT_READY_TIMEOUT

    def __post_init__(self) -> None:
        check_operation(self.operation)


@dataclass(frozen=True, kw_only=True)
class FileprocSettings(RoleSettings):
    cert_dir: str
    backup: bool = False
    operation: str

    def __post_init__(self) -> None:
        check_operation(self.operation)


@dataclass(frozen=True, kw_only=True)
class RevokeprocSettings(RoleSettings):
    cert_dir: str
    names: tuple[str, ...]
    force: bool = False
    trust_anchors: str | None = None


KIND_WORDS = {str: "text", bool: "true or false", int: "a whole number", float: "a number"}
SettingsType = TypeVar("SettingsType", bound=RoleSettings)


def encode(settings: RoleSettings) -> dict[str, Any]:
    """The JSON form (tuples become lists)."""
    return dataclasses.asdict(settings)


def decode(cls: type[SettingsType], document: object) -> SettingsType:
    """`cls` from its JSON form; unknown, missing or mistyped fields are refused."""
    return typing.cast(SettingsType, _decode(cls, document, cls.__name__))


def _decode(kind: Any, value: object, where: str) -> object:
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise InputError(f"settings: {where} is not an object")
        hints = typing.get_type_hints(kind)
        fields = {field.name for field in dataclasses.fields(kind)}
        unknown = sorted(map(str, set(value) - fields))
        if unknown:
            raise InputError(f"settings: unknown field {where}.{unknown[0][:40]}")
        missing = sorted(
            field.name
            for field in dataclasses.fields(kind)
            if field.name not in value
            and field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        )
        if missing:
            raise InputError(f"settings: {where}.{missing[0]} is missing")
        return kind(
            **{name: _decode(hints[name], value[name], f"{where}.{name}") for name in value}
        )
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _decode(inner, value, where)
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(kind)
        if not isinstance(value, list | tuple):
            raise InputError(f"settings: {where} is not a list")
        return tuple(_decode(item, entry, f"{where}[]") for entry in value)
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool) and type(value) is kind:
        return value
    raise InputError(f"settings: {where} is not {KIND_WORDS.get(kind, 'what it should be')}")
