"""What a role is and may do, as each role declares it at the top of its module.

A `RoleSpec` is the role's `unveil` and `pledge` on one screen: its settings
class, the edges it serves and calls, the paths it may reach and how, its
network, whether it must keep uid 0, the signal it gets when the supervisor
dies, and the optional wheels its container image carries.  The sandbox, the
supervisor, the container entry point, `sandbox-check`, the image builder and
the consistency tests read these specs; none of them names a role.

`letskencrypt.roles.spec_of(role)` finds a role's spec.
"""

import enum
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from letskencrypt.settings import RoleSettings


class Fs(enum.IntFlag):
    """What may be done beneath a path: Landlock's LANDLOCK_ACCESS_FS_* bits."""

    EXECUTE = 1 << 0
    WRITE_FILE = 1 << 1
    READ_FILE = 1 << 2
    READ_DIR = 1 << 3
    REMOVE_DIR = 1 << 4
    REMOVE_FILE = 1 << 5
    MAKE_CHAR = 1 << 6
    MAKE_DIR = 1 << 7
    MAKE_REG = 1 << 8
    MAKE_SOCK = 1 << 9
    MAKE_FIFO = 1 << 10
    MAKE_BLOCK = 1 << 11
    MAKE_SYM = 1 << 12
    REFER = 1 << 13  # ABI 2: rename or link across directories
    TRUNCATE = 1 << 14  # ABI 3
    IOCTL_DEV = 1 << 15  # ABI 5


READ = Fs.READ_FILE | Fs.READ_DIR
# Any of these makes a path writable (in the role's private mount namespace,
# in a container's volume mount).
WRITE_ACCESS = (
    Fs.WRITE_FILE
    | Fs.REMOVE_DIR
    | Fs.REMOVE_FILE
    | Fs.MAKE_CHAR
    | Fs.MAKE_DIR
    | Fs.MAKE_REG
    | Fs.MAKE_SOCK
    | Fs.MAKE_FIFO
    | Fs.MAKE_BLOCK
    | Fs.MAKE_SYM
    | Fs.REFER
    | Fs.TRUNCATE
)


@dataclass(frozen=True)
class Grant:
    """`access` beneath `path` (a file or a directory).  A writable grant is a
    directory that preflight checks: `what` names it in messages, and unless
    `created` (the role makes it when missing) it must exist."""

    path: str
    access: Fs
    what: str = ""
    created: bool = False

    @property
    def writable(self) -> bool:
        return bool(self.access & WRITE_ACCESS)


class Network(enum.Enum):
    """What a role may do on the network beyond unix sockets."""

    NONE = "none"
    # DNS servers: UDP anywhere (Landlock has no UDP rules; the role holds
    # nothing to leak), TCP to port 53 only (answers too large for UDP).
    DNS = "dns"
    # The CA, wherever it is: any TCP port.
    ANY = "any"

    @property
    def tcp_ports(self) -> tuple[int, ...] | None:
        """The TCP ports it may connect to; None: any."""
        return {Network.NONE: (), Network.DNS: (DNS_PORT,), Network.ANY: None}[self]


DNS_PORT = 53


def no_paths(_settings: Any) -> Iterable[Grant]:
    return ()


@dataclass(frozen=True)
class RoleSpec:
    name: str
    # One line: what it is for (its image's description, sandbox-check's legend).
    summary: str
    settings: type[RoleSettings]
    # Edge names (rpc.EDGES): served here, called from here.
    serves: tuple[str, ...] = ()
    calls: tuple[str, ...] = ()
    # The role's own paths, from its settings; beyond these every role reads
    # the interpreter and the shared libraries and makes its servers' sockets.
    paths: Callable[[Any], Iterable[Grant]] = field(default=no_paths)
    # What it opens (or creates) before it confines itself and holds open:
    # out of reach afterwards, but a container must mount it.
    opens: Callable[[Any], Iterable[Grant]] = field(default=no_paths)
    network: Network = Network.NONE
    # Why it keeps uid 0 when started as root (without any capability); None:
    # it drops to the run user.
    keeps_root: str | None = None
    # What it gets when the supervisor dies (native mode).
    parent_death_signal: signal.Signals = signal.SIGKILL
    # The optional wheels its container image carries (tools/images/wheels.py).
    wheels: tuple[str, ...] = ()
    # Its exit status is the run's; the others serve until it is done.
    drives: bool = False
    # It holds one certificate's secret: a run of many certificates starts
    # one such process per certificate; every other role serves them all
    # (host.py).
    per_certificate: bool = False
    # It holds an account's secrets: a run of many certificates starts one
    # such process for each value this gives a certificate's settings (the
    # secrets' paths), serving the certificates that have it (host.py).
    one_process_per: Callable[[Any], object] | None = None

    @property
    def serves_only(self) -> bool:
        """It serves and never calls: once its sockets are bound, it needs
        no new socket at all (sandbox.seal)."""
        return bool(self.serves) and not self.calls

    def grants(self, settings: RoleSettings) -> list[Grant]:
        if not isinstance(settings, self.settings):
            raise TypeError(f"{self.name} takes {self.settings.__name__}")
        return list(self.paths(settings))
