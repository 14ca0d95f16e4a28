"""dns-persist-01 (draft-ietf-acme-dns-persist): the TXT record that says,
once and for as long as it stays, that an ACME account of a CA may have
certificates for a name.

    _validation-persist.example.org. IN TXT "ca.example; accounturi=https://ca.example/acct/1"

Its value is an RFC 8659 issue-value: the CA's issuer domain name (one of
the challenge's "issuer-domain-names", which CAs draw from their
directory's caaIdentities), then ";"-separated parameters: accounturi (the
account's URL, required), policy=wildcard (the record also covers
wildcards and names below), persistUntil (a UNIX time after which the CA
no longer takes it).  Tags are case-insensitive, unknown ones ignored.

Built here for `letskencrypt persist-record` and read here by netproc,
which checks the record before it answers a challenge.  Everything read is
hostile: the issuer domain names and the account URL come from the CA, the
TXT values from DNS (through dnsproc, at most MAX_TXT_VALUES of at most
MAX_TXT_VALUE bytes each).
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from letskencrypt.errors import InputError
from letskencrypt.validate import safe_text

LABEL = "_validation-persist"
# The draft: "Servers MUST NOT send more than 10 issuer domain names";
# clients refuse a challenge with none or more.
MAX_ISSUER_NAMES = 10
MAX_DOMAIN_NAME = 253
# What dnsproc hands netproc for one name (resolver.proto's TxtReply).
MAX_TXT_VALUES = 32
MAX_TXT_VALUE = 512
# A TXT record's character-strings hold 255 octets each (RFC 1035 3.3).
TXT_STRING = 255
MAX_ACCOUNT_URI = 1024
POLICY_WILDCARD = "wildcard"

# RFC 8659 section 4: a label of an issuer-domain-name, and a tag.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
ISSUER_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
TAG = re.compile(_LABEL)
# A parameter's value: %x21-3A / %x3C-7E (printable ASCII but ";").
VALUE = re.compile(r"[\x21-\x3a\x3c-\x7e]*")
# An account URL fit for a record: an https URL without what a value or a
# zone file's quoted string cannot carry (";", '"', "\", spaces).
ACCOUNT_URI = re.compile(r"https://[\x21\x23-\x3a\x3c-\x5b\x5d-\x7e]+")
WSP = " \t"


@dataclass(frozen=True)
class IssueValue:
    """One record's value, parsed (RFC 8659 issue-value)."""

    issuer: str  # lower case
    account_uri: str | None
    wildcard: bool  # policy=wildcard (any case)
    persist_until: int | None


def base_name(name: str) -> str:
    """The name a record is for: a wildcard's is the name below its "*."."""
    return name.removeprefix("*.")


def record_name(name: str) -> str:
    """The record's owner name, absolute: _validation-persist.NAME."""
    return f"{LABEL}.{base_name(name)}."


def check_issuer_names(names: object, what: str = "dns-persist-01 challenge") -> tuple[str, ...]:
    """The CA's issuer domain names: 1 to 10, each lower case, A-labels, no
    trailing dot, at most 253 octets (the draft's normalisation); else
    InputError (a challenge that breaks these is malformed)."""
    if not isinstance(names, list) or not 0 < len(names) <= MAX_ISSUER_NAMES:
        raise InputError(f"{what}: issuer-domain-names is not a list of 1 to "
                         f"{MAX_ISSUER_NAMES} names")  # fmt: skip
    for name in names:
        if (
            not isinstance(name, str)
            or len(name) > MAX_DOMAIN_NAME
            or name != name.lower()
            or not ISSUER_NAME.fullmatch(name)
        ):
            shown = safe_text(name, 80) if isinstance(name, str) else "(not text)"
            raise InputError(f"{what}: {shown!r} is not a normalised issuer domain name")
    return tuple(names)


def check_account_uri(uri: str) -> str:
    """The account URL as a record can carry it, or InputError."""
    if len(uri) > MAX_ACCOUNT_URI or not ACCOUNT_URI.fullmatch(uri):
        raise InputError(f"the account URL {safe_text(uri, 200)!r} cannot go in a "
                         "dns-persist-01 record (an https URL without ';', quotes, "
                         "backslashes or spaces)")  # fmt: skip
    return uri


def parse_persist_until(text: str, now: datetime | None = None) -> int:
    """--persist-until: a date (YYYY-MM-DD, midnight UTC) or an ISO 8601 time
    (UTC unless it says otherwise), in the future; its UNIX time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--persist-until {safe_text(text, 40)!r}: give a date "
                         "(2027-06-30) or a time (2027-06-30T12:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment <= (now or datetime.now(UTC)):
        raise InputError(f"--persist-until {safe_text(text, 40)}: is not in the future")
    return int(moment.timestamp())


def issue_value(
    issuer: str, account_uri: str, *, wildcard: bool = False, persist_until: int | None = None
) -> str:
    """The record's value for this issuer and account."""
    check_issuer_names([issuer], "issuer domain name")
    parts = [issuer, f"accounturi={check_account_uri(account_uri)}"]
    if wildcard:
        parts.append(f"policy={POLICY_WILDCARD}")
    if persist_until is not None:
        parts.append(f"persistUntil={persist_until}")
    return "; ".join(parts)


def zone_line(name: str, value: str) -> str:
    """The record in zone-file syntax, on one line; a value longer than one
    character-string is split into several, which readers join."""
    data = value.encode("ascii")
    if b'"' in data or b"\\" in data:
        raise InputError("a dns-persist-01 value holds no quotes or backslashes")
    strings = [data[i:i + TXT_STRING].decode() for i in range(0, len(data), TXT_STRING)]
    quoted = " ".join(f'"{s}"' for s in strings)
    return f"{record_name(name)} IN TXT {quoted}"


def expected_line(
    name: str, issuer: str, account_uri: str, persist_until: int | None = None
) -> str:
    """The record `persist-record` prints for `name`: policy=wildcard for a
    wildcard name."""
    wildcard = name.startswith("*.")
    value = issue_value(issuer, account_uri, wildcard=wildcard, persist_until=persist_until)
    return zone_line(name, value)


def parse_issue_value(text: str) -> IssueValue:
    """One TXT value as an issue-value; ValueError (why, in a few words) if
    it is not one, lacks the accounturi, or repeats a tag."""
    if len(text) > MAX_TXT_VALUE:
        raise ValueError(f"longer than {MAX_TXT_VALUE} characters")
    head, _, rest = text.partition(";")
    issuer = head.strip(WSP)
    if not ISSUER_NAME.fullmatch(issuer) or len(issuer) > MAX_DOMAIN_NAME:
        raise ValueError("no issuer domain name")
    seen: dict[str, str] = {}
    if rest.strip(WSP):
        for parameter in rest.split(";"):
            tag, equals, value = parameter.partition("=")
            tag, value = tag.strip(WSP), value.strip(WSP)
            if not equals or not TAG.fullmatch(tag):
                raise ValueError(f"malformed parameter {safe_text(parameter.strip(WSP), 40)!r}")
            if not VALUE.fullmatch(value):
                raise ValueError(f"malformed value for {tag}")
            key = tag.lower()
            if key in seen:
                raise ValueError(f"{tag} given twice")
            seen[key] = value
    account_uri = seen.get("accounturi")
    if not account_uri:
        raise ValueError("no accounturi")
    until = seen.get("persistuntil")
    if until is not None and not until.isdigit():
        raise ValueError("persistUntil is not a UNIX time")
    return IssueValue(
        issuer=issuer.lower(),
        account_uri=account_uri,
        wildcard=seen.get("policy", "").lower() == POLICY_WILDCARD,
        persist_until=None if until is None else int(until[:20]),
    )


def problem(
    values: list[str],
    issuers: tuple[str, ...],
    account_uri: str,
    wildcard: bool,
    now: int,
) -> str | None:
    """None if one of a name's TXT values lets the account of `account_uri`
    validate with a CA of `issuers` now (with policy=wildcard for a
    wildcard); else what is wrong, in a few words, for the record that came
    closest."""
    if not values:
        return "there is no TXT record"
    reasons: list[str] = []
    others: list[str] = []
    for text in values[:MAX_TXT_VALUES]:
        try:
            value = parse_issue_value(text)
        except ValueError as error:
            reasons.append(f"a record is malformed ({error})")
            continue
        if value.issuer not in issuers:
            others.append(value.issuer)
            continue
        if value.account_uri != account_uri:
            reasons.insert(0, f"the record for {value.issuer} names another account "
                              f"({safe_text(value.account_uri, 200)})")  # fmt: skip
        elif wildcard and not value.wildcard:
            reasons.insert(0, f"the record for {value.issuer} has no policy=wildcard")
        elif value.persist_until is not None and value.persist_until < now:
            ended = datetime.fromtimestamp(min(value.persist_until, 2**33), UTC)
            reasons.insert(0, f"the record for {value.issuer} ended at persistUntil "
                              f"{ended:%Y-%m-%dT%H:%M:%SZ}")  # fmt: skip
        else:
            return None
    if reasons:
        return reasons[0]
    shown = ", ".join(sorted(set(others))[:3])
    return f"its records name other CAs ({safe_text(shown, 200)}), not {issuers[0]}"
