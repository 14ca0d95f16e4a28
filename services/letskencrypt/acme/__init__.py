"""The ACME (RFC 8555) engine of netproc, the only role that talks to the CA.

netproc holds no private key and has no resolver of its own: requests are
signed by a `Signer` (acctproc) and host names are resolved by a `Resolver`
(dnsproc), both other processes.  Everything the CA sends is hostile input.

- `messages`: the CA's documents, parsed and validated (and `AcmeError`);
- `transport`: HTTPS through requests, pinned to the resolver's addresses,
  bounded in size and time, never redirected;
- `client`: the protocol flow, `AcmeClient`.
"""

from letskencrypt.acme.client import AcmeClient, Chains, RecordCheck, Signer
from letskencrypt.acme.messages import (
    RATE_LIMITED,
    AcmeError,
    Authorization,
    Challenge,
    Directory,
    Order,
    Problem,
    check_url,
    format_problem,
    parse_retry_after,
    validate_nonce,
)
from letskencrypt.acme.transport import COUNTS, HttpResponse, Resolver, Transport
from letskencrypt.constants import DEFAULT_POLL_TIMEOUT

__all__ = [
    "COUNTS",
    "DEFAULT_POLL_TIMEOUT",
    "RATE_LIMITED",
    "AcmeClient",
    "AcmeError",
    "Authorization",
    "Chains",
    "Challenge",
    "Directory",
    "HttpResponse",
    "Order",
    "Problem",
    "RecordCheck",
    "Resolver",
    "Signer",
    "Transport",
    "check_url",
    "format_problem",
    "parse_retry_after",
    "validate_nonce",
]
