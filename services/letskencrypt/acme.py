"""ACME (RFC 8555) protocol engine for netproc, the only role that talks to the CA.

netproc holds no private key and has no resolver of its own: requests are signed
by a `Signer` and host names are resolved by a `Resolver`, both other processes.
Everything the CA sends is treated as hostile: every URL it hands out must stay
on the directory's https origin, every response is bounded in size and time,
and every field is type-checked before use.

Top to bottom: error formatting and small validators, the HTTP `Transport`,
then `AcmeClient`.
"""

import contextlib
import email.utils
import http.client
import importlib.metadata
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urljoin

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError

from letskencrypt import pem
from letskencrypt.b64 import b64url
from letskencrypt.errors import CertificateRejected, InputError, LetskencryptError
from letskencrypt.urls import origin, well_formed
from letskencrypt.validate import is_nonce, safe_text, validate_key_authorization, validate_token

ERROR_PREFIX = "urn:ietf:params:acme:error:"
BAD_NONCE = ERROR_PREFIX + "badNonce"
ACCOUNT_DOES_NOT_EXIST = ERROR_PREFIX + "accountDoesNotExist"

MAX_BODY = 1024 * 1024
MAX_CERTIFICATE_BODY = 256 * 1024
MAX_ADDRESSES = 8
MAX_AUTHORIZATIONS = 100
MAX_BAD_NONCE_RETRIES = 5
MAX_BUSY_RETRIES = 3
DEFAULT_POLL_TIMEOUT = 300.0
MAX_RETRY_AFTER = 10**10  # seconds; larger delay-seconds are read as this

AUTHZ_FAILED = frozenset({"invalid", "deactivated", "expired", "revoked"})
ORDER_STATUSES = frozenset({"pending", "ready", "processing", "valid", "invalid"})
AUTHZ_STATUSES = AUTHZ_FAILED | {"pending", "valid"}
CHALLENGE_STATUSES = frozenset({"pending", "processing", "valid", "invalid"})

_URLLIB3_PREFIX = re.compile(r"^\w+\(host='[^']*', port=\d+\): ")

def _package_version() -> str:
    try:
        return importlib.metadata.version("letskencrypt")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


USER_AGENT = f"letskencrypt/{_package_version()}"


class AcmeError(LetskencryptError):
    """The CA answered with an error, or with something we refuse to accept."""

    def __init__(
        self, message: str, *, problem_type: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.problem_type = problem_type
        self.status = status


class Signer(Protocol):
    def sign(self, url: str, nonce: str, kid: str | None, payload: bytes | None) -> dict[str, str]:
        """Flattened JWS {protected,payload,signature}; kid None => the signer embeds
        its JWK (newAccount); payload None => POST-as-GET (empty payload)."""
        ...


class Resolver(Protocol):
    def resolve(self, host: str) -> list[str]:
        """Up to eight IP address strings for `host`."""
        ...


# --- problem documents, nonces, URLs, Retry-After ----------------------------


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


def _identifier_text(identifier: object) -> str:
    if not isinstance(identifier, dict):
        return "(no identifier)"
    kind, value = identifier.get("type"), identifier.get("value")
    kind_text = safe_text(kind, 20) if isinstance(kind, str) else "?"
    value_text = safe_text(value, 100) if isinstance(value, str) else "?"
    return f"{kind_text}:{value_text}"


def format_problem(problem: object, status: int) -> str:
    """One terminal-safe line for an RFC 7807 problem document (status 0: none)."""
    prefix = f"HTTP {status}: " if status else ""
    if isinstance(problem, bytes):
        problem = problem.decode("utf-8", "replace")
    if not isinstance(problem, dict):
        if problem is None or problem == "":
            return f"{prefix}no error details"
        text = problem if isinstance(problem, str) else repr(problem)
        return prefix + "unexpected error body: " + safe_text(text, 200)
    parts = [_one_problem(problem)]
    subproblems = problem.get("subproblems")
    if isinstance(subproblems, list):
        shown = [p for p in subproblems if isinstance(p, dict)][:10]
        for sub in shown:
            parts.append(f"[{_identifier_text(sub.get('identifier'))}] {_one_problem(sub)}")
        if len(subproblems) > len(shown):
            parts.append(f"(+{len(subproblems) - len(shown)} more subproblems)")
    return safe_text(prefix + "; ".join(parts), 2000)


def validate_nonce(value: object) -> str:
    """A Replay-Nonce: non-empty base64url of at most 128 characters."""
    if not is_nonce(value):
        shown = safe_text(value, 60) if isinstance(value, str) else type(value).__name__
        raise AcmeError(f"CA sent an invalid Replay-Nonce {shown!r}")
    return value


def check_url(url: object, base: str, what: str) -> str:
    """Return `url` if it is an https URL on the same origin as `base`, else AcmeError.

    A CA that points us at another host, scheme or port is treated as hostile.
    """
    if not isinstance(url, str):
        raise AcmeError(f"CA sent a {type(url).__name__} as {what} URL, not a string")
    shown = safe_text(url, 200)
    if not well_formed(url):
        raise AcmeError(f"CA sent a malformed {what} URL {shown!r}")
    try:
        if origin(url) != origin(base):
            raise AcmeError(f"{what} URL {shown!r} is not on the CA's origin {base!r}")
    except InputError as error:
        raise AcmeError(f"unusable {what} URL: {error}") from None
    return url


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


# --- HTTP transport ---------------------------------------------------------


@dataclass(frozen=True)
class HttpResponse:
    """A fully read, size-bounded HTTP response."""

    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes


class _Deadline:
    """Wall-clock limit for one request.

    Socket timeouts only bound each read, so a server dripping a byte at a time
    could hold us forever; when this timer fires it shuts the socket down.
    """

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                _shutdown(sock)

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            if self._sock is sock:
                self._sock = None

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._sock = None

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                _shutdown(self._sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


class _Dialer:
    """Connects to the addresses the Resolver gives for a host, never the system's."""

    def __init__(self, resolver: Resolver, connect_timeout: float) -> None:
        self._resolver = resolver
        self._connect_timeout = connect_timeout
        self._cache: dict[str, list[str]] = {}
        self.deadline: _Deadline | None = None

    def addresses(self, host: str) -> list[str]:
        host = host.lower().strip("[]").rstrip(".")
        if host not in self._cache:
            self._cache[host] = self._resolve(host)
        return self._cache[host]

    def _resolve(self, host: str) -> list[str]:
        try:
            answer = self._resolver.resolve(host)
        except LetskencryptError as error:
            raise AcmeError(f"cannot resolve {safe_text(host, 100)}: {error}") from None
        if not isinstance(answer, list) or not answer:
            raise AcmeError(f"resolver gave no address for {safe_text(host, 100)}")
        addresses = []
        for item in answer[:MAX_ADDRESSES]:
            try:
                addresses.append(str(ipaddress.ip_address(item)))
            except ValueError:
                raise AcmeError(
                    f"resolver gave a non-address {safe_text(str(item), 60)!r} "
                    f"for {safe_text(host, 100)}"
                ) from None
        return addresses

    def dial(self, host: str, port: int) -> socket.socket:
        failures = []
        for address in self.addresses(host):
            if self.deadline is not None and self.deadline.expired:
                break
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(self._connect_timeout)
                sock.connect((address, port))
            except OSError as error:
                sock.close()
                failures.append(f"{address}: {error.strerror or error}")
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise AcmeError(f"cannot connect to {host} port {port} ({'; '.join(failures)})")

    def watch(self, sock: socket.socket) -> None:
        if self.deadline is not None:
            self.deadline.watch(sock)

    def forget(self, sock: socket.socket) -> None:
        if self.deadline is not None:
            self.deadline.forget(sock)


class _PinnedConnection(HTTPSConnection):
    """urllib3 connection that dials through a `_Dialer`.

    TLS still verifies the certificate for the URL's host name (SNI + hostname
    check), only the address lookup is replaced.
    """

    dialer: _Dialer  # set on a per-Transport subclass
    _handle: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        try:
            sock = self.dialer.dial(self._dns_host, self.port)
        except AcmeError as error:
            raise NewConnectionError(self, str(error)) from None
        # The TLS wrapper takes over the socket object during the handshake;
        # a duplicate descriptor lets the deadline shut the connection down in
        # every phase.
        self._drop_handle()
        self._handle = sock.dup()
        self.dialer.watch(self._handle)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self._handle is not None:  # a kept-alive connection, new request
            self.dialer.watch(self._handle)
        super().request(*args, **kwargs)

    def close(self) -> None:
        super().close()
        self._drop_handle()

    def _drop_handle(self) -> None:
        if self._handle is not None:
            self.dialer.forget(self._handle)
            self._handle.close()
            self._handle = None


class _PinnedAdapter(HTTPAdapter):
    """https-only adapter: our connections, our TLS context, no proxies, no CA files."""

    def __init__(self, dialer: _Dialer, context: ssl.SSLContext) -> None:
        self._dialer = dialer
        self._context = context
        super().__init__(pool_connections=4, pool_maxsize=2, max_retries=0)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        connection_class = type("Connection", (_PinnedConnection,), {"dialer": self._dialer})
        pool_class = type("Pool", (HTTPSConnectionPool,), {"ConnectionCls": connection_class})
        self.poolmanager = urllib3.PoolManager(
            num_pools=connections,
            maxsize=maxsize,
            block=block,
            ssl_context=self._context,
            cert_reqs="CERT_REQUIRED",
        )
        self.poolmanager.pool_classes_by_scheme = {"https": pool_class}
        self.poolmanager.key_fn_by_scheme = {"https": self.poolmanager.key_fn_by_scheme["https"]}

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: Any = None,
        cert: Any = None,
    ) -> HTTPSConnectionPool:
        parsed = urllib3.util.parse_url(request.url or "")
        if parsed.scheme != "https" or not parsed.host:
            raise AcmeError(f"refusing non-https URL {safe_text(request.url or '', 200)!r}")
        return self.poolmanager.connection_from_host(parsed.host, parsed.port or 443, "https")

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # requests would point the pool at its CA bundle file here, which would
        # add the public roots to our context; trust only what we were given.
        return


class _NoRedirectSession(requests.Session):
    """A Session that never looks at a redirect.

    Even with allow_redirects=False, requests walks a 3xx answer through
    resolve_redirects() to offer it as `Response.next`, and that reads the
    whole body into memory first, before our size cap and unbounded but for
    the deadline: a CA answering 302 with an endless body could fill the
    memory.  Transport.request() reports the 3xx itself.
    """

    def resolve_redirects(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return iter(())


def _tls_context(ca_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.hostname_checks_common_name = False
    try:
        context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError) as error:
        raise AcmeError(f"cannot load the CA trust anchors: {error}") from None
    return context


class Transport:
    """HTTPS to the CA: resolver-pinned, bounded in time and size, never redirected."""

    def __init__(
        self,
        resolver: Resolver,
        ca_pem: bytes,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        deadline: float = 60.0,
        max_body: int = MAX_BODY,
        user_agent: str = USER_AGENT,
    ) -> None:
        self._dialer = _Dialer(resolver, connect_timeout)
        self._timeouts = (connect_timeout, read_timeout)
        self._deadline = deadline
        self.max_body = max_body
        self._session = _NoRedirectSession()
        self._session.trust_env = False  # no proxies or .netrc from the environment
        self._session.max_redirects = 0
        self._session.headers.clear()
        self._session.headers.update({"User-Agent": user_agent, "Accept-Encoding": "identity"})
        self._session.adapters.clear()
        self._session.mount("https://", _PinnedAdapter(self._dialer, _tls_context(ca_pem)))

    def close(self) -> None:
        self._session.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        max_body: int | None = None,
    ) -> HttpResponse:
        shown = safe_text(url, 200)
        try:
            parsed = urllib3.util.parse_url(url)
        except urllib3.exceptions.LocationParseError:
            raise AcmeError(f"refusing malformed URL {shown!r}") from None
        if parsed.scheme != "https" or not parsed.host:
            raise AcmeError(f"refusing {shown!r}: only https URLs are fetched")
        self._dialer.addresses(parsed.host)  # resolver errors surface as themselves
        limit = self.max_body if max_body is None else max_body
        deadline = self._dialer.deadline = _Deadline(self._deadline)
        response: requests.Response | None = None
        try:
            response = self._session.request(
                method,
                url,
                data=body,
                headers=dict(headers or {}),
                timeout=self._timeouts,
                allow_redirects=False,
                stream=True,
            )
            if 300 <= response.status_code < 400:
                location = safe_text(response.headers.get("Location", ""), 200)
                raise AcmeError(
                    f"{method} {shown}: CA redirects ({response.status_code}) to "
                    f"{location!r}; redirects are not followed"
                )
            data = _read_body(response, limit, f"{method} {shown}")
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            OSError,
        ) as error:
            if deadline.expired:
                raise AcmeError(
                    f"{method} {shown}: no answer within {self._deadline:g} s"
                ) from None
            raise AcmeError(f"{method} {shown}: {_describe(error)}") from None
        finally:
            deadline.cancel()
            self._dialer.deadline = None
            if response is not None:
                response.close()
        if deadline.expired:  # the body may look complete after the socket was cut
            raise AcmeError(f"{method} {shown}: no answer within {self._deadline:g} s")
        return HttpResponse(response.status_code, CaseInsensitiveDict(response.headers), data)


def _describe(error: BaseException) -> str:
    """The innermost useful message of a requests/urllib3 exception chain."""
    while True:
        if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
            error = error.reason
        elif isinstance(error, (requests.RequestException, urllib3.exceptions.SSLError)) and (
            error.args and isinstance(error.args[0], BaseException)
        ):
            error = error.args[0]
        else:
            break
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {error.verify_message}"
    # urllib3 prefixes "Pool(host=..., port=...): " or "Connection(...): ".
    return safe_text(_URLLIB3_PREFIX.sub("", str(error)), 300)


def _read_body(response: requests.Response, limit: int, what: str) -> bytes:
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise AcmeError(f"{what}: unrequested Content-Encoding {safe_text(encoding, 40)!r}")
    declared = response.headers.get("Content-Length", "").strip()
    if declared.isascii() and declared.isdigit() and (len(declared) > 12 or int(declared) > limit):
        raise AcmeError(f"{what}: response of {declared[:20]} bytes exceeds the {limit}-byte limit")
    chunks = []
    total = 0
    for chunk in response.raw.stream(16 * 1024, decode_content=False):
        total += len(chunk)
        if total > limit:
            raise AcmeError(f"{what}: response exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


# --- ACME client ------------------------------------------------------------


@dataclass(frozen=True)
class Directory:
    new_nonce: str
    new_account: str
    new_order: str
    revoke_cert: str | None
    terms_of_service: str | None


@dataclass(frozen=True)
class Order:
    url: str
    status: str
    authorizations: tuple[str, ...]
    finalize: str
    certificate: str | None = None
    error: object = None


@dataclass(frozen=True)
class Challenge:
    url: str
    token: str
    status: str
    error: object = None


@dataclass(frozen=True)
class Authz:
    url: str
    status: str
    identifier: str  # terminal-safe
    challenge: Challenge | None  # the http-01 one, if offered


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _json_object(response: HttpResponse, what: str) -> dict[str, Any]:
    try:
        document = json.loads(response.body)
    except (ValueError, RecursionError):
        raise AcmeError(f"CA sent {_a(what)} that is not JSON") from None
    if not isinstance(document, dict):
        raise AcmeError(f"CA sent {_a(what)} that is not a JSON object")
    return document


def _problem(response: HttpResponse) -> object:
    try:
        return json.loads(response.body)
    except (ValueError, RecursionError):
        return response.body.decode("utf-8", "replace")


def _string(document: Mapping[str, Any], key: str, what: str) -> str:
    value = document.get(key)
    if not isinstance(value, str):
        raise AcmeError(f"CA sent {_a(what)} without a string {key!r}")
    return value


def _status(document: Mapping[str, Any], allowed: frozenset[str], what: str) -> str:
    status = _string(document, "status", what)
    if status not in allowed:
        raise AcmeError(f"CA sent {_a(what)} with unknown status {safe_text(status, 40)!r}")
    return status


def _jws_body(jws: Mapping[str, str]) -> bytes:
    try:
        flattened = {key: jws[key] for key in ("protected", "payload", "signature")}
    except (KeyError, TypeError):
        raise AcmeError("the signer returned a malformed JWS") from None
    if not all(isinstance(value, str) for value in flattened.values()):
        raise AcmeError("the signer returned a malformed JWS")
    return json.dumps(flattened).encode("ascii")


def _failure(url: str, status: str, document: Mapping[str, Any]) -> str:
    """Why an order or authorization failed, with the CA's problem documents."""
    parts = [f"{url} is {safe_text(status, 40)}"]
    if "identifier" in document:
        parts[0] = f"{_identifier_text(document['identifier'])}: " + parts[0]
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


class AcmeClient:
    """One ACME account's conversation with one CA."""

    def __init__(
        self,
        transport: Transport,
        signer: Signer,
        directory_url: str,
        *,
        log: Callable[[str], None] | None = None,
        max_wait: float = 60.0,
        bad_nonce_retries: int = MAX_BAD_NONCE_RETRIES,
        poll_min: float = 1.0,
        poll_max: float = 60.0,
        poll_timeout: float = DEFAULT_POLL_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory_url = check_url(directory_url, directory_url, "directory")
        self.kid: str | None = None
        self._transport = transport
        self._signer = signer
        self._log = log or (lambda _message: None)
        self._max_wait = max_wait
        self._bad_nonce_retries = bad_nonce_retries
        self._poll_min = poll_min
        self._poll_max = poll_max
        self._poll_timeout = poll_timeout
        self._sleep = sleep
        self._clock = clock
        self._directory: Directory | None = None
        self._nonce: str | None = None

    # -- directory and nonces --

    def directory(self) -> Directory:
        if self._directory is not None:
            return self._directory
        response = self._transport.request(
            "GET", self.directory_url, headers={"Accept": "application/json"}
        )
        if response.status != 200:
            raise AcmeError(
                "directory: " + format_problem(_problem(response), response.status),
                status=response.status,
            )
        document = _json_object(response, "directory")

        def url(key: str) -> str:
            return self._check(document.get(key), f"directory {key}")

        revoke = document.get("revokeCert")
        terms = None
        meta = document.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("termsOfService"), str):
            terms = safe_text(meta["termsOfService"], 300)  # shown, never fetched
        self._directory = Directory(
            new_nonce=url("newNonce"),
            new_account=url("newAccount"),
            new_order=url("newOrder"),
            revoke_cert=None if revoke is None else url("revokeCert"),
            terms_of_service=terms,
        )
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
        accept: str | None = None,
        max_body: int | None = None,
    ) -> HttpResponse:
        """Signed POST (payload None: POST-as-GET); retries badNonce and busy CAs."""
        url = self._check(url, "request")
        body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/jose+json"}
        if accept is not None:
            headers["Accept"] = accept
        bad_nonces = busy = 0
        while True:
            jws = self._signer.sign(url, self._take_nonce(), kid, body)
            response = self._transport.request(
                "POST", url, body=_jws_body(jws), headers=headers, max_body=max_body
            )
            self._remember_nonce(response)
            if 200 <= response.status < 300:
                return response
            problem = _problem(response)
            problem_type = problem.get("type") if isinstance(problem, dict) else None
            message = format_problem(problem, response.status)
            if problem_type == BAD_NONCE and bad_nonces < self._bad_nonce_retries:
                bad_nonces += 1
                self._log(f"CA rejected our nonce, retrying ({bad_nonces})")
                continue
            if (response.status == 429 or response.status >= 500) and busy < MAX_BUSY_RETRIES:
                busy += 1
                wait = self._busy_wait(response, busy, message)
                self._log(f"{message}; retrying in {wait:g} s ({busy}/{MAX_BUSY_RETRIES})")
                self._sleep(wait)
                continue
            raise AcmeError(
                message,
                problem_type=problem_type if isinstance(problem_type, str) else None,
                status=response.status,
            )

    def _busy_wait(self, response: HttpResponse, attempt: int, message: str) -> float:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is None:
            return min(float(2 ** (attempt - 1)), self._max_wait)
        if retry_after > self._max_wait:
            # Retrying earlier than asked only burns rate limit.
            raise AcmeError(
                f"{message}; CA asks to retry after {retry_after:.0f} s", status=response.status
            )
        return retry_after

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

    def account(self, contact: list[str], create: bool = True) -> str:
        """Find (or, if `create`, register) the account for the signer's key; its kid."""
        new_account = self.directory().new_account
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
            response = self.post(new_account, payload, None)
            created = True
        kid = self._location(response, new_account, "account")
        document = _json_object(response, "account")
        status = document.get("status")
        if status is not None and status != "valid":
            raise AcmeError(f"account {kid} is {safe_text(str(status), 40)}")
        self.kid = kid
        self._log(f"account {kid} {'created' if created else 'found'}")
        return kid

    # -- orders and authorizations --

    def new_order(self, names: list[str]) -> Order:
        new_order = self.directory().new_order
        payload = {"identifiers": [{"type": "dns", "value": name} for name in names]}
        response = self.post(new_order, payload, self._require_kid())
        url = self._location(response, new_order, "order")
        order = self._order(url, _json_object(response, "order"))
        self._log(f"order {url}: {order.status}")
        return order

    def _order(self, url: str, document: Mapping[str, Any]) -> Order:
        status = _status(document, ORDER_STATUSES, "order")
        authorizations = document.get("authorizations")
        if (
            not isinstance(authorizations, list)
            or not 0 < len(authorizations) <= MAX_AUTHORIZATIONS
        ):
            raise AcmeError(
                f"CA sent an order without a list of 1 to {MAX_AUTHORIZATIONS} authorizations"
            )
        certificate = document.get("certificate")
        return Order(
            url=url,
            status=status,
            authorizations=tuple(self._check(a, "authorization") for a in authorizations),
            finalize=self._check(document.get("finalize"), "finalize"),
            certificate=None if certificate is None else self._check(certificate, "certificate"),
            error=document.get("error"),
        )

    def authorization(self, url: str) -> Authz:
        url = self._check(url, "authorization")
        document = _json_object(self.post(url, None, self._require_kid()), "authorization")
        status = _status(document, AUTHZ_STATUSES, "authorization")
        identifier = _identifier_text(document.get("identifier"))
        challenges = document.get("challenges")
        if not isinstance(challenges, list):
            raise AcmeError(f"authorization for {identifier} has no list of challenges")
        challenge = None
        for item in challenges:
            if isinstance(item, dict) and item.get("type") == "http-01":
                challenge = self._challenge(item)
                break
        return Authz(url=url, status=status, identifier=identifier, challenge=challenge)

    def _challenge(self, document: Mapping[str, Any]) -> Challenge:
        try:
            token = validate_token(document.get("token"))
        except InputError as error:
            raise AcmeError(f"CA sent an unusable http-01 challenge: {error}") from None
        return Challenge(
            url=self._check(document.get("url"), "challenge"),
            token=token,
            status=_status(document, CHALLENGE_STATUSES, "challenge"),
            error=document.get("error"),
        )

    def respond(self, challenge_url: str) -> None:
        """Tell the CA the challenge response is in place."""
        self.post(challenge_url, {}, self._require_kid())

    def poll(
        self, url: str, done: set[str], fail: set[str], *, total_timeout: float | None = None
    ) -> dict[str, Any]:
        """POST-as-GET `url` until its status is in `done` (returned) or `fail` (AcmeError).

        Waits between polls follow Retry-After, clamped to [poll_min, poll_max].
        """
        url = self._check(url, "poll")
        limit = self._poll_timeout if total_timeout is None else total_timeout
        deadline = self._clock() + limit
        while True:
            response = self.post(url, None, self._require_kid())
            document = _json_object(response, "status document")
            status = _string(document, "status", "status document")
            if status in done:
                return document
            if status in fail:
                raise AcmeError(_failure(url, status, document))
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            wait = min(max(retry_after or 0.0, self._poll_min), self._poll_max)
            if self._clock() + wait > deadline:
                raise AcmeError(
                    f"{url} is still {safe_text(status, 40)} after {limit:g} s; giving up"
                )
            self._sleep(wait)

    # -- certificate --

    def finalize(self, order: Order, csr_der: bytes) -> Order:
        """Submit the CSR and wait until the order is valid and has a certificate URL."""
        response = self.post(order.finalize, {"csr": b64url(csr_der)}, self._require_kid())
        final = self._order(order.url, _json_object(response, "order"))
        if final.status != "valid":
            self._log(f"order {order.url}: {final.status}, waiting")
            final = self._order(order.url, self.poll(order.url, {"valid"}, {"invalid"}))
        if final.certificate is None:
            raise AcmeError(f"order {order.url} is valid but has no certificate URL")
        return final

    def download(self, certificate_url: str) -> bytes:
        """The PEM certificate chain (at most 256 KiB, every block a certificate)."""
        response = self.post(
            certificate_url,
            None,
            self._require_kid(),
            accept="application/pem-certificate-chain",
            max_body=MAX_CERTIFICATE_BODY,
        )
        try:
            # Text and DER framing only: certproc parses and checks the chain.
            count = len(pem.certificate_ders(response.body, MAX_CERTIFICATE_BODY))
        except CertificateRejected as error:
            raise AcmeError(f"CA sent an unusable certificate chain: {error}") from None
        self._log(f"downloaded a chain of {count} certificate(s)")
        return response.body

    def revoke(self, cert_der: bytes, reason: int | None = None) -> None:
        revoke_cert = self.directory().revoke_cert
        if revoke_cert is None:
            raise AcmeError("the CA's directory offers no revokeCert")
        payload: dict[str, Any] = {"certificate": b64url(cert_der)}
        if reason is not None:
            if not isinstance(reason, int) or not 0 <= reason <= 10 or reason == 7:
                raise AcmeError(f"invalid revocation reason {reason!r} (RFC 5280: 0-6, 8-10)")
            payload["reason"] = reason
        self.post(revoke_cert, payload, self._require_kid())
        self._log("certificate revoked")

    # -- the whole issuance --

    def issue(
        self,
        names: list[str],
        csr_provider: Callable[[], bytes],
        publish: Callable[[str, str], None],
        withdraw: Callable[[str], None],
        thumbprint: str,
    ) -> bytes:
        """Order a certificate for `names`, prove control over http-01, return the PEM chain.

        `publish(token, key_authorization)` must make the response reachable at
        /.well-known/acme-challenge/<token>; `withdraw(token)` removes it again.
        """
        order = self.new_order(names)
        # One authorization per identifier (RFC 8555 section 7.1.3): more would
        # have us prove control of names nobody asked for, each one a challenge
        # file and up to poll_timeout of waiting.
        if len(order.authorizations) > len(names):
            raise AcmeError(
                f"CA sent an order with {len(order.authorizations)} authorizations "
                f"for {len(names)} names"
            )
        if order.status == "invalid":
            raise AcmeError(_failure(order.url, order.status, {"error": order.error}))
        if order.status == "pending":
            for url in order.authorizations:
                self._authorize(url, publish, withdraw, thumbprint)
        order = self._order(order.url, self.poll(order.url, {"ready", "valid"}, {"invalid"}))
        if order.status == "ready":
            order = self.finalize(order, csr_provider())
        if order.certificate is None:
            raise AcmeError(f"order {order.url} is valid but has no certificate URL")
        return self.download(order.certificate)

    def _authorize(
        self,
        url: str,
        publish: Callable[[str, str], None],
        withdraw: Callable[[str], None],
        thumbprint: str,
    ) -> None:
        authz = self.authorization(url)
        if authz.status == "valid":
            self._log(f"{authz.identifier}: already authorized")
            return
        if authz.status != "pending":
            raise AcmeError(f"authorization for {authz.identifier} is {authz.status}")
        challenge = authz.challenge
        if challenge is None:
            raise AcmeError(f"the CA offers no http-01 challenge for {authz.identifier}")
        try:
            key_authorization = validate_key_authorization(
                challenge.token, f"{challenge.token}.{thumbprint}"
            )
        except InputError as error:
            raise AcmeError(str(error)) from None
        publish(challenge.token, key_authorization)
        try:
            if challenge.status == "pending":
                self.respond(challenge.url)
            self.poll(authz.url, {"valid"}, set(AUTHZ_FAILED))
        finally:
            withdraw(challenge.token)
        self._log(f"{authz.identifier}: authorized")
