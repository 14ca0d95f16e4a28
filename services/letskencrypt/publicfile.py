"""Files the command line leaves for others to read (the run state, the
metrics textfile): replaced atomically, so that a reader sees the old file
or the new one, never a part.

The data goes to a new temporary file in the same directory (created
exclusively, never through a symlink), is fsynced, renamed over the final
name (a symlink there is replaced, not followed) and the directory fsynced:
see fsutil.replace.  OSError is the caller's to report.
"""

import os
import secrets

from letskencrypt import fsutil

PUBLIC_MODE = 0o644


def temp_name(name: str) -> str:
    return f".{name}.tmp-{secrets.token_hex(4)}"


def replace_file(path: str, data: bytes, *, create_parent: bool = False) -> None:
    """Make `path` a complete mode-0644 file holding `data`.

    With `create_parent` a missing directory (and its parents) is made, 0755.
    """
    directory, name = os.path.split(os.path.abspath(path))
    if create_parent:
        fsutil.make_directories(directory, fsutil.PARENT_MODE)
    dir_fd = fsutil.open_directory(directory)
    try:
        fsutil.replace(name, data, PUBLIC_MODE, dir_fd=dir_fd, temp_name=temp_name(name))
    finally:
        os.close(dir_fd)
