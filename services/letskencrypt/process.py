"""What every role process does before it serves: read its configuration from
the supervisor, name itself, stop core dumps, drop privileges, sandbox itself
(sandbox.py), and report.

The supervisor writes one JSON object to the role's standard input and closes
it, so nothing of the configuration shows in `ps` or the environment.
"""

import contextlib
import ctypes
import json
import os
import platform
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import NoReturn

from letskencrypt import fsutil, namespace, rpc, sandbox
from letskencrypt.constants import EXIT_FAILED, EXIT_NOTHING_TO_DO
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import InputError, LetskencryptError, plain_words
from letskencrypt.linux import (
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAPBSET_DROP,
    PR_CAPBSET_READ,
    PR_GET_SECUREBITS,
    PR_SET_DUMPABLE,
    PR_SET_NAME,
    PR_SET_PDEATHSIG,
    PR_SET_SECUREBITS,
    prctl,
)
from letskencrypt.roles import module_of, spec_of
from letskencrypt.settings import decode

MAX_CONFIG_BYTES = 64 * 1024
# How long a role's main thread waits at most before it looks for a signal.
# A process-directed SIGTERM may land on any thread (gRPC's, a certificate's);
# CPython runs the handler in the main thread, and only once that thread is
# back in Python code: so it never waits longer than this at once.
SIGNAL_CHECK = 0.2

# securebits(7): uid 0 gains nothing by execve, a change of uid does not touch
# the capability sets, no capability is kept across setuid or raised into the
# ambient set; each with its lock, so that not even root can undo them.
SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
SECBIT_NO_SETUID_FIXUP = 1 << 2
SECBIT_NO_SETUID_FIXUP_LOCKED = 1 << 3
SECBIT_KEEP_CAPS_LOCKED = 1 << 5
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7
LOCKED_SECUREBITS = (
    SECBIT_NOROOT
    | SECBIT_NOROOT_LOCKED
    | SECBIT_NO_SETUID_FIXUP
    | SECBIT_NO_SETUID_FIXUP_LOCKED
    | SECBIT_KEEP_CAPS_LOCKED
    | SECBIT_NO_CAP_AMBIENT_RAISE
    | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED
)
CAP_SETPCAP = 8
SYS_CAPGET = {"x86_64": 125, "aarch64": 90}
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}
LINUX_CAPABILITY_VERSION_3 = 0x20080522
# The five sets /proc/<pid>/status shows, all zero once a role is confined.
CAPABILITY_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def set_process_name(name: str) -> None:
    """Make the role's name what `ps -o comm` and `/proc/<pid>/comm` show."""
    prctl(PR_SET_NAME, name.encode()[:15])


def read_config(role: str) -> RoleConfig:
    """Read the JSON configuration the supervisor wrote to our stdin, then let stdin go."""
    try:
        data = fsutil.read_bounded(0, MAX_CONFIG_BYTES)
    except fsutil.FileTooLarge:
        raise SystemExit(f"letskencrypt: {role}: configuration larger than 64 KiB") from None
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    document = json.loads(data)
    return RoleConfig(
        role=role,
        run_dir=document["run_dir"],
        verbosity=int(document.get("verbosity", 0)),
        uid=document.get("uid"),
        gid=document.get("gid"),
        settings=decode(spec_of(role).settings, document.get("settings")),
        edge_tokens=document.get("edge_tokens", {}),
        server_tokens=document.get("server_tokens", {}),
        supervisor_pid=document.get("supervisor_pid"),
        instance=instance if isinstance(instance := document.get("instance"), int) else None,
    )


def harden() -> None:
    """No core files and not dumpable: neither a crash nor a same-user ptrace can
    read this process's memory (where the key holders keep the keys)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    prctl(PR_SET_DUMPABLE, 0)


def drop_privileges(config: RoleConfig) -> None:
    """Become the unprivileged run user if the supervisor asked us to (started as root)."""
    if config.uid is None or config.gid is None:
        return
    # Only root may empty the bounding set: now, not after setresuid.
    clear_bounding_set()
    os.setgroups([])
    os.setresgid(config.gid, config.gid, config.gid)
    os.setresuid(config.uid, config.uid, config.uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit(f"letskencrypt: {config.role}: could not drop root privileges")


# --- capabilities ---------------------------------------------------------------
#
# A few prctl() calls and capset(): the bindings on PyPI (pyprctl 0.1.3, 2021;
# python-prctl 1.8.1, 2020) are unmaintained, and this is all we need of them.


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _capability_call(numbers: dict[str, int], data: ctypes.Array[_CapData]) -> None:
    number = numbers.get(platform.machine())
    if number is None:
        raise OSError(0, f"capget/capset: unknown on {platform.machine()}")
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    if _libc.syscall(ctypes.c_long(number), ctypes.byref(header), data) < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


# Capability sets are 64 bits wide.
MAX_CAPABILITY = 63


def get_capabilities() -> tuple[int, int]:
    """This thread's effective and permitted sets, without /proc."""
    data = (_CapData * 2)()
    _capability_call(SYS_CAPGET, data)
    return (
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
    )


def set_capabilities(effective: int, permitted: int) -> None:
    """capset(): these effective and permitted sets, no inheritable ones."""
    data = (_CapData * 2)()
    for index in range(2):
        data[index].effective = (effective >> (32 * index)) & 0xFFFFFFFF
        data[index].permitted = (permitted >> (32 * index)) & 0xFFFFFFFF
    _capability_call(SYS_CAPSET, data)


def effective_capabilities() -> int:
    return get_capabilities()[0]


def last_capability() -> int:
    """The highest capability number this kernel knows: PR_CAPBSET_READ says
    EINVAL past it (a role's private /proc has no cap_last_cap)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as last:
            return int(last.read())
    except (OSError, ValueError):
        pass
    capability = 0
    while capability < MAX_CAPABILITY:
        try:
            prctl(PR_CAPBSET_READ, capability + 1)
        except OSError:
            break
        capability += 1
    return capability


def clear_bounding_set() -> None:
    """Empty the bounding set (needs CAP_SETPCAP): no execve could ever
    regain a capability.  Without the privilege, leave it as it is."""
    if not effective_capabilities() & 1 << CAP_SETPCAP:
        return
    for capability in range(last_capability() + 1):
        if prctl(PR_CAPBSET_READ, capability) == 1:
            prctl(PR_CAPBSET_DROP, capability)


def drop_capabilities() -> None:
    """Leave this process no capability at all, even as uid 0: bounding set
    emptied, securebits set and locked (a role that keeps root gains nothing
    by execve or setuid), ambient, effective, permitted, inheritable zero.
    What a role that keeps root still has is the owner's rights on root's own
    files; no CAP_DAC_OVERRIDE, no CAP_KILL, no CAP_SYS_ADMIN."""
    if effective_capabilities() & 1 << CAP_SETPCAP:
        clear_bounding_set()
        prctl(PR_SET_SECUREBITS, prctl(PR_GET_SECUREBITS) | LOCKED_SECUREBITS)
    with contextlib.suppress(OSError):  # before Linux 4.3 there is no ambient set
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    set_capabilities(0, 0)


def capability_sets(pid: int | str = "self") -> dict[str, int]:
    """The five capability sets of a process, from /proc/<pid>/status."""
    sets = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in CAPABILITY_SETS:
                sets[name] = int(value.strip(), 16)
    return sets


def die_with_parent(config: RoleConfig) -> None:
    """Exit if the supervisor dies, so no role outlives the run. Set after any
    change of credentials, which clears it; the supervisor set it at birth."""
    prctl(PR_SET_PDEATHSIG, spec_of(config.role).parent_death_signal)
    # Compared with the supervisor's pid, not 1: a subreaper may have adopted us.
    if config.supervisor_pid is not None and os.getppid() != config.supervisor_pid:
        os._exit(1)


def start(role: str, config: RoleConfig | None = None) -> tuple[RoleConfig, Logger]:
    """The common opening of every role's main(): name, config, hardening.

    Under the native supervisor the configuration comes on stdin; a container
    entry point builds it from the environment and passes it in.
    """
    if config is None:
        begin(role)
        config = read_config(role)
    else:
        set_process_name(role)
    rpc.use_edge_tokens(config.edge_tokens, config.server_tokens)
    settle()
    return config, Logger(role, config.verbosity)


def begin(role: str) -> None:
    """A native role's first steps, before it reads its configuration."""
    set_process_name(role)
    # Ctrl-C reaches the whole process group; the supervisor decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.geteuid() != 0:
        # While this process holds nothing: see namespace.enter_user_namespace.
        enter_user_namespace()


def settle() -> None:
    """Once the configuration is read: our files' mode, and no core dumps."""
    # Sockets and files we create are for our peer (same group), not for others.
    os.umask(0o007)
    harden()


def enter_user_namespace() -> None:
    """A native role started by an ordinary user; a refusal is reported by confine()."""
    if not namespace.disabled():
        with contextlib.suppress(namespace.Unavailable):
            namespace.enter_user_namespace()


def confine(config: RoleConfig) -> list[str]:
    """Called by each role once it has opened what it needs and before it serves.

    Returns what of the sandbox the kernel could not apply (see sandbox.apply).
    """
    log = Logger(config.role, config.verbosity)
    if not config.supervised:
        for edge in spec_of(config.role).serves:
            rpc.make_socket_dir(rpc.socket_dir(config.run_dir, edge, config.instance))
    # While we may still reach every path of the role's profile.
    opened = sandbox.open_profile(config, log)
    namespace_gaps: list[str] = []
    if config.supervised and namespace.disabled():
        namespace_gaps.append(f"{sandbox.NAMESPACES}: turned off by {namespace.DISABLE_VARIABLE}")
    elif config.supervised:
        # A container runtime gives each role its own namespaces already.
        try:
            namespace.enter(sandbox.mirrors(config), opened.network, config.run_dir)
        except namespace.Unavailable as error:
            namespace_gaps.append(f"{sandbox.NAMESPACES}: {error.strerror}")
        except OSError as error:
            raise sandbox.SandboxError(f"sandbox: {error.strerror}") from None
    drop_privileges(config)
    drop_capabilities()
    # A change of credentials resets both of these.
    harden()
    if config.supervised:
        die_with_parent(config)
    strict = config.settings.strict
    gaps = sandbox.apply(config, log, strict, opened, tuple(namespace_gaps))
    # The second stage, once the role's servers have bound their sockets.
    rpc.after_serving(lambda: sandbox.seal(config, log, strict))
    return gaps


def serve(config: RoleConfig, serving: rpc.Serving) -> int:
    """Serve until the run is over (rpc.serve_until_stopped), then the
    role's own end of it; a role's status once it served is 0."""
    failed = True
    try:
        failed = rpc.serve_until_stopped(config.run_dir, serving.services, config.instance)
    finally:
        serving.finish(failed)
    return 0


@dataclass(frozen=True)
class RoleOutcome:
    """How a role's body ended: its exit status and, if it failed, why (the
    line it logged)."""

    code: int
    error: str | None = None
    # Its configuration, once read.
    config: RoleConfig | None = None


def role_outcome(
    role: str, config: RoleConfig | None = None, nothing_to_do: int = EXIT_NOTHING_TO_DO
) -> RoleOutcome:
    """Run a role's body; our errors become one logged line and status 1.

    `config`: built by the container entry point; natively it comes on stdin.
    `nothing_to_do`: the status for netproc's "nothing to do" (a Kubernetes
    Job wants 0).  Returns rather than exits: a container that renews several
    certificates runs one body per certificate (container.py).
    """
    try:
        body = module_of(role).run
        config, log = start(role, config)
    except InputError as error:
        sys.stderr.write(f"letskencrypt: {role}: {error}\n")
        return RoleOutcome(EXIT_FAILED, str(error))
    except ImportError as error:
        message = f"cannot load its code ({plain_words(error)}): is the installation readable?"
        sys.stderr.write(f"letskencrypt: {role}: {message}\n")
        return RoleOutcome(EXIT_FAILED, message)
    try:
        code = body(config, log)
    except Exception as error:  # one line, never a traceback
        message = failure_message(error)
    else:
        return RoleOutcome(nothing_to_do if code == EXIT_NOTHING_TO_DO else code, None, config)
    log.error(message)
    return RoleOutcome(EXIT_FAILED, message, config)


def failure_message(error: Exception) -> str:
    """What a role's failure says, in one line."""
    if isinstance(error, LetskencryptError):
        return str(error)
    if isinstance(error, OSError):
        # A file or directory of this host that is missing, full, or closed to us.
        return plain_words(error)
    if isinstance(error, ImportError):
        return f"cannot load its code ({plain_words(error)}): is the installation readable?"
    return f"internal error (a bug; please report it): {plain_words(error)}"


def run_role(
    role: str, config: RoleConfig | None = None, nothing_to_do: int = EXIT_NOTHING_TO_DO
) -> NoReturn:
    """role_outcome, then exit with its status (see role_outcome).

    One certificate's keyproc in a native run of many (fleet.py) that
    failed before it served answers that certificate's calls with why
    until stopped, as a container pod's roles do (pod.py): netproc fails
    that certificate at once rather than wait for a server that never comes."""
    outcome = role_outcome(role, config, nothing_to_do)
    code = outcome.code
    ran = outcome.config
    one_of_many = ran is not None and ran.supervised and ran.instance is not None
    if outcome.error and one_of_many and not rpc.has_served():
        assert ran is not None and ran.instance is not None
        edges = [edge.name for edge in rpc.edges_served_by(role)]
        message = f"could not start: {outcome.error}"
        rpc.refuse_until_stopped(ran.run_dir, edges, message, ran.instance)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: gRPC's threads can make it slow or noisy.
    os._exit(code)


def sleep(seconds: float) -> None:
    """time.sleep, looking for signals meanwhile (SIGNAL_CHECK)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, SIGNAL_CHECK))


def join_all(threads: list[threading.Thread]) -> None:
    """Wait for `threads` to end, looking for signals meanwhile (SIGNAL_CHECK)."""
    for thread in threads:
        while thread.is_alive():
            thread.join(SIGNAL_CHECK)
