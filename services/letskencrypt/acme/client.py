"""The ACME (RFC 8555) flow: directory, nonces, account, order, authorizations,
http-01 challenges, finalize, polling with Retry-After, download, revoke.
Names are domain names ("dns" identifiers) and IP addresses ("ip", RFC 8738);
each authorization must be for one of the order's, by type and value.

`AcmeClient` holds no private key and reads no CA document itself: requests
are signed by a `Signer` (acctproc), sent through a `Transport`, and every
answer is parsed by `letskencrypt.acme.messages`.

Waiting is bounded and polite: every wait of one operation (a whole order,
from new-order to download, or one other request) comes out of one budget of
`poll_timeout` seconds.  A Retry-After is honoured exactly when the budget
covers it and fails the operation at once when it does not; without one,
waits back off from 1 s, doubling, to 10 s.
"""

import contextlib
import ipaddress
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin

from letskencrypt import ari, pem
from letskencrypt.acme.messages import (
    ACCOUNT_DOES_NOT_EXIST,
    ALREADY_REVOKED,
    AUTHZ_FAILED,
    BAD_NONCE,
    BAD_REVOCATION_REASON,
    IDENTIFIER_REFUSALS,
    JSON,
    PEM_CHAIN,
    RATE_LIMITED,
    REPLACES_REFUSALS,
    Account,
    AcmeError,
    Authorization,
    Challenge,
    Directory,
    Order,
    Problem,
    alternate_links,
    check_url,
    failure_text,
    json_object,
    parse_retry_after,
    require_media_type,
    string_field,
    validate_nonce,
)
from letskencrypt.acme.transport import COUNTS, HttpResponse, Transport
from letskencrypt.b64 import b64url
from letskencrypt.constants import (
    CHALLENGE_DNS_01,
    CHALLENGE_DNS_PERSIST_01,
    CHALLENGE_HTTP_01,
    DEFAULT_POLL_TIMEOUT,
    REVOCATION_REASON_CODES,
    revocation_reason_name,
)
from letskencrypt.errors import CertificateRejected, InputError, LetskencryptError
from letskencrypt.validate import (
    DNS,
    IP,
    identifier_type,
    safe_text,
    validate_key_authorization,
)

MAX_CERTIFICATE_BODY = 256 * 1024
# The default chain and its alternates together (certproc's edge takes them).
MAX_CHAINS_BYTES = 1024 * 1024
MAX_BAD_NONCE_RETRIES = 5
MAX_BUSY_RETRIES = 3
# The shortest wait whatever the CA says: a CA answering "Retry-After: 0"
# for ever is not asked as fast as it answers.
MIN_WAIT = 1.0
# Without Retry-After, waits double up to MAX_BACKOFF.  A busy CA is first
# left alone for a second; a pending validation or issuance, which usually
# takes well under a second (a few milliseconds on a CA nearby), is first
# looked at again after 25 ms (about a dozen requests in its first minute).
BUSY_BACKOFF = 1.0
POLL_BACKOFF = 0.025
MAX_BACKOFF = 10.0


def _backoff(attempt: int, first: float) -> float:
    """The `attempt`-th wait (from 1) when the CA gave no Retry-After."""
    return min(first * 2 ** min(attempt - 1, 10), MAX_BACKOFF)


def identifier(name: str) -> dict[str, str]:
    """The ACME identifier of a validated name: "ip" for an address (RFC
    8738), "dns" for a domain name."""
    return {"type": identifier_type(name), "value": name}


def _ordered(authz: Authorization, names: list[str]) -> bool:
    """Whether `authz` is for one of `names`, by type and value (RFC 8555
    7.1.4: a wildcard's authorization names the domain below the "*.", with
    the flag wildcard)."""
    kind, value = authz.identifier_type, authz.identifier_value
    if value is None:
        return False
    if kind == IP:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return False
        return any(
            identifier_type(name) == IP and ipaddress.ip_address(name) == address
            for name in names
        )
    if kind == DNS:
        wanted = ("*." if authz.wildcard else "") + value.lower()
        return identifier_type(wanted) == DNS and wanted in names
    return False


def _refuses_addresses(error: AcmeError, names: list[str]) -> bool:
    """Whether a CA's refusal of a newOrder for `names` is a refusal of IP
    addresses: of an identifier, with addresses in the order, and with
    subproblems that blame an address or none that blames a domain name."""
    if error.problem_type not in IDENTIFIER_REFUSALS:
        return False
    if not any(identifier_type(name) == IP for name in names):
        return False
    return IP in error.identifier_types or DNS not in error.identifier_types


@dataclass(frozen=True)
class Chains:
    """What the CA issued: its default chain, and the alternates it offered
    that could be fetched, in the order of its Link headers (PEM, leaf first)."""

    default: bytes
    alternates: tuple[bytes, ...] = ()


# dns-persist-01: checks that the record for an authorization's name is in
# place (raises AcmeError saying which record is expected if it is not).
RecordCheck = Callable[[Authorization, Challenge], None]


class Signer(Protocol):
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
        """Flattened JWS {protected,payload,signature}; kid None => the signer embeds
        its JWK (newAccount); payload None => POST-as-GET (empty payload);
        external_account_binding => the signer adds its external account
        binding to the (newAccount) payload, which it alone can build;
        key_change => the payload (empty here) is the signer's own key change
        (RFC 8555 7.3.5), whose inner JWS only it can sign; challenge_type =>
        the payload ({}) answers a challenge of that type."""
        ...


def _jws_body(jws: Mapping[str, str]) -> bytes:
    try:
        flattened = {key: jws[key] for key in ("protected", "payload", "signature")}
    except (KeyError, TypeError):
        raise AcmeError("the signer returned a malformed JWS") from None
    if not all(isinstance(value, str) for value in flattened.values()):
        raise AcmeError("the signer returned a malformed JWS")
    return json.dumps(flattened).encode("ascii")


class _Budget:
    """The seconds the CA may keep one operation waiting, on the client's clock."""

    def __init__(self, seconds: float, clock: Callable[[], float]) -> None:
        self.seconds = seconds
        self._clock = clock
        self._end = clock() + seconds

    def left(self) -> float:
        return max(self._end - self._clock(), 0.0)

    def refuses(self, retry_after: float | None) -> str | None:
        """Why a Retry-After beyond what is left cannot be honoured (None: it can, or none)."""
        left = self.left()
        if retry_after is None or retry_after <= left:
            return None
        return (
            f"in {math.ceil(retry_after)} s, beyond the {math.floor(left)} s budget left "
            "(--poll-timeout)"
        )

    def next_wait(
        self, retry_after: float | None, attempt: int, first: float = BUSY_BACKOFF
    ) -> float | None:
        """Seconds to wait before asking again (None: the budget is spent): the
        CA's Retry-After (one that `refuses` passed), else the backoff."""
        left = self.left()
        if left <= 0:
            return None
        wanted = _backoff(attempt, first) if retry_after is None else max(retry_after, MIN_WAIT)
        return min(wanted, left)


class AcmeClient:
    """One ACME account's conversation with one CA."""

    def __init__(
        self,
        transport: Transport,
        signer: Signer,
        directory_url: str,
        *,
        log: Callable[[str], None] | None = None,
        notice: Callable[[str], None] | None = None,
        bad_nonce_retries: int = MAX_BAD_NONCE_RETRIES,
        poll_timeout: float = DEFAULT_POLL_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory_url = check_url(directory_url, directory_url, "directory")
        self.kid: str | None = None
        self._transport = transport
        self._signer = signer
        self._log = log or (lambda _message: None)
        # What the operator sees without -v (the terms a registration agrees to).
        self._notice = notice or self._log
        self._bad_nonce_retries = bad_nonce_retries
        self._poll_timeout = poll_timeout
        self._sleep = sleep
        self._clock = clock
        self._budget: _Budget | None = None  # the running operation's
        self._directory: Directory | None = None
        self._nonce: str | None = None
        # The account's contact and status as the CA last showed them (see Account).
        self.account_contact: tuple[str, ...] | None = None
        self.account_status: str | None = None

    @contextlib.contextmanager
    def _within_budget(self) -> Iterator[_Budget]:
        """The running operation's budget, or a new one of poll_timeout for this one."""
        if self._budget is not None:
            yield self._budget
            return
        self._budget = _Budget(self._poll_timeout, self._clock)
        try:
            yield self._budget
        finally:
            self._budget = None

    # -- directory and nonces --

    def directory(self) -> Directory:
        if self._directory is not None:
            return self._directory
        response = self._transport.request(
            "GET", self.directory_url, headers={"Accept": "application/json"}
        )
        if response.status != 200:
            problem = Problem.from_response(response.status, response.headers, response.body)
            raise problem.error("directory: ")
        require_media_type(response.headers, JSON, self.directory_url)
        document = json_object(response.body, "directory")
        self._directory = Directory.from_json(document, self.directory_url)
        self._log(f"directory {self.directory_url}")
        return self._directory

    def _check(self, url: object, what: str) -> str:
        return check_url(url, self.directory_url, what)

    def _remember_nonce(self, response: HttpResponse) -> None:
        nonce = response.headers.get("Replay-Nonce")
        self._nonce = None if nonce is None else validate_nonce(nonce)

    def _take_nonce(self) -> str:
        if self._nonce is None:
            response = self._transport.request("HEAD", self.directory().new_nonce)
            if response.status not in (200, 204):
                raise AcmeError(f"newNonce: HTTP {response.status}", status=response.status)
            self._remember_nonce(response)
            if self._nonce is None:
                raise AcmeError("newNonce: CA sent no Replay-Nonce")
        nonce, self._nonce = self._nonce, None
        return nonce

    # -- signed requests --

    def post(
        self,
        url: str,
        payload: dict[str, Any] | None,
        kid: str | None,
        *,
        expect: str | None = JSON,
        max_body: int | None = None,
        external_account_binding: bool = False,
        signer: Signer | None = None,
        key_change: bool = False,
        challenge_type: str = CHALLENGE_HTTP_01,
        retry_server_errors: bool = True,
    ) -> HttpResponse:
        """Signed POST (payload None: POST-as-GET) whose answer must be of the
        media type `expect` (None: its body goes unread); with
        `external_account_binding`, the signer adds its binding (newAccount);
        `signer`, one other than the account's (a revocation with the
        certificate's key).

        Retries badNonce at once, and a busy CA (429, and 5xx unless not
        `retry_server_errors`) within the budget.
        """
        url = self._check(url, "request")
        body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        if key_change:
            body = b""
        headers = {"Content-Type": "application/jose+json"}
        if expect == PEM_CHAIN:
            headers["Accept"] = PEM_CHAIN
        bad_nonces = busy = 0
        with self._within_budget() as budget:
            while True:
                # key_change and a challenge's type other than http-01 only
                # when asked: signers that make none need not know them.
                jws = (signer or self._signer).sign(
                    url, self._take_nonce(), kid, body,
                    external_account_binding=external_account_binding,
                    **({"key_change": True} if key_change else {}),
                    **({"challenge_type": challenge_type}
                       if challenge_type != CHALLENGE_HTTP_01 else {}),
                )  # fmt: skip
                response = self._transport.request(
                    "POST", url, body=_jws_body(jws), headers=headers, max_body=max_body
                )
                self._remember_nonce(response)
                if 200 <= response.status < 300:
                    if expect is not None:
                        require_media_type(response.headers, expect, url)
                    return response
                problem = Problem.from_response(response.status, response.headers, response.body)
                if problem.type == BAD_NONCE and bad_nonces < self._bad_nonce_retries:
                    bad_nonces += 1
                    self._log(f"CA rejected our nonce, retrying ({bad_nonces})")
                    continue
                server_error = problem.status >= 500
                wait = (
                    None if server_error and not retry_server_errors
                    else self._busy_wait(budget, problem, busy)
                )  # fmt: skip
                if wait is None:
                    raise problem.error()
                busy += 1
                self._log(f"{problem.message}; retrying in {wait:g} s ({busy}/{MAX_BUSY_RETRIES})")
                self._sleep(wait)

    def _busy_wait(self, budget: _Budget, problem: Problem, retries: int) -> float | None:
        """How long to wait before sending again after `problem` (None: do not)."""
        if problem.status != 429 and problem.status < 500:
            return None
        refused = budget.refuses(problem.retry_after)
        if refused is not None:
            raise problem.error(suffix=f"; the CA asks to retry {refused}")
        # A rate limit that does not say until when is not tried again blindly.
        if retries >= MAX_BUSY_RETRIES or (
            problem.type == RATE_LIMITED and problem.retry_after is None
        ):
            return None
        return budget.next_wait(problem.retry_after, retries + 1)

    def _location(self, response: HttpResponse, request_url: str, what: str) -> str:
        location = response.headers.get("Location")
        if location is None:
            raise AcmeError(f"CA sent no Location for the {what}")
        return self._check(urljoin(request_url, location), what)

    def _require_kid(self) -> str:
        if self.kid is None:
            raise AcmeError("no ACME account: call account() first")
        return self.kid

    # -- account --

    def account(
        self, contact: list[str], create: bool = True, external_account_binding: bool = False
    ) -> str:
        """Find (or, if `create`, register) the account for the signer's key; its kid.

        A registration agrees to the CA's terms of service, which are shown
        (one line, `notice`) once it succeeded; with `external_account_binding`
        it carries the signer's binding (RFC 8555 7.3.4).
        """
        directory = self.directory()
        new_account = directory.new_account
        created = False
        try:
            response = self.post(new_account, {"onlyReturnExisting": True}, None)
        except AcmeError as error:
            if error.problem_type != ACCOUNT_DOES_NOT_EXIST:
                raise
            if not create:
                raise AcmeError("the CA has no account for this key") from None
            payload: dict[str, Any] = {"termsOfServiceAgreed": True}
            if contact:
                payload["contact"] = list(contact)
            response = self.post(
                new_account, payload, None, external_account_binding=external_account_binding
            )
            created = True
        kid = self._location(response, new_account, "account")
        account = Account.from_json(kid, json_object(response.body, "account"))
        self.kid = account.url
        self.account_contact = account.contact
        self.account_status = account.status
        if not created:
            self._log(f"account {kid} found")
        elif directory.terms_of_service:
            self._notice(f"account {kid} created, agreeing to the CA's terms of service "
                         f"{directory.terms_of_service}")  # fmt: skip
        else:
            self._notice(f"account {kid} created (the CA names no terms of service)")
        return kid

    def contact_differs(self, contact: list[str]) -> bool:
        """Whether the account (as account() found it) shows another contact
        than `contact`, in any order; an unreadable one differs."""
        shown = self.account_contact
        return shown is None or sorted(shown) != sorted(contact)

    def update_contact(self, contact: list[str]) -> None:
        """Set the account's contact (RFC 8555 7.3.2): POST {"contact"} to its URL."""
        kid = self._require_kid()
        response = self.post(kid, {"contact": list(contact)}, kid)
        account = Account.from_json(kid, json_object(response.body, "account"))
        self.account_contact = account.contact
        self._log(f"account {kid}: contact set to {', '.join(contact)}")

    def change_key(self) -> None:
        """Roll the account over to the signer's new key (RFC 8555 7.3.5): the
        signer builds the key change, inner JWS and all; the CA's 200 is all
        that is read."""
        kid = self._require_kid()
        url = self.directory().key_change
        if url is None:
            raise AcmeError("the CA's directory offers no keyChange")
        self.post(url, None, kid, expect=None, key_change=True)
        self._log(f"account {kid}: the CA changed its key")

    def deactivate(self) -> None:
        """Deactivate the account (RFC 8555 7.3.6): POST {"status": "deactivated"}
        to its URL; the CA must answer with the account so deactivated."""
        kid = self._require_kid()
        response = self.post(kid, {"status": "deactivated"}, kid)
        document = json_object(response.body, "account")
        status = document.get("status")
        if status != "deactivated":
            shown = safe_text(status, 40) if isinstance(status, str) else "no status"
            raise AcmeError(f"account {kid}: the CA answered the deactivation with {shown}")
        self.account_status = "deactivated"
        self._log(f"account {kid} deactivated")

    # -- orders and authorizations --

    def new_order(
        self, names: list[str], profile: str | None = None, replaces: str | None = None
    ) -> Order:
        """Order a certificate for `names` (domain names and IP addresses),
        of the CA's `profile` if given, saying that it `replaces` the
        certificate of that ARI identifier (RFC 9773 section 5), if given.
        A CA that refuses the order because of `replaces` (REPLACES_REFUSALS)
        gets the same order once more without it, at once: a 5xx answer to
        one with `replaces` is not waited out first (a 429 is, as always).

        RFC 8738 gives a CA no way to say in advance that it issues for
        addresses: one that does not refuses the order, and that refusal is
        said as such."""
        new_order = self.directory().new_order
        payload: dict[str, Any] = {"identifiers": [identifier(name) for name in names]}
        if profile is not None:
            payload["profile"] = profile
        if replaces is not None:
            payload["replaces"] = replaces
        try:
            response = self.post(
                new_order, payload, self._require_kid(), retry_server_errors=replaces is None
            )
        except AcmeError as error:
            if replaces is not None and error.problem_type in REPLACES_REFUSALS:
                self._notice(f"{error}; ordering without saying which certificate it replaces")
                return self.new_order(names, profile)
            if not _refuses_addresses(error, names):
                raise
            raise AcmeError(
                f"the CA does not issue certificates for IP addresses ({error})",
                problem_type=error.problem_type,
                status=error.status,
                retry_after=error.retry_after,
            ) from None
        COUNTS.orders += 1
        url = self._location(response, new_order, "order")
        order = Order.from_json(url, json_object(response.body, "order"), self.directory_url)
        self._log(f"order {url}: {order.status}")
        return order

    def authorization(
        self, url: str, challenge_type: str = CHALLENGE_HTTP_01
    ) -> Authorization:
        url = self._check(url, "authorization")
        response = self.post(url, None, self._require_kid())
        document = json_object(response.body, "authorization")
        return Authorization.from_json(url, document, self.directory_url, challenge_type)

    def respond(self, challenge_url: str, challenge_type: str = CHALLENGE_HTTP_01) -> None:
        """Tell the CA the challenge response is in place."""
        self.post(challenge_url, {}, self._require_kid(), challenge_type=challenge_type)

    def poll(
        self,
        url: str,
        done: set[str],
        fail: set[str],
        *,
        what: str,
        answer: HttpResponse | None = None,
    ) -> dict[str, Any]:
        """POST-as-GET the `what` at `url` until its status is in `done`
        (returned) or `fail` (AcmeError), within the budget.

        `answer` is the CA's latest answer about it, if there is one (the
        finalize's): it is read first, and its Retry-After sets the first wait.
        """
        url = self._check(url, what)
        with self._within_budget() as budget:
            attempt = 0
            while True:
                if answer is None:
                    answer = self.post(url, None, self._require_kid())
                document = json_object(answer.body, what)
                status = string_field(document, "status", what)
                if status in done:
                    return document
                if status in fail:
                    raise AcmeError(failure_text(url, status, document))
                retry_after = parse_retry_after(answer.headers.get("Retry-After"))
                refused = budget.refuses(retry_after)
                if refused is not None:
                    raise AcmeError(
                        f"{what} {url}: the CA asks to poll again {refused}",
                        retry_after=retry_after,
                    )
                attempt += 1
                wait = budget.next_wait(retry_after, attempt, first=POLL_BACKOFF)
                if wait is None:
                    raise AcmeError(
                        f"{what} {url} is still {safe_text(status, 40)} after "
                        f"{budget.seconds:g} s (--poll-timeout); giving up"
                    )
                self._sleep(wait)
                answer = None

    # -- certificate --

    def finalize(self, order: Order, csr_der: bytes) -> Order:
        """Submit the CSR and wait until the order is valid and has a certificate URL."""
        with self._within_budget():
            response = self.post(order.finalize, {"csr": b64url(csr_der)}, self._require_kid())
            document = json_object(response.body, "order")
            final = Order.from_json(order.url, document, self.directory_url)
            if final.status != "valid":
                self._log(f"order {order.url}: {final.status}, waiting")
                document = self.poll(
                    order.url, {"valid"}, {"invalid"}, what="order", answer=response
                )
                final = Order.from_json(order.url, document, self.directory_url)
        if final.certificate is None:
            raise AcmeError(f"order {order.url} is valid but has no certificate URL")
        return final

    def download(self, certificate_url: str) -> Chains:
        """The PEM certificate chain (at most 256 KiB, every block a
        certificate) and the CA's alternate chains (RFC 8555 section 7.4.2:
        Link rel="alternate", same origin, at most 8, 1 MiB in all).  Which
        one is installed is certproc's choice, among those it verifies; an
        alternate that cannot be fetched is said and left out.
        """
        response = self._fetch_chain(certificate_url)
        try:
            urls = alternate_links(
                response.headers.get("Link"), certificate_url, self.directory_url
            )
        except AcmeError as error:
            self._notice(f"{error}; only the default chain")
            return Chains(response.body)
        alternates: list[bytes] = []
        total = len(response.body)
        for url in urls:
            try:
                body = self._fetch_chain(url).body
            except AcmeError as error:
                self._notice(f"alternate chain {safe_text(url, 200)}: {error}; skipped")
                continue
            if total + len(body) > MAX_CHAINS_BYTES:
                self._notice(
                    f"alternate chain {safe_text(url, 200)}: the chains would exceed "
                    f"{MAX_CHAINS_BYTES // 1024} KiB in all; it and the rest skipped"
                )
                break
            total += len(body)
            alternates.append(body)
        return Chains(response.body, tuple(alternates))

    def _fetch_chain(self, url: str) -> HttpResponse:
        response = self.post(
            url, None, self._require_kid(), expect=PEM_CHAIN, max_body=MAX_CERTIFICATE_BODY
        )
        try:
            # Text and DER framing only: certproc parses and checks the chain.
            count = len(pem.certificate_ders(response.body, MAX_CERTIFICATE_BODY))
        except CertificateRejected as error:
            raise AcmeError(f"CA sent an unusable certificate chain: {error}") from None
        self._log(f"downloaded a chain of {count} certificate(s)")
        return response

    def revoke(
        self, cert_der: bytes, reason: int | None = None, certificate_key: Signer | None = None
    ) -> bool:
        """Revoke the certificate; False if the CA says it was revoked already
        (RFC 8555 §7.6, alreadyRevoked): the end the caller wanted, too.

        Signed with the account key (kid), or, given `certificate_key`, by
        that signer with its JWK embedded (the certificate's own key; no
        account needed).  The payload is the same either way."""
        revoke_cert = self.directory().revoke_cert
        if revoke_cert is None:
            raise AcmeError("the CA's directory offers no revokeCert")
        payload: dict[str, Any] = {"certificate": b64url(cert_der)}
        if reason is not None:
            if not isinstance(reason, int) or reason not in REVOCATION_REASON_CODES:
                raise AcmeError(f"invalid revocation reason {reason!r} (RFC 5280: 0-6, 8-10)")
            payload["reason"] = reason
        kid = None if certificate_key is not None else self._require_kid()
        try:
            self.post(revoke_cert, payload, kid, expect=None, signer=certificate_key)
        except AcmeError as error:
            if error.problem_type == BAD_REVOCATION_REASON:
                shown = "no reason" if reason is None else revocation_reason_name(reason)
                raise AcmeError(
                    f"the CA does not accept the revocation reason {shown} "
                    f"(badRevocationReason): {error}",
                    problem_type=error.problem_type,
                    status=error.status,
                ) from None
            if error.problem_type != ALREADY_REVOKED:
                raise
            self._log("the CA says the certificate was revoked already")
            return False
        self._log("certificate revoked")
        return True

    # -- renewal information (RFC 9773) --

    def renewal_info(self, cert_id: str) -> tuple[ari.Window, float | None]:
        """The CA's suggested renewal window for the certificate of ARI
        identifier `cert_id`, and its Retry-After (seconds, None without
        one): an unauthenticated GET of renewalInfo/<cert_id>, at most
        ari.MAX_RENEWAL_INFO bytes, checked by ari.parse_window.  AcmeError
        when the CA offers no renewalInfo or answers with anything else."""
        base = self.directory().renewal_info
        if base is None:
            raise AcmeError("the CA's directory offers no renewalInfo")
        if not ari.is_cert_id(cert_id):
            raise AcmeError("not an ARI certificate identifier")
        url = self._check(f"{base.rstrip('/')}/{cert_id}", "renewalInfo")
        response = self._transport.request(
            "GET", url, headers={"Accept": JSON}, max_body=ari.MAX_RENEWAL_INFO
        )
        if response.status != 200:
            problem = Problem.from_response(response.status, response.headers, response.body)
            raise problem.error("renewalInfo: ")
        require_media_type(response.headers, JSON, url)
        try:
            window = ari.parse_window(response.body)
        except ari.AriError as error:
            raise AcmeError(str(error)) from None
        return window, parse_retry_after(response.headers.get("Retry-After"))

    # -- the whole issuance --

    def issue(
        self,
        names: list[str],
        csr_provider: Callable[[], bytes],
        publish: Callable[[str, str], None],
        withdraw: Callable[[str], None],
        thumbprint: str,
        profile: str | None = None,
        replaces: str | None = None,
        challenge_type: str = CHALLENGE_HTTP_01,
        check_record: "RecordCheck | None" = None,
    ) -> Chains:
        """Order a certificate for `names` (of the CA's `profile`, if given,
        replacing the certificate of ARI identifier `replaces`, if given),
        prove control over http-01 (or `challenge_type`), return the PEM
        chains (see `download`).

        `publish(token, key_authorization)` must make the response reachable at
        /.well-known/acme-challenge/<token>; `withdraw(token)` removes it again.
        dns-01: both are given name= too, the authorization's domain name (a
        wildcard's without "*."), and `publish` returns once the TXT record is
        served; an IP address's authorization goes by http-01 (no name=).
        dns-persist-01 publishes nothing: `check_record(authorization,
        challenge)` must find the persistent record in place (or raise, saying
        which record is expected) before the challenge is answered.
        All of it, from the new order to the download, shares one budget.
        """
        with self._within_budget():
            order = self.new_order(names, profile, replaces)
            # One authorization per identifier (RFC 8555 section 7.1.3): more would
            # have us prove control of names nobody asked for, each one a challenge
            # file and more of the budget.
            if len(order.authorizations) > len(names):
                raise AcmeError(
                    f"CA sent an order with {len(order.authorizations)} authorizations "
                    f"for {len(names)} names"
                )
            if order.status == "invalid":
                reason = "" if order.error is None else f"; {order.error}"
                raise AcmeError(safe_text(f"{order.url} is invalid{reason}", 3000))
            if order.status == "pending":
                try:
                    for url in order.authorizations:
                        if challenge_type == CHALLENGE_DNS_PERSIST_01:
                            self._authorize_persist(url, names, check_record)
                        else:
                            self._authorize(
                                url, publish, withdraw, thumbprint, names, challenge_type
                            )
                except LetskencryptError as error:
                    # Our side failed (a record not published or not served, a
                    # role's refusal): the CA is told.  Not when the CA is the
                    # trouble: more requests to it would only prolong that.
                    if not isinstance(error, AcmeError):
                        self._give_up(order.authorizations)
                    raise
            document = self.poll(order.url, {"ready", "valid"}, {"invalid"}, what="order")
            order = Order.from_json(order.url, document, self.directory_url)
            if order.status == "ready":
                order = self.finalize(order, csr_provider())
            if order.certificate is None:
                raise AcmeError(f"order {order.url} is valid but has no certificate URL")
            return self.download(order.certificate)

    def _give_up(self, authorizations: list[str]) -> None:
        """Deactivate (RFC 8555 7.5.2) the order's authorizations that are
        still pending once the run cannot finish them: the order does not
        stay pending at the CA until it expires.  Best effort, within the
        order's budget: what fails here is only logged, the run's own error
        is the one said."""
        for url in authorizations:
            try:
                response = self.post(url, None, self._require_kid())
                status = json_object(response.body, "authorization").get("status")
                if status != "pending":
                    continue
                self.post(url, {"status": "deactivated"}, self._require_kid())
                self._log(f"deactivated the pending authorization {safe_text(url, 200)}")
            except LetskencryptError as error:
                self._log(f"authorization {safe_text(url, 200)} left as it is: {error}")

    def _pending_authorization(
        self, url: str, names: list[str], challenge_type: str
    ) -> Authorization | None:
        """The order's authorization at `url`, if it still needs a challenge
        answered; None if it is valid already."""
        authz = self.authorization(url, challenge_type)
        # Or the CA could have us prove control of a name nobody asked for.
        if not _ordered(authz, names):
            raise AcmeError(
                f"CA sent an authorization for {authz.identifier}, which the order did not ask for"
            )
        if authz.status == "valid":
            self._log(f"{authz.identifier}: already authorized")
            return None
        if authz.status != "pending":
            raise AcmeError(f"authorization for {authz.identifier} is {authz.status}")
        return authz

    def _authorize(
        self,
        url: str,
        publish: Callable[[str, str], None],
        withdraw: Callable[[str], None],
        thumbprint: str,
        names: list[str],
        challenge_type: str = CHALLENGE_HTTP_01,
    ) -> None:
        authz = self._pending_authorization(url, names, challenge_type)
        if authz is None:
            return
        # dns-01 validates domain names only: an address goes by http-01
        # (Authorization.from_json picked that one for it).
        if authz.identifier_type == IP:
            challenge_type = CHALLENGE_HTTP_01
        challenge = authz.challenge
        if challenge is None:
            raise AcmeError(f"the CA offers no {challenge_type} challenge for {authz.identifier}")
        try:
            key_authorization = validate_key_authorization(
                challenge.token, f"{challenge.token}.{thumbprint}"
            )
        except InputError as error:
            raise AcmeError(str(error)) from None
        # dns-01: the record's name (a wildcard's without "*.", RFC 8555 8.4).
        dns = challenge_type == CHALLENGE_DNS_01
        where = {"name": (authz.identifier_value or "").lower()} if dns else {}
        publish(challenge.token, key_authorization, **where)
        try:
            if challenge.status == "pending":
                self.respond(challenge.url, challenge_type)
            self.poll(authz.url, {"valid"}, set(AUTHZ_FAILED), what="authorization")
        finally:
            withdraw(challenge.token, **where)
        self._log(f"{authz.identifier}: authorized")

    def _authorize_persist(
        self, url: str, names: list[str], check_record: "RecordCheck | None"
    ) -> None:
        """dns-persist-01: the record must be there already (checked read-only,
        before the CA is told); then the challenge is answered with {}."""
        if check_record is None:
            raise AcmeError("dns-persist-01 needs a check of the record")
        authz = self._pending_authorization(url, names, CHALLENGE_DNS_PERSIST_01)
        if authz is None:
            return
        challenge = authz.challenge
        if challenge is None:
            raise AcmeError(f"the CA offers no dns-persist-01 challenge for {authz.identifier}")
        check_record(authz, challenge)
        if challenge.status == "pending":
            self.respond(challenge.url, CHALLENGE_DNS_PERSIST_01)
        self.poll(authz.url, {"valid"}, set(AUTHZ_FAILED), what="authorization")
        self._log(f"{authz.identifier}: authorized by its dns-persist-01 record")
