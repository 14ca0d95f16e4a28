"""dnsproc: turns a host name into at most eight addresses for netproc, and
for dns-01 reads TXT records, finds a zone's authoritative servers and
carries chngproc's signed updates to the DNS server.

Holds: nothing but the system's resolver configuration.
Network: DNS only (in containers it shares netproc's namespace): UDP to any
server and port, TCP to port 53.
Serves: Resolver on the `dns` edge.  It answers questions and carries
messages it cannot change (an update is TSIG-signed by chngproc, whose
check of the signed answer is what counts), nothing else.  Every answer is
bounded: 8 addresses, 32 TXT values of 512 bytes (dnsquery.py, loaded with
dnspython by the first dns-01 question only), 4 KiB of DNS message, a few
seconds.
"""

import ipaddress
import re
import socket
import time
import types

import grpc

from letskencrypt import process, rpc
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import InputError
from letskencrypt.settings import DnsprocSettings
from letskencrypt.spec import Fs, Grant, Network, RoleSpec
from letskencrypt.v1 import resolver_pb2, resolver_pb2_grpc
from letskencrypt.validate import dns_server_text, safe_text

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
    # dns-01: TXT queries, zones and their servers.
    wheels=("dnspython",),
)

MAX_ADDRESSES = 8
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


MAX_MESSAGE = 4096
EXCHANGE_TIMEOUT = 5.0

# Underscore labels too (_acme-challenge, _validation-persist).
DNS_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def check_dns_name(text: str) -> str:
    """A name to look up: LDH labels, underscores allowed, no wildcard."""
    name = text.lower().removesuffix(".")
    if not 0 < len(name) <= 253 or not all(map(DNS_LABEL.fullmatch, name.split("."))):
        raise InputError(f"invalid DNS name {safe_text(text, 100)!r}")
    return name


def check_server(server: str, port: int) -> tuple[str, int]:
    try:
        address = str(ipaddress.ip_address(server))
    except ValueError:
        raise InputError(f"DNS server {safe_text(server, 60)!r} is not an IP address") from None
    if not 0 < port < 65536:
        raise InputError(f"DNS server port {port} is not 1 to 65535")
    return address, port


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
    """dns-01's queries, with dnspython, loaded by the first run that asks
    one: about 0.1 s that the others do not spend."""
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
        name = check_dns_name(request.name)
        server = None
        if request.server:
            server, _port = check_server(request.server, request.port)
        values = dnsquery().txt(name, server, request.port)
        self.log.debug(f"{name} TXT -> {len(values)} value(s)")
        return resolver_pb2.TxtReply(values=values)

    @rpc.guarded
    def Authoritative(
        self, request: resolver_pb2.AuthoritativeRequest, context: grpc.ServicerContext
    ) -> resolver_pb2.AuthoritativeReply:
        name = check_dns_name(request.name)
        server = None
        if request.server:
            server, _port = check_server(request.server, request.port)
        zone, servers = dnsquery().authoritative(name, server, request.port)
        self.log.debug(f"{name}: zone {zone}, servers {' '.join(servers)}")
        return resolver_pb2.AuthoritativeReply(zone=zone, servers=servers)

    @rpc.guarded
    def Exchange(
        self, request: resolver_pb2.ExchangeRequest, context: grpc.ServicerContext
    ) -> resolver_pb2.ExchangeReply:
        server, port = check_server(request.server, request.port)
        return resolver_pb2.ExchangeReply(answer=exchange(request.message, server, port))


def run(config: RoleConfig, log: Logger) -> int:
    process.confine(config)
    rpc.serve_until_stopped(
        config.run_dir,
        {"dns": [(resolver_pb2_grpc.add_ResolverServicer_to_server, ResolverService(log))]},
        config.instance,
    )
    return 0

