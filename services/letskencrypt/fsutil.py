"""File-system helpers shared by the roles that create directories."""

import os

# Directories above a key or the certificate directory: others must be able
# to traverse them (a web server reads the certificates).
PARENT_MODE = 0o755
# Keys: created exclusively, readable by their owner only, in a private directory.
KEY_FILE_MODE = 0o400
KEY_DIR_MODE = 0o700
MAX_KEY_FILE_SIZE = 64 * 1024


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


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
