"""The roles' output, read by the supervisor and copied to its own stderr.

A role never holds the operator's terminal: its stdout and stderr are pipes to
the supervisor, which reads them as they come (a role is never blocked by a
slow reader) and writes each line on to its own stderr treated as hostile:
control characters and escape sequences replaced (validate.safe_text), each
line capped, each role's total volume capped.  Writes to our own stderr wait
in a bounded queue until it can take them, so a hung terminal or a full pipe
behind us does not stop the run either.  No threads: the supervisor forks.

Each line is "letskencrypt: [ROLE: ]MESSAGE" on the way in, and goes out as
that, or with a timestamp first (`timestamps`, for a daemon's log), or as one
JSON object (`log_format="json"`: time, certificate, role, event).  A
nested stream is one certificate's (its keyproc's, in a run of many,
fleet.py): its lines go out labelled with that certificate.  A role that serves
every certificate of a run (host.py) says which one a line is about:
"letskencrypt@N: ROLE: MESSAGE", N the certificate's number in `handles`;
netproc's result line for each certificate (COUNTS_MARKER, with
"certificate" and "status") goes to `statuses`, and its account and ARI
note under that certificate's handle.
"""

import contextlib
import json
import os
import re
import selectors
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO

from letskencrypt import ari
from letskencrypt.roles import ROLES
from letskencrypt.settings import AriNote
from letskencrypt.validate import safe_text

PREFIX = "letskencrypt: "
# A line that starts so, from a stream added with counts=True, is not shown:
# it says, as JSON, how many requests and orders its role sent the CA, and
# what it learnt of the CA's renewal information ("ari", see ari.py).
COUNTS_MARKER = "letskencrypt-counts: "
MAX_COUNT = 10**9
# A line that starts so, from a role's own stream, is not shown: it is a
# JSON object the role tells the command line (acctproc: the account key
# it changed), kept in Relay.reports under the role's name.  A role can
# only write its own pipes, so a report names the role that made it.
REPORT_MARKER = "letskencrypt-report: "
# The account in the counts line ("account": {"url", "contact", "status"},
# as the CA showed it to netproc): each field bounded, the rest dropped.
MAX_ACCOUNT_URL = 2000
MAX_ACCOUNT_CONTACTS = 10
MAX_ACCOUNT_CONTACT = 320
MAX_ACCOUNT_STATUS = 40

# A shared role's line about one certificate (host.py).
CERTIFICATE_LINE = re.compile(rb"letskencrypt@([0-9]{1,6}): ")
# The statuses a certificate's result line may give (constants.EXIT_CODES).
RESULT_STATUSES = (0, 1, 2, "interrupted")

MAX_LINE = 2000
# A line longer than this (bytes, before decoding) is cut; the rest of it dropped.
MAX_LINE_BYTES = 4 * MAX_LINE
# Per role, over the whole run; then one line says the rest is dropped.
MAX_VOLUME = 256 * 1024
# What may wait for our own stderr; beyond it lines are dropped, and counted.
MAX_PENDING = 1024 * 1024
READ_SIZE = 64 * 1024
WRITE_SIZE = 512
FLUSH_TIMEOUT = 2.0


@dataclass
class _Stream:
    # A role's name, or a nested stream's certificate.
    role: str
    file: IO[bytes]
    nested: bool = False
    counts: bool = False
    # A role serving every certificate of the run (host.py).
    shared: bool = False
    buffer: bytearray = field(default_factory=bytearray)
    # Inside a line longer than MAX_LINE_BYTES: drop up to its end.
    skipping: bool = False


@dataclass
class Style:
    """How this process's own lines look (the command line sets it once)."""

    log_format: str = "text"
    timestamps: bool = False


STYLE = Style()


def tell(line: str, certificate: str | None = None) -> None:
    """Write one line of ours ("letskencrypt: ...") to stderr now, in STYLE."""
    sys.stderr.flush()
    os.write(2, (Relay().render(line, certificate) + "\n").encode(errors="replace"))


def account_report(value: object) -> dict[str, object] | None:
    """The "account" of a counts line, as {"url", "contact", "status"}, each
    bounded and made safe; None if it is not one."""
    if not isinstance(value, dict):
        return None
    url, contact, status = value.get("url"), value.get("contact"), value.get("status")
    if not isinstance(url, str) or not 0 < len(url) <= MAX_ACCOUNT_URL:
        return None
    if not isinstance(contact, list) or not all(isinstance(c, str) for c in contact):
        return None
    if not isinstance(status, str) or not status:
        return None
    return {
        "url": safe_text(url, MAX_ACCOUNT_URL),
        "contact": [safe_text(c, MAX_ACCOUNT_CONTACT) for c in contact if c][
            :MAX_ACCOUNT_CONTACTS
        ],
        "status": safe_text(status, MAX_ACCOUNT_STATUS),
    }


class Relay:
    def __init__(
        self,
        output: int = 2,
        *,
        log_format: str | None = None,
        timestamps: bool | None = None,
        certificate: str | None = None,
    ) -> None:
        self.output = output
        self.log_format = STYLE.log_format if log_format is None else log_format
        self.timestamps = STYLE.timestamps if timestamps is None else timestamps
        # The certificate a single-certificate run is for (named in JSON).
        self.certificate = certificate
        self.selector = selectors.PollSelector()
        self.streams: dict[int, _Stream] = {}
        self.volume: dict[str, int] = {}
        self.pending = bytearray()
        self.dropped = 0
        # Each stream's (role's, certificate's) last line: what a failure said.
        self.last_lines: dict[str, str] = {}
        # Summed from the COUNTS_MARKER lines.
        self.counts = {"requests": 0, "orders": 0}
        # The account each counts stream (netproc, a certificate) last reported.
        self.accounts: dict[str, dict[str, object]] = {}
        # Each role's last REPORT_MARKER object.
        self.reports: dict[str, dict[str, object]] = {}
        # Each stream's (netproc's, a certificate's) last ARI note, from those lines.
        self.ari: dict[str, AriNote] = {}
        # A run of many certificates with shared roles: each certificate's
        # number -> its handle, and its status from netproc's result line.
        self.handles: dict[int, str] = {}
        self.statuses: dict[str, int | str] = {}
        self.writing = False

    # --- reading the roles ---------------------------------------------------------

    def add(
        self,
        role: str,
        file: IO[bytes],
        nested: bool = False,
        counts: bool = False,
        shared: bool = False,
    ) -> None:
        fd = file.fileno()
        os.set_blocking(fd, False)
        self.streams[fd] = _Stream(role, file, nested, counts, shared)
        self.selector.register(fd, selectors.EVENT_READ)

    def pump(self, timeout: float) -> None:
        """Wait up to `timeout` for output (or for our stderr to take some); handle it."""
        if not self.streams and not self.pending:
            time.sleep(timeout)
            return
        self._want_write(bool(self.pending))
        for key, events in self.selector.select(timeout):
            if key.fd == self.output:
                self._write_some()
            elif events & selectors.EVENT_READ:
                self._read(key.fd)

    def drain(self, role: str | None = None) -> None:
        """Read what is there now from `role`'s pipes (every role's if None)."""
        for fd, stream in list(self.streams.items()):
            if role is None or stream.role == role:
                while fd in self.streams and self._read(fd):
                    pass

    def _read(self, fd: int) -> bool:
        """One read; whether there may be more."""
        stream = self.streams[fd]
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            if stream.buffer and not stream.skipping:
                self._line(stream, bytes(stream.buffer))
            self._close(fd)
            return False
        stream.buffer += data
        while True:
            end = stream.buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(stream.buffer[:end])
            del stream.buffer[: end + 1]
            if stream.skipping:
                stream.skipping = False
            else:
                self._line(stream, line)
        if len(stream.buffer) > MAX_LINE_BYTES:
            if not stream.skipping:
                self._line(stream, bytes(stream.buffer[:MAX_LINE_BYTES]))
            stream.buffer.clear()
            stream.skipping = True
        return True

    def _close(self, fd: int) -> None:
        self.selector.unregister(fd)
        stream = self.streams.pop(fd)
        with contextlib.suppress(OSError):
            stream.file.close()

    def _line(self, stream: _Stream, raw: bytes) -> None:
        if stream.counts and raw.startswith(COUNTS_MARKER.encode()):
            self._count(raw[len(COUNTS_MARKER):], stream.role)
            return
        if not stream.nested and raw.startswith(REPORT_MARKER.encode()):
            self._report(raw[len(REPORT_MARKER):], stream.role)
            return
        role = stream.role
        used = self.volume.get(role, 0)
        limit = MAX_VOLUME * (len(ROLES) if stream.nested else 1)
        if stream.shared:
            limit = MAX_VOLUME * max(1, len(self.handles))
        if used > limit:
            return
        self.volume[role] = used + len(raw) + 1
        certificate = role if stream.nested else None
        if used + len(raw) + 1 > limit:
            self.write(f"{PREFIX}{'' if stream.nested else role + ': '}more than "
                       f"{limit // 1024} KiB of output; dropping the rest",
                       certificate=certificate)  # fmt: skip
            return
        about = CERTIFICATE_LINE.match(raw) if stream.shared else None
        if about is not None:
            handle = self.handles.get(int(about.group(1)))
            raw = PREFIX.encode() + raw[about.end():]
        text = safe_text(raw.decode("utf-8", errors="replace"), MAX_LINE)
        if about is not None:
            prefix = f"{PREFIX}{role}: "
            if handle is not None:
                self.last_lines[handle] = text.removeprefix(PREFIX)
            self.write(prefix + text.removeprefix(prefix), certificate=handle)
            return
        self.last_lines[role] = text.removeprefix(PREFIX)
        if stream.nested:
            self.write(text if text.startswith(PREFIX) else PREFIX + text, certificate=role)
            return
        prefix = f"{PREFIX}{role}: "
        if text.startswith(prefix):
            text = text[len(prefix):]
        self.write(prefix + text)

    def _count(self, raw: bytes, role: str) -> None:
        try:
            counts = json.loads(raw)
        except (ValueError, RecursionError):
            return
        if not isinstance(counts, dict):
            return
        if "certificate" in counts:
            number = counts["certificate"]
            handle = self.handles.get(number) if isinstance(number, int) else None
            status = counts.get("status")
            if handle is None or isinstance(status, bool) or status not in RESULT_STATUSES:
                return
            self.statuses[handle] = counts["status"]
            role = handle
        for name in self.counts:
            value = counts.get(name)
            if isinstance(value, int) and 0 <= value <= MAX_COUNT:
                self.counts[name] = min(self.counts[name] + value, MAX_COUNT)
        account = account_report(counts.get("account"))
        if account is not None:
            self.accounts[role] = account
        if "ari" in counts:
            with contextlib.suppress(ari.AriError):
                self.ari[role] = ari.note_from_json(counts["ari"])

    def _report(self, raw: bytes, role: str) -> None:
        try:
            report = json.loads(raw)
        except ValueError:
            return
        if isinstance(report, dict):
            self.reports[role] = report

    # --- writing ours -----------------------------------------------------------------

    def write(self, line: str, certificate: str | None = None) -> None:
        """Queue one line (ours, trusted, or a role's made safe) for our
        stderr, in the output's format; write what it takes now."""
        data = (self.render(line, certificate) + "\n").encode(errors="replace")
        if len(self.pending) + len(data) > MAX_PENDING:
            self.dropped += 1
            return
        self.pending += data
        self._write_some()

    def render(self, line: str, certificate: str | None) -> str:
        """`line` ("letskencrypt: [ROLE: ]MESSAGE") as it goes out."""
        if self.log_format == "text" and not self.timestamps and certificate is None:
            return line
        body = line.removeprefix(PREFIX)
        first, separator, rest = body.partition(": ")
        role = first if separator and first in ROLES else None
        event = rest if role else body
        now = datetime.now(UTC)
        if self.log_format == "json":
            return json.dumps({
                "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "certificate": certificate or self.certificate,
                "role": role,
                "event": event,
            })  # fmt: skip
        label = "".join(f"{part}: " for part in (certificate, role) if part)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ ") if self.timestamps else ""
        return f"{stamp}{PREFIX}{label}{event}"

    def _want_write(self, wanted: bool) -> None:
        if wanted == self.writing:
            return
        if wanted:
            self.selector.register(self.output, selectors.EVENT_WRITE)
        else:
            self.selector.unregister(self.output)
        self.writing = wanted

    def _write_some(self) -> None:
        """Write while our stderr takes it without blocking."""
        while self.pending:
            if not self._writable():
                return
            try:
                written = os.write(self.output, self.pending[:WRITE_SIZE])
            except BlockingIOError:
                return
            except OSError:  # no stderr at all: nothing to do but drop
                self.pending.clear()
                return
            del self.pending[:written]
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self.write(f"letskencrypt: {dropped} lines of output dropped (stderr blocked)")

    def _writable(self) -> bool:
        poller = selectors.PollSelector()
        try:
            poller.register(self.output, selectors.EVENT_WRITE)
            return bool(poller.select(0))
        except (OSError, ValueError):
            return True
        finally:
            poller.close()

    def close(self) -> None:
        """Read the rest, write what our stderr takes within FLUSH_TIMEOUT, close."""
        self.drain()
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while self.pending and time.monotonic() < deadline:
            self._write_some()
            if self.pending:
                time.sleep(0.01)
        for fd in list(self.streams):
            self._close(fd)
        self._want_write(False)
        self.selector.close()
