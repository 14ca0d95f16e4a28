"""`letskencrypt status`: what is installed for each configured certificate,
when it is due for renewal and why, and how its last run went; and each
authority's account (URL, contact, status) as the CA last showed it to a
run (the run state's, which netproc reported).

Read-only and local: it reads each certificate directory's cert.pem
(through the filestore's symlinks, bounded, see renewal.load_certificate_file)
and takes the run state it is given; never a private key, never the network.
Whether renewal is due is renewal.renewal_due's rule, the one the runs
apply, and the CA's renewal information (ARI) as the last run that asked
learnt it (the run state's note, when it is about the installed
certificate): renewal comes at the earlier of the two.  What status
cannot know without the CA's trust anchors is whether a run would also
refuse the installed chain (renewal.decide's `distrust`).

render_text shows everything taken from a certificate or the run state
made safe for a terminal (validate.safe_text); render_json leaves that to
JSON's own escaping, ASCII only.
"""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from letskencrypt import ari, deploy, filestore, runstate
from letskencrypt.certs import ari_cert_id, cert_names
from letskencrypt.errors import CertificateFileError, CertificateRejected, InputError
from letskencrypt.keys import key_type_of
from letskencrypt.renewal import load_certificate_file, renewal_due
from letskencrypt.settings import AriNote
from letskencrypt.validate import safe_text

UNREADABLE = "unknown: the certificate cannot be read"
MAX_ERROR = 500


@dataclass(frozen=True)
class Entry:
    """One configured certificate, as the command line knows it."""

    handle: str
    names: tuple[str, ...]
    cert_dir: str
    key_type: str | None
    authority: str
    directory_url: str


@dataclass(frozen=True)
class Facts:
    """What `gather` found for one Entry; times are aware datetimes in UTC.

    `names` are the wanted names, `installed_names` the certificate's.
    `next_renewal` is when renewal becomes due; None while `due` means at
    once (no certificate yet, names changed).  `error` (one line) says the
    certificate could not be read: its fields are then empty and `due` is
    False, for a run would fail rather than renew.
    """

    handle: str
    names: tuple[str, ...]
    cert_dir: str
    authority: str
    directory_url: str
    installed_names: tuple[str, ...]
    key_type: str | None
    issuer: str | None
    serial: str | None
    not_before: datetime | None
    not_after: datetime | None
    next_renewal: datetime | None
    renewal_reason: str
    due: bool
    last_result: str | None
    last_run: datetime | None
    last_message: str | None
    error: str | None
    # The CA's renewal information for the installed certificate, as the
    # last run that asked learnt it (None: none known).
    ari: AriNote | None = None
    # A run installed a certificate whose deploy hook has not run to
    # success: the next run runs it (deploy.py).
    deploy_hook_owed: bool = False


# --- gathering ---------------------------------------------------------------


def _key_type(cert: x509.Certificate) -> str | None:
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return None
    try:
        return key_type_of(key)
    except InputError:
        return None


def _read(path: str) -> tuple[x509.Certificate | None, tuple[str, ...], str | None]:
    """The certificate at `path` (None if there is none), its names, and
    why it cannot be used (None if it can)."""
    try:
        cert = load_certificate_file(path)
        return cert, (tuple(cert_names(cert)) if cert else ()), None
    except CertificateFileError as error:
        return None, (), safe_text(str(error), MAX_ERROR)
    except CertificateRejected as error:
        return None, (), safe_text(f"certificate {path}: {error}", MAX_ERROR)


def _facts(entry: Entry, state: runstate.State, now: datetime) -> Facts:
    record = state.certificates.get(entry.handle)
    cert, installed, error = _read(os.path.join(entry.cert_dir, filestore.CERT))
    due = renewal_due(cert, list(entry.names))
    reason = due.reason
    next_renewal = due.at
    note = record.ari if record else None
    if cert is None or note is None or note.cert_id != ari_cert_id(cert):
        note = None
    elif due.at is not None and note.chosen is not None and note.chosen < due.at.timestamp():
        next_renewal = datetime.fromtimestamp(note.chosen, UTC)
        reason = ari.window_text(note)
    if error is not None:
        reason = UNREADABLE
    elif cert is not None and now >= cert.not_valid_after_utc:
        reason = "expired" if due.at is not None else f"expired; {due.reason}"
    return Facts(
        handle=entry.handle,
        names=tuple(entry.names),
        cert_dir=entry.cert_dir,
        authority=entry.authority,
        directory_url=entry.directory_url,
        installed_names=installed,
        key_type=_key_type(cert) if cert else None,
        issuer=cert.issuer.rfc4514_string() if cert else None,
        serial=format(cert.serial_number, "x") if cert else None,
        not_before=cert.not_valid_before_utc if cert else None,
        not_after=cert.not_valid_after_utc if cert else None,
        next_renewal=next_renewal,
        renewal_reason=reason,
        due=error is None and (next_renewal is None or now > next_renewal),
        last_result=record.last_result if record else None,
        last_run=datetime.fromtimestamp(record.last_run, UTC) if record else None,
        last_message=record.last_message if record else None,
        error=error,
        ari=note,
        deploy_hook_owed=deploy.owed(entry.cert_dir) is not None,
    )


def gather(entries: Sequence[Entry], state: runstate.State, now: datetime) -> list[Facts]:
    """The facts of every entry, in their order.  A naive `now` is UTC."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return [_facts(entry, state, now) for entry in entries]


@dataclass(frozen=True)
class AccountFacts:
    """An authority's account as the run state has it (all None/empty if no
    run has reached the CA yet)."""

    authority: str
    url: str | None
    contact: tuple[str, ...]
    status: str | None
    seen: datetime | None


def gather_accounts(authorities: Sequence[str], state: runstate.State) -> list[AccountFacts]:
    """The account of each authority, once each, in the order first named."""
    facts = []
    for authority in dict.fromkeys(authorities):
        record = state.accounts.get(authority)
        facts.append(AccountFacts(
            authority=authority,
            url=record.url if record else None,
            contact=record.contact if record else (),
            status=record.status if record else None,
            seen=datetime.fromtimestamp(record.seen, UTC) if record else None,
        ))  # fmt: skip
    return facts


# --- rendering ---------------------------------------------------------------


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _names(names: Sequence[str]) -> str:
    return ", ".join(safe_text(name, 253) for name in names) or "(none)"


def _renewal_line(facts: Facts) -> str:
    reason = safe_text(facts.renewal_reason)
    if facts.error is not None:
        return reason
    if facts.next_renewal is None:
        return f"due now ({reason})"
    if facts.due:
        return f"due now, since {_time(facts.next_renewal)} ({reason})"
    return f"due after {_time(facts.next_renewal)} ({reason})"


def _ari_line(note: AriNote) -> str:
    if note.cert_id == "":
        return f"the CA offers none (asked again after {_time(_utc(note.retry_until))})"
    line = (f"{ari.window_text(note)}, renewal picked for {ari.format_time(note.chosen)}, "
            f"asked again after {_time(_utc(note.retry_until))}")  # fmt: skip
    if note.explanation:
        line += f"; explained at {safe_text(note.explanation, 300)}"
    return line


def _utc(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


def _block(facts: Facts) -> str:
    rows: list[tuple[str, str]] = [
        ("names", _names(facts.names)),
        ("directory", safe_text(facts.cert_dir)),
        ("authority", f"{safe_text(facts.authority)} ({safe_text(facts.directory_url)})"),
    ]
    if facts.not_before is not None and facts.not_after is not None:
        rows += [
            ("installed", _names(facts.installed_names)),
            ("key", facts.key_type or "(not one letskencrypt makes)"),
            ("issuer", safe_text(facts.issuer or "")),
            ("serial", facts.serial or ""),
            ("valid", f"{_time(facts.not_before)} to {_time(facts.not_after)}"),
        ]
    elif facts.error is None:
        rows.append(("installed", "(nothing)"))
    rows.append(("renewal", _renewal_line(facts)))
    if facts.ari is not None:
        rows.append(("ari", _ari_line(facts.ari)))
    if facts.last_run is not None:
        last = f"{_time(facts.last_run)}, {safe_text(facts.last_result or '')}"
        if facts.last_message:
            last += f": {safe_text(facts.last_message)}"
        rows.append(("last run", last))
    else:
        rows.append(("last run", "(none recorded)"))
    if facts.deploy_hook_owed:
        rows.append(("deploy hook", "owed: the next run runs it"))
    if facts.error is not None:
        rows.append(("error", safe_text(facts.error)))
    width = max(len(label) for label, _ in rows)
    lines = [safe_text(facts.handle, 200)]
    lines += [f"  {label.ljust(width)}  {value}" for label, value in rows]
    return "\n".join(lines) + "\n"


def render_text(facts: list[Facts]) -> str:
    """One block per certificate, separated by blank lines."""
    if not facts:
        return "no certificates configured\n"
    return "\n".join(_block(one) for one in facts)


def render_accounts_text(accounts: list[AccountFacts]) -> str:
    """One block per authority, each after a blank line (none without any)."""
    blocks = []
    for account in accounts:
        lines = [f"account {safe_text(account.authority, 200)}"]
        if account.seen is None:
            lines.append("  (not seen yet: no run has reached the CA)")
        else:
            contact = ", ".join(safe_text(c, 320) for c in account.contact) or "(none)"
            rows = [
                ("url", safe_text(account.url or "")),
                ("contact", contact),
                ("status", safe_text(account.status or "")),
                ("seen", _time(account.seen)),
            ]
            lines += [f"  {label.ljust(7)}  {value}" for label, value in rows]
        blocks.append("\n" + "\n".join(lines) + "\n")
    return "".join(blocks)


def _document(facts: Facts) -> dict[str, object]:
    return {
        "handle": facts.handle,
        "names": list(facts.names),
        "cert_dir": facts.cert_dir,
        "authority": facts.authority,
        "directory_url": facts.directory_url,
        "installed_names": list(facts.installed_names),
        "key_type": facts.key_type,
        "issuer": facts.issuer,
        "serial": facts.serial,
        "not_before": _iso(facts.not_before),
        "not_after": _iso(facts.not_after),
        "next_renewal": _iso(facts.next_renewal),
        "renewal_reason": facts.renewal_reason,
        "due": facts.due,
        "last_result": facts.last_result,
        "last_run": _iso(facts.last_run),
        "last_message": facts.last_message,
        "error": facts.error,
        "ari": None if facts.ari is None else _ari_document(facts.ari),
        "deploy_hook_owed": facts.deploy_hook_owed,
    }


def _ari_document(note: AriNote) -> dict[str, object]:
    def iso(stamp: float | None) -> str | None:
        return None if stamp is None else _iso(_utc(stamp))

    return {
        "window_start": iso(note.start),
        "window_end": iso(note.end),
        "chosen": iso(note.chosen),
        "retry_after": iso(note.retry_until),
        "explanation_url": note.explanation,
    }


def render_json(facts: list[Facts], accounts: list[AccountFacts] | None = None) -> str:
    """One JSON document, {"certificates": [...]} (and "accounts": [...] if
    given), every key always present (null when unknown), times as ISO 8601
    UTC with Z."""
    document: dict[str, object] = {"certificates": [_document(one) for one in facts]}
    if accounts is not None:
        document["accounts"] = [
            {
                "authority": account.authority,
                "url": account.url,
                "contact": list(account.contact),
                "status": account.status,
                "seen": _iso(account.seen),
            }
            for account in accounts
        ]
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
