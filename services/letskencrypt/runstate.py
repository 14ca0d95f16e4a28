"""The record of past runs: one small JSON file that `letskencrypt status`
and the metrics read, and every run rewrites.

Per certificate (by its handle) the last run's time, result and message,
the last success and failure, how many runs in a row have failed, and what
netproc last learnt of the CA's renewal information (ARI, an
ari.note_from_json note; absent in files of before); for
the whole last run its start, duration, and how many orders and requests
it made; per authority the account as the CA last showed it to a run (its
URL, contact and status, and when: netproc's word, relay.account_report).

The file is a convenience, never a source of truth: `load` takes a missing
file as no history, and a file it cannot use (unreadable, a symlink, larger
than MAX_STATE_BYTES, not JSON, wrong types) as no history too, saying why
in `State.warning`; it never raises.  `save` replaces the file atomically
(publicfile.replace_file), mode 0644, making its directory if missing.
"""

import dataclasses
import errno
import json
import math
from dataclasses import dataclass, field
from typing import Any

from letskencrypt import ari, fsutil, publicfile
from letskencrypt.relay import (
    MAX_ACCOUNT_CONTACT,
    MAX_ACCOUNT_CONTACTS,
    MAX_ACCOUNT_STATUS,
    MAX_ACCOUNT_URL,
)
from letskencrypt.settings import AriNote
from letskencrypt.validate import safe_text

DEFAULT_PATH = "/var/lib/letskencrypt/state.json"
MAX_STATE_BYTES = 4 * 1024 * 1024
MAX_MESSAGE = 500
MAX_HANDLE = 200
FORMAT_VERSION = 1

CHANGED = "changed"
NOT_DUE = "not-due"
FAILED = "failed"
REVOKED = "revoked"
RESULTS = (CHANGED, NOT_DUE, FAILED, REVOKED)


@dataclass(frozen=True)
class CertRecord:
    """What the runs so far did for one certificate; times are unix times."""

    last_run: float
    last_result: str
    last_message: str
    last_success: float | None
    last_failure: float | None
    failures_in_row: int
    # The CA's renewal information for the certificate (see ari.py).
    ari: AriNote | None = None


@dataclass(frozen=True)
class RunRecord:
    """The last run as a whole: its start (unix time) and length in seconds,
    and the ACME orders and requests it made."""

    started: float
    duration: float
    orders: int
    requests: int


@dataclass(frozen=True)
class AccountRecord:
    """One authority's account as the CA last showed it to a run (unix time `seen`)."""

    url: str
    contact: tuple[str, ...]
    status: str
    seen: float


@dataclass(frozen=True)
class State:
    """Everything in the file.  `warning` is not stored: it is why `load`
    could not use the file and started from no history (None if it could,
    or if there was no file)."""

    certificates: dict[str, CertRecord] = field(default_factory=dict)
    last_run: RunRecord | None = None
    warning: str | None = None
    # Authority name -> its account (absent in files older than this field).
    accounts: dict[str, AccountRecord] = field(default_factory=dict)


class _Invalid(Exception):
    """The file's content is not a state this module wrote."""


# --- updating ----------------------------------------------------------------


def record(
    state: State,
    handle: str,
    result: str,
    message: str,
    now: float,
    ari_note: AriNote | None = None,
) -> State:
    """`state` with the outcome of one run for `handle`; `state` is unchanged.

    `message` is kept as one line of at most MAX_MESSAGE characters.  Any
    result but "failed" counts as a success and ends a series of failures.
    `ari_note` replaces the ARI note kept (None: the one before stays).
    ValueError for a result not in RESULTS or a handle `load` would refuse.
    """
    if not handle or len(handle) > MAX_HANDLE:
        raise ValueError(f"a certificate's handle must have 1 to {MAX_HANDLE} characters")
    if result not in RESULTS:
        raise ValueError(f"unknown run result {result!r} (one of {', '.join(RESULTS)})")
    previous = state.certificates.get(handle)
    last_success = previous.last_success if previous else None
    last_failure = previous.last_failure if previous else None
    failures = previous.failures_in_row if previous else 0
    if result == FAILED:
        last_failure, failures = now, failures + 1
    else:
        last_success, failures = now, 0
    entry = CertRecord(
        last_run=now,
        last_result=result,
        last_message=_one_line(message),
        last_success=last_success,
        last_failure=last_failure,
        failures_in_row=failures,
        ari=ari_note or (previous.ari if previous else None),
    )
    return dataclasses.replace(state, certificates={**state.certificates, handle: entry})


def _one_line(message: str) -> str:
    return safe_text(message, MAX_MESSAGE) if message else ""


def record_run(state: State, run: RunRecord) -> State:
    """`state` with `run` as the last run."""
    return dataclasses.replace(state, last_run=run)


def record_account(state: State, authority: str, account: AccountRecord) -> State:
    """`state` with `account` as `authority`'s; ValueError for one that `load`
    would refuse."""
    try:
        document = {**dataclasses.asdict(account), "contact": list(account.contact)}
        checked = _account_record(_handle(authority), document)
    except _Invalid as error:
        raise ValueError(str(error)) from None
    return dataclasses.replace(state, accounts={**state.accounts, authority: checked})


# --- the file ----------------------------------------------------------------


def load(path: str) -> State:
    """The state in `path`: empty if there is no file, empty with `warning`
    set if the file cannot be used.  Never raises for the file or its content."""
    try:
        data = fsutil.read_file(path, MAX_STATE_BYTES)
    except FileNotFoundError:
        return State()
    except fsutil.FileTooLarge:
        return _unusable(path, f"larger than {MAX_STATE_BYTES} bytes")
    except fsutil.NotRegularFile:
        return _unusable(path, "not a regular file")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _unusable(path, "a symlink, which is not followed")
        return _unusable(path, exc.strerror or "cannot read it")
    try:
        return _parse(data)
    except _Invalid as exc:
        return _unusable(path, str(exc))


def save(path: str, state: State) -> None:
    """Replace `path` atomically with `state` (mode 0644; the directory is
    made, 0755, if missing).  OSError if that fails."""
    publicfile.replace_file(path, _serialise(state), create_parent=True)


def _unusable(path: str, why: str) -> State:
    return State(warning=f"run state {safe_text(path)}: {why}; ignoring its history")


def _serialise(state: State) -> bytes:
    document = {
        "version": FORMAT_VERSION,
        "certificates": {
            handle: dataclasses.asdict(entry) for handle, entry in state.certificates.items()
        },
        "last_run": dataclasses.asdict(state.last_run) if state.last_run else None,
        "accounts": {
            authority: {**dataclasses.asdict(account), "contact": list(account.contact)}
            for authority, account in state.accounts.items()
        },
    }
    return (json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def _refuse_constant(name: str) -> None:
    raise _Invalid(f"not valid JSON ({name})")


def _parse(data: bytes) -> State:
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _Invalid("not valid JSON") from None
    if not isinstance(document, dict):
        raise _Invalid("not a JSON object")
    if document.get("version") != FORMAT_VERSION:
        raise _Invalid(f"not version {FORMAT_VERSION} of the format")
    certificates = document.get("certificates")
    if not isinstance(certificates, dict):
        raise _Invalid("'certificates' is not an object")
    last_run = document.get("last_run")
    accounts = document.get("accounts", {})
    if not isinstance(accounts, dict):
        raise _Invalid("'accounts' is not an object")
    return State(
        certificates={
            _handle(handle): _cert_record(handle, entry) for handle, entry in certificates.items()
        },
        last_run=None if last_run is None else _run_record(last_run),
        accounts={
            _handle(authority): _account_record(authority, entry)
            for authority, entry in accounts.items()
        },
    )


def _handle(handle: str) -> str:
    if not handle or len(handle) > MAX_HANDLE:
        raise _Invalid("a certificate's handle is empty or too long")
    return handle


def _fields(value: Any, what: str, names: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != set(names):
        raise _Invalid(f"{what} does not have the fields {', '.join(names)}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Invalid(f"{what} is not a number")
    if value < 0:
        raise _Invalid(f"{what} is negative")
    return float(value)


def _optional_number(value: Any, what: str) -> float | None:
    return None if value is None else _number(value, what)


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Invalid(f"{what} is not a count")
    return value


def _cert_record(handle: str, value: Any) -> CertRecord:
    what = f"certificate {safe_text(handle, 100)!r}"
    names = tuple(f.name for f in dataclasses.fields(CertRecord))
    if isinstance(value, dict) and "ari" not in value:
        names = tuple(name for name in names if name != "ari")
    entry = _fields(value, what, names)
    note = None
    if entry.get("ari") is not None:
        try:
            note = ari.note_from_json(entry["ari"])
        except ari.AriError as error:
            raise _Invalid(f"{what}: {error}") from None
    if entry["last_result"] not in RESULTS:
        raise _Invalid(f"{what}: last_result is not one of {', '.join(RESULTS)}")
    if not isinstance(entry["last_message"], str):
        raise _Invalid(f"{what}: last_message is not a string")
    return CertRecord(
        last_run=_number(entry["last_run"], f"{what}: last_run"),
        last_result=entry["last_result"],
        last_message=_one_line(entry["last_message"]),
        last_success=_optional_number(entry["last_success"], f"{what}: last_success"),
        last_failure=_optional_number(entry["last_failure"], f"{what}: last_failure"),
        failures_in_row=_count(entry["failures_in_row"], f"{what}: failures_in_row"),
        ari=note,
    )


def _run_record(value: Any) -> RunRecord:
    run = _fields(value, "last_run", tuple(f.name for f in dataclasses.fields(RunRecord)))
    return RunRecord(
        started=_number(run["started"], "last_run: started"),
        duration=_number(run["duration"], "last_run: duration"),
        orders=_count(run["orders"], "last_run: orders"),
        requests=_count(run["requests"], "last_run: requests"),
    )


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise _Invalid(f"{what} is not text of 1 to {limit} characters")
    return value


def _account_record(authority: str, value: Any) -> AccountRecord:
    # Bounded as the relay bounds netproc's report of it.
    what = f"account of {safe_text(authority, 100)!r}"
    entry = _fields(value, what, tuple(f.name for f in dataclasses.fields(AccountRecord)))
    contact = entry["contact"]
    if not isinstance(contact, list) or len(contact) > MAX_ACCOUNT_CONTACTS:
        raise _Invalid(f"{what}: contact is not a list of at most {MAX_ACCOUNT_CONTACTS}")
    return AccountRecord(
        url=_text(entry["url"], f"{what}: url", MAX_ACCOUNT_URL),
        contact=tuple(_text(c, f"{what}: contact", MAX_ACCOUNT_CONTACT) for c in contact),
        status=_text(entry["status"], f"{what}: status", MAX_ACCOUNT_STATUS),
        seen=_number(entry["seen"], f"{what}: seen"),
    )
