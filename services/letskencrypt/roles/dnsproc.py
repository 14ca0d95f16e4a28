"""dnsproc: turns a host name into at most eight addresses for netproc,
reads a name's TXT records (a dns-persist-01 record before netproc answers
that challenge, a dns-01 record being served), finds a name's zone and its
authoritative servers, and carries chngproc's signed dns-01 updates to the
DNS server.

Holds: nothing but the system's resolver configuration.
Network: DNS only (in containers it shares netproc's namespace): UDP to any
server and port, TCP to port 53.
Serves: Resolver on the `dns` edge.  It answers questions and carries
messages it cannot change (an update is TSIG-signed by chngproc, whose
check of the signed answer is what counts), nothing else: a TXT lookup is a
query, through the system's resolver or, when netproc names a server
(--dns-check-server), to that address directly without recursion.  What it
hands back is bounded (MAX_TXT_VALUES values of at most MAX_TXT_VALUE bytes,
longer ones left out; 8 addresses; 4 KiB of DNS message; a few seconds).
The queries are dnsquery.py's, loaded with dnspython by the first one
asked: the runs that ask none do without it (about 0.1 s to load).
"""
import ipaddress
import re
import socket
import time
import types
from collections.abc import Callable

import grpc

from letskencrypt import process, rpc
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import InputError
from letskencrypt.settings import DnsprocSettings
from letskencrypt.spec import Fs, Grant, Network, RoleSpec
from letskencrypt.v1 import resolver_pb2, resolver_pb2_grpc
from letskencrypt.validate import dns_server_text

# The resolver's configuration, for getaddrinfo.
RESOLVER_FILES = (
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/host.conf",
)
SPEC = RoleSpec(
    name="dnsproc",
    summary="resolves the CA's host name for netproc (joins netproc's network namespace)",
    settings=DnsprocSettings,
    serves=("dns",),
    paths=lambda _settings: [Grant(path, Fs.READ_FILE) for path in RESOLVER_FILES],
    network=Network.DNS,
    # The DNS challenges' queries (dnsquery.py).
    wheels=("dnspython",),
)

MAX_ADDRESSES = 8
DNS_PORT = 53
LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
# A last label the C library's inet_aton would take for a number.
NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


def check_host(host: str) -> str:
    """A host name as it may appear in an https URL: an IP literal or LDH labels
    (one label allowed, for `localhost` and internal CAs)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower().removesuffix(".")
    if not 0 < len(name) <= 253:
        raise InputError("host name is empty or longer than 253 characters")
    labels = name.split(".")
    for label in labels:
        if not 0 < len(label) <= 63 or not set(label) <= LDH:
            raise InputError(f"invalid host name {host[:100]!r}")
        if label.startswith("-") or label.endswith("-"):
            raise InputError(f"invalid host name {host[:100]!r}")
    if NUMERIC_LABEL.fullmatch(labels[-1]):
        # 127.1, 0x7f.1, 2130706433: the C resolver reads these as IPv4
        # addresses, which nothing else here would call them.
        raise InputError(f"host name {host[:100]!r} ends in a number")
    return name


def resolve(host: str) -> list[str]:
    try:
        answers = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        # netproc adds the host name: say only why.
        raise InputError(str(error.strerror)) from None
    addresses: list[str] = []
    for family, _type, _proto, _name, sockaddr in answers:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise InputError(f"{host} has no IPv4 or IPv6 address")
    return addresses[:MAX_ADDRESSES]


def check_txt_name(name: str) -> str:
    """A TXT record's owner: LDH labels, with "_" allowed (_validation-persist)."""
    labels = name.lower().removesuffix(".").split(".")
    for label in labels:
        if not 0 < len(label) <= 63 or not set(label) <= LDH | {"_"}:
            raise InputError(f"invalid TXT record name {name[:100]!r}")
    if len(".".join(labels)) > 253 or len(labels) < 2:
        raise InputError(f"invalid TXT record name {name[:100]!r}")
    return ".".join(labels) + "."


def check_server(server: str, port: int) -> tuple[str, int]:
    try:
        address = str(ipaddress.ip_address(server))
    except ValueError:
        raise InputError("the DNS server to ask is not an IP address") from None
    if not 0 <= port <= 65535:
        raise InputError("the DNS server's port is not a port")
    return address, port or DNS_PORT


MAX_MESSAGE = 4096
EXCHANGE_TIMEOUT = 5.0


def exchange(message: bytes, server: str, port: int) -> bytes:
    """Send a DNS message over UDP; the answer with its id (from that server)."""
    if not 12 <= len(message) <= MAX_MESSAGE:
        raise InputError(f"a DNS message is 12 to {MAX_MESSAGE} bytes")
    where = dns_server_text(server, port)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    deadline = time.monotonic() + EXCHANGE_TIMEOUT
    with socket.socket(family, socket.SOCK_DGRAM) as udp:
        try:
            udp.connect((server, port))
            udp.send(message)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise InputError(
                        f"DNS server {where} did not answer within {EXCHANGE_TIMEOUT:g} s"
                    )
                udp.settimeout(left)
                try:
                    answer = udp.recv(MAX_MESSAGE + 1)
                except TimeoutError:
                    continue
                if len(answer) >= 12 and answer[:2] == message[:2]:
                    break
        except OSError as error:
            raise InputError(f"DNS server {where}: {error.strerror or error}") from None
    if len(answer) > MAX_MESSAGE:
        raise InputError(f"DNS server {where}: an answer larger than {MAX_MESSAGE} bytes")
    if answer[2] & 0x02:  # TC
        raise InputError(f"DNS server {where}: a truncated answer to an update")
    return answer


def dnsquery() -> types.ModuleType:
    """The DNS challenges' queries, with dnspython, loaded by the first run
    that asks one."""
    from letskencrypt import dnsquery

    return dnsquery


class ResolverService(rpc.Servicer, resolver_pb2_grpc.ResolverServicer):
    @rpc.guarded
    def Resolve(
        self, request: resolver_pb2.ResolveRequest, context: grpc.ServicerContext
    ) -> resolver_pb2.ResolveReply:
        host = check_host(request.host)
        addresses = resolve(host)
        self.log.debug(f"{host} -> {' '.join(addresses)}")
        return resolver_pb2.ResolveReply(addresses=addresses)

    @rpc.guarded
    def Txt(
        self, request: resolver_pb2.TxtRequest, context: grpc.ServicerContext
    ) -> resolver_pb2.TxtReply:
        name = check_txt_name(request.name)
        server, port = check_server(request.server, request.port) if request.server else ("", 0)
        values = dnsquery().lookup_txt(name, server, port)
        self.log.debug(f"TXT {name}: {len(values)} record(s)")
        return resolver_pb2.TxtReply(values=values)

    @rpc.guarded
    def Authoritative(
        self, request: resolver_pb2.AuthoritativeRequest, context: grpc.ServicerContext
    ) -> resolver_pb2.AuthoritativeReply:
        name = check_txt_name(request.name)
        server, port = check_server(request.server, request.port) if request.server else ("", 0)
        zone, servers = dnsquery().authoritative(name, server, port)
        self.log.debug(f"{name}: zone {zone}, servers {' '.join(servers)}")
        return resolver_pb2.AuthoritativeReply(zone=zone, servers=servers)

    @rpc.guarded
    def Exchange(
        self, request: resolver_pb2.ExchangeRequest, context: grpc.ServicerContext
    ) -> resolver_pb2.ExchangeReply:
        if not request.server:
            raise InputError("an update goes to a DNS server: none was named")
        server, port = check_server(request.server, request.port)
        return resolver_pb2.ExchangeReply(answer=exchange(request.message, server, port))


def prepare(config: RoleConfig, log: Logger) -> Callable[[], rpc.Serving]:
    """Nothing to open: what it serves, once confined."""
    return lambda: rpc.Serving(
        {"dns": [(resolver_pb2_grpc.add_ResolverServicer_to_server, ResolverService(log))]}
    )


def run(config: RoleConfig, log: Logger) -> int:
    serving = prepare(config, log)
    process.confine(config)
    return process.serve(config, serving())

