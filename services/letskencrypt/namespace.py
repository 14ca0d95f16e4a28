"""Private namespaces for a native role: it sees only its own paths.

Landlock decides what a role may do with the paths it can name; it does not
govern connect() to a named unix socket, and old kernels have little or none
of it.  So each native role, while it is still privileged, also moves into
namespaces of its own (like a container, or OpenBSD's unveil):

- a mount namespace whose root is a fresh, read-only tmpfs holding bind
  mounts of exactly the paths of the role's profile (read-only unless the
  role writes there), its own /proc/<pid>, /dev/null and /dev/urandom.
  Nothing else of the host exists for it: no /run, no /tmp, no docker or
  D-Bus socket, no other edge's directory, no key it does not hold, no
  /dev/tty;
- a network namespace of its own for every role without network: no
  interface but a down loopback, and none of the host's abstract unix
  sockets (those belong to a network namespace);
- an IPC namespace of its own (no System V IPC or POSIX message queues of
  the host);
- when started by an ordinary user, first a user namespace mapping only that
  user to itself, which is what lets it create the others.  The capabilities
  it holds there are dropped with every other (process.drop_capabilities).

`enter` returns what it could not apply; the caller reports it like the
other sandbox gaps.  Container runtimes give each role this isolation
already, so container mode does not call it.
"""

import ctypes
import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from letskencrypt.linux import PR_GET_DUMPABLE, PR_SET_DUMPABLE, prctl

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
# A remount inside a user namespace must keep the flags the original mount
# has ("locked" flags), or the kernel refuses it: statvfs says which.
STATVFS_TO_MOUNT = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# Set to 1, the roles do without namespaces: for the tests that show what the
# other layers hold alone, and for hosts where they misbehave.
DISABLE_VARIABLE = "LETSKENCRYPT_NO_NAMESPACES"
OLD_ROOT = ".old-root"
# Enough for the directories and mount points of a role's tree.
ROOT_TMPFS_OPTIONS = "mode=0755,size=1m,nr_inodes=4096"
NAMESPACES = "namespaces"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class NamespaceError(OSError):
    """A namespace step failed; str() says which."""


class Unavailable(NamespaceError):
    """The kernel would not create the namespaces: nothing was changed."""


def _check(result: int, what: str) -> None:
    if result < 0:
        error = ctypes.get_errno()
        raise NamespaceError(error, f"{what}: {os.strerror(error)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode() if source is not None else None,
            target.encode(),
            fstype.encode() if fstype is not None else None,
            ctypes.c_ulong(flags),
            data.encode() if data is not None else None,
        ),
        f"mount {target}",
    )


def unshare(flags: int) -> None:
    if _libc.unshare(ctypes.c_int(flags)) < 0:
        error = ctypes.get_errno()
        raise Unavailable(error, f"unshare: {os.strerror(error)}")


@dataclass(frozen=True)
class Mirror:
    """A host path that appears at the same path inside the role's root."""

    path: str
    writable: bool


def enter(mirrors: Iterable[Mirror], network: bool, root_dir: str) -> None:
    """Move this process into its own namespaces, seeing only `mirrors`.

    `root_dir`: an existing directory (the run directory) over which the new
    root is mounted; it disappears from view like everything else.
    Raises Unavailable if the kernel refuses the namespaces (this process
    is unchanged then), NamespaceError if a later step fails (it is not).
    """
    wanted = list(mirrors)
    if os.getuid() != 0 and not _state.own_user_namespace:
        enter_user_namespace()
    unshare(CLONE_NEWNS | CLONE_NEWIPC | (0 if network else CLONE_NEWNET))
    # Nothing we mount from here on propagates back to the host.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    sources = _open_sources(wanted)
    try:
        _mount("tmpfs", root_dir, "tmpfs", MS_NOSUID | MS_NODEV, ROOT_TMPFS_OPTIONS)
        for mirror, fd in sources:
            _bind(fd, mirror, root_dir)
        _mirror_proc(root_dir)
    finally:
        for _mirror, fd in sources:
            os.close(fd)
    _pivot(root_dir)


class _State:
    own_user_namespace = False


_state = _State()


def enter_user_namespace() -> None:
    """For an ordinary user: a user namespace in which we are still ourselves
    and may make the other namespaces.

    Writing the maps needs this process dumpable for a moment (a process's
    /proc files belong to root otherwise), so the native roles call this
    first thing, before they hold any secret (process.start); a process that
    is not dumpable is so again afterwards.
    """
    uid, gid = os.getuid(), os.getgid()
    unshare(CLONE_NEWUSER)
    was_dumpable = prctl(PR_GET_DUMPABLE)
    if not was_dumpable:
        prctl(PR_SET_DUMPABLE, 1)
    try:
        _map_self(uid, gid)
    finally:
        if not was_dumpable:
            prctl(PR_SET_DUMPABLE, 0)
    _state.own_user_namespace = True


def _map_self(uid: int, gid: int) -> None:
    """In a new user namespace, be the same user (and group) as outside."""
    with open("/proc/self/setgroups", "w") as setgroups:
        setgroups.write("deny")
    with open("/proc/self/uid_map", "w") as uid_map:
        uid_map.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as gid_map:
        gid_map.write(f"{gid} {gid} 1")


def _open_sources(mirrors: list[Mirror]) -> list[tuple[Mirror, int]]:
    """O_PATH descriptors of the paths that exist: mounting the new root hides
    the old one, and /proc/self/fd/N still names the file."""
    opened: list[tuple[Mirror, int]] = []
    seen: set[str] = set()
    for mirror in sorted(mirrors, key=lambda m: m.path):
        path = os.path.normpath(mirror.path)
        if path == "/" or path in seen:
            continue
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        seen.add(path)
        opened.append((Mirror(path, mirror.writable), fd))
    return opened


def _make_target(root_dir: str, path: str, directory: bool) -> str:
    """The empty directory or file in the new root that `path` is mounted on;
    every directory on the way is 0755 whatever the umask, so that a role
    that drops to another user still gets through."""
    target = root_dir + path
    missing = []
    parent = target if directory else os.path.dirname(target)
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory_path in reversed(missing):
        os.mkdir(directory_path)
        os.chmod(directory_path, 0o755)  # noqa: S103 - our tmpfs, nothing secret
    if not directory and not os.path.lexists(target):
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    return target


def _bind(fd: int, mirror: Mirror, root_dir: str) -> None:
    directory = stat.S_ISDIR(os.fstat(fd).st_mode)
    target = _make_target(root_dir, mirror.path, directory)
    source = f"/proc/self/fd/{fd}"
    _mount(source, target, None, MS_BIND | MS_REC)
    locked = _locked_flags(source)
    if mirror.writable:
        # Only what the mount had already, plus no set-uid and no devices.
        extra = MS_NOSUID | (0 if _is_device(fd) else MS_NODEV)
    else:
        extra = MS_RDONLY | MS_NOSUID | (0 if _is_device(fd) else MS_NODEV)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | locked | extra)


def _is_device(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _locked_flags(path: str) -> int:
    try:
        have = os.statvfs(path).f_flag
    except OSError:
        return 0
    flags = 0
    for statvfs_flag, mount_flag in STATVFS_TO_MOUNT:
        if have & statvfs_flag:
            flags |= mount_flag
    return flags


def _mirror_proc(root_dir: str) -> None:
    """Only this process's own /proc entry, and /proc/self pointing at it."""
    pid = os.getpid()
    fd = os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        target = _make_target(root_dir, f"/proc/{pid}", directory=True)
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND)
    finally:
        os.close(fd)
    os.symlink(str(pid), f"{root_dir}/proc/self")


def _pivot(root_dir: str) -> None:
    old = os.path.join(root_dir, OLD_ROOT)
    os.mkdir(old, 0o700)
    machine = os.uname().machine
    number = SYS_PIVOT_ROOT.get(machine)
    if number is None:
        raise NamespaceError(errno.ENOSYS, f"pivot_root: unknown on {machine}")
    _check(_libc.syscall(ctypes.c_long(number), root_dir.encode(), old.encode()), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(f"/{OLD_ROOT}".encode(), ctypes.c_int(MNT_DETACH)), "umount old root")
    os.rmdir(f"/{OLD_ROOT}")
    # The tree itself is fixed from now on; the bind mounts keep their own modes.
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def disabled() -> bool:
    return os.environ.get(DISABLE_VARIABLE, "") == "1"


def available() -> str | None:
    """None if this process could enter namespaces, else why not.

    Tried in a child, so that nothing of this process changes.
    """
    if disabled():
        return f"turned off by {DISABLE_VARIABLE}=1"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        reason = b""
        try:
            if os.getuid() != 0:
                unshare(CLONE_NEWUSER)
                _map_self(os.getuid(), os.getgid())
            unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET)
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
        except OSError as error:
            reason = str(error).encode()[:500]
        os.write(write_end, reason)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        reason = reader.read()
    os.waitpid(pid, 0)
    return reason.decode(errors="replace") or None
