"""chngproc: publishes the challenge responses: http-01 key authorisations
in the challenge directory, or dns-01 TXT records by signed RFC 2136 updates.

Holds: write access to the challenge directory (http-01; with dns-01, for
the certificate's IP addresses, if any), and the TSIG key (dns-01), read
before the sandbox; nothing else.
Network: none, even for dns-01.  Serves: Challenge on the `chng` edge.

http-01: file names are validated base64url tokens (no `/`, no `..`), files
are written through a descriptor of the directory and renamed into place, so
a caller cannot make chngproc write anywhere else.  Every file written is
removed when the run ends, whether it succeeded or not.

dns-01: chngproc builds and TSIG-signs each update itself and hands it to
netproc, which has dnsproc carry it to the DNS server and brings the
server's answer back; chngproc checks the answer's signature (over its
request's) and its rcode before it says "done".  An update touches only
`_acme-challenge.<name>` TXT of one of the run's names (from chngproc's own
settings), and the value it adds is the SHA-256 of a well-formed key
authorisation: a hostile netproc can have chngproc sign nothing else.  It
can drop or replay a signed update (replaying an add puts back a record the
CA may read anyway; BIND's TSIG time window bounds a replay to minutes),
not forge one: the secret never leaves this process.  The first record a
run adds under a name also removes that name's _acme-challenge TXT records
(what a killed run left: records there belong to ACME validation).
chngproc remembers each record it had added (from the moment it signs the
add) until the server confirms its removal; netproc withdraws them all on
every way out (success, failure, SIGTERM), and what is left when chngproc
stops is said in one line each: the next run removes it.
"""

import os
import secrets
import signal
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from letskencrypt import fsutil, process, rpc
from letskencrypt.constants import CHALLENGE_DNS_01, CHALLENGE_HTTP_01
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import InputError
from letskencrypt.settings import ChngprocSettings
from letskencrypt.spec import Fs, Grant, RoleSpec
from letskencrypt.v1 import challenge_pb2, challenge_pb2_grpc
from letskencrypt.validate import (
    DNS,
    identifier_type,
    safe_text,
    validate_key_authorization,
    validate_token,
)

if TYPE_CHECKING:
    from letskencrypt import dnsupdate


def challenge_grants(settings: ChngprocSettings) -> list[Grant]:
    if settings.challenge_dir is None:
        return []
    return [
        Grant(
            settings.challenge_dir,
            Fs.MAKE_REG | Fs.WRITE_FILE | Fs.REMOVE_FILE,
            what="challenge directory",
        )
    ]


SPEC = RoleSpec(
    name="chngproc",
    summary="publishes and withdraws challenge responses (http-01 files, signed dns-01 updates)",
    settings=ChngprocSettings,
    serves=("chng",),
    paths=challenge_grants,
    opens=lambda settings: [Grant(settings.tsig_key, Fs.READ_FILE, "TSIG key")]
    if settings.tsig_key
    else [],
    keeps_root="the challenge directory is the web server's, often writable by root only",
    # It removes its files from the web root even when the supervisor is
    # killed outright: SIGTERM (see rpc.serve_until_stopped), not SIGKILL.
    parent_death_signal=signal.SIGTERM,
    # dns-01: the updates it builds and the answers it checks.
    wheels=("dnspython",),
)

# One authorisation per name, at most 100 names in an order.
MAX_FILES = 100
# The web server serving the directory reads them.
CHALLENGE_FILE_MODE = 0o444


class ChallengeDirectory:
    """The challenge directory, opened once; remembers every file it wrote."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fd = fsutil.open_directory(path)
        except OSError as error:
            reason = (error.strerror or "cannot open").lower()
            raise InputError(f"challenge directory {path}: {reason}") from None
        self.written: set[str] = set()
        self.lock = threading.Lock()

    def publish(self, token: str, key_authorization: str) -> None:
        with self.lock:
            if token not in self.written and len(self.written) >= MAX_FILES:
                raise InputError(f"more than {MAX_FILES} challenge files in one run")
            # rename replaces a planted symlink itself, never its target.  The
            # directory is not fsynced: the files live for this run only.
            try:
                fsutil.replace(
                    token,
                    key_authorization.encode("ascii"),
                    CHALLENGE_FILE_MODE,
                    dir_fd=self.fd,
                    temp_name=f".{token}.{secrets.token_hex(8)}.tmp",
                    sync_directory=False,
                )
            except OSError as error:
                raise InputError(
                    f"challenge directory {self.path}: cannot write a file: {error.strerror}"
                ) from None
            self.written.add(token)

    def withdraw(self, token: str) -> None:
        with self.lock:
            if token not in self.written:
                raise InputError("no challenge file was written for this token")
            self._remove(token)
            self.written.discard(token)

    def withdraw_all(self) -> None:
        """Remove every file written; the first failure is raised once all were tried."""
        with self.lock:
            failures = []
            for token in sorted(self.written):
                try:
                    self._remove(token)
                except InputError as error:
                    failures.append(error)
            self.written.clear()
            if failures:
                raise failures[0]

    def _remove(self, token: str) -> None:
        try:
            os.unlink(token, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise InputError(
                f"challenge directory {self.path}: cannot remove {token}: {error.strerror}"
            ) from None


# Updates signed and not yet answered (the answers of older ones are
# refused): more would be a netproc that never brings the answers back.
MAX_PENDING = 8


class DnsRecords:
    """The dns-01 records of this run: the updates chngproc signs, and every
    record it added and has not seen removed."""

    def __init__(self, settings: ChngprocSettings, server: str) -> None:
        assert settings.tsig_key is not None
        # dnspython (about 0.1 s to load) for dns-01 runs only.
        from letskencrypt import dnsupdate

        self.dns: types.ModuleType = dnsupdate
        self.key = dnsupdate.read_tsig_key(settings.tsig_key)
        self.server = server
        # Bare domain names: "*.example.org" is validated at example.org; an
        # IP address is no dns-01 name.
        self.names = frozenset(
            name.removeprefix("*.") for name in settings.names if identifier_type(name) == DNS
        )
        # (name, token) -> (owner, zone, TXT value): added, as far as we know.
        self.added: dict[tuple[str, str], tuple[str, str, str]] = {}
        self.cleared: set[str] = set()  # owners whose old records are gone
        self.tried: set[tuple[str, str]] = set()  # withdrawn by WITHDRAW_NEXT, unconfirmed
        # id -> (update, its record, whether it removes it)
        self.pending: dict[int, tuple[dnsupdate.Update, tuple[str, str], bool]] = {}
        self.lock = threading.Lock()

    def name(self, text: str) -> str:
        if text not in self.names:
            raise InputError(f"{safe_text(text, 100)!r} is not one of this run's names")
        return text

    def update(self, request: challenge_pb2.DnsUpdateRequest) -> challenge_pb2.DnsUpdateReply:
        with self.lock:
            while len(self.pending) >= MAX_PENDING:
                # The oldest is taken as lost: its answer will not be believed.
                del self.pending[next(iter(self.pending))]
            if request.action == challenge_pb2.DNS_ACTION_PUBLISH:
                return self._publish(request)
            if request.action == challenge_pb2.DNS_ACTION_WITHDRAW:
                return self._withdraw(self.name(request.name), validate_token(request.token))
            if request.action == challenge_pb2.DNS_ACTION_WITHDRAW_NEXT:
                left = [record for record in self.added if record not in self.tried]
                if not left:
                    return challenge_pb2.DnsUpdateReply()
                self.tried.add(left[0])
                return self._withdraw(*left[0])
            raise InputError("a DNS update without an action")

    def _publish(self, request: challenge_pb2.DnsUpdateRequest) -> challenge_pb2.DnsUpdateReply:
        name = self.name(request.name)
        token = validate_token(request.token)
        key_authorization = validate_key_authorization(token, request.key_authorization)
        if (name, token) in self.added:
            raise InputError(f"a TXT record for this token at {name} was published already")
        owner = self.dns.owner_of(name)
        zone = self.dns.check_zone(owner, request.zone)
        value = self.dns.txt_value(key_authorization)
        clear = owner not in self.cleared
        update = self.dns.build_update(self.key, zone, owner, add=value, clear=clear)
        self.cleared.add(owner)
        # From now on it may be there, whatever becomes of the answer.
        self.added[(name, token)] = (owner, zone.to_text(True), value)
        return self._hand_out(update, (name, token), False, value, owner)

    def _withdraw(self, name: str, token: str) -> challenge_pb2.DnsUpdateReply:
        record = self.added.get((name, token))
        if record is None:
            raise InputError(f"no TXT record for this token at {name} was published")
        owner, zone, value = record
        update = self.dns.build_update(
            self.key, self.dns.check_zone(owner, zone), owner, remove=value
        )
        return self._hand_out(update, (name, token), True, value, owner)

    def _hand_out(
        self,
        update: "dnsupdate.Update",
        record: tuple[str, str],
        removes: bool,
        value: str,
        owner: str,
    ) -> challenge_pb2.DnsUpdateReply:
        self.pending[update.id] = (update, record, removes)
        return challenge_pb2.DnsUpdateReply(message=update.wire, txt_value=value, owner=owner)

    def answer(self, answer: bytes) -> str:
        """Check the server's answer to a pending update; what it did."""
        with self.lock:
            if len(answer) < 2:
                raise InputError("the DNS server's answer is shorter than a DNS header")
            pending = self.pending.pop(int.from_bytes(answer[:2], "big"), None)
            if pending is None:
                raise InputError("an answer to no update chngproc signed")
            update, record, removes = pending
            try:
                self.dns.check_answer(update, self.key, answer, self.server)
            except self.dns.UpdateRefused:
                if not removes:
                    # The server says it added nothing: nothing to withdraw.
                    self.added.pop(record, None)
                raise
            if removes:
                self.added.pop(record, None)
                self.tried.discard(record)
            return update.what

    def left_behind(self) -> list[str]:
        with self.lock:
            return [f"{owner} TXT {value}" for owner, _zone, value in self.added.values()]


class ChallengeService(rpc.Servicer, challenge_pb2_grpc.ChallengeServicer):
    def __init__(
        self, directory: ChallengeDirectory | None, records: DnsRecords | None, log: Logger
    ) -> None:
        super().__init__(log)
        self.directory = directory
        self.records = records

    def _directory(self) -> ChallengeDirectory:
        if self.directory is None:
            raise InputError(f"this run has no {CHALLENGE_HTTP_01} challenge directory")
        return self.directory

    def _records(self) -> DnsRecords:
        if self.records is None:
            raise InputError(f"this run's challenge is not {CHALLENGE_DNS_01}")
        return self.records

    @rpc.guarded
    def Publish(
        self, request: challenge_pb2.PublishRequest, context: grpc.ServicerContext
    ) -> challenge_pb2.PublishReply:
        directory = self._directory()
        token = validate_token(request.token)
        key_authorization = validate_key_authorization(token, request.key_authorization)
        directory.publish(token, key_authorization)
        self.log.debug(f"published {directory.path}/{token}")
        return challenge_pb2.PublishReply()

    @rpc.guarded
    def Withdraw(
        self, request: challenge_pb2.WithdrawRequest, context: grpc.ServicerContext
    ) -> challenge_pb2.WithdrawReply:
        directory = self._directory()
        token = validate_token(request.token)
        directory.withdraw(token)
        self.log.debug(f"withdrew {directory.path}/{token}")
        return challenge_pb2.WithdrawReply()

    @rpc.guarded
    def DnsUpdate(
        self, request: challenge_pb2.DnsUpdateRequest, context: grpc.ServicerContext
    ) -> challenge_pb2.DnsUpdateReply:
        return self._records().update(request)

    @rpc.guarded
    def DnsAnswer(
        self, request: challenge_pb2.DnsAnswerRequest, context: grpc.ServicerContext
    ) -> challenge_pb2.DnsAnswerReply:
        done = self._records().answer(request.answer)
        self.log.debug(f"the DNS server applied the update of {done}")
        return challenge_pb2.DnsAnswerReply()


def prepare(config: RoleConfig[ChngprocSettings], log: Logger) -> Callable[[], rpc.Serving]:
    """Open the challenge directory (or read the TSIG key); what it serves,
    and, at the end, every file and record it published is withdrawn."""
    settings = config.settings
    directory = records = None
    if settings.challenge == CHALLENGE_DNS_01:
        assert settings.dns_server is not None
        records = DnsRecords(settings, settings.dns_server)
    if settings.challenge_dir is not None:
        directory = ChallengeDirectory(settings.challenge_dir)

    def finish(_failed: bool) -> None:
        if directory is not None:
            directory.withdraw_all()
        for record in records.left_behind() if records is not None else ():
            log.error(f"left {record} in DNS: the next run for this name removes it")

    service = ChallengeService(directory, records, log)
    return lambda: rpc.Serving(
        {"chng": [(challenge_pb2_grpc.add_ChallengeServicer_to_server, service)]}, finish
    )


def run(config: RoleConfig[ChngprocSettings], log: Logger) -> int:
    serving = prepare(config, log)
    process.confine(config)
    return process.serve(config, serving())

