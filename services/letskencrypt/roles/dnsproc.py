"""dnsproc: turns a host name into at most eight addresses for netproc.

Holds: nothing but the system's resolver configuration.
Network: DNS only (in containers it shares netproc's namespace).
Serves: Resolver on the `dns` edge.  It answers questions, nothing else.
"""

import ipaddress
import re
import socket

import grpc

from letskencrypt import process, rpc
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import InputError
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


class ResolverService(rpc.Servicer, resolver_pb2_grpc.ResolverServicer):
    @rpc.guarded
    def Resolve(
        self, request: resolver_pb2.ResolveRequest, context: grpc.ServicerContext
    ) -> resolver_pb2.ResolveReply:
        host = check_host(request.host)
        addresses = resolve(host)
        self.log.debug(f"{host} -> {' '.join(addresses)}")
        return resolver_pb2.ResolveReply(addresses=addresses)


def run(config: RoleConfig, log: Logger) -> int:
    process.confine(config)
    rpc.serve_until_stopped(
        config.run_dir,
        {"dns": [(resolver_pb2_grpc.add_ResolverServicer_to_server, ResolverService(log))]},
        config.instance,
    )
    return 0

