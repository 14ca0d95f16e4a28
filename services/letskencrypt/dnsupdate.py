"""dns-01 (RFC 8555 section 8.4) by RFC 2136 dynamic update with TSIG (RFC
8945): the TSIG key file, the TXT value of a key authorisation, the signed
update messages and the check of the server's signed answer.

chngproc alone imports this (with dnspython): it holds the key.  What it
builds touches exactly one record set, `_acme-challenge.<name>` TXT, of one
of the run's names; the message is signed, so whoever carries it (netproc,
dnsproc) can drop or replay it but not change it, and what it says is
public (the record it adds is published for the CA to read anyway).
"""

import base64
import hashlib
import re
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.update

from letskencrypt.b64 import b64url
from letskencrypt.errors import InputError
from letskencrypt.fsutil import FileTooLarge, NotRegularFile, read_file

# A `key` statement is well under this; a larger file is not one.
MAX_KEY_FILE = 4096
# tsig-keygen's algorithms; hmac-md5 and hmac-sha1 are refused (RFC 8945
# section 6: MD5 must not be used, SHA-1 is being phased out), hmac-sha224
# too (no server default makes it).
ALGORITHMS = {
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
# RFC 8945 section 6: a key at least as long as the hash's output is
# recommended; half of it (128 bits) is the least we take.
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 512
# A record that exists only while the CA looks.
TXT_TTL = 60
CHALLENGE_LABEL = "_acme-challenge"
MAX_ANSWER = 4096

# The statement as tsig-keygen writes it (whitespace and newlines free):
#   key "name" { algorithm hmac-sha256; secret "base64"; };
_KEY_STATEMENT = re.compile(
    r'\s*key\s+"(?P<name>[^"\\]*)"\s*\{'
    r"(?P<body>[^{}]*)"
    r"\}\s*;\s*",
)
_CLAUSE = re.compile(r'\s*(?P<keyword>[a-z-]+)\s+(?P<value>"[^"\\]*"|[A-Za-z0-9+/=-]+)\s*;')
_KEY_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


class UpdateRefused(InputError):
    """The server answered that it did not apply the update (an rcode, or a
    TSIG error: such answers are unsigned, so a carrier could fake one; what
    it gains is a record chngproc forgets, as it could by dropping the
    withdrawal)."""


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str  # one of ALGORITHMS
    secret: bytes

    def __repr__(self) -> str:
        return f"TsigKey(name={self.name!r}, algorithm={self.algorithm!r}, secret=<hidden>)"

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        name = dns.name.from_text(self.name)
        return {name: dns.tsig.Key(name, self.secret, ALGORITHMS[self.algorithm])}


def parse_tsig_key(text: str, where: str) -> TsigKey:
    """The one BIND `key` statement of `text` (tsig-keygen's output), or an
    InputError naming `where` and what is wrong (never the secret)."""
    match = _KEY_STATEMENT.fullmatch(text)
    if match is None:
        raise InputError(
            f'{where}: not one BIND key statement (key "NAME" {{ algorithm ALG; secret '
            '"BASE64"; }};) as tsig-keygen writes it'
        )
    name = match["name"]
    if not 0 < len(name) <= 253 or not _KEY_NAME.fullmatch(name):
        raise InputError(f"{where}: the key name is not a domain name")
    clauses: dict[str, str] = {}
    body = match["body"]
    position = 0
    while position < len(body) and body[position:].strip():
        clause = _CLAUSE.match(body, position)
        if clause is None:
            raise InputError(f"{where}: expected 'algorithm ...;' or 'secret \"...\";' in the key")
        keyword = clause["keyword"]
        if keyword not in ("algorithm", "secret"):
            raise InputError(f"{where}: unknown clause {keyword!r} in the key")
        if keyword in clauses:
            raise InputError(f"{where}: {keyword} given twice")
        clauses[keyword] = clause["value"]
        position = clause.end()
    algorithm = clauses.get("algorithm")
    secret_text = clauses.get("secret")
    if algorithm is None or secret_text is None:
        missing = "algorithm" if algorithm is None else "secret"
        raise InputError(f"{where}: the key has no {missing}")
    algorithm = algorithm.strip('"').lower()
    if algorithm not in ALGORITHMS:
        raise InputError(
            f"{where}: algorithm {algorithm[:40]!r} is not one of {', '.join(ALGORITHMS)}"
        )
    if not (secret_text.startswith('"') and secret_text.endswith('"')):
        raise InputError(f"{where}: the secret must be quoted base64")
    encoded = secret_text[1:-1]
    if not _BASE64.fullmatch(encoded) or len(encoded) % 4:
        raise InputError(f"{where}: the secret is not base64")
    secret = base64.b64decode(encoded, validate=True)
    if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
        raise InputError(
            f"{where}: the secret is {len(secret)} bytes; give {MIN_SECRET_BYTES} to "
            f"{MAX_SECRET_BYTES} (tsig-keygen makes one as long as the hash)"
        )
    return TsigKey(name=name.lower().rstrip(".") + ".", algorithm=algorithm, secret=secret)


def read_tsig_key(path: str) -> TsigKey:
    where = f"TSIG key {path}"
    try:
        data = read_file(path, MAX_KEY_FILE, follow_symlinks=True)
    except FileTooLarge:
        raise InputError(f"{where}: larger than {MAX_KEY_FILE} bytes, not a key") from None
    except NotRegularFile:
        raise InputError(f"{where}: not a regular file") from None
    except OSError as error:
        raise InputError(f"{where}: {error.strerror}") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise InputError(f"{where}: not ASCII text") from None
    return parse_tsig_key(text, where)


def txt_value(key_authorization: str) -> str:
    """RFC 8555 section 8.4: base64url(SHA-256(key authorisation))."""
    return b64url(hashlib.sha256(key_authorization.encode("ascii")).digest())


def owner_of(name: str) -> str:
    """`_acme-challenge.<name>` of a validated domain name (no "*.")."""
    return f"{CHALLENGE_LABEL}.{name}"


def _txt(value: str) -> dns.rdtypes.ANY.TXT.TXT:
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [value.encode("ascii")])


def check_zone(owner: str, zone: str) -> dns.name.Name:
    """The zone of an update for `owner`: a name above it (or it), not the root."""
    try:
        zone_name = dns.name.from_text(zone)
    except dns.exception.DNSException:
        raise InputError(f"zone {zone[:100]!r} is not a domain name") from None
    if len(zone_name) < 2 or not dns.name.from_text(owner).is_subdomain(zone_name):
        raise InputError(f"zone {zone[:100]!r} does not hold {owner}")
    return zone_name


@dataclass(frozen=True)
class Update:
    """A signed update and what the answer is checked against."""

    wire: bytes
    id: int
    zone: dns.name.Name
    mac: bytes
    what: str


def build_update(
    key: TsigKey,
    zone: dns.name.Name,
    owner: str,
    *,
    add: str | None = None,
    remove: str | None = None,
    clear: bool = False,
) -> Update:
    """One UPDATE of `owner` TXT: remove every value (`clear`), remove one
    (`remove`), then add one (`add`)."""
    message = dns.update.UpdateMessage(
        zone, keyring=key.keyring(), keyname=dns.name.from_text(key.name),
        keyalgorithm=ALGORITHMS[key.algorithm],
    )  # fmt: skip
    name = dns.name.from_text(owner)
    parts = []
    if clear:
        message.delete(name, dns.rdatatype.TXT)
        parts.append("clear")
    if remove is not None:
        message.delete(name, _txt(remove))
        parts.append(f"remove {remove}")
    if add is not None:
        message.add(name, TXT_TTL, _txt(add))
        parts.append(f"add {add}")
    if not parts:
        raise ValueError("an update that changes nothing")
    wire = message.to_wire()
    return Update(
        wire=wire, id=message.id, zone=zone, mac=message.mac,
        what=f"{owner} TXT: {', '.join(parts)}",
    )  # fmt: skip


def check_answer(update: Update, key: TsigKey, answer: bytes, server: str) -> None:
    """The answer must be signed with our key over this update's MAC, be the
    answer to it, and say NOERROR; else one line saying what the server said."""
    if len(answer) > MAX_ANSWER:
        raise InputError(f"DNS server {server}: an answer larger than {MAX_ANSWER} bytes")
    failed = f"DNS server {server} did not apply the update of {update.what}"
    try:
        message = dns.message.from_wire(answer, keyring=key.keyring(), request_mac=update.mac)
    except dns.tsig.PeerBadKey:
        raise UpdateRefused(
            f"{failed}: it does not know the TSIG key {key.name.rstrip('.')} (BADKEY)"
        ) from None
    except dns.tsig.PeerBadSignature:
        raise UpdateRefused(f"{failed}: the TSIG signature is wrong (BADSIG): "
                         "is the secret the server's?") from None  # fmt: skip
    except dns.tsig.PeerBadTime:
        raise UpdateRefused(f"{failed}: the clocks differ (BADTIME)") from None
    except dns.tsig.PeerError as error:
        raise UpdateRefused(f"{failed}: TSIG error {error}") from None
    except dns.message.UnknownTSIGKey:
        raise InputError(f"DNS server {server}: an answer signed with another key") from None
    except (dns.tsig.BadSignature, dns.tsig.BadTime):
        raise InputError(f"DNS server {server}: an answer whose TSIG does not verify") from None
    except dns.exception.FormError as error:
        if "TSIG" in str(error):  # dnspython: "response requires a TSIG but does not have one"
            raise InputError(
                f"DNS server {server}: an unsigned answer to a signed update"
            ) from None
        raise InputError(f"DNS server {server}: an answer that is not a DNS message") from None
    except dns.exception.DNSException:
        raise InputError(f"DNS server {server}: an answer that is not a DNS message") from None
    if message.id != update.id or message.opcode() != dns.opcode.UPDATE or not (
        message.flags & dns.flags.QR
    ):
        raise InputError(f"DNS server {server}: an answer to another message")
    rcode = message.rcode()
    if rcode == dns.rcode.NOERROR and not message.had_tsig:
        raise InputError(f"DNS server {server}: an unsigned answer to a signed update")
    if rcode != dns.rcode.NOERROR:
        text = dns.rcode.to_text(rcode)
        why = {
            "REFUSED": " (the key may not update this zone)",
            "NOTAUTH": f" (is the server the primary of {update.zone.to_text(True)}, "
            "and does it know the key?)",
            "NOTZONE": f" (the record is not in {update.zone.to_text(True)})",
        }.get(text, "")
        raise UpdateRefused(f"{failed}: {text}{why}")
