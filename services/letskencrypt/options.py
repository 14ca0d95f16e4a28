"""The command line's options and what they mean for each role: the parser,
the checks of every option, and `role_settings`, which turns a parsed command
line into each role's settings.  The native command (cli.py) and the
container entry point (container.py) build settings the same way here; a
role's container imports this and not the native run's machinery."""

import argparse
import os
import re
import stat
import sys
import typing
from dataclasses import dataclass
from typing import NoReturn

import letskencrypt
from letskencrypt.constants import (
    CHALLENGE_DNS_01,
    CHALLENGE_DNS_PERSIST_01,
    CHALLENGE_HTTP_01,
    CHALLENGES,
    DEFAULT_DNS_PROPAGATION_TIMEOUT,
    DEFAULT_KEY_TYPE,
    DEFAULT_POLL_TIMEOUT,
    EXIT_FAILED,
    LOG_FORMATS,
    MAX_CA_BUNDLE,
    REVOCATION_REASONS,
    REVOKE_WITH,
    REVOKE_WITH_ACCOUNT,
    REVOKE_WITH_DOMAIN_KEY,
    SUBSCRIBER_REVOCATION_REASONS,
    default_audit_log,
)
from letskencrypt.errors import InputError, LetskencryptError
from letskencrypt.settings import (
    AcctprocSettings,
    CertprocSettings,
    ChngprocSettings,
    DnsprocSettings,
    FileprocSettings,
    KeyprocSettings,
    NetprocSettings,
    RevokeprocSettings,
    RoleSettings,
    Schedule,
)
from letskencrypt.urls import origin
from letskencrypt.validate import (
    IP,
    KEY_TYPES,
    dns_server_text,
    identifier_type,
    parse_dns_server,
    safe_text,
    validate_names,
)

LETSENCRYPT_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
# The roots certproc and revokeproc trust when --trust-anchors is not given.
BUILT_IN_ANCHORS = {
    LETSENCRYPT_PRODUCTION: "letsencrypt-production.pem",
    LETSENCRYPT_STAGING: "letsencrypt-staging.pem",
}
DEFAULT_CERT_DIR = "/etc/ssl/acme"
# Outside the certificate directory, which fileproc writes, and the
# challenge directory, which chngproc writes: see check_key_places.
DEFAULT_DOMAIN_KEY = "/etc/ssl/private/acme/privkey.pem"
DEFAULT_ACCOUNT_KEY = "/etc/acme/privkey.pem"
DEFAULT_CHALLENGE_DIR = "/var/www/acme"
MAX_CONTACTS = 10
MAX_CHECK_SERVERS = 8
DEFAULT_INTERVAL = 12 * 3600.0
DEFAULT_BACKOFF = 60.0
MAX_EAB_KID = 256
# A profile name as CAs give them (default, shortlived, tlsserver, classic).
MAX_COMMON_NAME = 64
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Parser(argparse.ArgumentParser):
    """Bad usage is a failure (1), not argparse's 2, which means "nothing to do"."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"letskencrypt: {safe_text(message)} (see --help)\n")
        sys.exit(EXIT_FAILED)


def build_parser() -> Parser:
    parser = Parser(
        prog="letskencrypt",
        description="Get, renew and revoke TLS certificates over ACME (RFC 8555) "
        "with eight isolated processes.",
        epilog="Exit status: 0 certificate changed, 1 failure, 2 nothing to do; "
        "interrupted: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP).",
    )
    add = parser.add_argument
    add("-b", "--backup", action="store_true", help="keep the previous certificate set")
    add("-F", "--force", action="store_true",
        help="renew even if the certificate is current; with --deactivate-account, do not ask")
    add("-n", "--new-account-key", action="store_true", help="create the account key if missing")
    add("-N", "--new-domain-key", action="store_true", help="create the domain key if missing")
    add("-r", "--revoke", action="store_true", help="revoke the current certificate")
    add("-s", "--staging", action="store_true", help="use Let's Encrypt's staging server")
    add("-v", "--verbose", action="count", default=0, help="more output (-vv: debug)")
    add("-C", "--challenge-dir", default=DEFAULT_CHALLENGE_DIR, metavar="DIR",
        help=f"http-01 challenge directory (default {DEFAULT_CHALLENGE_DIR})")
    add("--dns-server", metavar="ADDR[:PORT]",
        help="dns-01: the DNS server (primary of the names' zones) that takes the signed "
        "updates, an IP address (port 53 by default)")
    add("--tsig-key", metavar="FILE",
        help="dns-01: the TSIG key the updates are signed with, a BIND key statement as "
        "tsig-keygen writes it (hmac-sha256, -384 or -512); only chngproc reads it")
    add("--dns-propagation-timeout", type=float, default=DEFAULT_DNS_PROPAGATION_TIMEOUT,
        metavar="SECONDS",
        help="dns-01: longest wait for the zone's servers to serve a new record "
        f"(default {DEFAULT_DNS_PROPAGATION_TIMEOUT:.0f})")
    add("-c", "--cert-dir", default=DEFAULT_CERT_DIR, metavar="DIR",
        help=f"certificate directory (default {DEFAULT_CERT_DIR})")
    add("-f", "--account-key", default=DEFAULT_ACCOUNT_KEY, metavar="FILE",
        help=f"account private key (default {DEFAULT_ACCOUNT_KEY})")
    add("-k", "--domain-key", default=DEFAULT_DOMAIN_KEY, metavar="FILE",
        help=f"domain private key (default {DEFAULT_DOMAIN_KEY})")
    add("--server", metavar="URL",
        help="ACME directory URL, https only (default: Let's Encrypt production)")
    add("--ca-bundle", metavar="FILE",
        help="CA certificates to verify the ACME server's HTTPS with (default: the system's)")
    add("--trust-anchors", metavar="FILE",
        help="the CA's root certificates (PEM): every certificate must chain to one "
        "of them (default: Let's Encrypt's roots for its production and staging "
        "servers; required for any other CA)")
    add("--contact", action="append", default=[], metavar="URI",
        help="account contact, e.g. mailto:admin@example.org (repeatable)")
    add("--eab-kid", metavar="KID",
        help="external account binding: the key ID the CA gave (with --eab-hmac-key), "
        "for a CA that requires it when the account is created")
    add("--eab-hmac-key", metavar="FILE",
        help="external account binding: the file holding the CA's base64url HMAC key "
        "(with --eab-kid); only acctproc reads it")
    add("--profile", metavar="NAME",
        help="order certificates of this profile of the CA's (e.g. shortlived); it must be "
        "one the CA's directory offers")
    add("--preferred-chain", metavar="NAME",
        help="of the CA's alternate certificate chains, install the one whose topmost "
        "certificate's issuer has this Common Name (default: the CA's default chain)")
    add("--no-ari", action="store_true",
        help="never ask the CA's renewal information (RFC 9773, ARI): renew by the "
        "certificate's lifetime alone")
    add("--key-type", choices=KEY_TYPES,
        help=f"type of new keys (default {DEFAULT_KEY_TYPE}); given, an existing key of "
        "another type is refused")
    add("--account-key-type", choices=KEY_TYPES,
        help="type of the account key when it is not --key-type's: a new one is made of "
        "it, an existing one of another type is refused")
    add("--rotate-domain-key", action="store_true",
        help="replace the domain key with a new one (of --key-type) and renew; the old key "
        "is kept as KEY.old-TIME once the new certificate is installed")
    add("--revoke-reason", choices=list(REVOCATION_REASONS), metavar="REASON",
        help="with -r: the RFC 5280 reason the revocation gives: "
        + ", ".join(REVOCATION_REASONS) + " (the CA may refuse some; Let's Encrypt takes "
        + ", ".join(SUBSCRIBER_REVOCATION_REASONS) + ")")
    add("--revoke-with", choices=REVOKE_WITH, metavar="KEY",
        help=f"with -r: sign the revocation with the {REVOKE_WITH_ACCOUNT} key (default) or "
        f"the {REVOKE_WITH_DOMAIN_KEY}, for when the account key is lost or compromised "
        "(no account is used)")
    add("--rollover-account-key", metavar="NEWKEY",
        help="change the account's key to the key in NEWKEY (RFC 8555 key rollover; it must "
        "exist and be its owner's alone), then put NEWKEY's key at the account key's path, "
        "keeping the old one as FILE.old-TIME; orders nothing (give the run's domains)")
    add("--deactivate-account", action="store_true",
        help="deactivate the account (RFC 8555): its key can no longer be used with the CA; "
        "asks to type yes on the terminal first, unless -F; orders nothing (give the run's "
        "domains)")
    add("--daemon", action="store_true",
        help="keep running: check on a schedule and renew when due (exit 0 on SIGTERM)")
    add("--interval", type=float, default=DEFAULT_INTERVAL, metavar="SECONDS",
        help=f"daemon: time between checks (default {DEFAULT_INTERVAL:.0f})")
    add("--jitter", type=float, metavar="SECONDS",
        help="daemon: random extra wait, 0..SECONDS (default: a tenth of the interval)")
    add("--backoff", type=float, metavar="SECONDS",
        help=f"daemon: first wait after a failure, doubling up to the interval "
        f"(default {DEFAULT_BACKOFF:.0f}, or the interval if shorter)")
    add("--poll-timeout", type=float, default=DEFAULT_POLL_TIMEOUT, metavar="SECONDS",
        help="longest an order may wait on the CA, from new order to download "
        f"(default {DEFAULT_POLL_TIMEOUT:.0f})")
    add("--strict", action="store_true",
        help="fail when the kernel lacks a sandbox feature (default: log it and go on)")
    add("--audit-log", metavar="FILE",
        help="acctproc's log of every signature request "
        "(default: audit.log next to the account key)")
    add("--user", default="nobody",
        help="unprivileged user the roles run as when started as root (default nobody)")
    add("--config", metavar="FILE",
        help="every certificate of this acme-client.conf(5) file (or only the domain "
        "blocks named) in one run; see letskencrypt.conf(5)")
    add("-j", "--jobs", type=int, metavar="N",
        help="with --config: certificates in progress at a time (default: 4 per CPU, 2 to 16)")
    add("--deploy-hook", metavar="COMMAND",
        help="run by /bin/sh once for each certificate changed, after its roles have "
        "exited, with LETSKENCRYPT_CERTIFICATE, _NAMES, _CERT_DIR, _CERT, _CHAIN, "
        "_FULLCHAIN in the environment")
    add("--log-format", choices=LOG_FORMATS, default="text",
        help="text (default), or json: one object per line (time, certificate, role, event)")
    add("--metrics-file", metavar="FILE",
        help="write Prometheus textfile metrics here after the run (replaced atomically)")
    add("--challenge", choices=CHALLENGES, default=CHALLENGE_HTTP_01, metavar="TYPE",
        help=f"how control of the names is proven: {', '.join(CHALLENGES)} (default "
        f"{CHALLENGE_HTTP_01}); {CHALLENGE_DNS_01} publishes TXT records by RFC 2136 "
        "update (--dns-server, --tsig-key), IP addresses going by http-01; "
        f"{CHALLENGE_DNS_PERSIST_01} needs the record that persist-record prints, and no "
        "DNS credentials; the DNS challenges allow *.NAME")
    add("--dns-check-server", action="append", default=[], metavar="ADDR[:PORT]",
        help="ask this DNS server (an IP address; port 53 by default) directly, without "
        "recursion, for the records a DNS challenge checks, instead of the system's resolver "
        "or, for dns-01, the zone's NS servers (split-horizon DNS; repeatable: every one "
        "must serve them)")
    add("--wildcard", action="store_true",
        help="persist-record: records with policy=wildcard, which also cover *.NAME and "
        "the names below NAME")
    add("--persist-until", metavar="DATE",
        help="persist-record: records the CA takes until DATE only (2027-06-30, or "
        "2027-06-30T12:00:00Z)")
    add("--version", action="version", version=f"letskencrypt {version()}")
    add("domains", nargs="*", metavar="domain",
        help="primary domain, then alternative names (domain names or IP addresses); "
        "with --config: the domain blocks to run (default: all)")
    return parser


def version() -> str:
    return letskencrypt.__version__


def check_contact(contact: str) -> str:
    if "@" in contact and ":" not in contact:
        contact = f"mailto:{contact}"
    if not contact.startswith(("mailto:", "https:")) or len(contact) > 320:
        raise InputError(f"invalid contact {safe_text(contact, 80)!r}: use mailto:ADDRESS")
    if not contact.isprintable() or not contact.isascii() or " " in contact:
        raise InputError(f"invalid contact {safe_text(contact, 80)!r}")
    return contact


def check_eab(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The external account binding's key ID and key file (both or neither).
    The file must exist and be readable; only acctproc reads what is in it."""
    kid, key_file = args.eab_kid, args.eab_hmac_key
    if (kid is None) != (key_file is None):
        raise InputError("--eab-kid and --eab-hmac-key go together")
    if kid is None or key_file is None:
        return None, None
    if not 0 < len(kid) <= MAX_EAB_KID or not kid.isascii() or not kid.isprintable() or (
        " " in kid
    ):
        raise InputError(
            f"--eab-kid {safe_text(kid, 80)!r}: give the key ID as the CA gave it "
            f"(printable ASCII, no spaces, at most {MAX_EAB_KID} characters)"
        )
    return kid, check_readable_file(key_file, "--eab-hmac-key")


def check_preferred_chain(name: str | None) -> str | None:
    """An issuer Common Name: 1 to 64 printable characters (RFC 5280's ub-common-name)."""
    if name is not None and not (0 < len(name) <= MAX_COMMON_NAME and name.isprintable()):
        raise InputError(
            f"--preferred-chain {safe_text(name, 80)!r}: give the issuer's Common Name "
            f"(1 to {MAX_COMMON_NAME} printable characters)"
        )
    return name


def check_profile(profile: str | None) -> str | None:
    if profile is not None and not PROFILE_NAME.fullmatch(profile):
        raise InputError(
            f"--profile {safe_text(profile, 80)!r}: a profile name is letters, digits, "
            "'.', '_' and '-' (at most 64)"
        )
    return profile


def check_revoke_with(args: argparse.Namespace) -> bool:
    """Whether the revocation is signed with the domain key (--revoke-with)."""
    if args.revoke_with is None:
        return False
    if not args.revoke:
        raise InputError("--revoke-with goes with -r")
    # -n is let be (a configuration file's runs may always give it): no
    # account key is read, nor made.
    return args.revoke_with == REVOKE_WITH_DOMAIN_KEY


def origin_text(url: str) -> str:
    """"https://host:port" of an https URL (checked by check_directory_url)."""
    scheme, host, port = origin(url)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def check_account_operation(args: argparse.Namespace) -> str | None:
    """The account's own operation this run is for ("rollover", "deactivate",
    "persist-record"), None for a certificate's; what makes no sense with it
    is refused."""
    rollover = args.rollover_account_key is not None
    persist_record = getattr(args, "persist_record", False)
    if not persist_record and (args.wildcard or args.persist_until):
        raise InputError("--wildcard and --persist-until go with persist-record")
    if persist_record:
        others = {
            "--rollover-account-key": rollover,
            "--deactivate-account": args.deactivate_account,
            "-r": args.revoke,
            "--daemon": args.daemon,
            "--rotate-domain-key": args.rotate_domain_key,
            "--deploy-hook": args.deploy_hook,
            "--metrics-file": args.metrics_file,
        }
        for other, given in others.items():
            if given:
                raise InputError(f"persist-record does not go with {other}")
        return "persist-record"
    if not rollover and not args.deactivate_account:
        return None
    flag = "--rollover-account-key" if rollover else "--deactivate-account"
    others = {
        "--deactivate-account": rollover and args.deactivate_account,
        "-r": args.revoke,
        "--daemon": args.daemon,
        "--rotate-domain-key": args.rotate_domain_key,
        "-n (the account must exist)": args.new_account_key,
        "--account-key-type (the new key is of its own type)": (
            rollover and args.account_key_type is not None
        ),
    }
    for other, given in others.items():
        if given:
            raise InputError(f"{flag} does not go with {other}")
    return "rollover" if rollover else "deactivate"


def check_new_account_key(path: str, secrets: dict[str, str]) -> str:
    """--rollover-account-key: a regular file (no symlink) of ours alone, no
    other key of this run.  What is in it cli.check_keys checks."""
    path = os.path.abspath(path)
    what = f"--rollover-account-key {path}"
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        raise InputError(f"{what}: no such file (make the new key first)") from None
    if stat.S_ISLNK(status.st_mode):
        raise InputError(f"{what}: is a symbolic link, refusing to follow it")
    if not stat.S_ISREG(status.st_mode):
        raise InputError(f"{what}: not a regular file")
    if status.st_uid != os.geteuid():
        raise InputError(f"{what}: owned by uid {status.st_uid}, not by uid {os.geteuid()} "
                         "that runs letskencrypt")  # fmt: skip
    if status.st_mode & 0o077:
        raise InputError(f"{what}: its group or others may use it (mode "
                         f"{stat.S_IMODE(status.st_mode):o}): chmod 400 {path}")  # fmt: skip
    for other, other_path in secrets.items():
        if os.path.realpath(other_path) == os.path.realpath(path):
            raise InputError(f"{what}: is the {other} of this run; give the new key's own file")
    return path


DNS01_OPTIONS = {"--dns-server": "dns_server", "--tsig-key": "tsig_key"}


@dataclass(frozen=True)
class DnsChallengeOptions:
    """dns-01's checked options: the server's canonical text, the key file's path."""

    server: str
    tsig_key: str
    propagation_timeout: float


def check_challenge(args: argparse.Namespace) -> str:
    """--challenge; a wildcard name needs a DNS challenge (validate_names says so)."""
    if args.dns_check_server and args.challenge == CHALLENGE_HTTP_01 and not args.config:
        raise InputError("--dns-check-server goes with --challenge dns-01 or dns-persist-01")
    if args.challenge != CHALLENGE_DNS_01:
        for option, attribute in DNS01_OPTIONS.items():
            if getattr(args, attribute):
                raise InputError(f"{option} goes with --challenge {CHALLENGE_DNS_01}")
    return typing.cast(str, args.challenge)


def check_dns01(
    args: argparse.Namespace, names: tuple[str, ...], key_readable: bool = True
) -> DnsChallengeOptions | None:
    """dns-01's options (None: another challenge).  The TSIG key file must be
    there and readable; what is in it only chngproc reads."""
    if args.challenge != CHALLENGE_DNS_01:
        return None
    # dns-01 validates domain names only: the addresses of a certificate go by
    # http-01 (and -C) all the same, but one of addresses alone is no dns-01.
    if all(identifier_type(name) == IP for name in names):
        raise InputError(f"{CHALLENGE_DNS_01} validates domain names only; IP addresses need "
                         f"{CHALLENGE_HTTP_01}")  # fmt: skip
    if not args.dns_server or not args.tsig_key:
        raise InputError(f"--challenge {CHALLENGE_DNS_01} needs --dns-server and --tsig-key")
    timeout = args.dns_propagation_timeout
    if not 1 <= timeout <= 3600:
        raise InputError("--dns-propagation-timeout must be between 1 and 3600 seconds")
    return DnsChallengeOptions(
        server=dns_server_text(*parse_dns_server(args.dns_server, "--dns-server")),
        tsig_key=check_readable_file(args.tsig_key, "--tsig-key")
        if key_readable
        else os.path.abspath(args.tsig_key),
        propagation_timeout=timeout,
    )


def check_dns_servers(texts: list[str]) -> tuple[str, ...]:
    """--dns-check-server ADDR[:PORT] (repeatable): canonical "ADDR:PORT" texts."""
    servers = tuple(dict.fromkeys(
        dns_server_text(*parse_dns_server(text, "--dns-check-server")) for text in texts
    ))  # fmt: skip
    if len(servers) > MAX_CHECK_SERVERS:
        raise InputError(f"at most {MAX_CHECK_SERVERS} --dns-check-server")
    return servers


def check_directory_url(args: argparse.Namespace) -> str:
    if args.server and args.staging:
        raise InputError("give either -s or --server, not both")
    url = args.server or (LETSENCRYPT_STAGING if args.staging else LETSENCRYPT_PRODUCTION)
    origin(url)
    return url


def check_readable_file(path: str, what: str) -> str:
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise InputError(f"{what} {path}: a directory, not a file")
    if not os.path.isfile(path):
        raise InputError(f"{what} {path}: no such file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{what} {path}: not readable")
    return path


def check_ca_bundle(path: str) -> str:
    """netproc's trust store for the CA's TLS: refused now, not after every
    role has started, when OpenSSL cannot use it."""
    path = check_readable_file(path, "CA bundle")
    if os.path.getsize(path) > MAX_CA_BUNDLE:
        raise InputError(f"CA bundle {path}: larger than {MAX_CA_BUNDLE // (1024 * 1024)} MiB")
    import ssl  # netproc's alone: the other roles' containers need not load it

    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError):
        raise InputError(f"CA bundle {path}: no PEM certificate OpenSSL can use") from None
    return path


def check_distinct_keys(account_key: str, domain_key: str) -> None:
    if os.path.realpath(account_key) == os.path.realpath(domain_key):
        raise InputError(f"the account key and the domain key are the same file ({account_key})")


def check_trust_anchors(args: argparse.Namespace, directory_url: str) -> str:
    """The PEM text of the CA's roots: --trust-anchors, else Let's Encrypt's own."""
    from letskencrypt import anchors  # certproc's and revokeproc's alone, of the roles

    if args.trust_anchors:
        path = os.path.abspath(args.trust_anchors)
        return anchors.validate(anchors.read_file(path), f"--trust-anchors {path}")
    built_in = BUILT_IN_ANCHORS.get(directory_url)
    if built_in is None:
        raise InputError(
            f"{safe_text(directory_url, 200)} is not Let's Encrypt: give the CA's root "
            "certificates with --trust-anchors FILE"
        )
    return anchors.validate(anchors.built_in(built_in), f"built-in {built_in}")


def check_poll_timeout(seconds: float) -> float:
    if not 5 <= seconds <= 3600:
        raise InputError("--poll-timeout must be between 5 and 3600 seconds")
    return seconds


def check_schedule(args: argparse.Namespace) -> Schedule:
    if args.revoke:
        raise InputError("--daemon does not go with -r")
    interval = args.interval
    if not 1 <= interval <= 30 * 86400:
        raise InputError("--interval must be between 1 second and 30 days")
    jitter = interval / 10 if args.jitter is None else args.jitter
    backoff = min(DEFAULT_BACKOFF, interval) if args.backoff is None else args.backoff
    if not 0 <= jitter <= interval:
        raise InputError("--jitter must be between 0 and the interval")
    if not 1 <= backoff <= interval:
        raise InputError("--backoff must be between 1 second and the interval")
    return Schedule(interval=interval, jitter=jitter, backoff=backoff)


def check_audit_log(path: str | None, account_key: str, domain_key: str) -> str:
    """acctproc's audit log: by default next to the account key, never a key."""
    if path is None:
        return default_audit_log(account_key)
    path = os.path.abspath(path)
    if path in (account_key, domain_key) or os.path.isdir(path):
        raise InputError(f"--audit-log {path}: give a file that is not a key")
    return path


def is_within(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([path, directory]) == directory


def check_key_places(keys: dict[str, str], written: dict[str, str]) -> None:
    """No key (nor the audit log) inside a directory that a role writes: that
    role could remove, rename or replace it."""
    for what, path in keys.items():
        for where, directory in written.items():
            if is_within(path, directory):
                raise InputError(
                    f"{what} {path} is inside the {where} {directory}: keep keys outside "
                    f"it (the default domain key is {DEFAULT_DOMAIN_KEY})"
                )


def installed_ari_cert_id(cert_dir: str) -> str | None:
    """The ARI identifier (RFC 9773) of the certificate installed in
    `cert_dir`, the one a renewal replaces; None without one (or when it
    cannot be read: revokeproc says why)."""
    path = os.path.join(cert_dir, "cert.pem")
    if not os.path.lexists(path):
        return None
    # Here, not at the top, and only for a certificate: most roles' images
    # (sandbox-check runs this there) lack cryptography.
    from letskencrypt.certs import ari_cert_id
    from letskencrypt.renewal import load_certificate_file

    try:
        certificate = load_certificate_file(path)
    except LetskencryptError:
        return None
    return None if certificate is None else ari_cert_id(certificate)


def role_settings(
    args: argparse.Namespace,
    trust_anchors: bool = True,
    account_type_follows: bool = True,
    tsig_key_readable: bool = True,
    knows_certificate: bool = True,
) -> dict[str, RoleSettings]:
    """Each role's settings.  `trust_anchors=False` (a container of a role
    that needs none) leaves the anchors out of certproc's and revokeproc's.
    `account_type_follows=False` (a configuration file's domain, whose key
    type is its own): the account key's type is only --account-key-type's.
    `tsig_key_readable=False` (a container without the TSIG key): --tsig-key's
    path is taken as it is.
    `knows_certificate=False` (a container, which cannot read the
    certificate directory): acctproc signs any well-formed `replaces`."""
    account_operation = check_account_operation(args)
    challenge = check_challenge(args)
    wildcards = challenge != CHALLENGE_HTTP_01 or account_operation == "persist-record"
    names = tuple(validate_names(args.domains, wildcards=wildcards))
    if challenge == CHALLENGE_DNS_PERSIST_01 or account_operation == "persist-record":
        addresses = [name for name in names if identifier_type(name) == IP]
        if addresses:
            raise InputError(f"{addresses[0]}: dns-persist-01 validates domain names, "
                             "not IP addresses")  # fmt: skip
    dns_check_servers = check_dns_servers(args.dns_check_server)
    directory_url = check_directory_url(args)
    anchor_pem = check_trust_anchors(args, directory_url) if trust_anchors else None
    # What certproc, fileproc and acctproc may do: only what this run is for.
    # An account operation orders nothing, so the others are told "issue":
    # netproc hands them nothing (and "revoke" would let fileproc remove).
    operation = "revoke" if args.revoke else "issue"
    ca_bundle = check_ca_bundle(args.ca_bundle) if args.ca_bundle else None
    contacts = tuple(check_contact(c) for c in args.contact)
    if len(contacts) > MAX_CONTACTS:
        raise InputError(f"at most {MAX_CONTACTS} contacts")
    if args.revoke_reason and not args.revoke:
        raise InputError("--revoke-reason goes with -r")
    with_domain_key = check_revoke_with(args)
    rotate = args.rotate_domain_key
    if rotate and args.revoke:
        raise InputError("--rotate-domain-key does not go with -r (revoke first, then rotate)")
    if rotate and args.daemon:
        raise InputError("--rotate-domain-key does not go with --daemon: rotate in a one-shot run")
    # Given, --key-type is what the keys must be; else new keys are the default.
    key_type = args.key_type or DEFAULT_KEY_TYPE
    key_type_given = args.key_type is not None
    # The account key's own type, if given; else --key-type's, except in a
    # run that rotates the domain key (which may be to another type).
    account_key_type = args.account_key_type or key_type
    account_key_type_given = args.account_key_type is not None or (
        key_type_given and not rotate and account_type_follows
    )
    # A rollover replaces the account key, whatever its type.
    if account_operation == "rollover":
        account_key_type_given = False
    cert_dir = os.path.abspath(args.cert_dir)
    challenge_dir = os.path.abspath(args.challenge_dir)
    account_key = os.path.abspath(args.account_key)
    domain_key = os.path.abspath(args.domain_key)
    audit_log = check_audit_log(args.audit_log, account_key, domain_key)
    check_distinct_keys(account_key, domain_key)
    eab_kid, eab_hmac_key = check_eab(args)
    profile = check_profile(args.profile)
    secrets = {"account key": account_key, "domain key": domain_key, "audit log": audit_log}
    if eab_hmac_key is not None:
        if os.path.realpath(eab_hmac_key) in map(os.path.realpath, secrets.values()):
            raise InputError(f"--eab-hmac-key {eab_hmac_key}: give the file of the CA's HMAC "
                             "key, not a key or the audit log of this run")
        secrets["EAB HMAC key"] = eab_hmac_key
    new_account_key = None
    if account_operation == "rollover":
        new_account_key = check_new_account_key(args.rollover_account_key, secrets)
        secrets["new account key"] = new_account_key
    dns = check_dns01(args, names, tsig_key_readable)
    if dns is not None:
        if os.path.realpath(dns.tsig_key) in map(os.path.realpath, secrets.values()):
            raise InputError(f"--tsig-key {dns.tsig_key}: give the TSIG key's own file, not "
                             "a key or the audit log of this run")  # fmt: skip
        secrets["TSIG key"] = dns.tsig_key
    written = {"certificate directory": cert_dir}
    # http-01's files: every name's, or with dns-01 the addresses'.
    http = dns is None or any(identifier_type(name) == IP for name in names)
    if http:
        written["challenge directory"] = challenge_dir
    check_key_places(secrets, written)
    daemon = check_schedule(args) if args.daemon else None
    strict = args.strict
    # What a newOrder may say it replaces: the installed certificate, which
    # a daemon's run replaces while acctproc runs (see acctproc).
    replaces = installed_ari_cert_id(cert_dir) if knows_certificate else None
    replaces_any = bool(daemon) or not knows_certificate
    return {
        "netproc": NetprocSettings(
            directory_url=directory_url,
            ca_bundle=ca_bundle,
            contact=contacts,
            names=names,
            revoke=args.revoke,
            revoke_reason=REVOCATION_REASONS.get(args.revoke_reason or ""),
            revoke_with_domain_key=with_domain_key,
            daemon=daemon,
            poll_timeout=check_poll_timeout(args.poll_timeout),
            external_account_binding=eab_kid is not None,
            profile=profile,
            ari=not args.no_ari,
            rollover=account_operation == "rollover",
            deactivate=account_operation == "deactivate",
            challenge=challenge,
            dns_server=dns.server if dns else None,
            dns_check_servers=dns_check_servers,
            dns_propagation_timeout=dns.propagation_timeout if dns else (
                DEFAULT_DNS_PROPAGATION_TIMEOUT
            ),
            persist_record=account_operation == "persist-record",
            new_account=account_operation == "persist-record" and args.new_account_key,
            strict=strict,
        ),
        "acctproc": AcctprocSettings(
            key_path=account_key,
            create=args.new_account_key and not with_domain_key,
            key_type=account_key_type,
            require_key_type=account_key_type_given and not with_domain_key,
            directory_url=directory_url,
            operation=account_operation or operation,
            names=names,
            contact=contacts,
            audit_log=audit_log,
            eab_kid=eab_kid,
            eab_hmac_key=eab_hmac_key,
            profile=profile,
            replaces=None if replaces_any else replaces,
            replaces_any=replaces_any,
            idle=with_domain_key,
            new_key_path=new_account_key,
            challenge=challenge,
            strict=strict,
        ),
        "keyproc": KeyprocSettings(
            key_path=domain_key,
            create=args.new_domain_key,
            key_type=key_type,
            require_key_type=key_type_given,
            names=names,
            operation=operation,
            rotate=rotate,
            key_compromised=args.revoke and args.revoke_reason == "keyCompromise",
            revoke_with_domain_key=with_domain_key,
            ca_origin=origin_text(directory_url) if with_domain_key else None,
            revoke_reason=REVOCATION_REASONS.get(args.revoke_reason or ""),
            strict=strict,
        ),
        "dnsproc": DnsprocSettings(strict=strict),
        "chngproc": ChngprocSettings(
            challenge=challenge,
            challenge_dir=challenge_dir if http else None,
            names=names if dns else (),
            dns_server=dns.server if dns else None,
            tsig_key=dns.tsig_key if dns else None,
            strict=strict,
        ),
        "revokeproc": RevokeprocSettings(
            cert_dir=cert_dir,
            names=names,
            # A new key needs a new certificate, however current the old one.
            force=args.force or rotate,
            trust_anchors=anchor_pem,
            strict=strict,
        ),
        "certproc": CertprocSettings(
            operation=operation,
            trust_anchors=anchor_pem,
            preferred_chain=check_preferred_chain(args.preferred_chain),
            strict=strict,
        ),
        "fileproc": FileprocSettings(
            cert_dir=cert_dir, backup=args.backup, operation=operation, strict=strict
        ),
    }
