"""File safety: the one place where the roles read, write and replace files.

- `read_bounded` / `read_file`: at most N bytes, FileTooLarge beyond, and
  only from a regular file (a FIFO or device planted at the path neither
  blocks nor feeds us without end: O_NONBLOCK, then fstat).
- `write_all`: loops over os.write, which may write less than asked.
- `write_new`: a new file, created exclusively (O_EXCL|O_NOFOLLOW, so never
  through a planted symlink), written, given its mode, fsynced; removed
  again if any of that fails.
- `replace`: `write_new` under a temporary name in the same directory, then
  renamed over the final name (rename replaces a symlink, never its target),
  then the directory fsynced: a reader sees the old file or the new one.
- `make_directories`, `fsync_directory`.

Every function takes `dir_fd`: a descriptor of the directory, opened before
the role confined itself, so that only the last component is looked up.
The callers turn OSError, FileTooLarge and NotRegularFile into their own
messages.
"""

import os
import stat

# Directories above a key or the certificate directory: others must be able
# to traverse them (a web server reads the certificates).
PARENT_MODE = 0o755
# Keys: created exclusively, readable by their owner only, in a private directory.
KEY_FILE_MODE = 0o400
KEY_DIR_MODE = 0o700
MAX_KEY_FILE_SIZE = 64 * 1024

# O_NONBLOCK: a FIFO planted at the path must not hang the open.
READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
NOFOLLOW_READ_FLAGS = READ_FLAGS | os.O_NOFOLLOW
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# A new file is private until complete; `write_new` then gives it its mode.
PRIVATE_MODE = 0o600


class FileTooLarge(Exception):
    """The file holds more than `limit` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


class NotRegularFile(Exception):
    """Something other than a regular file is at the name."""

    def __init__(self) -> None:
        super().__init__("not a regular file")


# --- reading ---------------------------------------------------------------------


def read_bounded(fd: int, limit: int) -> bytes:
    """Everything `fd` holds, if that is at most `limit` bytes; else FileTooLarge.

    Reads one byte past the limit, so a file that grew since an fstat (or a
    pipe) is caught too.
    """
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = os.read(fd, limit + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
        raise FileTooLarge(limit)
    return b"".join(chunks)


def check_regular(fd: int) -> os.stat_result:
    """fstat of `fd`; NotRegularFile unless it is a regular file."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFile
    return info


def read_file(
    name: str, limit: int, *, dir_fd: int | None = None, follow_symlinks: bool = False
) -> bytes:
    """The bytes of the regular file `name` (relative to `dir_fd`), at most `limit`.

    Never follows a symlink in the last component unless asked.  OSError
    from open or read, NotRegularFile, FileTooLarge.
    """
    flags = READ_FLAGS if follow_symlinks else NOFOLLOW_READ_FLAGS
    fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        check_regular(fd)
        return read_bounded(fd, limit)
    finally:
        os.close(fd)


# --- writing ---------------------------------------------------------------------


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data`: os.write may write less than it is given."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def open_new(name: str, create_mode: int = PRIVATE_MODE, *, dir_fd: int | None = None) -> int:
    """Create `name` exclusively for writing: fails if anything is there,
    a dangling symlink included (O_EXCL|O_NOFOLLOW)."""
    return os.open(name, CREATE_FLAGS, create_mode, dir_fd=dir_fd)


def complete_new(fd: int, name: str, data: bytes, mode: int, *, dir_fd: int | None = None) -> None:
    """Write `data` to the new file `fd` (named `name`), chmod it to `mode`,
    fsync and close it; if anything fails, close and remove it.

    fchmod: the creation mode is subject to umask; before the fsync, so
    that the mode is as durable as the data.
    """
    try:
        write_all(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(fd)


def write_new(
    name: str,
    data: bytes,
    mode: int,
    *,
    dir_fd: int | None = None,
    create_mode: int = PRIVATE_MODE,
) -> None:
    """Create `name` exclusively, complete with `data` and `mode`, fsynced
    (the directory is not: see `replace`)."""
    fd = open_new(name, create_mode, dir_fd=dir_fd)
    complete_new(fd, name, data, mode, dir_fd=dir_fd)


def replace(
    name: str,
    data: bytes,
    mode: int,
    *,
    dir_fd: int,
    temp_name: str,
    create_mode: int = PRIVATE_MODE,
    sync_directory: bool = True,
) -> None:
    """Atomically replace `name` in `dir_fd` with a complete file of `data`.

    The data goes to `temp_name` (a new file in the same directory, see
    write_new), which is then renamed over `name`: a reader sees either the
    old file or the whole new one, and a symlink at `name` is replaced,
    never followed.  With `sync_directory` the directory is fsynced, so the
    rename survives a crash; a caller replacing several files may leave
    that to one fsync of its own.
    """
    write_new(temp_name, data, mode, dir_fd=dir_fd, create_mode=create_mode)
    try:
        os.rename(temp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        os.unlink(temp_name, dir_fd=dir_fd)
        raise
    if sync_directory:
        os.fsync(dir_fd)


# --- directories -----------------------------------------------------------------


def make_directories(path: str, mode: int) -> None:
    """Create `path` with `mode`, and any missing parents with 0755, durably.

    Explicit chmod, because each role's umask (0o007) would otherwise decide.
    """
    missing: list[str] = []
    current = path
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        wanted = mode if directory == path else PARENT_MODE
        try:
            os.mkdir(directory, wanted)
        except FileExistsError:
            continue
        os.chmod(directory, wanted)
        fsync_directory(os.path.dirname(directory))


def open_directory(path: str) -> int:
    return os.open(path, DIRECTORY_FLAGS)


def fsync_directory(path: str) -> None:
    fd = open_directory(path)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
