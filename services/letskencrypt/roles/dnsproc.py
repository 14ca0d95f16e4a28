"""dnsproc: turns a host name into at most eight addresses for netproc, and
reads a name's TXT records (a dns-persist-01 record, before netproc
answers that challenge).

Holds: nothing but the system's resolver configuration.
Network: DNS only (in containers it shares netproc's namespace).
Serves: Resolver on the `dns` edge.  It answers questions, nothing else:
a TXT lookup is a query, through the system's resolver or, when netproc
names a server (--dns-check-server), to that address directly without
recursion; never an update.  What it hands back is bounded (MAX_TXT_VALUES
values of at most MAX_TXT_VALUE bytes; longer ones are left out).
"""

import ipaddress
import re
import socket

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import grpc

from letskencrypt import process, rpc
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import InputError
from letskencrypt.persist import MAX_TXT_VALUE, MAX_TXT_VALUES
from letskencrypt.settings import DnsprocSettings
from letskencrypt.spec import Fs, Grant, Network, RoleSpec
from letskencrypt.v1 import resolver_pb2, resolver_pb2_grpc

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
    wheels=("dnspython",),
)

MAX_ADDRESSES = 8
TXT_TIMEOUT = 5.0
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


def txt_values(answer: dns.message.Message, name: dns.name.Name) -> list[str]:
    """Each TXT record of `name` in `answer`, its strings joined, bounded."""
    values: list[str] = []
    for rrset in answer.answer:
        if rrset.name != name or rrset.rdtype != dns.rdatatype.TXT:
            continue
        for rdata in rrset:
            data = b"".join(rdata.strings)
            if len(data) <= MAX_TXT_VALUE and len(values) < MAX_TXT_VALUES:
                values.append(data.decode("ascii", errors="replace"))
    return values


def lookup_txt(name: str, server: str, port: int) -> list[str]:
    """The TXT records of `name` ([] if it has none or does not exist)."""
    qname = dns.name.from_text(name)
    try:
        if not server:
            resolver = dns.resolver.Resolver()
            resolver.lifetime = TXT_TIMEOUT
            answer = resolver.resolve(qname, dns.rdatatype.TXT, raise_on_no_answer=False)
            return txt_values(answer.response, qname)
        # EDNS: answers of up to 4 KiB by UDP (TCP, the fallback, may reach port 53 only).
        query = dns.message.make_query(qname, dns.rdatatype.TXT, use_edns=0, payload=4096)
        query.flags &= ~dns.flags.RD
        response, _ = dns.query.udp_with_fallback(query, server, TXT_TIMEOUT, port=port)
    except dns.resolver.NXDOMAIN:
        return []
    except dns.exception.DNSException as error:
        raise InputError(f"TXT {name}: {error}") from None
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return []
    if rcode != dns.rcode.NOERROR:
        raise InputError(f"TXT {name}: the DNS server answered {dns.rcode.to_text(rcode)}")
    return txt_values(response, qname)


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
        values = lookup_txt(name, server, port)
        self.log.debug(f"TXT {name}: {len(values)} record(s)")
        return resolver_pb2.TxtReply(values=values)


def run(config: RoleConfig, log: Logger) -> int:
    process.confine(config)
    rpc.serve_until_stopped(
        config.run_dir,
        {"dns": [(resolver_pb2_grpc.add_ResolverServicer_to_server, ResolverService(log))]},
        config.instance,
    )
    return 0

