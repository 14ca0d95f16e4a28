"""fsutil: the one file-safety module every role reads and writes through."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from letskencrypt import fsutil
from letskencrypt.fsutil import FileTooLarge, NotRegularFile


@pytest.fixture
def directory(tmp_path: Path):
    fd = fsutil.open_directory(str(tmp_path))
    yield fd
    os.close(fd)


def test_read_bounded_takes_up_to_the_limit_and_refuses_more(tmp_path: Path) -> None:
    (tmp_path / "exact").write_bytes(b"x" * 10)
    (tmp_path / "over").write_bytes(b"x" * 11)
    assert fsutil.read_file(str(tmp_path / "exact"), 10) == b"x" * 10
    with pytest.raises(FileTooLarge, match="larger than 10 bytes"):
        fsutil.read_file(str(tmp_path / "over"), 10)


def test_read_bounded_on_a_pipe_reads_until_the_end() -> None:
    read_end, write_end = os.pipe()
    for _ in range(3):
        os.write(write_end, b"abc")
    os.close(write_end)
    try:
        assert fsutil.read_bounded(read_end, 9) == b"abcabcabc"
    finally:
        os.close(read_end)


def test_read_file_refuses_symlinks_unless_asked_and_fifos(tmp_path: Path, directory) -> None:
    (tmp_path / "target").write_bytes(b"data")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="symbolic links"):
        fsutil.read_file("link", 100, dir_fd=directory)
    assert fsutil.read_file("link", 100, dir_fd=directory, follow_symlinks=True) == b"data"
    with pytest.raises(NotRegularFile):  # and does not hang on the FIFO
        fsutil.read_file("fifo", 100, dir_fd=directory)


def test_write_new_is_exclusive_and_never_follows_a_symlink(tmp_path: Path, directory) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "outside")
    with pytest.raises(FileExistsError):
        fsutil.write_new("dangling", b"x", 0o400, dir_fd=directory)
    assert not (tmp_path / "outside").exists()
    old = os.umask(0o077)
    try:
        fsutil.write_new("new", b"data" * 100_000, 0o444, dir_fd=directory)
    finally:
        os.umask(old)
    assert (tmp_path / "new").read_bytes() == b"data" * 100_000
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o444
    with pytest.raises(FileExistsError):
        fsutil.write_new("new", b"y", 0o444, dir_fd=directory)


def test_replace_swaps_the_file_and_replaces_a_symlink_not_its_target(
    tmp_path: Path, directory
) -> None:
    (tmp_path / "victim").write_bytes(b"victim")
    (tmp_path / "name").symlink_to(tmp_path / "victim")
    fsutil.replace("name", b"new", 0o444, dir_fd=directory, temp_name=".name.tmp")
    assert (tmp_path / "victim").read_bytes() == b"victim"
    assert not (tmp_path / "name").is_symlink()
    assert (tmp_path / "name").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["name", "victim"]


def test_replace_leaves_no_temp_file_when_the_rename_fails(tmp_path: Path, directory) -> None:
    (tmp_path / "name").mkdir()
    (tmp_path / "name" / "inside").write_bytes(b"")
    with pytest.raises(OSError):
        fsutil.replace("name", b"new", 0o444, dir_fd=directory, temp_name=".name.tmp")
    assert sorted(os.listdir(tmp_path)) == ["name"]


def test_a_role_refuses_an_oversized_configuration() -> None:
    code = "from letskencrypt import process; process.read_config('chngproc')"
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=b"{" + b" " * (64 * 1024) + b"}",
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert b"chngproc: configuration larger than 64 KiB" in result.stderr
