"""What the CA sends, parsed and validated: media types, problem documents,
the directory, accounts, orders, authorizations, challenges, Replay-Nonce and
Retry-After.

Every CA message is hostile input.  Each type's `from_json` checks every field
it keeps (types, sizes, status enums, and that every URL is https on the
directory's origin) and raises `AcmeError` with one terminal-safe line of
plain words naming what was wrong; nothing else in the package reads a CA
document's fields.
"""

import email.utils
import http
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import urljoin

from letskencrypt.constants import (
    CHALLENGE_DNS_01,
    CHALLENGE_DNS_PERSIST_01,
    CHALLENGE_HTTP_01,
    MAX_ALTERNATES,
)
from letskencrypt.errors import InputError, LetskencryptError
from letskencrypt.persist import check_issuer_names
from letskencrypt.urls import origin, well_formed
from letskencrypt.validate import IP, is_nonce, safe_text, validate_token

ERROR_PREFIX = "urn:ietf:params:acme:error:"
BAD_NONCE = ERROR_PREFIX + "badNonce"
ACCOUNT_DOES_NOT_EXIST = ERROR_PREFIX + "accountDoesNotExist"
RATE_LIMITED = ERROR_PREFIX + "rateLimited"
ALREADY_REVOKED = ERROR_PREFIX + "alreadyRevoked"
BAD_REVOCATION_REASON = ERROR_PREFIX + "badRevocationReason"
# What a CA answers a newOrder with when it will not issue for an
# identifier, or for a type of identifier (RFC 8555 section 6.7).
IDENTIFIER_REFUSALS = frozenset(
    ERROR_PREFIX + kind for kind in ("rejectedIdentifier", "unsupportedIdentifier", "malformed")
)
MAX_SUBPROBLEMS = 100
ALREADY_REPLACED = ERROR_PREFIX + "alreadyReplaced"
# What a CA may answer a newOrder whose `replaces` (RFC 9773 section 5) it
# cannot honour: already replaced; a certificate it cannot find or an
# identifier it cannot parse (Boulder: malformed; pebble 2.10: serverInternal,
# for a serial whose DER needs a leading zero byte); a certificate of another
# account (Boulder: unauthorized; after a switch of account, say).  `replaces`
# is advice, so such an order is sent again without it rather than given up.
REPLACES_REFUSALS = frozenset(
    ERROR_PREFIX + kind
    for kind in ("alreadyReplaced", "malformed", "serverInternal", "unauthorized")
)

# The media types RFC 8555 gives each kind of answer.
JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
PEM_CHAIN = "application/pem-certificate-chain"

MAX_AUTHORIZATIONS = 100
# The Link header that lists alternate chains.
MAX_LINK_HEADER = 16 * 1024
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
MAX_RETRY_AFTER = 10**10  # seconds; larger delay-seconds are read as this

AUTHZ_FAILED = frozenset({"invalid", "deactivated", "expired", "revoked"})
ORDER_STATUSES = frozenset({"pending", "ready", "processing", "valid", "invalid"})
AUTHZ_STATUSES = AUTHZ_FAILED | {"pending", "valid"}
CHALLENGE_STATUSES = frozenset({"pending", "processing", "valid", "invalid"})


class AcmeError(LetskencryptError):
    """The CA answered with an error, or with something we refuse to accept.

    `retry_after`: the seconds the CA asked us to wait before asking again,
    when it said (Retry-After), so that nobody asks sooner.
    """

    def __init__(
        self,
        message: str,
        *,
        problem_type: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        identifier_types: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(message)
        self.problem_type = problem_type
        self.status = status
        self.retry_after = retry_after
        # The identifier types its subproblems name (RFC 8555 section 6.7.1).
        self.identifier_types = identifier_types


# --- media types (RFC 8555 section 6.2 and 7.4.2) --------------------------------


def media_type(headers: Mapping[str, str]) -> str | None:
    """The Content-Type's type/subtype in lower case, without parameters (None: no header)."""
    value = headers.get("Content-Type")
    return None if value is None else value.split(";", 1)[0].strip().lower()


def _shown_type(found: str | None) -> str:
    return safe_text(found, 80) if found else "no Content-Type"


def require_media_type(headers: Mapping[str, str], expected: str, url: str) -> None:
    """AcmeError unless the answer from `url` is of the media type `expected`."""
    found = media_type(headers)
    if found != expected:
        raise AcmeError(
            f"{safe_text(url, 200)}: expected {expected}, the CA sent {_shown_type(found)}"
        )


# --- problem documents (RFC 7807) --------------------------------------------


def _short_type(value: object) -> str:
    # The bare prefix is no type either: it would leave nothing to show.
    if not isinstance(value, str) or not value.removeprefix(ERROR_PREFIX):
        return "(no type)"
    return safe_text(value.removeprefix(ERROR_PREFIX), 100)


def _one_problem(problem: Mapping[Any, Any]) -> str:
    text = _short_type(problem.get("type"))
    detail = problem.get("detail")
    if isinstance(detail, str) and detail:
        text += ": " + safe_text(detail, 300)
    return text


def identifier_text(identifier: object) -> str:
    """`type:value` of an ACME identifier, terminal-safe, whatever was sent."""
    if not isinstance(identifier, dict):
        return "(no identifier)"
    kind, value = identifier.get("type"), identifier.get("value")
    kind_text = safe_text(kind, 20) if isinstance(kind, str) else "?"
    value_text = safe_text(value, 100) if isinstance(value, str) else "?"
    return f"{kind_text}:{value_text}"


def subproblem_identifier_types(problem: object) -> frozenset[str]:
    """The identifier types ("dns", "ip", ...) that a problem document's
    subproblems name: the first MAX_SUBPROBLEMS, short strings only."""
    if not isinstance(problem, dict) or not isinstance(problem.get("subproblems"), list):
        return frozenset()
    types = set()
    for sub in problem["subproblems"][:MAX_SUBPROBLEMS]:
        identifier = sub.get("identifier") if isinstance(sub, dict) else None
        kind = identifier.get("type") if isinstance(identifier, dict) else None
        if isinstance(kind, str) and len(kind) <= 20:
            types.add(kind)
    return frozenset(types)


def format_problem(problem: object, status: int) -> str:
    """One terminal-safe line for an RFC 7807 problem document (status 0: none)."""
    prefix = f"HTTP {status}: " if status else ""
    if isinstance(problem, bytes):
        problem = problem.decode("utf-8", "replace")
    if not isinstance(problem, dict):
        if problem is None or problem == "":
            return f"{prefix}no error details"
        # Other JSON is shown as JSON, never as Python would write it.
        text = problem if isinstance(problem, str) else json.dumps(problem)[:1000]
        return prefix + "unexpected error body: " + safe_text(text, 200)
    parts = [_one_problem(problem)]
    subproblems = problem.get("subproblems")
    if isinstance(subproblems, list):
        shown = [p for p in subproblems if isinstance(p, dict)][:10]
        for sub in shown:
            parts.append(f"[{identifier_text(sub.get('identifier'))}] {_one_problem(sub)}")
        if len(subproblems) > len(shown):
            parts.append(f"(+{len(subproblems) - len(shown)} more subproblems)")
    return safe_text(prefix + "; ".join(parts), 2000)


@dataclass(frozen=True)
class Problem:
    """An error answer: its problem type (if the CA named one), one safe line,
    and the Retry-After it carried."""

    type: str | None
    message: str
    status: int
    retry_after: float | None = None
    identifier_types: frozenset[str] = frozenset()

    @classmethod
    def from_response(cls, status: int, headers: Mapping[str, str], body: bytes) -> Self:
        """Only an application/problem+json body is read as a problem document."""
        retry_after = parse_retry_after(headers.get("Retry-After"))
        found = media_type(headers)
        if found != PROBLEM_JSON:
            try:
                reason = " " + http.HTTPStatus(status).phrase
            except ValueError:
                reason = ""
            message = f"HTTP {status}{reason}: the CA sent {_shown_type(found)}"
            return cls(
                type=None,
                message=message + ", not a problem document",
                status=status,
                retry_after=retry_after,
            )
        try:
            document: object = json.loads(body)
        except (ValueError, RecursionError):
            document = body.decode("utf-8", "replace")
        kind = document.get("type") if isinstance(document, dict) else None
        return cls(
            type=kind if isinstance(kind, str) else None,
            message=format_problem(document, status),
            status=status,
            retry_after=retry_after,
            identifier_types=subproblem_identifier_types(document),
        )

    def error(self, prefix: str = "", suffix: str = "") -> AcmeError:
        return AcmeError(
            prefix + self.message + suffix,
            problem_type=self.type,
            status=self.status,
            retry_after=self.retry_after,
            identifier_types=self.identifier_types,
        )


# --- headers and URLs ----------------------------------------------------------


def validate_nonce(value: object) -> str:
    """A Replay-Nonce: non-empty base64url of at most 128 characters."""
    if not is_nonce(value):
        shown = f" {safe_text(value, 60)!r}" if isinstance(value, str) else ""
        raise AcmeError(f"CA sent an invalid Replay-Nonce{shown}")
    return value


def check_url(url: object, base: str, what: str) -> str:
    """Return `url` if it is an https URL on the same origin as `base`, else AcmeError.

    A CA that points us at another host, scheme or port is treated as hostile.
    """
    if not isinstance(url, str):
        raise AcmeError(f"CA sent {_a(what)} URL that is not a string")
    if not well_formed(url):
        raise AcmeError(f"CA sent a malformed {what} URL {safe_text(url, 200)!r}")
    try:
        if origin(url) != origin(base):
            raise AcmeError(
                f"{what} URL {safe_text(url, 200)!r} is not on the CA's origin {base!r}"
            )
    except InputError as error:
        raise AcmeError(f"unusable {what} URL: {error}") from None
    return url


def _link_values(header: str) -> list[tuple[str, dict[str, str]]]:
    """The link-values of a Link header (RFC 8288 section 3, several headers
    joined with commas): (URI reference, parameters by lower-case name, the
    first of each); ValueError if it does not parse."""
    links: list[tuple[str, dict[str, str]]] = []
    pos, size = 0, len(header)

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < size and header[pos] in chars:
            pos += 1

    while True:
        skip(" \t,")
        if pos == size:
            return links
        if header[pos] != "<":
            raise ValueError("a link does not start with '<'")
        close = header.find(">", pos)
        if close < 0:
            raise ValueError("a link has no '>'")
        target, pos = header[pos + 1 : close], close + 1
        params: dict[str, str] = {}
        while True:
            skip(" \t")
            if pos == size or header[pos] == ",":
                break
            if header[pos] != ";":
                raise ValueError("expected ';' or ',' after a link")
            pos += 1
            skip(" \t")
            start = pos
            while pos < size and header[pos] in _TOKEN_CHARS:
                pos += 1
            name = header[start:pos].lower()
            if not name:
                raise ValueError("a link parameter has no name")
            skip(" \t")
            value = ""
            if pos < size and header[pos] == "=":
                pos += 1
                skip(" \t")
                value, pos = _param_value(header, pos)
            params.setdefault(name, value)
        links.append((target, params))


def _param_value(header: str, pos: int) -> tuple[str, int]:
    """A token or quoted-string at `pos`, and where it ends."""
    if pos < len(header) and header[pos] == '"':
        value: list[str] = []
        pos += 1
        while pos < len(header):
            char = header[pos]
            if char == '"':
                return "".join(value), pos + 1
            if char == "\\":
                pos += 1
                if pos == len(header):
                    break
                char = header[pos]
            value.append(char)
            pos += 1
        raise ValueError("an unterminated quoted string")
    start = pos
    while pos < len(header) and header[pos] in _TOKEN_CHARS:
        pos += 1
    if pos == start:
        raise ValueError("a link parameter has no value")
    return header[start:pos], pos


def alternate_links(header: str | None, certificate_url: str, directory_url: str) -> list[str]:
    """The URLs of the alternate chains a certificate's answer lists (Link
    headers of rel "alternate", RFC 8555 section 7.4.2), each https on the
    directory's origin, at most MAX_ALTERNATES; AcmeError otherwise."""
    if header is None:
        return []
    if len(header) > MAX_LINK_HEADER:
        raise AcmeError(f"CA sent a Link header longer than {MAX_LINK_HEADER} characters")
    try:
        links = _link_values(header)
    except ValueError as error:
        raise AcmeError(f"CA sent a malformed Link header: {error}") from None
    alternates: list[str] = []
    for target, params in links:
        if "alternate" not in params.get("rel", "").lower().split():
            continue
        if len(alternates) == MAX_ALTERNATES:
            raise AcmeError(f"CA lists more than {MAX_ALTERNATES} alternate chains")
        url = check_url(urljoin(certificate_url, target.strip()), directory_url, "alternate chain")
        if url != certificate_url and url not in alternates:
            alternates.append(url)
    return alternates


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date).

    None when absent or unparseable; never negative.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        # Exact up to 10**10 s (centuries), that cap beyond: a long string of
        # digits is still "too long", never cut down to a shorter wait.
        digits = value.lstrip("0") or "0"
        return float(min(int(digits[:11]), MAX_RETRY_AFTER))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


# --- JSON documents --------------------------------------------------------------


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """The body as a JSON object, or AcmeError naming `what` it should have been."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise AcmeError(f"CA sent {_a(what)} that is not JSON") from None
    if not isinstance(document, dict):
        raise AcmeError(f"CA sent {_a(what)} that is not a JSON object")
    return document


def string_field(document: Mapping[str, Any], key: str, what: str) -> str:
    value = document.get(key)
    if not isinstance(value, str):
        raise AcmeError(f"CA sent {_a(what)} without a string {key!r}")
    return value


def _status(document: Mapping[str, Any], allowed: frozenset[str], what: str) -> str:
    status = string_field(document, "status", what)
    if status not in allowed:
        raise AcmeError(f"CA sent {_a(what)} with unknown status {safe_text(status, 40)!r}")
    return status


def failure_text(url: str, status: str, document: Mapping[str, Any]) -> str:
    """Why an order or authorization failed, with the CA's problem documents."""
    parts = [f"{url} is {safe_text(status, 40)}"]
    if "identifier" in document:
        parts[0] = f"{identifier_text(document['identifier'])}: " + parts[0]
    if document.get("error") is not None:
        parts.append(format_problem(document["error"], 0))
    challenges = document.get("challenges")
    if isinstance(challenges, list):
        for challenge in challenges[:10]:
            if isinstance(challenge, dict) and challenge.get("error") is not None:
                kind = challenge.get("type")
                kind_text = safe_text(kind, 20) if isinstance(kind, str) else "?"
                parts.append(f"{kind_text} challenge: {format_problem(challenge['error'], 0)}")
    return safe_text("; ".join(parts), 3000)


# --- the resources ------------------------------------------------------------------


# What makes a JSON document an ACME directory (RFC 8555 section 7.1.1).
REQUIRED_URLS = ("newNonce", "newAccount", "newOrder")


@dataclass(frozen=True)
class Directory:
    new_nonce: str
    new_account: str
    new_order: str
    revoke_cert: str | None
    terms_of_service: str | None  # terminal-safe; shown, never fetched
    # meta.externalAccountRequired (RFC 8555 7.1.1): a new account needs an
    # external account binding.
    external_account_required: bool = False
    # The names of meta.profiles (draft-ietf-acme-profiles), in the CA's
    # order; None when the directory has no meta.profiles object.
    profiles: tuple[str, ...] | None = None
    # keyChange (RFC 8555 7.3.5), if the CA offers it.
    key_change: str | None = None
    # renewalInfo (RFC 9773 section 3): where a certificate's suggested
    # renewal window is; None when the CA offers none.
    renewal_info: str | None = None
    # meta.caaIdentities (RFC 8555 7.1.1), where the CA's dns-persist-01
    # issuer domain names come from; () when it lists none usable.
    caa_identities: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, document: Mapping[str, Any], base: str) -> Self:
        missing = [key for key in REQUIRED_URLS if document.get(key) is None]
        if missing:
            urls = "URLs" if len(missing) > 1 else "URL"
            raise AcmeError(
                f"{safe_text(base, 200)}: not an ACME directory (no {', '.join(missing)} {urls})"
            )

        def url(key: str) -> str:
            return check_url(document.get(key), base, f"directory {key}")

        revoke = document.get("revokeCert")
        key_change = document.get("keyChange")
        renewal_info = document.get("renewalInfo")
        terms = None
        meta = document.get("meta")
        if not isinstance(meta, dict):
            meta = {}
        if isinstance(meta.get("termsOfService"), str):
            terms = safe_text(meta["termsOfService"], 300)
        return cls(
            new_nonce=url("newNonce"),
            new_account=url("newAccount"),
            new_order=url("newOrder"),
            revoke_cert=None if revoke is None else url("revokeCert"),
            terms_of_service=terms,
            external_account_required=meta.get("externalAccountRequired") is True,
            profiles=_profile_names(meta.get("profiles")),
            key_change=None if key_change is None else url("keyChange"),
            renewal_info=None if renewal_info is None else url("renewalInfo"),
            caa_identities=_caa_identities(meta.get("caaIdentities")),
        )


def _caa_identities(identities: object) -> tuple[str, ...]:
    """meta.caaIdentities if it is a list of 1 to 10 normalised domain names."""
    try:
        return check_issuer_names(identities, "directory caaIdentities")
    except InputError:
        return ()


MAX_PROFILES = 100
MAX_PROFILE_NAME = 64


def _profile_names(profiles: object) -> tuple[str, ...] | None:
    """The profile names of meta.profiles (name -> description): the first
    MAX_PROFILES, each terminal-safe; None when it is not an object."""
    if not isinstance(profiles, dict):
        return None
    return tuple(
        safe_text(name, MAX_PROFILE_NAME) for name in list(profiles)[:MAX_PROFILES]
    )


MAX_ACCOUNT_CONTACTS = 100
MAX_CONTACT_LENGTH = 1024


@dataclass(frozen=True)
class Account:
    """An account we may use: only a valid one (or one without a status) parses."""

    url: str  # the kid
    # Its contact URIs as the CA shows them (none when it shows none); None
    # when what it shows is not a short list of strings.
    contact: tuple[str, ...] | None = ()
    # "valid": what the CA said, or nothing.
    status: str = "valid"

    @classmethod
    def from_json(cls, url: str, document: Mapping[str, Any]) -> Self:
        status = document.get("status")
        if status is not None and not isinstance(status, str):
            raise AcmeError(f"CA sent an account {url} whose status is not a string")
        if status is not None and status != "valid":
            raise AcmeError(f"account {url} is {safe_text(status, 40)}")
        contact = document.get("contact", [])
        if (
            isinstance(contact, list)
            and len(contact) <= MAX_ACCOUNT_CONTACTS
            and all(isinstance(c, str) and len(c) <= MAX_CONTACT_LENGTH for c in contact)
        ):
            return cls(url=url, contact=tuple(contact))
        return cls(url=url, contact=None)


@dataclass(frozen=True)
class Order:
    url: str
    status: str
    authorizations: tuple[str, ...]
    finalize: str
    certificate: str | None = None
    error: str | None = None  # the CA's problem document, as format_problem's line

    @classmethod
    def from_json(cls, url: str, document: Mapping[str, Any], base: str) -> Self:
        status = _status(document, ORDER_STATUSES, "order")
        authorizations = document.get("authorizations")
        if (
            not isinstance(authorizations, list)
            or not 0 < len(authorizations) <= MAX_AUTHORIZATIONS
        ):
            raise AcmeError(
                f"CA sent an order without 1 to {MAX_AUTHORIZATIONS} authorization URLs"
            )
        urls = tuple(check_url(a, base, "authorization") for a in authorizations)
        finalize = check_url(document.get("finalize"), base, "finalize")
        certificate = document.get("certificate")
        if certificate is not None:
            certificate = check_url(certificate, base, "certificate")
        error = document.get("error")
        return cls(
            url=url,
            status=status,
            authorizations=urls,
            finalize=finalize,
            certificate=certificate,
            error=None if error is None else format_problem(error, 0),
        )


@dataclass(frozen=True)
class Challenge:
    """A challenge of the type the run answers: http-01 or dns-01 (a token),
    or dns-persist-01 (the CA's issuer domain names, no token)."""

    url: str
    token: str  # safe as a file name: base64url, bounded ("" for dns-persist-01)
    status: str
    type: str = CHALLENGE_HTTP_01
    # dns-persist-01: "issuer-domain-names", checked (persist.check_issuer_names).
    issuer_names: tuple[str, ...] = ()

    @classmethod
    def from_json(
        cls, document: Mapping[str, Any], base: str, kind: str = CHALLENGE_HTTP_01
    ) -> Self:
        # dns-persist-01 has no token; it names the CA's issuer domains instead.
        token = ""
        names: tuple[str, ...] = ()
        if kind == CHALLENGE_DNS_PERSIST_01:
            try:
                names = check_issuer_names(document.get("issuer-domain-names"))
            except InputError as error:
                raise AcmeError(f"CA sent an unusable {error}") from None
        else:
            article = "an" if kind == CHALLENGE_HTTP_01 else "a"
            if not isinstance(document.get("token"), str):
                raise AcmeError(f"CA sent {article} {kind} challenge whose token is not a string")
            try:
                token = validate_token(document.get("token"))
            except InputError as error:
                raise AcmeError(f"CA sent an unusable {kind} challenge: {error}") from None
        return cls(
            url=check_url(document.get("url"), base, "challenge"),
            token=token,
            status=_status(document, CHALLENGE_STATUSES, "challenge"),
            type=kind,
            issuer_names=names,
        )


@dataclass(frozen=True)
class Authorization:
    url: str
    status: str
    identifier: str  # terminal-safe
    challenge: Challenge | None  # the one of the type asked for, if offered
    # The identifier as the CA sent it (None: not a string), to be matched
    # against the order's; `wildcard`, RFC 8555 7.1.4's flag.
    identifier_type: str | None = None
    identifier_value: str | None = None
    wildcard: bool = False

    @classmethod
    def from_json(
        cls,
        url: str,
        document: Mapping[str, Any],
        base: str,
        challenge_type: str = CHALLENGE_HTTP_01,
    ) -> Self:
        """`challenge` is the one of `challenge_type`; but dns-01 validates no
        IP address (RFC 8738 section 7): an "ip" identifier's is http-01's."""
        status = _status(document, AUTHZ_STATUSES, "authorization")
        raw = document.get("identifier")
        identifier = identifier_text(raw)
        challenges = document.get("challenges")
        if not isinstance(challenges, list):
            raise AcmeError(f"CA sent an authorization for {identifier} without challenges")
        kind, value = (raw.get("type"), raw.get("value")) if isinstance(raw, dict) else (None, None)
        if challenge_type == CHALLENGE_DNS_01 and kind == IP:
            challenge_type = CHALLENGE_HTTP_01
        challenge = None
        for item in challenges:
            if isinstance(item, dict) and item.get("type") == challenge_type:
                challenge = Challenge.from_json(item, base, challenge_type)
                break
        return cls(
            url=url,
            status=status,
            identifier=identifier,
            challenge=challenge,
            identifier_type=kind if isinstance(kind, str) else None,
            identifier_value=value if isinstance(value, str) else None,
            wildcard=document.get("wildcard") is True,
        )
