"""The self-sandbox every role applies to itself in `process.confine()`, once it
has opened what it needs and dropped privileges, and before it serves.

In this order:

1. `no_new_privs`: nothing the role could execute gains privileges (set-uid
   binaries, file capabilities); Landlock and seccomp require it anyway.
2. Landlock: the file system shrinks to the role's own paths.  Everyone reads
   the Python installation and the shared libraries; each server may make its
   sockets in its own edge directories; chngproc writes in the challenge
   directory, fileproc writes (but does not read) in the certificate
   directory, revokeproc reads it, netproc reads the trust anchors and dnsproc
   the resolver's configuration.  Nobody may execute anything.  The six roles
   without a network may not bind or connect TCP either, dnsproc may connect
   to port 53 only, and no role may connect to an abstract unix socket or
   signal a process outside its own sandbox (where the kernel's Landlock ABI
   has these).
3. seccomp: every role but netproc and dnsproc may create unix sockets only;
   all roles are denied execve, ptrace, mounts, namespaces, kernel modules,
   keyrings, bpf, io_uring, changing modes, owners or extended attributes by
   path, and similar, with EPERM.  The filter is loaded with the
   thread-synchronising flag, and `apply` checks that the role has no second
   thread anyway: Landlock binds only the calling thread.

A layer the kernel lacks is logged and skipped; `apply` returns what it could
not apply, and with `strict` raises SandboxError instead (the role exits 1).
Each entry of that list starts with one of FEATURES and a colon.
`letskencrypt sandbox-check` (sandbox_check.py) shows what holds on a machine.
"""

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import platform
import socket
import stat
import sys
import sysconfig
from dataclasses import dataclass
from typing import Any

import letskencrypt
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import LetskencryptError
from letskencrypt.linux import PR_SET_NO_NEW_PRIVS, prctl
from letskencrypt.namespace import Mirror
from letskencrypt.roles import spec_of
from letskencrypt.rpc import socket_dir
from letskencrypt.spec import READ, WRITE_ACCESS, Fs, Network

NO_NEW_PRIVS = "no_new_privs"
NAMESPACES = "namespaces"
THREAD_CHECK = "thread check"
LANDLOCK = "landlock"
LANDLOCK_TRUNCATE = "landlock truncate"
LANDLOCK_IOCTL = "landlock ioctl"
LANDLOCK_NETWORK = "landlock network"
LANDLOCK_SCOPES = "landlock scopes"
SECCOMP = "seccomp"
SECCOMP_SOCKETS = "seccomp sockets"
FEATURES = (
    NAMESPACES,
    NO_NEW_PRIVS,
    THREAD_CHECK,
    LANDLOCK,
    LANDLOCK_TRUNCATE,
    LANDLOCK_IOCTL,
    LANDLOCK_NETWORK,
    LANDLOCK_SCOPES,
    SECCOMP,
    SECCOMP_SOCKETS,
)
# Without these the sandbox has a hole worth a line on every run; the others
# are refinements of newer kernels, reported with -v.
ESSENTIAL = frozenset(
    {NAMESPACES, NO_NEW_PRIVS, THREAD_CHECK, LANDLOCK, SECCOMP, SECCOMP_SOCKETS}
)

class SandboxError(LetskencryptError):
    """The sandbox could not be applied as required."""


# --- prctl --------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(result: int) -> int:
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return result


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def thread_count() -> int | None:
    """Threads of this process (the kernel's view: gRPC's C threads count too),
    None without /proc."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


# --- Landlock -----------------------------------------------------------------
#
# A small ctypes binding of our own: the `landlock` package on PyPI is an alpha
# pre-release (1.0.0.dev5) whose error check reads a possibly stale errno
# instead of the return value, and it knows neither the network rules (ABI 4)
# nor the scopes (ABI 6) used here.  Three system calls, numbered alike on
# every architecture, are all there is.

SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2  # ABI 4


ABI_1_FS = Fs((1 << 13) - 1)
# The rights a rule on a file (not a directory) may carry.
FILE_RIGHTS = Fs.EXECUTE | Fs.WRITE_FILE | Fs.READ_FILE | Fs.TRUNCATE | Fs.IOCTL_DEV
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1



class RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class NetPortAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


# Set to N to use at most Landlock ABI N (0: as if the kernel had none), so
# that an operator or a test sees what holds on an older kernel (Debian 12's
# 6.1 has ABI 2).  Passed to the roles by the supervisor.
ABI_VARIABLE = "LETSKENCRYPT_LANDLOCK_ABI"


def kernel_landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 if it has none (or it is disabled)."""
    result = _libc.syscall(
        ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
        ctypes.c_void_p(None),
        ctypes.c_size_t(0),
        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
    )
    return max(result, 0)


def landlock_abi() -> int:
    """The Landlock ABI the sandbox uses: the kernel's, or less if ABI_VARIABLE
    says so (a value that is not a whole number >= 0 is refused)."""
    kernel = kernel_landlock_abi()
    forced = os.environ.get(ABI_VARIABLE)
    if forced is None or forced == "":
        return kernel
    if not forced.isascii() or not forced.isdigit():
        raise SandboxError(f"{ABI_VARIABLE}={forced[:20]!r}: want a whole number >= 0")
    return min(kernel, int(forced))


def handled_fs(abi: int) -> Fs:
    handled = ABI_1_FS
    if abi >= 2:
        handled |= Fs.REFER
    if abi >= 3:
        handled |= Fs.TRUNCATE
    if abi >= 5:
        handled |= Fs.IOCTL_DEV
    return handled


@dataclass(frozen=True)
class Rule:
    path: str
    access: Fs


@dataclass(frozen=True)
class Profile:
    """What one role may do; everything else Landlock and seccomp deny."""

    rules: tuple[Rule, ...]
    network: bool
    # The TCP ports it may connect to; None: any (netproc, to the CA).
    tcp_ports: tuple[int, ...] | None = ()


@functools.cache
def library_paths() -> tuple[str, ...]:
    """The interpreter's library directories.  sysconfig expands its path
    templates anew on every call, and each role asks twice: the fork server
    asks once for all of them (launch.prepare_to_fork)."""
    paths = sysconfig.get_paths()
    return tuple(paths[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")
                 if name in paths)  # fmt: skip


def python_paths() -> list[str]:
    """Where the interpreter and our packages are: lazy imports read them."""
    paths = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    paths += library_paths()
    # `python -m` puts the working directory first on sys.path; roles run in
    # "/", and the working directory is no place of code anyway.
    try:
        cwd = os.getcwd()
    except FileNotFoundError:  # the command's working directory was removed
        cwd = None
    paths += [entry for entry in sys.path if entry and os.path.abspath(entry) != cwd]
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(letskencrypt.__file__)))
    paths.append(package_root)
    return paths


# Shared libraries (glibc loads libgcc_s when a thread exits, NSS modules on
# a lookup), the loader's cache, time zones, the number of CPUs (gRPC sizes
# its pools by it) and the listen backlog (gRPC's servers).
SYSTEM_READ = (
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/usr/share/zoneinfo",
    "/etc/localtime",
    "/sys/devices/system/cpu/online",
    "/proc/sys/net/core/somaxconn",
)
def profile(config: RoleConfig) -> Profile:
    """The role's profile: what every role reads, its servers' sockets, and
    the paths its spec grants from its settings."""
    spec = spec_of(config.role)
    rules = [Rule(path, READ) for path in (*python_paths(), *SYSTEM_READ)]
    rules.append(Rule(os.devnull, Fs.READ_FILE | Fs.WRITE_FILE))
    rules.append(Rule("/dev/urandom", Fs.READ_FILE))
    for edge in spec.serves:
        # grpc removes a stale socket before binding, and its own on shutdown.
        # Its own socket's directory only: not another certificate's server's.
        directory = socket_dir(config.run_dir, edge, config.instance, config.part)
        rules.append(Rule(directory, Fs.MAKE_SOCK | Fs.REMOVE_FILE))
    for settings in config.every_settings:
        rules += [Rule(grant.path, grant.access) for grant in spec.grants(settings)]
    # Once each: many certificates of a run may share a directory.
    return Profile(
        tuple(dict.fromkeys(rules)),
        network=spec.network is not Network.NONE,
        tcp_ports=spec.network.tcp_ports,
    )


def mirrors(config: RoleConfig) -> list[Mirror]:
    """What the role's private mount namespace shows (see namespace.py): the
    paths of its Landlock profile, writable only where the profile writes,
    and the directories of the edges it calls (connect() needs no write
    access to the mount)."""
    shown = [Mirror(rule.path, bool(rule.access & WRITE_ACCESS)) for rule in profile(config).rules]
    for edge in spec_of(config.role).calls:
        shown.append(Mirror(os.path.join(config.run_dir, edge), writable=False))
    return shown


@dataclass
class OpenProfile:
    """A profile with its paths opened (O_PATH), ready for Landlock.

    process.confine opens them before dropping privileges: a role may hold a
    directory open (revokeproc) below parents its run user cannot traverse.
    """

    paths: list[tuple[int, Fs]]
    network: bool
    tcp_ports: tuple[int, ...] | None = ()

    def close(self) -> None:
        for fd, _access in self.paths:
            os.close(fd)
        self.paths.clear()


def open_profile(config: RoleConfig, log: Logger) -> OpenProfile:
    role_profile = profile(config)
    opened = OpenProfile([], role_profile.network, role_profile.tcp_ports)
    for rule in role_profile.rules:
        if os.path.abspath(rule.path) == "/":
            opened.close()
            raise SandboxError("refusing a Landlock rule for / (a broken setting?)")
        try:
            fd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            log.debug(f"sandbox: {rule.path} is missing or out of reach, no rule for it")
            continue
        opened.paths.append((fd, rule.access))
    return opened


def apply_landlock(opened: OpenProfile, abi: int) -> None:
    handled = handled_fs(abi)
    attr = RulesetAttr(handled_access_fs=handled)
    if abi >= 4 and opened.tcp_ports is not None:
        # Handled, with rules for these ports only: no TCP bind at all, and
        # connect to them alone (none for the roles without network).
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    ruleset = _check(
        _libc.syscall(
            ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
            ctypes.c_uint32(0),
        )
    )
    try:
        for fd, access in opened.paths:
            _add_path_rule(ruleset, fd, access & handled)
        if attr.handled_access_net:
            for port in opened.tcp_ports or ():
                _add_port_rule(ruleset, port)
        _check(
            _libc.syscall(
                ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF),
                ctypes.c_int(ruleset),
                ctypes.c_uint32(0),
            )
        )
    finally:
        os.close(ruleset)


def _add_path_rule(ruleset: int, fd: int, access: Fs) -> None:
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        access &= FILE_RIGHTS
    if not access:
        return
    attr = PathBeneathAttr(allowed_access=access, parent_fd=fd)
    _check(
        _libc.syscall(
            ctypes.c_long(SYS_LANDLOCK_ADD_RULE),
            ctypes.c_int(ruleset),
            ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
            ctypes.byref(attr),
            ctypes.c_uint32(0),
        )
    )


def _add_port_rule(ruleset: int, port: int) -> None:
    attr = NetPortAttr(allowed_access=NET_CONNECT_TCP, port=port)
    _check(
        _libc.syscall(
            ctypes.c_long(SYS_LANDLOCK_ADD_RULE),
            ctypes.c_int(ruleset),
            ctypes.c_int(LANDLOCK_RULE_NET_PORT),
            ctypes.byref(attr),
            ctypes.c_uint32(0),
        )
    )


def landlock_gaps(abi: int) -> list[str]:
    """What this kernel's Landlock ABI cannot restrict."""
    if abi == 0:
        return [f"{LANDLOCK}: the kernel has no Landlock (Linux >= 5.13 with landlock in lsm=)"]
    gaps = []
    for feature, needed, what in (
        (LANDLOCK_TRUNCATE, 3, "truncating files"),
        (LANDLOCK_NETWORK, 4, "TCP bind and connect"),
        (LANDLOCK_IOCTL, 5, "ioctl on devices"),
        (LANDLOCK_SCOPES, 6, "abstract unix sockets and signals to other processes"),
    ):
        if abi < needed:
            gaps.append(f"{feature}: {what} not restricted (Landlock ABI {abi} < {needed})")
    return gaps


# --- seccomp --------------------------------------------------------------------

# Denied to every role.  Beyond the obvious: io_uring performs operations
# (even socket creation) that no seccomp filter sees; open_by_handle_at opens
# a file by inode, around Landlock's paths, for a role that kept root; the
# new mount API is mount by other names; and Landlock does not govern modes,
# owners or extended attributes, which a role that kept root could otherwise
# change on any file (the roles change modes through descriptors only: fchmod).
DENIED_SYSCALLS = (
    "execve",
    "execveat",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "unshare",
    "setns",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "add_key",
    "request_key",
    "keyctl",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_by_handle_at",
    "chmod",
    "fchmodat",
    "fchmodat2",
    "chown",
    "lchown",
    "fchownat",
    "setxattr",
    "lsetxattr",
    "removexattr",
    "lremovexattr",
    "setxattrat",
    "removexattrat",
    "open_tree_attr",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "syslog",
    "iopl",
    "ioperm",
    "vhangup",
    # A signal through a pid file descriptor; kill() and friends are limited
    # to the role's own pid below.
    "pidfd_open",
    "pidfd_send_signal",
)
# Newer than the libseccomp of Debian 12 knows by name; the numbers are those
# of the architectures' shared table (x86_64, aarch64).
LATER_SYSCALLS = {"fchmodat2": 452, "setxattrat": 463, "removexattrat": 466, "open_tree_attr": 467}
SHARED_TABLE_MACHINES = frozenset({"x86_64", "aarch64"})
# clone() may create namespaces like unshare(); clone3() hides its flags in
# memory a filter cannot read, so it answers ENOSYS and glibc falls back to
# clone() (as container runtimes do).
CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
# Socket families a role may create; every other one is EPERM.
UNIX_ONLY = frozenset({socket.AF_UNIX})
# glibc's getaddrinfo asks the kernel over netlink which address families
# are configured.
NETWORK_FAMILIES = frozenset({socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK})
AF_LIMIT = 64
# Signals: only to the role itself (kill permission goes by uid, and a role
# that kept root could otherwise signal any process; Landlock's signal scope
# needs ABI 6).  The first argument of each is the target pid or tgid.
SIGNAL_SYSCALLS = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
# ioctl requests that push input into a terminal or drive the console: a role
# holds no terminal (the supervisor gives it pipes), but deny them anyway.
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
DENIED_IOCTLS = (TIOCSTI, TIOCLINUX)
# ioctl's request is an unsigned int: the kernel ignores the upper 32 bits of
# the register, so the filter compares only the lower ones.
LOWER_32 = 0xFFFFFFFF


def import_pyseccomp() -> Any:
    """pyseccomp, or an OSError/RuntimeError/ImportError if it cannot work here.

    pyseccomp finds libc and libseccomp with ctypes.util.find_library, which
    runs /sbin/ldconfig: slow, and missing from distroless images, where the
    dynamic loader still finds both by their sonames.
    """
    original = ctypes.util.find_library
    sonames = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}

    def find_library(name: str) -> str | None:
        return sonames.get(name) or original(name)

    ctypes.util.find_library = find_library
    try:
        import pyseccomp
    finally:
        ctypes.util.find_library = original
    return pyseccomp


def build_filter(network: bool, pid: int | None = None) -> Any:
    """The role's filter; `pid` (default: ours) is the only process it may signal."""
    if pid is None:
        pid = os.getpid()
    seccomp = import_pyseccomp()
    denied = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    # Threads that exist already get the filter too (we also check there are none).
    rules.set_attr(seccomp.Attr.CTL_TSYNC, 1)
    for name in DENIED_SYSCALLS:
        number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
        if number < 0 and platform.machine() in SHARED_TABLE_MACHINES:
            number = LATER_SYSCALLS.get(name, -1)
        if number >= 0:  # a call this architecture has
            rules.add_rule(denied, number)
    for flag in CLONE_NAMESPACE_FLAGS:
        rules.add_rule(denied, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    if seccomp.resolve_syscall(seccomp.Arch.NATIVE, "clone3") >= 0:
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for call in SIGNAL_SYSCALLS:
        # Any other value, 0 (the process group) and -1 (everyone) included;
        # an argument with its upper 32 bits set is != pid too, and denied.
        rules.add_rule(denied, call, seccomp.Arg(0, seccomp.NE, pid))
    for request in DENIED_IOCTLS:
        rules.add_rule(denied, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, LOWER_32, request))
    allowed = NETWORK_FAMILIES if network else UNIX_ONLY
    for call in ("socket", "socketpair"):
        for family in range(AF_LIMIT):
            if family not in allowed:
                rules.add_rule(denied, call, seccomp.Arg(0, seccomp.EQ, family))
        rules.add_rule(denied, call, seccomp.Arg(0, seccomp.GE, AF_LIMIT))
    return rules


def seccomp_mode() -> int | None:
    """The `Seccomp:` line of /proc/self/status (2: a filter), None if unknown."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Seccomp:"):
                return int(line.split()[1])
    return None


# --- all together ---------------------------------------------------------------


def apply(
    config: RoleConfig,
    log: Logger,
    strict: bool,
    opened: OpenProfile | None = None,
    earlier_gaps: tuple[str, ...] = (),
) -> list[str]:
    """Confine this process to the role's profile; return what could not be applied.

    `opened`: the profile's paths, opened earlier (see OpenProfile); else now.
    `earlier_gaps`: what the steps before (namespaces) could not apply.
    """
    if opened is None:
        opened = open_profile(config, log)
    try:
        gaps = [*earlier_gaps, *_apply(opened, log)]
    finally:
        opened.close()
    _report(gaps, log, strict)
    return gaps


def _apply(opened: OpenProfile, log: Logger) -> list[str]:
    gaps: list[str] = []
    try:
        set_no_new_privs()
    except OSError as error:
        gaps.append(f"{NO_NEW_PRIVS}: {error.strerror}")
    threads = thread_count()
    if threads is None:
        gaps.append(f"{THREAD_CHECK}: no /proc to count this process's threads")
    elif threads != 1:
        # Landlock would leave the other threads free: a bug of ours, not the kernel's.
        raise SandboxError(f"sandbox: {threads} threads exist before confinement; want 1")
    # Built before Landlock shuts the file system: it loads libseccomp.
    seccomp_filter, refused = _build_seccomp(opened.network)
    gaps += refused
    abi = landlock_abi()
    gaps += landlock_gaps(abi)
    if abi:
        try:
            apply_landlock(opened, abi)
        except OSError as error:
            gaps.append(f"{LANDLOCK}: the kernel refused the rules ({error.strerror})")
    if seccomp_filter is not None:
        try:
            seccomp_filter.load()
        except OSError as error:
            gaps.append(f"{SECCOMP}: the kernel refused the filter ({error.strerror})")
    return gaps


def _build_seccomp(network: bool) -> tuple[Any, list[str]]:
    try:
        return build_filter(network), []
    except (ImportError, RuntimeError, OSError) as error:
        return None, [f"{SECCOMP}: libseccomp is not usable here ({error})"]


def _report(gaps: list[str], log: Logger, strict: bool) -> None:
    if not gaps:
        log.debug("sandbox: no_new_privs, Landlock and seccomp in force")
        return
    if strict:
        raise SandboxError("sandbox incomplete (--strict): " + "; ".join(gaps))
    essential = [gap for gap in gaps if feature_of(gap) in ESSENTIAL]
    if essential:
        log.error("sandbox: not applied: " + "; ".join(essential))
    refinements = [gap for gap in gaps if feature_of(gap) not in ESSENTIAL]
    if refinements:
        log.info("sandbox: not applied: " + "; ".join(refinements))


# --- the second stage: once the role's sockets serve ----------------------------
#
# Landlock does not govern connect() to a named unix socket, and seccomp cannot
# read the address connect() is given.  A role that only serves needs neither
# to create nor to connect a unix socket once its servers have bound theirs
# (accepting is accept4; gRPC's wake-ups are eventfds), so a second filter,
# stacked on the first and synchronised to gRPC's threads, takes them away:
# from a role without a network, socket(), socketpair() and connect()
# altogether; from dnsproc, which connects UDP and TCP for DNS, unix sockets.
#
# Not for the clients (netproc, certproc): gRPC connects a channel lazily and
# again after it went idle (grpc.client_idle_timeout_ms, 30 minutes by
# default) or lost its connection, each time with socket(AF_UNIX); a daemon's
# netproc uses its channel to acctproc once in two months.  Their edges are
# kept apart by the edge tokens (both ways) and, where set up, the private
# mount namespace in which only their peers' sockets exist.


def build_socket_filter(network: bool) -> Any:
    seccomp = import_pyseccomp()
    denied = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    # gRPC's threads exist by now: every one of them gets the filter.
    rules.set_attr(seccomp.Attr.CTL_TSYNC, 1)
    rules.add_rule(denied, "socketpair")
    if network:
        rules.add_rule(denied, "socket", seccomp.Arg(0, seccomp.EQ, socket.AF_UNIX))
    else:
        rules.add_rule(denied, "socket")
        rules.add_rule(denied, "connect")
    return rules


def seal(config: RoleConfig, log: Logger, strict: bool) -> list[str]:
    """Once a server-only role's sockets are bound: no more unix sockets.
    Returns what could not be applied (raises SandboxError with `strict`)."""
    spec = spec_of(config.role)
    if not spec.serves_only:
        return []
    gaps = []
    try:
        build_socket_filter(spec.network is not Network.NONE).load()
    except (ImportError, RuntimeError, OSError) as error:
        gaps.append(f"{SECCOMP_SOCKETS}: could not stop new unix sockets ({error})")
    _report(gaps, log, strict)
    if not gaps:
        log.debug("sandbox: no new sockets from now on")
    return gaps


def feature_of(gap: str) -> str:
    """Which of FEATURES an entry of apply()'s list is about."""
    return gap.partition(":")[0]
