"""netproc: drives the run and is the only role that talks to the CA.

Holds: nothing on disk but the CA trust anchors (read once, at start).
Network: yes, HTTPS to the CA only, to addresses that dnsproc gives it.
Serves nothing; calls acctproc (signatures), keyproc (CSR; with
--revoke-with domain-key, the revocation signed with the domain key), dnsproc
(addresses), chngproc (challenge files), revokeproc (is a certificate due?)
and certproc (check and install).  It never sees a private key: an attacker
who owns it can ask acctproc only for the signatures acctproc's own policy
allows for this run (this run's names, the CA's origin, no key change or
revocation unless asked), keyproc only for the revocation of a certificate
of its key in a run that revokes with it, and can hand certproc a chain,
which certproc checks against keyproc's key and names.  An external account binding is
acctproc's: netproc asks for "a new account with the binding" and never
sees its HMAC key; a profile (--profile) is checked against the CA's
directory before any order.  It downloads the CA's alternate chains too
(Link rel="alternate", same origin, at most 8) and hands them all to
certproc, which verifies each and picks (--preferred-chain): netproc has
no say in which chain is installed.

dns-01 (--challenge dns-01): chngproc builds and signs each RFC 2136
update (it holds the TSIG key and has no network), netproc has dnsproc
carry it to the DNS server (--dns-server) and hands the answer back to
chngproc, which checks its signature and says whether the server applied
it: netproc sees only signed messages whose content is public.  Before it
answers the challenge, netproc waits (bounded, backing off) until every
authoritative server of the zone (its NS records, through dnsproc; or the
--dns-check-server list, for split-horizon setups) serves the TXT value.
The records go again on every way out: after each authorization, and at
the end of the run whatever became of it, SIGTERM included (caught for
that, and then raised again).

A key rollover run (--rollover-account-key) finds the account, has acctproc
sign the key change (acctproc builds it: netproc holds neither key), posts
it, tells acctproc the CA accepted it, and checks that the CA now finds the
same account by the new key.  A deactivation run (--deactivate-account)
finds the account and posts {"status": "deactivated"} to it.  Neither
registers an account or orders anything.  Every run that reached the
account reports it (URL, contact, status as the CA showed them) to the
supervisor on the counts line, under "account".

Renewal information (RFC 9773): when revokeproc's lifetime rule finds the
certificate current, netproc asks the CA's renewalInfo for revokeproc's
ARI identifier of it (unless a note, from a --config run's state or an
earlier check of this daemon, still holds), picks a time in the window
(ari.py) and renews once it has come; a CA without renewalInfo, or a
request for it that fails, leaves the lifetime rule alone to decide.  A
renewal's newOrder carries `replaces`, which acctproc checks against its
own configuration.  The note goes to the supervisor on the marker line.

With --challenge dns-persist-01 nothing is published: before answering a
challenge, netproc asks dnsproc (read-only; --dns-check-server: that
server, without recursion) for the name's _validation-persist TXT records
and, unless one names one of the challenge's issuer domain names and this
account (and policy=wildcard for a wildcard), ends the run with one line
that says which record is expected.  A persist-record run
(`letskencrypt persist-record`) finds the account (registers it only with
-n) and reports, on its stdout (relay.REPORT_MARKER), the account URL and
the CA's caaIdentities, from which the command line prints the records.
Both are the CA's word through netproc: the command line checks their
form, and nothing can check more.

Exit status: 0 a certificate was issued, renewed or revoked; 1 failure;
2 nothing to do: no order, and no request reached the CA but the unsigned
ones for its renewal information (none with --no-ari).  In daemon mode
it checks on a schedule (interval plus random jitter), backs off after a
failure (doubling, up to the interval) but never orders again sooner than
the CA asked, and exits 0 on SIGTERM.
"""

import contextlib
import json
import math
import os
import random
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc

from letskencrypt import acme, ari, host, persist, process, rpc
from letskencrypt.b64 import b64url
from letskencrypt.constants import (
    CHALLENGE_DNS_01,
    CHALLENGE_HTTP_01,
    DNS_PORT,
    EXIT_CHANGED,
    EXIT_FAILED,
    EXIT_NOTHING_TO_DO,
    MAX_CA_BUNDLE,
)
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import InputError, LetskencryptError
from letskencrypt.fsutil import FileTooLarge, NotRegularFile, read_file
from letskencrypt.relay import COUNTS_MARKER, REPORT_MARKER
from letskencrypt.settings import AriNote, NetprocSettings, Schedule
from letskencrypt.spec import READ, Fs, Grant, Network, RoleSpec
from letskencrypt.v1 import (
    account_pb2,
    account_pb2_grpc,
    certificate_pb2,
    certificate_pb2_grpc,
    challenge_pb2,
    challenge_pb2_grpc,
    domainkey_pb2,
    domainkey_pb2_grpc,
    renewal_pb2,
    renewal_pb2_grpc,
    resolver_pb2,
    resolver_pb2_grpc,
)
from letskencrypt.validate import dns_server_text, parse_dns_server, safe_text

# OpenSSL's configuration and the system's trust anchors, for the CA's TLS
# (not /etc/ssl/private); --ca-bundle is read before the sandbox.
TLS_PATHS = ("/etc/ssl/openssl.cnf", "/etc/ssl/certs")


def tls_grants(_settings: NetprocSettings) -> list[Grant]:
    override = filter(None, map(os.environ.get, ("SSL_CERT_FILE", "SSL_CERT_DIR")))
    return [Grant(path, READ) for path in (*TLS_PATHS, *override)]


SPEC = RoleSpec(
    name="netproc",
    summary="drives the run and is the only role that talks to the CA (HTTPS)",
    settings=NetprocSettings,
    calls=("acct", "key", "dns", "chng", "rvk", "cert"),
    paths=tls_grants,
    opens=lambda settings: [Grant(settings.ca_bundle, Fs.READ_FILE, "CA bundle")]
    if settings.ca_bundle
    else [],
    network=Network.ANY,
    wheels=("requests",),
    drives=True,
)

# Signing and CSR building on the key holders: RSA 4096 takes a moment.
KEY_DEADLINE = 20.0
# dnsproc's TXT lookup gives up after 5 s.
TXT_DEADLINE = 10.0
# The longest the daemon waits because the CA asked it to.
MAX_CA_WAIT = 7 * 86400.0
# The shortest wait for the time picked in a renewal window.
MIN_ARI_WAIT = 1.0


class RemoteSigner:
    """acme.Signer backed by acctproc."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = account_pb2_grpc.AccountStub(channel)

    def sign(
        self,
        url: str,
        nonce: str,
        kid: str | None,
        payload: bytes | None,
        external_account_binding: bool = False,
        key_change: bool = False,
        challenge_type: str = CHALLENGE_HTTP_01,
    ) -> dict[str, str]:
        request = account_pb2.SignRequest(
            url=url,
            nonce=nonce,
            kid=kid or "",
            payload=payload or b"",
            post_as_get=payload is None,
            external_account_binding=external_account_binding,
            key_change=key_change,
            challenge_type="" if challenge_type == CHALLENGE_HTTP_01 else challenge_type,
        )
        reply = rpc.call(self.stub.Sign, request, peer="acctproc", timeout=KEY_DEADLINE)
        return {
            "protected": reply.protected,
            "payload": reply.payload,
            "signature": reply.signature,
        }

    def thumbprint(self) -> str:
        reply = rpc.call(self.stub.Describe, account_pb2.DescribeRequest(), peer="acctproc")
        return reply.thumbprint

    def key_changed(self, account_url: str) -> None:
        """Tell acctproc the CA accepted its key change: it signs with the new key."""
        request = account_pb2.KeyChangedRequest(account_url=account_url)
        rpc.call(self.stub.KeyChanged, request, peer="acctproc")


class RemoteRevocationSigner:
    """acme.Signer of one revokeCert with the domain key, backed by keyproc,
    which builds the same payload (this certificate, this reason) and the
    protected header (its JWK embedded) itself."""

    def __init__(
        self, stub: domainkey_pb2_grpc.DomainKeyStub, certificate_der: bytes, reason: int | None
    ) -> None:
        self.stub = stub
        self.certificate_der = certificate_der
        self.reason = reason

    def sign(
        self,
        url: str,
        nonce: str,
        kid: str | None,
        payload: bytes | None,
        external_account_binding: bool = False,
    ) -> dict[str, str]:
        if kid is not None or payload is None or external_account_binding:
            raise InputError("the domain key signs only the revocation, its JWK embedded")
        request = domainkey_pb2.SignRevocationRequest(
            url=url, nonce=nonce, certificate_der=self.certificate_der, reason=self.reason
        )
        reply = rpc.call(
            self.stub.SignRevocation, request, peer="keyproc", timeout=KEY_DEADLINE
        )
        if reply.payload != b64url(payload):
            raise InputError("keyproc signed another revocation than the one asked for")
        return {
            "protected": reply.protected,
            "payload": reply.payload,
            "signature": reply.signature,
        }


class RemoteResolver:
    """acme.Resolver backed by dnsproc."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = resolver_pb2_grpc.ResolverStub(channel)

    def resolve(self, host: str) -> list[str]:
        reply = rpc.call(self.stub.Resolve, resolver_pb2.ResolveRequest(host=host), peer="dnsproc")
        return list(reply.addresses)[:8]

    def txt(self, name: str, server: str = "", port: int = 0) -> list[str]:
        request = resolver_pb2.TxtRequest(name=name, server=server, port=port)
        reply = rpc.call(self.stub.Txt, request, peer="dnsproc", timeout=TXT_DEADLINE)
        return [value[: persist.MAX_TXT_VALUE] for value in reply.values][: persist.MAX_TXT_VALUES]


class Peers:
    """netproc's channels to the six roles it drives."""

    EDGES = ("acct", "key", "dns", "chng", "rvk", "cert")

    def __init__(self, run_dir: str, instance: int | None = None) -> None:
        self.channels = {edge: rpc.connect(run_dir, edge, instance) for edge in self.EDGES}
        self.signer = RemoteSigner(self.channels["acct"])
        self.resolver = RemoteResolver(self.channels["dns"])
        self.domain_key = domainkey_pb2_grpc.DomainKeyStub(self.channels["key"])
        self.challenge = challenge_pb2_grpc.ChallengeStub(self.channels["chng"])
        self.renewal = renewal_pb2_grpc.RenewalStub(self.channels["rvk"])
        self.certificate = certificate_pb2_grpc.CertificateStub(self.channels["cert"])

    def csr(self) -> bytes:
        reply = rpc.call(
            self.domain_key.Csr, domainkey_pb2.CsrRequest(), peer="keyproc", timeout=KEY_DEADLINE
        )
        return reply.der

    def publish(self, token: str, key_authorization: str) -> None:
        request = challenge_pb2.PublishRequest(token=token, key_authorization=key_authorization)
        rpc.call(self.challenge.Publish, request, peer="chngproc")

    def withdraw(self, token: str) -> None:
        request = challenge_pb2.WithdrawRequest(token=token)
        rpc.call(self.challenge.Withdraw, request, peer="chngproc")

    def stop_all(self, failed: bool) -> None:
        for edge, channel in self.channels.items():
            rpc.stop_peer(channel, rpc.EDGES[edge].server, failed)

    def close(self) -> None:
        for channel in self.channels.values():
            rpc.release(channel)


class Interrupted(LetskencryptError):
    """SIGTERM, caught in a dns-01 run so that its records are withdrawn."""


class Stopped(Exception):
    """SIGTERM in a run of many certificates (drive_many)."""


# The propagation check: first wait, doubling up to the longest.
FIRST_CHECK_WAIT = 0.25
MAX_CHECK_WAIT = 8.0
# Records a run may have to withdraw at its end (chngproc's MAX_FILES).
MAX_RECORDS = 100


def wait_until_served(
    servers: list[tuple[str, int]],
    serves: Callable[[str, int], bool],
    timeout: float,
    *,
    sleep: Callable[[float], None] = process.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Ask each server until every one `serves` the record, waiting
    FIRST_CHECK_WAIT, doubling, at most MAX_CHECK_WAIT, in all at most
    `timeout` seconds; the servers that still do not (with why), [] when all do."""
    pending = {server: "it does not serve it yet" for server in servers}
    deadline = clock() + timeout
    wait = FIRST_CHECK_WAIT
    while True:
        for server in list(pending):
            try:
                if serves(*server):
                    del pending[server]
            except LetskencryptError as error:
                pending[server] = str(error)
        left = deadline - clock()
        if not pending or left <= 0:
            break
        sleep(min(wait, left))
        wait = min(wait * 2, MAX_CHECK_WAIT)
    return [f"{server}:{port} ({why})" for (server, port), why in pending.items()]


class DnsChallenge:
    """dns-01's publish and withdraw (acme.AcmeClient.issue): chngproc signs,
    dnsproc carries, chngproc checks; then the propagation check."""

    def __init__(self, peers: Peers, settings: NetprocSettings, log: Logger) -> None:
        assert settings.dns_server is not None
        self.peers = peers
        self.log = log
        self.server, self.port = parse_dns_server(settings.dns_server, "--dns-server")
        self.check_servers = [
            parse_dns_server(text, "--dns-check-server") for text in settings.dns_check_servers
        ]
        self.timeout = settings.dns_propagation_timeout
        self.resolver = resolver_pb2_grpc.ResolverStub(peers.channels["dns"])
        # SIGTERM while the records are withdrawn waits for the end of it.
        self.withdrawing = False
        self.interrupted = False

    def publish(self, token: str, key_authorization: str, *, name: str | None = None) -> None:
        if self.interrupted:
            raise Interrupted("stopped by SIGTERM")
        if name is None:  # an IP address: http-01
            self.peers.publish(token, key_authorization)
            return
        owner = f"_acme-challenge.{name}"
        zone = rpc.call(
            self.resolver.Authoritative,
            resolver_pb2.AuthoritativeRequest(name=owner, server=self.server, port=self.port),
            peer="dnsproc",
        ).zone
        reply = self.update(challenge_pb2.DnsUpdateRequest(
            action=challenge_pb2.DNS_ACTION_PUBLISH, name=name, token=token,
            key_authorization=key_authorization, zone=zone,
        ))  # fmt: skip
        self.log.info(f"published {reply.owner} TXT {reply.txt_value} in {zone}")
        self.wait_for_propagation(reply.owner, reply.txt_value)

    def withdraw(self, token: str, *, name: str | None = None) -> None:
        """Remove the record now; if that fails, withdraw_all tries again at the
        end of the run (the certificate need not wait for it)."""
        if name is None:
            self.peers.withdraw(token)
            return
        try:
            self.update(challenge_pb2.DnsUpdateRequest(
                action=challenge_pb2.DNS_ACTION_WITHDRAW, name=name, token=token
            ))  # fmt: skip
        except Interrupted:
            raise
        except LetskencryptError as error:
            self.log.error(f"could not remove a TXT record yet: {error}")

    def update(self, request: challenge_pb2.DnsUpdateRequest) -> challenge_pb2.DnsUpdateReply:
        """Have chngproc sign the update, dnsproc carry it, chngproc check the answer."""
        reply = rpc.call(self.peers.challenge.DnsUpdate, request, peer="chngproc")
        if reply.message:
            answer = rpc.call(
                self.resolver.Exchange,
                resolver_pb2.ExchangeRequest(
                    message=reply.message, server=self.server, port=self.port
                ),
                peer="dnsproc",
            ).answer
            rpc.call(
                self.peers.challenge.DnsAnswer,
                challenge_pb2.DnsAnswerRequest(answer=answer),
                peer="chngproc",
            )
        return reply

    def withdraw_all(self) -> None:
        """Every record chngproc added and has not seen removed, removed now;
        a failure is said and the others are tried all the same."""
        self.withdrawing = True
        try:
            for _ in range(MAX_RECORDS):
                try:
                    reply = self.update(challenge_pb2.DnsUpdateRequest(
                        action=challenge_pb2.DNS_ACTION_WITHDRAW_NEXT
                    ))  # fmt: skip
                except LetskencryptError as error:
                    self.log.error(f"could not remove a TXT record: {error}")
                    continue
                if not reply.message:
                    break
                self.log.info(f"removed {reply.owner} TXT {reply.txt_value}")
        finally:
            self.withdrawing = False
        if self.interrupted:
            raise Interrupted("stopped by SIGTERM")

    def on_sigterm(self, _signum: int, _frame: object) -> None:
        if self.interrupted:
            return
        self.interrupted = True
        if not self.withdrawing:
            raise Interrupted("stopped by SIGTERM")

    def wait_for_propagation(self, owner: str, value: str) -> None:
        servers = self.check_servers or self.authoritative_servers(owner)
        shown = ", ".join(f"{server}:{port}" for server, port in servers)
        self.log.info(f"waiting until {shown} serve {owner} TXT {value}")

        def serves(server: str, port: int) -> bool:
            request = resolver_pb2.TxtRequest(name=owner, server=server, port=port)
            return value in rpc.call(self.resolver.Txt, request, peer="dnsproc").values

        missing = wait_until_served(servers, serves, self.timeout)
        if missing:
            raise InputError(
                f"{owner} TXT {value}: not served after {self.timeout:g} s by "
                f"{', '.join(missing)} (--dns-propagation-timeout; --dns-check-server "
                "for split-horizon DNS)"
            )

    def authoritative_servers(self, owner: str) -> list[tuple[str, int]]:
        """The zone's NS servers, as the system's resolver finds them (the CA's view)."""
        reply = rpc.call(
            self.resolver.Authoritative,
            resolver_pb2.AuthoritativeRequest(name=owner),
            peer="dnsproc",
        )
        return [(server, DNS_PORT) for server in reply.servers]


def stop_peers(run_dir: str, instance: int | None, timeout: float) -> None:
    """Stop the other roles of a certificate this netproc will not drive
    (its settings failed): those that come within `timeout`."""
    peers = Peers(run_dir, instance)
    with contextlib.suppress(LetskencryptError):
        rpc.wait_ready(peers.channels, timeout)
    peers.stop_all(failed=True)


def load_trust_anchors(path: str | None) -> bytes:
    """Read the CA bundle now: after confine() the file may be out of reach."""
    if path is None:
        path = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    try:
        data = read_file(path, MAX_CA_BUNDLE, follow_symlinks=True)
    except FileTooLarge:
        raise InputError(f"CA bundle {path}: larger than 4 MiB") from None
    except NotRegularFile:
        raise InputError(f"CA bundle {path}: not a regular file") from None
    except OSError as error:
        raise InputError(f"CA bundle {path}: {error.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise InputError(f"CA bundle {path}: no PEM certificate in it")
    return data


class AriState:
    """What this netproc knows of the CA's renewal information: the last
    note (a --config run's state file gives the first), and it goes on
    the marker line for the supervisor."""

    def __init__(self, settings: NetprocSettings) -> None:
        self.enabled = settings.ari
        self.note: AriNote | None = settings.ari_note


def obtain(
    peers: Peers,
    settings: NetprocSettings,
    ca_pem: bytes,
    log: Logger,
    ari_state: AriState | None = None,
) -> int:
    """Issue or renew, unless revokeproc says the current certificate is fine
    (and the CA's renewal information does not say otherwise) or offers
    one that an earlier run kept."""
    ari_state = ari_state or AriState(settings)
    check = rpc.call(peers.renewal.Check, renewal_pb2.CheckRequest(), peer="revokeproc")
    if check.kept_chain_pem and install_kept(peers, check.kept_chain_pem, log):
        return EXIT_CHANGED
    client = None
    if check.decision == renewal_pb2.DECISION_UP_TO_DATE:
        client, due = due_by_ari(peers, settings, ca_pem, log, check.ari_cert_id, ari_state)
        if not due:
            log.info(f"certificate is up to date: {check.reason}")
            return EXIT_NOTHING_TO_DO
    elif check.decision in (renewal_pb2.DECISION_ISSUE, renewal_pb2.DECISION_RENEW):
        log.info(check.reason)
    else:
        raise InputError("revokeproc gave no decision")
    client = client or connect_ca(peers, settings, ca_pem, log)
    check_profile(client.directory(), settings.profile)
    thumbprint = peers.signer.thumbprint()
    if BOOK is None:
        find_account(client, settings, log)
    else:
        BOOK.find(client, settings, log, thumbprint)
    note_account(client)
    # The order replaces the installed certificate (RFC 9773 5) where the CA speaks ARI.
    replaces = None
    if check.ari_cert_id and client.directory().renewal_info is not None:
        replaces = check.ari_cert_id
    publish: Callable[..., None] = peers.publish
    withdraw: Callable[..., None] = peers.withdraw
    dns = DnsChallenge(peers, settings, log) if settings.challenge == CHALLENGE_DNS_01 else None
    if dns is not None:
        publish, withdraw = dns.publish, dns.withdraw
        if threading.current_thread() is not threading.main_thread():
            ACTIVE_DNS.add(dns)  # drive_many withdraws its records on SIGTERM
        elif not settings.daemon:
            signal.signal(signal.SIGTERM, dns.on_sigterm)
    try:
        chains = client.issue(
            list(settings.names),
            csr_provider=peers.csr,
            publish=publish,
            withdraw=withdraw,
            thumbprint=thumbprint,
            profile=settings.profile,
            replaces=replaces,
            challenge_type=settings.challenge,
            check_record=record_check(peers, settings, client),
        )
    finally:
        if dns is not None:
            dns.withdraw_all()
            ACTIVE_DNS.discard(dns)
    reply = rpc.call(
        peers.certificate.Submit,
        certificate_pb2.SubmitRequest(
            pem_chain=chains.default, alternate_pem_chains=chains.alternates
        ),
        peer="certproc",
    )
    log.info(f"certificate serial {reply.serial_hex} valid until {reply.not_after}")
    if ari_state.enabled:
        learn_ari(peers, client, ari_state, log)
    return EXIT_CHANGED


def learn_ari(
    peers: Peers, client: acme.AcmeClient, ari_state: AriState, log: Logger
) -> None:
    """The renewal information of the certificate just installed, asked at
    once (RFC 9773 4.3) so that the next run need not.  The certificate is
    installed: nothing here can fail the run."""
    try:
        new = rpc.call(peers.renewal.Check, renewal_pb2.CheckRequest(), peer="revokeproc")
    except LetskencryptError as error:
        log.notice(f"renewal information (ARI) of the new certificate not asked: {error}")
        return
    if new.ari_cert_id:
        ari_state.note = ask_ari(client, new.ari_cert_id, log) or ari_state.note


def due_by_ari(
    peers: Peers,
    settings: NetprocSettings,
    ca_pem: bytes,
    log: Logger,
    cert_id: str,
    ari_state: AriState,
) -> tuple[acme.AcmeClient | None, bool]:
    """Whether the CA's renewal information (RFC 9773) makes a certificate
    that the lifetime rule finds current due now, and the client that
    asked the CA (None if nothing was asked: a note that still holds,
    --no-ari, or a certificate without an ARI identifier).  Asking fails
    only into "not due": the lifetime rule decides then."""
    if not ari_state.enabled or not cert_id:
        return None, False
    now = datetime.now(UTC)
    verdict, why = ari.judge(ari_state.note, cert_id, now)
    client = None
    if verdict == ari.ASK:
        client = connect_ca(peers, settings, ca_pem, log)
        ari_state.note = ask_ari(client, cert_id, log, now) or ari_state.note
        verdict, why = ari.judge(ari_state.note, cert_id, now)
    if verdict == ari.RENEW:
        assert ari_state.note is not None
        explanation = ari_state.note.explanation
        told = f" (the CA explains: {safe_text(explanation, 300)})" if explanation else ""
        log.notice(f"renewing early, as the CA's renewal information suggests: {why}{told}")
        return client, True
    if verdict == ari.WAIT:
        log.info(f"renewal information: {why}")
    return client, False


def ask_ari(
    client: acme.AcmeClient, cert_id: str, log: Logger, now: datetime | None = None
) -> AriNote | None:
    """The CA's renewal information for the certificate `cert_id` as a
    note (the time picked in its window); a note of "no ARI" for a CA whose
    directory has no renewalInfo; None, logged, when asking failed."""
    now = now or datetime.now(UTC)
    try:
        if client.directory().renewal_info is None:
            log.debug("the CA's directory has no renewalInfo (ARI)")
            return ari.no_ari(now)
        window, retry_after = client.renewal_info(cert_id)
    except LetskencryptError as error:
        log.notice(f"renewal information (ARI) for {cert_id}: {error}; "
                   "the lifetime rule decides")  # fmt: skip
        return None
    note = ari.note(cert_id, window, retry_after, now)
    log.info(f"renewal information for {cert_id}: {ari.window_text(note)}; picked "
             f"{ari.format_time(note.chosen)}, not asked again before "
             f"{ari.format_time(note.retry_until)}")  # fmt: skip
    if window.explanation:
        log.info(f"the CA explains its renewal window: {safe_text(window.explanation, 300)}")
    return note


def record_check(
    peers: Peers, settings: NetprocSettings, client: acme.AcmeClient
) -> acme.RecordCheck:
    """dns-persist-01: the check that an authorization's record is in place."""

    servers = [
        parse_dns_server(text, "dns check server") for text in settings.dns_check_servers
    ] or [("", 0)]

    def check(authz: acme.Authorization, challenge: acme.Challenge) -> None:
        base = authz.identifier_value or ""
        name = f"*.{base}" if authz.wildcard else base
        account = persist.check_account_uri(client.kid or "")
        # At every server asked (the resolver, or each --dns-check-server).
        for server, port in servers:
            values = peers.resolver.txt(persist.record_name(name), server, port)
            wrong = persist.problem(
                values, challenge.issuer_names, account, authz.wildcard, int(time.time())
            )
            if wrong is not None:
                break
        else:
            return
        if server:
            wrong += f" at {dns_server_text(server, port)}"
        # The record persist-record prints for this run's names.
        shown = f"*.{base}" if f"*.{base}" in settings.names else name
        expected = persist.expected_line(shown, challenge.issuer_names[0], account)
        raise InputError(f"{name}: no dns-persist-01 record lets this account validate "
                         f"({wrong}); expected: {expected}")  # fmt: skip

    return check


def persist_record(peers: Peers, settings: NetprocSettings, ca_pem: bytes, log: Logger) -> int:
    """Find (with -n, register) the account; report its URL and the CA's
    issuer domain names (caaIdentities) for persist-record's records."""
    client = connect_ca(peers, settings, ca_pem, log)
    directory = client.directory()
    if not directory.caa_identities:
        raise InputError("the CA's directory lists no caaIdentities: it names no issuer "
                         "domain name for dns-persist-01 records")  # fmt: skip
    if settings.new_account:
        find_account(client, settings, log)
        note_account(client)
        kid = client.kid or ""
    else:
        try:
            kid = existing_account(client)
        except acme.AcmeError as error:
            if "has no account" not in str(error):
                raise
            raise InputError(f"{error}; give -n to register one") from None
    report = {"persist_record": {"account": kid, "issuers": list(directory.caa_identities)}}
    sys.stdout.write(f"{REPORT_MARKER}{json.dumps(report)}\n")
    sys.stdout.flush()
    return EXIT_CHANGED


def install_kept(peers: Peers, pem_chain: bytes, log: Logger) -> bool:
    """Install, without a request to the CA, the certificate an earlier run
    was issued but could not install; False if certproc finds that it does
    not fit this run (another key, say)."""
    log.info("installing the certificate an earlier run kept")
    reply = rpc.call(
        peers.certificate.Submit,
        certificate_pb2.SubmitRequest(pem_chain=pem_chain, kept=True),
        peer="certproc",
    )
    if reply.unfit:
        log.info(f"the kept certificate does not fit this run: {reply.unfit}")
        return False
    log.info(f"certificate serial {reply.serial_hex} valid until {reply.not_after}")
    return True


def revoke(peers: Peers, settings: NetprocSettings, ca_pem: bytes, log: Logger) -> int:
    """Revoke the current certificate with the account key, or (--revoke-with
    domain-key) with the domain key, then remove its files.  With the domain
    key no account is looked up: acctproc is not asked for anything."""
    current = rpc.call(peers.renewal.Current, renewal_pb2.CurrentRequest(), peer="revokeproc")
    if not current.certificate_der:
        raise InputError("there is no certificate to revoke")
    der, reason = current.certificate_der, settings.revoke_reason
    client = connect_ca(peers, settings, ca_pem, log)
    if settings.revoke_with_domain_key:
        signer = RemoteRevocationSigner(peers.domain_key, der, reason)
        revoked = client.revoke(der, reason, certificate_key=signer)
    else:
        find_account(client, settings, log)
        note_account(client)
        revoked = client.revoke(der, reason)
    if revoked:
        log.info("certificate revoked")
    else:
        # Not a failure: it is revoked, as asked; its files go all the same.
        log.notice("the certificate was revoked already (the CA says alreadyRevoked)")
    rpc.call(peers.certificate.Retire, certificate_pb2.RetireRequest(), peer="certproc")
    return EXIT_CHANGED


def existing_account(client: acme.AcmeClient) -> str:
    """The account of the key acctproc signs with, which must exist: an
    account operation registers none."""
    kid = client.account([], create=False)
    note_account(client)
    return kid


def rollover(peers: Peers, settings: NetprocSettings, ca_pem: bytes, log: Logger) -> int:
    """Change the account's key to acctproc's new key (RFC 8555 7.3.5)."""
    client = connect_ca(peers, settings, ca_pem, log)
    kid = existing_account(client)
    client.change_key()
    peers.signer.key_changed(kid)
    # The new key finds the same account, and the old one is done with.
    found = client.account([], create=False)
    note_account(client)
    if found != kid:
        raise InputError(f"after the key change the CA finds the account {found}, not {kid}")
    log.notice(f"account {kid}: key changed")
    return EXIT_CHANGED


def deactivate(peers: Peers, settings: NetprocSettings, ca_pem: bytes, log: Logger) -> int:
    """Deactivate the account (RFC 8555 7.3.6); the CA will refuse its key from now on."""
    client = connect_ca(peers, settings, ca_pem, log)
    kid = existing_account(client)
    client.deactivate()
    note_account(client)
    log.notice(f"account {kid} deactivated")
    return EXIT_CHANGED


class Seen(threading.local):
    """The account as the CA last showed it to this thread's run (the
    result line's "account"; a run of many certificates has a thread each)."""

    account: dict[str, object] | None = None


SEEN = Seen()


def note_account(client: acme.AcmeClient) -> None:
    if client.kid is not None:
        SEEN.account = {
            "url": client.kid,
            "contact": list(client.account_contact or ()),
            "status": client.account_status or "valid",
        }


def check_profile(directory: acme.Directory, profile: str | None) -> None:
    """The profile this run orders (if any) is one the CA's directory offers."""
    if profile is None:
        return
    if directory.profiles is None:
        raise InputError(f"profile {profile!r}: the CA offers no profiles")
    if profile not in directory.profiles:
        offered = ", ".join(directory.profiles) or "none"
        raise InputError(
            f"profile {profile!r} is not one the CA offers (it offers: {offered})"
        )


def find_account(client: acme.AcmeClient, settings: NetprocSettings, log: Logger) -> None:
    """Find (or register) the account; if --contact was given and the CA shows
    another contact, set it.  A refused update is said in one line and the
    run goes on: the contact must not stand in the way of a certificate.

    A CA that requires external account binding, with none configured, is
    refused before any newAccount request."""
    if client.directory().external_account_required and not settings.external_account_binding:
        raise InputError(
            "the CA requires external account binding: give --eab-kid and --eab-hmac-key"
        )
    contact = list(settings.contact)
    kid = client.account(contact, external_account_binding=settings.external_account_binding)
    if not contact or not client.contact_differs(contact):
        return
    try:
        client.update_contact(contact)  # logs the change
    except LetskencryptError as error:
        log.notice(
            f"account {kid}: could not set the contact to {', '.join(contact)} ({error}); "
            "going on with the account as it is"
        )
        return


class AccountBook:
    """A run of many certificates (drive_many): the account is looked up
    (or registered) once per CA and account key, by the first certificate's
    run; the others wait for it and go on with what the CA showed it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.locks: dict[tuple[str, str], threading.Lock] = {}
        self.accounts: dict[tuple[str, str], tuple[str, tuple[str, ...] | None, str | None]] = {}

    def find(
        self, client: acme.AcmeClient, settings: NetprocSettings, log: Logger, thumbprint: str
    ) -> None:
        key = (settings.directory_url, thumbprint)
        with self.lock:
            lock = self.locks.setdefault(key, threading.Lock())
        with lock:
            known = self.accounts.get(key)
            if known is None:
                find_account(client, settings, log)
                assert client.kid is not None
                self.accounts[key] = (client.kid, client.account_contact, client.account_status)
                return
        client.kid, client.account_contact, client.account_status = known


# Set by drive_many.
BOOK: AccountBook | None = None
# The dns-01 challenges of the certificates in flight (drive_many).
ACTIVE_DNS: set["DnsChallenge"] = set()


def connect_ca(
    peers: Peers, settings: NetprocSettings, ca_pem: bytes, log: Logger
) -> acme.AcmeClient:
    transport = acme.Transport(peers.resolver, ca_pem)
    return acme.AcmeClient(
        transport,
        peers.signer,
        settings.directory_url,
        log=log.info,
        notice=log.notice,
        poll_timeout=settings.poll_timeout,
        sleep=process.sleep,
    )


def wait_after_failure(
    schedule: Schedule, failures: int, error: LetskencryptError
) -> tuple[float, str]:
    """Seconds to the next check after `failures` failures in a row, and why
    when the CA decided it: the daemon's backoff (doubling, up to the
    interval), but no sooner than the CA's Retry-After (up to MAX_CA_WAIT),
    and the whole interval after a rate limit that gave no time."""
    backoff = schedule.backoff * 2 ** min(failures - 1, 30)
    delay = min(backoff, schedule.interval) * random.uniform(0.75, 1.0)  # noqa: S311
    if not isinstance(error, acme.AcmeError):
        return delay, ""
    asked = error.retry_after
    if asked is None:
        if error.problem_type == acme.RATE_LIMITED:
            return schedule.interval, ", the interval, after a rate limit"
        return delay, ""
    granted = min(asked, MAX_CA_WAIT)
    if granted <= delay:
        return delay, ""
    if asked > MAX_CA_WAIT:
        return granted, f", the longest wait, though the CA asks for {math.ceil(asked)} s"
    return granted, ", as the CA asks"


def until_ari_renewal(note: AriNote | None) -> float:
    """Seconds to the time picked in the CA's renewal window (inf: none
    ahead); the CA is not asked again before its Retry-After all the same
    (ari.judge)."""
    if note is None or note.chosen is None:
        return math.inf
    return max(note.chosen - time.time(), MIN_ARI_WAIT)


def keep_renewing(
    peers: Peers,
    settings: NetprocSettings,
    schedule: Schedule,
    ca_pem: bytes,
    log: Logger,
    ari_state: AriState | None = None,
) -> int:
    """Daemon mode: check, renew when due, wait, until SIGTERM.  The next
    check comes no later than the time picked in the CA's renewal window."""
    ari_state = ari_state or AriState(settings)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stopping.set())
    failures = 0
    while not stopping.is_set():
        try:
            if obtain(peers, settings, ca_pem, log, ari_state) == EXIT_CHANGED:
                log.error("installed a new certificate")
            failures = 0
            delay = schedule.interval + random.uniform(0, schedule.jitter)  # noqa: S311
            delay = min(delay, until_ari_renewal(ari_state.note))
        except LetskencryptError as error:
            failures += 1
            delay, why = wait_after_failure(schedule, failures, error)
            log.error(f"{error} (attempt {failures}; next in {delay:.0f} s{why})")
        log.info(f"next check in {delay:.0f} s")
        stopping.wait(delay)
    log.info("stopping on SIGTERM")
    return 0


@dataclass
class Drive:
    """How one certificate's run went: netproc's status, whether SIGTERM
    cut it short, and what its result line says of it."""

    code: int
    interrupted: bool = False
    requests: int = 0
    orders: int = 0
    ari_note: AriNote | None = None
    account: dict[str, object] | None = None

    def result_line(self, instance: int | None = None) -> str:
        """For the run's metrics (and, for a run of many certificates, its
        status): the supervisor's relay takes this line, it is not shown."""
        counts: dict[str, object] = {"requests": self.requests, "orders": self.orders}
        if self.ari_note is not None:
            counts["ari"] = ari.note_to_json(self.ari_note)
        if self.account:
            counts["account"] = self.account
        if instance is not None:
            counts["certificate"] = instance
            counts["status"] = "interrupted" if self.interrupted else self.code
        return f"{COUNTS_MARKER}{json.dumps(counts)}\n"


def drive(
    config: RoleConfig[NetprocSettings],
    log: Logger,
    ca_pem: bytes,
    problem: LetskencryptError | None = None,
) -> Drive:
    """One certificate's run, once confined: wait for the peers, do the
    run's operation, and stop the peers whatever became of it.  `problem`:
    why the run cannot be done (the peers are still stopped)."""
    settings = config.settings
    peers = Peers(config.run_dir, config.instance)
    ari_state = AriState(settings)
    code = EXIT_FAILED
    interrupted = False
    acme.COUNTS.requests = acme.COUNTS.orders = 0
    SEEN.account = None
    try:
        if problem is not None:
            # Stop whoever came (a peer that is missing cannot be stopped).
            with contextlib.suppress(LetskencryptError):
                rpc.wait_ready(peers.channels, settings.ready_timeout)
            raise problem
        rpc.wait_ready(peers.channels, settings.ready_timeout)
        if settings.revoke:
            code = revoke(peers, settings, ca_pem, log)
        elif settings.rollover:
            code = rollover(peers, settings, ca_pem, log)
        elif settings.deactivate:
            code = deactivate(peers, settings, ca_pem, log)
        elif settings.persist_record:
            code = persist_record(peers, settings, ca_pem, log)
        elif settings.daemon:
            code = keep_renewing(peers, settings, settings.daemon, ca_pem, log, ari_state)
        else:
            code = obtain(peers, settings, ca_pem, log, ari_state)
    except Interrupted:
        interrupted = True
    except LetskencryptError as error:
        log.error(str(error))
    finally:
        peers.stop_all(failed=code == EXIT_FAILED)
        peers.close()
    return Drive(
        code, interrupted, acme.COUNTS.requests, acme.COUNTS.orders, ari_state.note, SEEN.account
    )


def run(config: RoleConfig[NetprocSettings], log: Logger) -> int:
    # A failure before the peers are reached still stops them (drive): the
    # other roles must not wait for a run that will not come.
    problem: LetskencryptError | None = None
    ca_pem = b""
    try:
        ca_pem = load_trust_anchors(config.settings.ca_bundle)
        process.confine(config)
    except LetskencryptError as error:
        problem = error
    result = drive(config, log, ca_pem, problem)
    if config.supervised:
        sys.stdout.write(result.result_line())
    if result.interrupted:
        # Its records are gone: now die of the SIGTERM, as a run without any would have.
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    return result.code


def drive_many(
    configs: dict[int, RoleConfig[NetprocSettings]], shared: frozenset[str], lines: host.Lines
) -> int:
    """A run of many certificates (host.py): each certificate's run, in a
    thread of its own, as its turn comes; one result line for each.
    Returns once the supervisor says no certificate is left.

    SIGTERM: the dns-01 records of the certificates in flight are withdrawn
    (as a one-certificate run does), each of them gets its result line,
    "interrupted", and netproc dies of the signal."""
    anchors, problems = every_ca_bundle(configs)
    process.confine(host.union(configs))
    return drive_each(configs, shared, lines, anchors, problems)


def every_ca_bundle(
    configs: dict[int, RoleConfig[NetprocSettings]],
) -> tuple[dict[int, bytes], dict[int, LetskencryptError | None]]:
    """Each certificate's CA bundle (read before confinement), or why not."""
    problems: dict[int, LetskencryptError | None] = {}
    anchors: dict[int, bytes] = {}
    for instance, config in configs.items():
        try:
            anchors[instance] = load_trust_anchors(config.settings.ca_bundle)
            problems[instance] = None
        except LetskencryptError as error:
            anchors[instance] = b""
            problems[instance] = error
    return anchors, problems


def drive_each(
    configs: dict[int, RoleConfig[NetprocSettings]],
    shared: frozenset[str],
    lines: host.Lines,
    anchors: dict[int, bytes],
    problems: dict[int, LetskencryptError | None],
) -> int:
    """drive_many, once confined."""
    logs = {
        instance: Logger("netproc", config.verbosity, instance)
        for instance, config in configs.items()
    }
    output = threading.Lock()
    said: set[int] = set()
    global BOOK  # one per process, like the transport's counts
    BOOK = AccountBook()

    def say(instance: int, result: Drive) -> None:
        with output:
            if instance in said:
                return
            said.add(instance)
            sys.stdout.write(result.result_line(instance))
            sys.stdout.flush()

    def drive_certificate(certificate: rpc.Certificate) -> None:
        instance = certificate.instance
        with rpc.for_certificate(certificate):
            result = drive(configs[instance], logs[instance], anchors[instance], problems[instance])
        say(instance, result)

    def on_sigterm(_signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Stopped

    signal.signal(signal.SIGTERM, on_sigterm)
    started: list[int] = []
    threads = []
    try:
        while (document := lines.next(host.MAX_CERTIFICATE_DOCUMENT)) is not None:
            certificate = host.read_certificate(document, configs, shared)
            thread = threading.Thread(target=drive_certificate, args=(certificate,), daemon=True)
            threads.append(thread)
            started.append(certificate.instance)
            thread.start()
        process.join_all(threads)
    except Stopped:
        for dns in list(ACTIVE_DNS):
            dns.interrupted = True
            with contextlib.suppress(LetskencryptError):
                dns.withdraw_all()
        for instance in started:
            say(instance, Drive(EXIT_FAILED, interrupted=True))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    return 0
