"""Values that more than one module needs, each defined here once.

No imports: every role, the command line and the container entry point
import this, whatever their image carries.
"""

import os

# --- a run's exit status ------------------------------------------------------------
# netproc's, which the supervisor, the command line and the containers pass on.

EXIT_CHANGED = 0  # a certificate was issued, renewed or revoked
EXIT_FAILED = 1
EXIT_NOTHING_TO_DO = 2  # and then no request reached the CA
# --log-format: plain lines, or one JSON object per line (relay.py).
LOG_FORMATS = ("text", "json")
EXIT_CODES = (EXIT_CHANGED, EXIT_FAILED, EXIT_NOTHING_TO_DO)

# --- the environment ------------------------------------------------------------------

# All of the caller's environment a native role gets (launch.role_environment):
# no proxies, no credentials.  LETSKENCRYPT_NO_NAMESPACES: namespace.py;
# LETSKENCRYPT_LANDLOCK_ABI: sandbox.py.
ROLE_ENVIRONMENT = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "SSL_CERT_FILE",
    "LETSKENCRYPT_LANDLOCK_ABI",
    "LETSKENCRYPT_NO_NAMESPACES",
    "GRPC_VERBOSITY",
)
# All of it the native command keeps (__main__ starts itself again without
# the rest): its roles are forked from it, and a forked process carries its
# parent's memory, environment block included.  Deploy hooks get this too.
COMMAND_ENVIRONMENT = (
    *ROLE_ENVIRONMENT,
    "SSL_CERT_DIR",
    "TMPDIR",
    "HOME",
    "USER",
    "LOGNAME",
    "PYTHONPATH",
)

# --- defaults of the command line that roles also need ------------------------------

# The type of keys made when --key-type is not given.
DEFAULT_KEY_TYPE = "ecdsa256"

# The longest the CA may keep an order waiting, from the new order to the
# download (--poll-timeout); certbot's issuance timeout is as long.
DEFAULT_POLL_TIMEOUT = 90.0

# How long netproc waits for the other roles to serve before its first request.
DEFAULT_READY_TIMEOUT = 20.0

# netproc's trust store for the CA's TLS (--ca-bundle): the largest accepted.
MAX_CA_BUNDLE = 4 * 1024 * 1024

# The CA's trust anchors (--trust-anchors, anchors.py): at most this many
# certificates in at most this many bytes (they travel in the settings).
MAX_ANCHOR_BYTES = 16 * 1024
MAX_ANCHORS = 8

# acctproc's audit log (--audit-log): by default next to the account key.
AUDIT_LOG_NAME = "audit.log"


def default_audit_log(account_key_path: str) -> str:
    return os.path.join(os.path.dirname(account_key_path), AUDIT_LOG_NAME)


# --- revocation ----------------------------------------------------------------------

# RFC 5280 section 5.3.1 CRLReason codes (7 is unused).
REVOCATION_REASONS: dict[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "removeFromCRL": 8,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
REVOCATION_REASON_CODES = frozenset(REVOCATION_REASONS.values())


def revocation_reason_name(code: int) -> str:
    """"keyCompromise (1)" for 1; the bare number for a code RFC 5280 does not name."""
    names = [name for name, value in REVOCATION_REASONS.items() if value == code]
    return f"{names[0]} ({code})" if names else str(code)


# The reasons ACME CAs take from a subscriber (Let's Encrypt's Boulder:
# UserAllowedReasons, of late without affiliationChanged).  --revoke-reason
# takes every RFC 5280 reason and the CA decides: pebble 2.4 and 2.10 take
# them all, a CA that refuses one says badRevocationReason.  Let's Encrypt
# records a revocation signed with the domain key as keyCompromise, whatever
# the reason asked.
SUBSCRIBER_REVOCATION_REASONS: dict[str, int] = {
    name: REVOCATION_REASONS[name]
    for name in (
        "unspecified",
        "keyCompromise",
        "affiliationChanged",
        "superseded",
        "cessationOfOperation",
    )
}

# Alternate certificate chains (RFC 8555 section 7.4.2) a CA may list:
# netproc fetches at most this many, certproc takes no more.
MAX_ALTERNATES = 8

# -r --revoke-with: the key that signs the revocation (RFC 8555 section 7.6).
REVOKE_WITH_ACCOUNT = "account"
REVOKE_WITH_DOMAIN_KEY = "domain-key"
REVOKE_WITH = (REVOKE_WITH_ACCOUNT, REVOKE_WITH_DOMAIN_KEY)

# --- challenges ----------------------------------------------------------------------

# --challenge: how a run proves control of its names.  http-01 (RFC 8555 8.3)
# is the default; dns-01 (8.4) needs DNS credentials; dns-persist-01
# (draft-ietf-acme-dns-persist) a TXT record provisioned once, none.
CHALLENGE_HTTP_01 = "http-01"
CHALLENGE_DNS_01 = "dns-01"
CHALLENGE_DNS_PERSIST_01 = "dns-persist-01"
CHALLENGES = (CHALLENGE_HTTP_01, CHALLENGE_DNS_01, CHALLENGE_DNS_PERSIST_01)
# dns-01: the port of a DNS server given without one (--dns-server, --dns-check-server).
DNS_PORT = 53
# dns-01: how long the zone's servers get to serve a new TXT record (--dns-propagation-timeout).
DEFAULT_DNS_PROPAGATION_TIMEOUT = 120.0
