"""HTTPS to the CA through requests' public extension points.

`Transport.request` is the one way out: https only, to the addresses a
`Resolver` (dnsproc) gives, TLS verified for the URL's host name against the
trust anchors we were given and nothing else, proxies and .netrc ignored,
redirects refused unread, bodies bounded, and a wall-clock deadline per
request on top of the connect and read timeouts.

How, without touching requests' or urllib3's internals: `PinnedAdapter` is
an `HTTPAdapter` whose `init_poolmanager` builds a PoolManager with our
`SSLContext`, whose `get_connection_with_tls_context` returns the pool for
one resolved address with `server_hostname` set to the URL's host name, and
whose `send` tries the addresses in order.  The deadline reaches the sockets
through the context's `sslsocket_class`; redirects are caught in a response
hook, before requests would read their bodies.
"""

import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connectionpool import HTTPSConnectionPool

import letskencrypt
from letskencrypt.acme.messages import AcmeError
from letskencrypt.errors import LetskencryptError
from letskencrypt.validate import safe_text

MAX_BODY = 1024 * 1024


class Counts(threading.local):
    """What this thread has asked of CAs, for the run's metrics (netproc
    runs each certificate of a run of many in a thread of its own)."""

    requests: int = 0
    orders: int = 0


COUNTS = Counts()
MAX_ADDRESSES = 8

_URLLIB3_PREFIX = re.compile(r"^\w+\(host='[^']*', port=\d+\): ")
_READ_TIMEOUT = re.compile(r"read timeout=([0-9]+(?:\.[0-9]+)?)")


USER_AGENT = f"letskencrypt/{letskencrypt.__version__}"


class Resolver(Protocol):
    def resolve(self, host: str) -> list[str]:
        """Up to eight IP address strings for `host`."""
        ...


@dataclass(frozen=True)
class HttpResponse:
    """A fully read, size-bounded HTTP response."""

    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes


class _Redirected(Exception):
    """A 3xx answer, refused before anything read its body."""

    def __init__(self, status: int, location: str) -> None:
        super().__init__(status, location)
        self.status = status
        self.location = location


class _Unreachable(urllib3.exceptions.HTTPError):
    """No address of the host accepted a connection."""


class Addresses:
    """The resolver's addresses for each host, asked once per transport."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self._cache: dict[str, list[str]] = {}

    def of(self, host: str) -> list[str]:
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


# --- the wall-clock deadline --------------------------------------------------------


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        # The plain socket's shutdown: SSLSocket's would drop its TLS state
        # under the thread that is reading it.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """Cuts a transport's connections when a request outlives its deadline.

    Socket timeouts only bound each read, so a server dripping a byte at a
    time could hold us forever.  Every TLS socket of the transport registers
    here when its handshake starts; when a request's timer fires, they are all
    shut down (the others are idle in the pool, which then opens new ones).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._generation = 0
        self._timer: threading.Timer | None = None
        self.expired = False

    def start(self, seconds: float) -> None:
        with self._lock:
            self._generation += 1
            self.expired = False
            self._timer = threading.Timer(seconds, self._expire, (self._generation,))
            self._timer.daemon = True
            self._timer.start()

    def stop(self) -> None:
        with self._lock:
            self._generation += 1  # a timer already running finds itself stale
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
            if self.expired:
                _shutdown(sock)

    def _expire(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self.expired = True
            for sock in list(self._sockets):
                _shutdown(sock)


def _tls_context(ca_pem: bytes, watchdog: _Watchdog) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.hostname_checks_common_name = False
    try:
        context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError) as error:
        raise AcmeError(f"cannot load the CA trust anchors: {error}") from None

    class WatchedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            watchdog.watch(self)
            super().do_handshake(block)

    context.sslsocket_class = WatchedSocket
    return context


# --- requests' adapter -------------------------------------------------------------------


class PinnedAdapter(HTTPAdapter):
    """https-only adapter: the resolver's addresses, our TLS context, no proxies."""

    def __init__(self, addresses: Addresses, context: ssl.SSLContext, watchdog: _Watchdog) -> None:
        self.addresses = addresses
        self.context = context
        self._watchdog = watchdog
        super().__init__(pool_connections=4, pool_maxsize=2, max_retries=0)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        self.poolmanager = urllib3.PoolManager(
            num_pools=connections,
            maxsize=maxsize,
            block=block,
            ssl_context=self.context,
            cert_reqs="CERT_REQUIRED",
        )

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: Any = None,
        cert: Any = None,
        *,
        address: str | None = None,
    ) -> HTTPSConnectionPool:
        """The pool for `address` (default: the host's first) that verifies the host name."""
        host, port = _https_target(request.url or "")
        if address is None:
            address = self.addresses.of(host)[0]
        pool = self.poolmanager.connection_from_host(
            address, port, "https", pool_kwargs={"server_hostname": host}
        )
        return cast(HTTPSConnectionPool, pool)

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        """Send to the host's addresses in turn until one accepts the connection."""
        host, port = _https_target(request.url or "")
        headers = CaseInsensitiveDict(request.headers)
        headers["Host"] = host_header(host, port)  # the pool's host is an address
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        failures = []
        for address in self.addresses.of(host):
            if self._watchdog.expired:
                break
            pool = self.get_connection_with_tls_context(request, verify, address=address)
            try:
                raw = pool.urlopen(
                    request.method or "GET",
                    self.request_url(request, {}),
                    body=request.body,  # type: ignore[arg-type]
                    headers=headers,
                    redirect=False,
                    assert_same_host=False,
                    preload_content=False,
                    decode_content=False,
                    retries=False,
                    timeout=urllib3.Timeout(connect=connect, read=read),
                )
            except urllib3.exceptions.ConnectTimeoutError as error:  # before any byte was sent
                cause = error.__cause__
                reason = cause.strerror or str(cause) if isinstance(cause, OSError) else None
                failures.append(f"{address}: {reason or _describe(error)}")
                continue
            return self.build_response(request, raw)
        raise _Unreachable(f"cannot connect to {host} port {port} ({'; '.join(failures)})")


def host_header(host: str, port: int) -> str:
    """The Host header http.client would send for `host` (no brackets) and `port`."""
    bracketed = f"[{host}]" if ":" in host else host
    return bracketed if port == 443 else f"{bracketed}:{port}"


def _https_target(url: str) -> tuple[str, int]:
    parsed = urllib3.util.parse_url(url)
    if parsed.scheme != "https" or not parsed.host:
        raise AcmeError(f"refusing non-https URL {safe_text(url, 200)!r}")
    return parsed.host.strip("[]").rstrip("."), parsed.port or 443


def _refuse_redirect(response: requests.Response, **_kwargs: Any) -> requests.Response:
    # requests reads a 3xx body whole (uncapped) to offer Response.next, even
    # with allow_redirects=False: refuse it before that, unread.
    if 300 <= response.status_code < 400:
        response.close()
        raise _Redirected(response.status_code, response.headers.get("Location", ""))
    return response


# --- the transport ---------------------------------------------------------------------


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
        self._addresses = Addresses(resolver)
        self._watchdog = _Watchdog()
        self._timeouts = (connect_timeout, read_timeout)
        self._deadline = deadline
        self.max_body = max_body
        adapter = PinnedAdapter(
            self._addresses, _tls_context(ca_pem, self._watchdog), self._watchdog
        )
        self._session = requests.Session()
        self._session.trust_env = False  # no proxies or .netrc from the environment
        self._session.max_redirects = 0
        self._session.headers.clear()
        self._session.headers.update({"User-Agent": user_agent, "Accept-Encoding": "identity"})
        self._session.hooks["response"] = [_refuse_redirect]
        self._session.adapters.clear()
        self._session.mount("https://", adapter)

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
        self._addresses.of(parsed.host)  # resolver errors surface as themselves
        limit = self.max_body if max_body is None else max_body
        self._watchdog.start(self._deadline)
        response: requests.Response | None = None
        COUNTS.requests += 1
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
            data = _read_body(response, limit, f"{method} {shown}")
        except _Redirected as redirect:
            location = safe_text(redirect.location, 200)
            raise AcmeError(
                f"{method} {shown}: CA redirects ({redirect.status}) to "
                f"{location!r}; redirects are not followed"
            ) from None
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            OSError,
        ) as error:
            if self._watchdog.expired:
                raise AcmeError(
                    f"{method} {shown}: no answer within {self._deadline:g} s"
                ) from None
            raise AcmeError(f"{method} {shown}: {_describe(error)}") from None
        finally:
            self._watchdog.stop()
            if response is not None:
                response.close()
        if self._watchdog.expired:  # the body may look complete after the socket was cut
            raise AcmeError(f"{method} {shown}: no answer within {self._deadline:g} s")
        return HttpResponse(response.status_code, CaseInsensitiveDict(response.headers), data)


def _describe(error: BaseException) -> str:
    """The innermost useful message of a requests/urllib3 exception chain, in plain words."""
    while True:
        if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
            error = error.reason
        elif isinstance(error, (requests.RequestException, urllib3.exceptions.SSLError)) and (
            error.args and isinstance(error.args[0], BaseException)
        ):
            error = error.args[0]
        elif isinstance(error, urllib3.exceptions.ProtocolError) and (
            len(error.args) > 1 and isinstance(error.args[1], BaseException)
        ):
            error = error.args[1]  # ("Connection aborted.", the cause)
        else:
            break
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {error.verify_message}"
    # What these say of themselves is their class name and Python reprs.
    if isinstance(error, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(error, http.client.BadStatusLine):
        return "the answer is not HTTP (bad status line)"
    if isinstance(error, urllib3.exceptions.InvalidChunkLength):
        return "the answer's chunked encoding is broken"
    if isinstance(error, http.client.IncompleteRead):
        return "the connection closed before the answer was complete"
    if isinstance(error, urllib3.exceptions.ReadTimeoutError):
        seconds = _READ_TIMEOUT.search(str(error))
        return "read timed out" + (f" after {float(seconds[1]):g} s" if seconds else "")
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
