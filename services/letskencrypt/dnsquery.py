"""The DNS challenges' queries for dnsproc (dnspython): TXT records, asked
of one server directly or through the system's resolver, and the zone of a
name with its NS servers' addresses.  Every answer is bounded:
MAX_TXT_VALUES values of at most MAX_TXT_VALUE bytes, 8 addresses, a few
seconds per question.

dnsproc loads this on the first such question: the other runs do without
dnspython (about 0.1 s to load).
"""

from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from letskencrypt.errors import InputError
from letskencrypt.persist import MAX_TXT_VALUE, MAX_TXT_VALUES
from letskencrypt.validate import dns_server_text, safe_text

MAX_ADDRESSES = 8
QUERY_TIMEOUT = 3.0
LIFETIME = 5.0


def system_resolver() -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver()
    resolver.lifetime = LIFETIME
    resolver.timeout = QUERY_TIMEOUT
    return resolver


def ask(server: str, port: int, name: str, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
    """`name` `rdtype` of `server` itself (no recursion asked); TCP when the
    UDP answer is truncated."""
    query = dns.message.make_query(name, rdtype)
    query.flags &= ~dns.flags.RD
    where = dns_server_text(server, port)
    try:
        answer, _tcp = dns.query.udp_with_fallback(query, server, port=port, timeout=QUERY_TIMEOUT)
    except dns.exception.Timeout:
        raise InputError(f"DNS server {where} did not answer within {QUERY_TIMEOUT:g} s") from None
    except (dns.exception.DNSException, OSError) as error:
        raise InputError(f"DNS server {where}: {safe_text(str(error), 200)}") from None
    rcode = answer.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise InputError(f"DNS server {where}: {dns.rcode.to_text(rcode)} for {name} "
                         f"{dns.rdatatype.to_text(rdtype)}")  # fmt: skip
    return answer


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
            resolver = system_resolver()
            answer = resolver.resolve(qname, dns.rdatatype.TXT, raise_on_no_answer=False)
            return txt_values(answer.response, qname)
        # EDNS: answers of up to 4 KiB by UDP (TCP, the fallback, may reach port 53 only).
        query = dns.message.make_query(qname, dns.rdatatype.TXT, use_edns=0, payload=4096)
        query.flags &= ~dns.flags.RD
        response, _ = dns.query.udp_with_fallback(query, server, LIFETIME, port=port)
    except dns.resolver.NXDOMAIN:
        return []
    except dns.exception.DNSException as error:
        raise InputError(f"TXT {name}: {safe_text(str(error), 200)}") from None
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return []
    if rcode != dns.rcode.NOERROR:
        raise InputError(f"TXT {name}: the DNS server answered {dns.rcode.to_text(rcode)}")
    return txt_values(response, qname)


def zone_at(server: str, port: int, name: str) -> str:
    """The zone of `name` as `server` serves it: the owner of the SOA it
    sends with its answer (authority section), or of the one it holds at
    the name (the zone's apex)."""
    answer = ask(server, port, name, dns.rdatatype.SOA)
    for rrset in (*answer.answer, *answer.authority):
        if rrset.rdtype == dns.rdatatype.SOA and dns.name.from_text(name).is_subdomain(
            rrset.name
        ):
            return rrset.name.to_text(omit_final_dot=True)
    raise InputError(f"DNS server {dns_server_text(server, port)} is not authoritative for {name}")


def addresses_of(
    targets: list[dns.name.Name],
    glue: list,
    lookup: Callable[[dns.name.Name, dns.rdatatype.RdataType], list[str]],
) -> list[str]:
    """The addresses of the NS `targets`: glue first, else looked up; at most 8."""
    found: list[str] = []
    for target in targets:
        known = [
            rdata.address
            for rrset in glue
            if rrset.name == target and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
            for rdata in rrset
        ]
        if not known:
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                known += lookup(target, rdtype)
        for address in known:
            if address not in found:
                found.append(address)
    if not found:
        raise InputError("none of the zone's NS servers has an address")
    return found[:MAX_ADDRESSES]


def authoritative(name: str, server: str, port: int) -> tuple[str, list[str]]:
    """The zone apex of `name` and its NS servers' addresses: as `server`
    serves them, or ("") as the system's resolver finds them."""
    if server:
        zone = zone_at(server, port, name)
        answer = ask(server, port, zone, dns.rdatatype.NS)

        def lookup(target: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> list[str]:
            reply = ask(server, port, target.to_text(), rdtype)
            return [r.address for rrset in reply.answer if rrset.rdtype == rdtype for r in rrset]

        rrsets, glue = answer.answer, answer.additional
    else:
        resolver = system_resolver()
        try:
            zone = dns.resolver.zone_for_name(name, resolver=resolver).to_text(True)
            rrsets = [resolver.resolve(zone, dns.rdatatype.NS).rrset]
        except dns.exception.DNSException as error:
            raise InputError(f"the zone of {name}: {safe_text(str(error), 200)}") from None
        glue = []

        def lookup(target: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> list[str]:
            try:
                reply = resolver.resolve(target, rdtype, raise_on_no_answer=False)
            except dns.exception.DNSException:
                return []
            return [r.address for r in reply.rrset or ()]

    targets = [
        rdata.target
        for rrset in rrsets
        if rrset is not None and rrset.rdtype == dns.rdatatype.NS
        for rdata in rrset
    ][:MAX_ADDRESSES]
    if not targets:
        raise InputError(f"the zone {zone} has no NS records")
    return zone, addresses_of(targets, glue, lookup)


