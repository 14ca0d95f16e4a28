"""Every message a user can see is one line of plain words (issue 8): a
local file problem in a role names the path and the reason, never a Python
type, and "internal error" is kept for real bugs."""

import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from letskencrypt.errors import InputError, plain_words
from letskencrypt.roles import chngproc


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/etc/ssl/acme"),
         "/etc/ssl/acme: Permission denied"),
        (OSError(errno.EXDEV, "Invalid cross-device link", "/a/key.pem", None, "/b/key.pem"),
         "/a/key.pem -> /b/key.pem: Invalid cross-device link"),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (ValueError("a bad value"), "a bad value"),
        (AssertionError(), "AssertionError"),
    ],
)  # fmt: skip
def test_plain_words(error: BaseException, words: str) -> None:
    assert plain_words(error) == words


ROLE_FAILING_WITH = """
import sys
from letskencrypt import process, settings
from letskencrypt.context import RoleConfig
from letskencrypt.roles import chngproc

def run(config, log):
    raise {error}

chngproc.run = run
config = RoleConfig(role="chngproc", run_dir="/nonexistent",
                    settings=settings.ChngprocSettings(challenge_dir="/var/www/acme"),
                    supervised=False)
process.run_role("chngproc", config)
"""


@pytest.mark.parametrize(
    ("error", "line"),
    [
        ('PermissionError(13, "Permission denied", "/var/www/acme/.tok.tmp")',
         "letskencrypt: chngproc: /var/www/acme/.tok.tmp: Permission denied"),
        ('ImportError("cannot import name _server from grpc")',
         "letskencrypt: chngproc: cannot load its code (cannot import name _server from "
         "grpc): is the installation readable?"),
        ('RuntimeError("the impossible happened")',
         "letskencrypt: chngproc: internal error (a bug; please report it): "
         "the impossible happened"),
    ],
)  # fmt: skip
def test_a_role_that_fails_says_so_in_one_line(error: str, line: str) -> None:
    code = textwrap.dedent(ROLE_FAILING_WITH).format(error=error)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [line]


def test_a_challenge_directory_gone_during_the_run(tmp_path: Path) -> None:
    directory = tmp_path / "acme"
    directory.mkdir()
    challenges = chngproc.ChallengeDirectory(str(directory))
    directory.rmdir()  # held open; writing in it now fails
    token = "a" * 43
    with pytest.raises(InputError) as raised:
        challenges.publish(token, f"{token}.{'b' * 43}")
    assert str(raised.value) == (
        f"challenge directory {directory}: cannot write a file: No such file or directory"
    )


def test_a_role_whose_module_cannot_load_says_so_in_one_line() -> None:
    """A wheel missing from the role's image: one line, before any traceback."""
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "from letskencrypt import process; process.run_role('keyproc')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], input="{}", capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "letskencrypt: keyproc: cannot load its code (import of cryptography halted; None in "
        "sys.modules): is the installation readable?"
    ]
