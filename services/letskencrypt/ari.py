"""ACME Renewal Information (ARI, RFC 9773): the CA's suggested renewal
window for a certificate, and what this client makes of it.

Standard library only: netproc (which fetches the window), acctproc (which
checks the `replaces` of a newOrder), the supervisor's relay and the run
state all use it.  The certificate's ARI identifier itself is computed from
the certificate by certs.ari_cert_id, where the cryptography wheel is.

- `is_cert_id`: a well-formed ARI identifier (RFC 9773 section 4.1,
  base64url(AKI keyIdentifier) "." base64url(serial number's DER bytes));
- `parse_window`: a renewalInfo answer, hostile input, checked strictly:
  one JSON object whose suggestedWindow has RFC 3339 `start` before `end`,
  and whose explanationURL, if any, is an https URL (only ever logged);
- `note`: the window, the time picked uniformly at random in it, and
  until when the CA is not asked again (its Retry-After, clamped to
  MIN_RETRY..MAX_RETRY as RFC 9773 section 4.3 advises; DEFAULT_RETRY
  without one);
- `judge`: what a note says about a certificate now: renew, wait, or ask.

A note whose cert_id is "" says the CA offers no renewalInfo at all (it is
asked again after NO_ARI_RETRY, in case it starts to).
"""

import base64
import json
import math
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from letskencrypt.errors import InputError
from letskencrypt.settings import AriNote
from letskencrypt.urls import well_formed
from letskencrypt.validate import safe_text

# The AKI keyIdentifier of any CA we know is a SHA-1 or SHA-256 digest; 64
# bytes is ample.  A serial number has at most 20 octets (RFC 5280 4.1.2.2),
# plus the DER sign byte.
MAX_KEY_ID_BYTES = 64
MAX_SERIAL_BYTES = 21
MAX_CERT_ID = (MAX_KEY_ID_BYTES * 4 + 2) // 3 + 1 + (MAX_SERIAL_BYTES * 4 + 2) // 3
MAX_RENEWAL_INFO = 16 * 1024
MAX_EXPLANATION_URL = 2048
# How long the CA is left alone after an answer (RFC 9773 4.3).
MIN_RETRY = 60.0
MAX_RETRY = 86400.0
DEFAULT_RETRY = 6 * 3600.0
# A CA whose directory has no renewalInfo is looked at again after a day.
NO_ARI_RETRY = 86400.0
# Windows this far from now are not dates any CA means.
MAX_YEARS = 100

_B64URL = r"[A-Za-z0-9_-]+"
_CERT_ID = re.compile(rf"({_B64URL})\.({_B64URL})")
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)"
)

RENEW = "renew"
WAIT = "wait"
ASK = "ask"


class AriError(InputError):
    """A renewalInfo answer we refuse, or an ARI request that failed."""


def _canonical_b64url(text: str, max_bytes: int) -> bool:
    if len(text) % 4 == 1 or len(text) > (max_bytes * 4 + 2) // 3:
        return False
    padded = text + "=" * (-len(text) % 4)
    data = base64.urlsafe_b64decode(padded)
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode() == text


def is_cert_id(value: object) -> bool:
    """Whether `value` is a well-formed ARI identifier (two canonical unpadded
    base64url parts, a key identifier and a positive DER serial number)."""
    if not isinstance(value, str) or len(value) > MAX_CERT_ID:
        return False
    match = _CERT_ID.fullmatch(value)
    if match is None:
        return False
    key_id, serial = match.groups()
    return _canonical_b64url(key_id, MAX_KEY_ID_BYTES) and _canonical_b64url(
        serial, MAX_SERIAL_BYTES
    )


def parseformat_time(value: object, what: str) -> datetime:
    """An RFC 3339 date-time (section 5.6), as an aware UTC datetime."""
    if not isinstance(value, str) or len(value) > 64:
        raise AriError(f"CA sent a renewal window whose {what} is not an RFC 3339 time")
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise AriError(
            f"CA sent a renewal window whose {what} {safe_text(value, 64)!r} is not an "
            "RFC 3339 time"
        )
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    text = f"{year}-{month}-{day}T{hour}:{minute}:{second}"
    if fraction:
        text += "." + fraction[:6].ljust(6, "0")
    text += "+00:00" if zone in ("Z", "z") else zone
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise AriError(
            f"CA sent a renewal window whose {what} {safe_text(value, 64)!r} is no date"
        ) from None
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Window:
    """A suggestedWindow (aware UTC datetimes) and the CA's explanationURL."""

    start: datetime
    end: datetime
    explanation: str | None = None


def parse_window(body: bytes, now: datetime | None = None) -> Window:
    """A renewalInfo document (RFC 9773 4.2), refused unless it is exactly
    what the RFC says: AriError naming what was wrong."""
    if len(body) > MAX_RENEWAL_INFO:
        raise AriError(f"CA sent renewal information larger than {MAX_RENEWAL_INFO} bytes")
    try:
        document: Any = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise AriError("CA sent renewal information that is not JSON") from None
    if not isinstance(document, dict):
        raise AriError("CA sent renewal information that is not a JSON object")
    window = document.get("suggestedWindow")
    if not isinstance(window, dict):
        raise AriError("CA sent renewal information without a suggestedWindow object")
    start = parseformat_time(window.get("start"), "start")
    end = parseformat_time(window.get("end"), "end")
    if end <= start:
        raise AriError("CA sent a renewal window that ends before it starts")
    now = now or datetime.now(UTC)
    for moment in (start, end):
        if abs(moment.year - now.year) > MAX_YEARS:
            raise AriError(f"CA sent a renewal window in the year {moment.year}")
    explanation = document.get("explanationURL")
    if explanation is not None:
        explanation = check_explanation_url(explanation)
    return Window(start, end, explanation)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def check_explanation_url(value: object) -> str:
    """The explanationURL: an https URL of printable ASCII (it is only logged)."""
    if (
        not isinstance(value, str)
        or len(value) > MAX_EXPLANATION_URL
        or not well_formed(value)
        or not value.lower().startswith("https://")
        or len(value) == len("https://")
    ):
        shown = safe_text(value, 100) if isinstance(value, str) else "(not text)"
        raise AriError(f"CA sent an explanationURL that is not an https URL: {shown!r}")
    return value


def clamp_retry(seconds: float | None) -> float:
    """The CA's Retry-After for renewalInfo, within MIN_RETRY..MAX_RETRY
    (DEFAULT_RETRY when it gave none)."""
    if seconds is None or not math.isfinite(seconds):
        return DEFAULT_RETRY
    return min(max(seconds, MIN_RETRY), MAX_RETRY)


def pick(window: Window, rng: random.Random | None = None) -> datetime:
    """A time uniformly at random in the window (RFC 9773 4.2)."""
    span = (window.end - window.start).total_seconds()
    offset = (rng or random).uniform(0, span)
    return datetime.fromtimestamp(window.start.timestamp() + offset, UTC)


def note(
    cert_id: str,
    window: Window,
    retry_after: float | None,
    now: datetime,
    rng: random.Random | None = None,
) -> AriNote:
    """What to remember of one renewalInfo answer."""
    return AriNote(
        cert_id=cert_id,
        start=window.start.timestamp(),
        end=window.end.timestamp(),
        chosen=pick(window, rng).timestamp(),
        retry_until=now.timestamp() + clamp_retry(retry_after),
        explanation=window.explanation,
    )


def no_ari(now: datetime) -> AriNote:
    """The note of a CA whose directory offers no renewalInfo."""
    return AriNote(cert_id="", retry_until=now.timestamp() + NO_ARI_RETRY)


def judge(note: AriNote | None, cert_id: str | None, now: datetime) -> tuple[str, str]:
    """(RENEW, WAIT or ASK, why) for the certificate `cert_id` by `note`.

    RENEW: the time picked in its window has come.  WAIT: not yet, and the
    CA is not to be asked again yet (or offers no ARI).  ASK: there is no
    note for this certificate, or its Retry-After has passed.
    """
    stamp = now.timestamp()
    if note is None or cert_id is None or note.cert_id not in ("", cert_id):
        return ASK, "renewal information not asked yet for this certificate"
    if stamp >= note.retry_until:
        return ASK, "time to ask for renewal information again"
    if note.cert_id == "":
        return WAIT, "the CA offers none (no renewalInfo): the lifetime rule decides"
    if note.chosen is not None and stamp >= note.chosen:
        return RENEW, f"{window_text(note)}, renewing from {format_time(note.chosen)}"
    return WAIT, f"{window_text(note)}, renewal picked for {format_time(note.chosen)}"


def window_text(note: AriNote) -> str:
    if note.start is None or note.end is None:
        return "no ARI window"
    return f"ARI window {format_time(note.start)}..{format_time(note.end)}"


def format_time(stamp: float | None) -> str:
    """A unix time as RFC 3339 UTC, to the second."""
    if stamp is None:
        return "(none)"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- notes as JSON (the marker line, the run state) -----------------------------

NOTE_FIELDS = ("cert_id", "start", "end", "chosen", "retry_until", "explanation")


def note_to_json(note: AriNote) -> dict[str, Any]:
    return {name: getattr(note, name) for name in NOTE_FIELDS}


def note_from_json(value: object) -> AriNote:
    """A note as note_to_json wrote it, from a hostile source: AriError if not."""
    if not isinstance(value, dict) or set(value) != set(NOTE_FIELDS):
        raise AriError(f"not an ARI note (fields {', '.join(NOTE_FIELDS)})")
    cert_id = value["cert_id"]
    if cert_id != "" and not is_cert_id(cert_id):
        raise AriError("an ARI note's cert_id is not an ARI identifier")
    times = {name: _stamp(value[name], name) for name in ("start", "end", "chosen")}
    retry_until = _stamp(value["retry_until"], "retry_until")
    if retry_until is None:
        raise AriError("an ARI note has no retry_until")
    explanation = value["explanation"]
    if explanation is not None:
        explanation = check_explanation_url(explanation)
    start, end, chosen = times["start"], times["end"], times["chosen"]
    if cert_id == "":
        if start is not None or end is not None or chosen is not None:
            raise AriError("an ARI note of a CA without ARI has a window")
    elif start is None or end is None or chosen is None or not start <= chosen <= end:
        raise AriError("an ARI note's chosen time is not in its window")
    return AriNote(cert_id=cert_id, start=start, end=end, chosen=chosen,
                   retry_until=retry_until, explanation=explanation)  # fmt: skip


def _stamp(value: object, what: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value < 2**34
    ):
        raise AriError(f"an ARI note's {what} is not a time")
    return float(value)
