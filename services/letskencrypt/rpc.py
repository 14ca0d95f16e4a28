"""gRPC over unix sockets: the one place where roles serve and call each other.

Each edge of the process graph has its own directory holding one socket; only
the two roles of that edge are told about it (and, in containers, mount it).
Every server caps message sizes and concurrency, every call has a deadline,
and every failure surfaces as a one-line `RpcError` naming the peer.
"""

import contextlib
import hmac
import os
import signal
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc

from letskencrypt.constants import DEFAULT_READY_TIMEOUT
from letskencrypt.errors import LetskencryptError, plain_words
from letskencrypt.v1 import lifecycle_pb2, lifecycle_pb2_grpc


@dataclass(frozen=True)
class Edge:
    """One channel of the graph: `client` calls `server` on `<run_dir>/<name>/sock`."""

    name: str
    client: str
    server: str
    max_message: int


KIB = 1024
EDGES: dict[str, Edge] = {
    edge.name: edge
    for edge in (
        Edge("acct", "netproc", "acctproc", 64 * KIB),
        Edge("key", "netproc", "keyproc", 64 * KIB),
        # dns-01: up to 32 TXT values of 512 bytes; a DNS message of 4 KiB.
        Edge("dns", "netproc", "dnsproc", 24 * KIB),
        # dns-01: a signed update, or the server's answer of at most 4 KiB.
        Edge("chng", "netproc", "chngproc", 8 * KIB),
        # A kept chain travels from revokeproc to netproc, as on "cert".
        Edge("rvk", "netproc", "revokeproc", 320 * KIB),
        # The CA's chains, default and alternates, are capped at 1 MiB in all
        # (one at 256 KiB); leave room for framing.
        Edge("cert", "netproc", "certproc", 1088 * KIB),
        Edge("file", "certproc", "fileproc", 320 * KIB),
        Edge("keyinfo", "certproc", "keyproc", 16 * KIB),
        # The same KeyInfo for acctproc: it signs a finalize only for keyproc's key.
        Edge("keyacct", "acctproc", "keyproc", 16 * KIB),
    )
}

DEFAULT_DEADLINE = 30.0
RECONNECT_BACKOFF_MS = 20
MAX_RECONNECT_BACKOFF_MS = 500
# How often wait_ready tries a peer's socket with a plain connect().
READY_POLL = 0.002
# Set once this process is told to stop (SIGTERM): whoever still waits for a
# peer to come up gives up at once (the peer may never come: it is stopping too).
STOPPING = threading.Event()


class RpcError(LetskencryptError):
    """A call to another role failed; the message names the role and the reason."""


def socket_path(
    run_dir: str, edge: str, instance: int | None = None, part: int | None = None
) -> str:
    """The edge's socket: `<run_dir>/<edge>/sock`; `<edge>/<instance>/sock`
    for the certificate numbered `instance` (its keyproc in a native run of
    many certificates; a container pod that renews every certificate of a
    configuration file one after another, container.py), so that a client
    for one certificate never reaches a server of another; `<edge>/p<part>/
    sock` for the server of part of a run's certificates (one acctproc per
    account, see Certificate).  Each server's sockets have a directory of
    their own: its sandbox lets it make sockets there only, never where
    another certificate's or account's server listens (sandbox.profile)."""
    if part is not None:
        return os.path.join(run_dir, edge, f"p{part}", "sock")
    if instance is not None:
        return os.path.join(run_dir, edge, str(instance), "sock")
    return os.path.join(run_dir, edge, "sock")


def socket_dir(
    run_dir: str, edge: str, instance: int | None = None, part: int | None = None
) -> str:
    """The directory of the edge's socket (socket_path)."""
    return os.path.dirname(socket_path(run_dir, edge, instance, part))


def make_socket_dir(path: str) -> None:
    """A certificate's socket directory in a container's edge volume (the
    native supervisor makes them all beforehand, supervisor.make_run_dir):
    open to the client's container, the only other one mounting the volume."""
    if not os.path.isdir(path):
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o755)  # noqa: S103 - see above


def edges_served_by(role: str) -> list[Edge]:
    return [edge for edge in EDGES.values() if edge.server == role]


def edges_called_by(role: str) -> list[Edge]:
    return [edge for edge in EDGES.values() if edge.client == role]


# --- edge tokens -----------------------------------------------------------------
#
# In native mode the unprivileged roles share one user, so file permissions
# cannot stop a role from connecting to a socket of an edge it is not on.
# The supervisor therefore gives each edge a random token, known only to the
# edge's two roles; the server refuses every call without it.  In containers
# each edge's socket lives on a volume only its two ends mount, and no token
# is configured.
#
# The other way round, a role that binds a socket where the client expects its
# peer's (the peer died, or a namespace was not set up) must not be believed:
# each edge has a second secret, the server token, which the server sends in
# the initial metadata of every reply to an authenticated caller (never to a
# stranger, who could replay it), and the client checks before it uses the
# reply.

TOKEN_METADATA = "letskencrypt-edge-token"  # noqa: S105 - a header name
SERVER_TOKEN_METADATA = "letskencrypt-server-token"  # noqa: S105 - a header name
_edge_tokens: dict[str, str] = {}
_server_tokens: dict[str, str] = {}
# Failures that come from our side of the connection, not from a reply: they
# carry no metadata, and call() reports them without the peer's details.
LOCAL_FAILURES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


def use_edge_tokens(
    tokens: Mapping[str, str], server_tokens: Mapping[str, str] | None = None
) -> None:
    """Remember this role's edge tokens and server tokens (from its configuration)."""
    _edge_tokens.clear()
    _edge_tokens.update(tokens)
    _server_tokens.clear()
    _server_tokens.update(server_tokens or {})


@dataclass(frozen=True)
class Certificate:
    """One certificate of a role process that serves every certificate of a
    run (host.py): its edges' tokens, and which edges have one server for
    every certificate (their socket is `sock`, a call names its certificate
    by its token) rather than one per certificate (`<instance>/sock`)."""

    instance: int
    edge_tokens: Mapping[str, str]
    server_tokens: Mapping[str, str]
    shared_edges: frozenset[str]
    # The shared edges whose certificates are split among several servers
    # (RoleSpec.one_process_per), and which of them serves this one.
    parts: Mapping[str, int] = field(default_factory=dict)


class _CurrentCertificate(threading.local):
    certificate: Certificate | None = None


_current = _CurrentCertificate()


@contextlib.contextmanager
def for_certificate(certificate: Certificate) -> Iterator[None]:
    """In this thread, connect and serve as `certificate`'s: its tokens
    instead of the process's (see host.py)."""
    previous = _current.certificate
    _current.certificate = certificate
    try:
        yield
    finally:
        _current.certificate = previous


def _edge_token(edge: str) -> str | None:
    certificate = _current.certificate
    return (certificate.edge_tokens if certificate else _edge_tokens).get(edge)


def _server_token(edge: str) -> str | None:
    certificate = _current.certificate
    return (certificate.server_tokens if certificate else _server_tokens).get(edge)


def _refuse_stranger(_request: Any, context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "not a peer on this edge")


class _RequireToken(grpc.ServerInterceptor):
    def __init__(self, token: str, server_token: str | None = None) -> None:
        self._token = token.encode()
        self._server_token = server_token
        self._refusal = grpc.unary_unary_rpc_method_handler(_refuse_stranger)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        metadata = dict(handler_call_details.invocation_metadata or ())
        supplied = str(metadata.get(TOKEN_METADATA, "")).encode()
        if not hmac.compare_digest(supplied, self._token):
            return self._refusal
        handler = continuation(handler_call_details)
        if handler is None or self._server_token is None or handler.unary_unary is None:
            return handler
        return _authenticated(handler, self._server_token)


def _authenticated(handler: grpc.RpcMethodHandler, server_token: str) -> grpc.RpcMethodHandler:
    """`handler`, sending the server token before anything else of the reply."""
    behaviour = handler.unary_unary

    def send_token_first(request: Any, context: grpc.ServicerContext) -> Any:
        context.send_initial_metadata(((SERVER_TOKEN_METADATA, server_token),))
        return behaviour(request, context)

    return grpc.unary_unary_rpc_method_handler(
        send_token_first,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


class _SendToken(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, edge: str, token: str, server_token: str | None) -> None:
        self._edge = edge
        self._token = token
        self._server_token = server_token.encode() if server_token else None

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        metadata = [*(client_call_details.metadata or ()), (TOKEN_METADATA, self._token)]
        outcome = continuation(_CallDetails(client_call_details, metadata), request)
        if self._server_token is not None:
            self._check_server(outcome)
        return outcome

    def _check_server(self, outcome: Any) -> None:
        """Raise RpcError unless the reply carries the edge's server token."""
        code = outcome.code() if hasattr(outcome, "code") else None
        if code in LOCAL_FAILURES:
            return
        try:
            received = dict(outcome.initial_metadata() or ())
        except Exception:  # no reply to speak of
            received = {}
        supplied = received.get(SERVER_TOKEN_METADATA, "")
        supplied = supplied.encode() if isinstance(supplied, str) else bytes(supplied)
        assert self._server_token is not None
        if not hmac.compare_digest(supplied, self._server_token):
            edge = EDGES[self._edge]
            raise RpcError(f"{edge.server} on edge {edge.name} failed to authenticate")


# --- server side -----------------------------------------------------------------


class Stopper(lifecycle_pb2_grpc.LifecycleServicer):
    """Serves Lifecycle.Stop; `wait()` returns once the run is over."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.failed = False

    def Stop(
        self, request: lifecycle_pb2.StopRequest, context: grpc.ServicerContext
    ) -> lifecycle_pb2.StopReply:
        self.stop(failed=request.failed)
        return lifecycle_pb2.StopReply()

    def stop(self, failed: bool) -> None:
        self.failed = self.failed or failed
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


Registrar = Callable[[Any, grpc.Server], None]


def serve(
    run_dir: str,
    edge_name: str,
    servicers: Iterable[tuple[Registrar, Any]],
    stopper: Stopper,
    instance: int | None = None,
) -> grpc.Server:
    """Bind `servicers` (plus Lifecycle) on the edge's socket and start serving."""
    token = _edge_token(edge_name)
    server = _new_server(
        EDGES[edge_name], [_RequireToken(token, _server_token(edge_name))] if token else []
    )
    for register, servicer in servicers:
        register(servicer, server)
    lifecycle_pb2_grpc.add_LifecycleServicer_to_server(stopper, server)
    _listen(server, socket_path(run_dir, edge_name, instance))
    return server


def _new_server(
    edge: Edge,
    interceptors: Sequence[grpc.ServerInterceptor],
    workers: int = 2,
    concurrent_rpcs: int = 4,
) -> grpc.Server:
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=edge.name),
        options=[
            ("grpc.max_receive_message_length", edge.max_message),
            ("grpc.max_send_message_length", edge.max_message),
            ("grpc.max_metadata_size", 8 * KIB),
        ],
        maximum_concurrent_rpcs=concurrent_rpcs,
        interceptors=interceptors,
    )


def _listen(server: grpc.Server, path: str) -> None:
    _bind(server, path)
    server.start()


def _bind(server: grpc.Server, path: str) -> None:
    make_socket_dir(os.path.dirname(path))
    if os.path.lexists(path):
        os.unlink(path)
    try:
        server.add_insecure_port(f"unix:{path}")
    except RuntimeError:
        # gRPC keeps the reason to its own log (see launch.GRPC_QUIET).
        raise RpcError(
            f"cannot listen on {path} (is {os.path.dirname(path)} writable by this role?)"
        ) from None


_after_serving: Callable[[], object] | None = None
# Whether this process has bound its sockets (serve_until_stopped).
_served = False


def after_serving(hook: Callable[[], object] | None) -> None:
    """Have serve_until_stopped call `hook` once every socket is bound
    (process.confine sets it: the sandbox's second stage)."""
    global _after_serving  # one per process, like the edge tokens
    _after_serving = hook


def has_served() -> bool:
    """Whether this process bound its sockets (and so was reachable)."""
    return _served


def serve_until_stopped(
    run_dir: str,
    services: dict[str, list[tuple[Registrar, Any]]],
    instance: int | None = None,
) -> bool:
    """Serve each edge's servicers until told to stop (Lifecycle.Stop or SIGTERM).

    `instance`: the certificate's number in a container pod's configuration
    file (see socket_path); None for a single certificate.
    Returns whether the run failed, so roles can clean up accordingly.
    """
    stopper = Stopper()

    def on_sigterm(_signum: int, _frame: object) -> None:
        STOPPING.set()
        stopper.stop(failed=True)

    signal.signal(signal.SIGTERM, on_sigterm)
    if len(services) > 1 and all(_edge_token(edge) for edge in services):
        servers = [_serve_by_token(run_dir, services, stopper, instance)]
    else:
        servers = [
            serve(run_dir, edge, servicers, stopper, instance)
            for edge, servicers in services.items()
        ]
    served()
    return _wait_and_stop(stopper, servers)


def _serve_by_token(
    run_dir: str, services: "Services", stopper: Stopper, instance: int | None
) -> grpc.Server:
    """Natively, a role serving several edges (keyproc) needs no server per
    edge: one server listens on each edge's socket, and a call's edge token
    says which edge's servicers it reaches (each edge's size cap kept)."""
    router = _EdgeRouter()
    for edge, servicers in services.items():
        token = _edge_token(edge)
        assert token is not None
        router.edges.append((token.encode(), edge, _handlers(servicers, stopper)))
    largest = max((EDGES[edge] for edge in services), key=lambda edge: edge.max_message)
    server = _new_server(largest, [], concurrent_rpcs=4 * len(services))
    server.add_generic_rpc_handlers((router,))
    for edge in services:
        _bind(server, socket_path(run_dir, edge, instance))
    server.start()
    return server


class _EdgeRouter(grpc.GenericRpcHandler):
    """The one server of _serve_by_token: a call goes to the servicers of
    the edge whose token it carries, with that edge's server token; one
    without a known token gets UNAUTHENTICATED, one larger than its edge
    allows RESOURCE_EXHAUSTED."""

    def __init__(self) -> None:
        self.edges: list[tuple[bytes, str, list[grpc.GenericRpcHandler]]] = []

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        metadata = dict(handler_call_details.invocation_metadata or ())
        supplied = str(metadata.get(TOKEN_METADATA, "")).encode()
        found = None
        for token, edge, handlers in self.edges:  # every one compared: no early exit to time
            if hmac.compare_digest(supplied, token):
                found = (edge, handlers)
        if found is None:
            return grpc.unary_unary_rpc_method_handler(_refuse_stranger)
        edge, handlers = found
        method = _method_of(handlers, handler_call_details)
        if method is None:
            return None
        limit = EDGES[edge].max_message
        server_token = _server_token(edge)

        def on_edge(request: bytes, context: grpc.ServicerContext) -> Any:
            if len(request) > limit:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than the edge allows")
            return _invoke(method, request, context, server_token)

        return grpc.unary_unary_rpc_method_handler(on_edge)


def served() -> None:
    """Every socket of this process is bound: the after_serving hook now."""
    global _served  # one per process, like the edge tokens
    _served = True
    if _after_serving is not None:
        _after_serving()


def _wait_and_stop(stopper: Stopper, servers: list[grpc.Server]) -> bool:
    while not stopper.wait(0.5):
        pass
    for server in servers:
        server.stop(grace=1.0).wait(2.0)
    return stopper.failed


LIFECYCLE_PREFIX = "/letskencrypt.v1.Lifecycle/"


class _Refuse(grpc.GenericRpcHandler):
    """Answers every method but Lifecycle's with INVALID_ARGUMENT and `message`."""

    def __init__(self, message: str) -> None:
        def refuse(_request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

        self._refusal = grpc.unary_unary_rpc_method_handler(refuse)

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method.startswith(LIFECYCLE_PREFIX):
            return None  # Lifecycle's own handler: Stop ends the refusal
        return self._refusal


def _add_refusal(message: str, server: grpc.Server) -> None:
    server.add_generic_rpc_handlers((_Refuse(message),))


def refuse_until_stopped(
    run_dir: str, edges: Iterable[str], message: str, instance: int | None = None
) -> bool:
    """Bind the edges' sockets and answer every call with `message` (one
    line: why this role cannot serve), until told to stop.

    For a role that failed to start in a container pod that renews several
    certificates one after another: its client learns why at once and ends
    that certificate's run, instead of waiting for a server that never comes.
    Returns whether the run failed, as serve_until_stopped does.
    """
    stopper = Stopper()

    def on_sigterm(_signum: int, _frame: object) -> None:
        STOPPING.set()
        stopper.stop(failed=True)

    signal.signal(signal.SIGTERM, on_sigterm)
    servers = [serve(run_dir, edge, [(_add_refusal, message)], stopper, instance) for edge in edges]
    return _wait_and_stop(stopper, servers)


Services = dict[str, list[tuple[Registrar, Any]]]


@dataclass
class Serving:
    """What a role serves for one certificate once it is confined, and
    what it does when that ends (called with whether the run failed)."""

    services: Services
    finish: Callable[[bool], object] = lambda _failed: None


class _Collector:
    """Stands in for a grpc.Server while a generated add_*_to_server
    registers a servicer: keeps its handlers for a _Router."""

    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, _service: str, _handlers: object) -> None:
        pass  # the generic handler above serves the same methods


def _handlers(
    servicers: list[tuple[Registrar, Any]], stopper: Stopper
) -> list[grpc.GenericRpcHandler]:
    """The handlers of `servicers` and of Lifecycle (Stop sets `stopper`),
    for a router to pick from (_method_of)."""
    collector = _Collector()
    for register, servicer in servicers:
        register(servicer, collector)
    lifecycle_pb2_grpc.add_LifecycleServicer_to_server(stopper, collector)
    return collector.handlers


@dataclass
class _Route:
    token: bytes
    certificate: Certificate
    handlers: list[grpc.GenericRpcHandler] = field(default_factory=list)
    # Set once the certificate's servicers are in `handlers`.
    ready: threading.Event = field(default_factory=threading.Event)


# How long a call to a role serving many certificates waits for its
# certificate's turn there (the role reads the certificate's tokens a moment
# after its caller may have); then a token it does not know is refused.
TURN_WAIT = DEFAULT_READY_TIMEOUT


class _Router(grpc.GenericRpcHandler):
    """One edge's server for many certificates: a call goes to the
    servicers of the certificate whose edge token it carries, and runs as
    that certificate's (for_certificate).  The call's bytes are decoded by
    that certificate's handler, in a worker thread, once its route is
    there; a call with a token no certificate has gets UNAUTHENTICATED, as
    from a one-certificate server."""

    def __init__(self, edge: str) -> None:
        self.edge = edge
        self.routes: dict[int, _Route] = {}
        self.changed = threading.Condition()

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        metadata = dict(handler_call_details.invocation_metadata or ())
        supplied = str(metadata.get(TOKEN_METADATA, "")).encode()

        def dispatch(request: bytes, context: grpc.ServicerContext) -> Any:
            return self.dispatch(supplied, handler_call_details, request, context)

        return grpc.unary_unary_rpc_method_handler(dispatch)

    def find(self, supplied: bytes, deadline: float) -> _Route | None:
        with self.changed:
            while True:
                found = None
                for route in self.routes.values():  # every one compared: no early exit to time
                    if hmac.compare_digest(supplied, route.token):
                        found = route
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    return found
                self.changed.wait(left)

    def dispatch(
        self,
        supplied: bytes,
        details: grpc.HandlerCallDetails,
        request: bytes,
        context: grpc.ServicerContext,
    ) -> Any:
        deadline = time.monotonic() + TURN_WAIT
        route = self.find(supplied, deadline)
        if route is None:
            _refuse_stranger(request, context)
        assert route is not None
        if not route.ready.wait(max(deadline - time.monotonic(), 0.0)):
            context.abort(grpc.StatusCode.UNAVAILABLE, "not ready for this certificate")
        method = _method_of(route.handlers, details)
        if method is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "no such method")
        assert method is not None
        server_token = route.certificate.server_tokens.get(self.edge)
        with for_certificate(route.certificate):
            return _invoke(method, request, context, server_token)


def _method_of(
    handlers: list[grpc.GenericRpcHandler], details: grpc.HandlerCallDetails
) -> grpc.RpcMethodHandler | None:
    """The unary handler of the method called, from a _Collector's handlers."""
    for handler in handlers:
        method = handler.service(details)
        if method is not None and method.unary_unary is not None:
            return method
    return None


def _invoke(
    method: grpc.RpcMethodHandler,
    request: bytes,
    context: grpc.ServicerContext,
    server_token: str | None,
) -> Any:
    """Call `method` on the call's raw bytes, sending the server token first."""
    if server_token:
        context.send_initial_metadata(((SERVER_TOKEN_METADATA, server_token),))
    decode, encode = method.request_deserializer, method.response_serializer
    reply = method.unary_unary(decode(request) if decode else request, context)
    return encode(reply) if encode else reply


class SharedServers:
    """A role's servers when it serves every certificate of a run (host.py):
    one gRPC server per edge, on the edge's `sock` (`p<part>/sock` when
    `part` numbers this process among several of its role), bound once; each
    certificate is expected as soon as its tokens come, served once its
    servicers are built, and removed when its run ends."""

    # Certificates in flight at once call at once.
    MAX_WORKERS = 16
    MAX_CONCURRENT_RPCS = 64

    def __init__(self, run_dir: str, edges: Iterable[str], part: int | None = None) -> None:
        self.routers = {edge: _Router(edge) for edge in edges}
        self.servers: list[grpc.Server] = []
        for edge, router in self.routers.items():
            server = _new_server(EDGES[edge], [], self.MAX_WORKERS, self.MAX_CONCURRENT_RPCS)
            server.add_generic_rpc_handlers((router,))
            _listen(server, socket_path(run_dir, edge, part=part))
            self.servers.append(server)

    def expect(self, certificate: Certificate) -> None:
        """Calls with the certificate's tokens wait for add() from now on."""
        for edge, router in self.routers.items():
            token = certificate.edge_tokens.get(edge)
            if not token:
                raise RpcError(f"no token for certificate {certificate.instance} on edge {edge}")
            with router.changed:
                router.routes[certificate.instance] = _Route(token.encode(), certificate)
                router.changed.notify_all()

    def add(
        self,
        instance: int,
        stopper: Stopper,
        services: Services | None = None,
        refusal: str | None = None,
    ) -> None:
        """Serve `services` for the expected certificate `instance` (or, with
        `refusal`, answer its every call but Stop with that one line); Stop
        sets `stopper`."""
        for edge, router in self.routers.items():
            servicers = (services or {}).get(edge, [])
            if refusal is not None:
                servicers = [(_add_refusal, refusal)]
            with router.changed:
                route = router.routes[instance]
            route.handlers = _handlers(servicers, stopper)
            route.ready.set()

    def remove(self, instance: int) -> None:
        for router in self.routers.values():
            with router.changed:
                router.routes.pop(instance, None)

    def stop(self) -> None:
        for server in self.servers:
            server.stop(grace=1.0).wait(2.0)


class RoleLog(Protocol):
    """What a servicer logs to (context.Logger is one)."""

    def error(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...

    def debug(self, message: str) -> None: ...


class Servicer:
    """The base of every role's servicer, next to the generated one.

    `log` is the role's log: the servicer's own messages go there, and so
    does every unexpected error that `guarded` hides from the caller.
    """

    def __init__(self, log: RoleLog) -> None:
        self.log = log


AnyServicer = TypeVar("AnyServicer", bound=Servicer)
Request = TypeVar("Request")
Reply = TypeVar("Reply")
Handler = Callable[[AnyServicer, Request, grpc.ServicerContext], Reply]


def guarded(
    handler: Handler[AnyServicer, Request, Reply],
) -> Handler[AnyServicer, Request, Reply]:
    """Turn our errors into INVALID_ARGUMENT with their message; hide anything
    else behind INTERNAL, and log it to the servicer's log."""

    def wrapper(self: AnyServicer, request: Request, context: grpc.ServicerContext) -> Reply:
        try:
            return handler(self, request, context)
        except LetskencryptError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except OSError as error:
            # A local problem (a full disk, a closed directory), not a bug:
            # the caller reports it, in plain words.
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, plain_words(error))
        except Exception as error:
            self.log.error(f"internal error in {handler.__name__}: {plain_words(error)}")
            context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: context.abort raises")

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


# --- client side -----------------------------------------------------------------


# The socket of each channel this process has made (see wait_ready).
_sockets: "weakref.WeakKeyDictionary[grpc.Channel, str]" = weakref.WeakKeyDictionary()


# A role serving many certificates: one connection per shared socket,
# which each certificate's channel wraps with its own token (see connect).
_shared_connections: dict[str, grpc.Channel] = {}
_shared_lock = threading.Lock()
# The channels that wrap one of those: release() leaves them open.
_wrapping_shared: "weakref.WeakSet[grpc.Channel]" = weakref.WeakSet()


def connect(run_dir: str, edge_name: str, instance: int | None = None) -> grpc.Channel:
    """A channel to the edge's server (of certificate `instance`, see socket_path;
    for a certificate of a role serving many, see Certificate: a channel to
    a shared edge shares the process's one connection to it)."""
    certificate = _current.certificate
    shared = certificate is not None and edge_name in certificate.shared_edges
    if shared:
        assert certificate is not None
        path = socket_path(run_dir, edge_name, part=certificate.parts.get(edge_name))
    else:
        path = socket_path(run_dir, edge_name, instance)
    if shared:
        with _shared_lock:
            connection = _shared_connections.get(path)
            if connection is None:
                connection = _shared_connections[path] = _channel(edge_name, path)
    else:
        connection = _channel(edge_name, path)
    channel = connection
    token = _edge_token(edge_name)
    if token:
        channel = grpc.intercept_channel(
            connection, _SendToken(edge_name, token, _server_token(edge_name))
        )
    if shared:
        _wrapping_shared.add(channel)
    _sockets[channel] = path
    return channel


def _channel(edge_name: str, path: str) -> grpc.Channel:
    edge = EDGES[edge_name]
    return grpc.insecure_channel(
        f"unix:{path}",
        options=[
            ("grpc.max_receive_message_length", edge.max_message),
            ("grpc.max_send_message_length", edge.max_message),
            ("grpc.enable_retries", 0),
            # The peer is a local process that is starting: ask again soon,
            # not after gRPC's default first backoff of one second.
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ],
    )


def release(channel: grpc.Channel) -> None:
    """Done with `channel`: closed, unless its connection is shared."""
    if channel not in _wrapping_shared:
        channel.close()


def wait_ready(
    channels: dict[str, grpc.Channel], timeout: float = DEFAULT_READY_TIMEOUT
) -> None:
    """Block until every channel's server is up, or fail naming the missing role.

    First, until each server's socket accepts a plain connect() (tried every
    READY_POLL; the channels, not used yet, stay idle meanwhile); only then
    does gRPC connect.  Asked at once, gRPC would find a server that is still
    starting absent, back off, and notice it 50 to 150 ms after it came up.
    """
    deadline = time.monotonic() + timeout
    starting = [path for channel in channels.values() if (path := _sockets.get(channel))]
    while starting and time.monotonic() < deadline:
        starting = [path for path in starting if not _accepts(path)]
        if starting and STOPPING.wait(READY_POLL):
            raise RpcError("stopped while waiting for its peers to come up")
    pending = {name: grpc.channel_ready_future(ch) for name, ch in channels.items()}
    for name, ready in pending.items():
        try:
            ready.result(timeout=max(deadline - time.monotonic(), 0.0))
        except grpc.FutureTimeoutError:
            raise RpcError(
                f"{EDGES[name].server} did not come up within {timeout:.0f} s"
            ) from None


def _accepts(path: str) -> bool:
    """Whether a server listens on the unix socket `path` (the connection
    is closed at once; the server sees one that never sent a request)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def call(
    method: Callable[..., Reply],
    request: Any,
    *,
    peer: str,
    timeout: float = DEFAULT_DEADLINE,
) -> Reply:
    """Call one RPC with a deadline; a failure becomes an RpcError naming `peer`."""
    try:
        return method(request, timeout=timeout, wait_for_ready=True)
    except grpc.RpcError as error:
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else str(error)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise RpcError(f"{peer}: {details}") from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise RpcError(f"{peer} did not answer within {timeout:.0f} s") from None
        if code == grpc.StatusCode.UNAVAILABLE:
            raise RpcError(f"{peer} is not reachable (did it exit?)") from None
        name = code.name if code is not None else "error"
        raise RpcError(f"{peer}: {name.lower()}: {details}") from None


def stop_peer(channel: grpc.Channel, peer: str, failed: bool, timeout: float = 5.0) -> None:
    """Tell a role the run is over; a role already gone is not an error."""
    stub = lifecycle_pb2_grpc.LifecycleStub(channel)
    # RpcError: whoever answered was not the peer; it is stopped or gone anyway.
    with contextlib.suppress(grpc.RpcError, RpcError):
        stub.Stop(lifecycle_pb2.StopRequest(failed=failed), timeout=timeout)
