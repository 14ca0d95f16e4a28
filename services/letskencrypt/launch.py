"""The one way a role process is started natively: by the supervisor, by
`sandbox-check` for its probes, and by the tests.

A role is `python -m letskencrypt.roles ROLE` with a clean environment, in
"/", in a session of its own with pipes for its stdio (it never holds the
operator's terminal), and its configuration as one JSON document on its
standard input (nothing of it shows in `ps` or the environment).
"""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from letskencrypt import namespace, settings
from letskencrypt.constants import EXIT_FAILED
from letskencrypt.linux import PR_SET_PDEATHSIG, prctl
from letskencrypt.roles import spec_of
from letskencrypt.rpc import EDGES

PASSED_ENVIRONMENT = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "SSL_CERT_FILE",
    "LETSKENCRYPT_LANDLOCK_ABI",
    namespace.DISABLE_VARIABLE,
    "GRPC_VERBOSITY",
)
# gRPC's own log lines (a peer's GOAWAY when the run stops, a failed bind)
# are not for the operator: every failure reaches them as the role's one
# line.  GRPC_VERBOSITY=ERROR (or DEBUG) in our environment brings them back.
GRPC_QUIET = "NONE"
# Where this package is imported from: the one entry of a role's PYTHONPATH
# (a role mirrors and may read every entry of its sys.path, so the caller's
# PYTHONPATH is not passed on).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def role_environment() -> dict[str, str]:
    """The whole environment of a role process (and of sandbox-check's probes)."""
    environment = {k: os.environ[k] for k in PASSED_ENVIRONMENT if k in os.environ}
    environment["PYTHONPATH"] = PACKAGE_ROOT
    environment.setdefault("GRPC_VERBOSITY", GRPC_QUIET)
    return environment


def role_command(role: str) -> list[str]:
    return [sys.executable, "-m", "letskencrypt.roles", role]


def role_document(
    role: str,
    run_dir: str,
    role_settings: settings.RoleSettings,
    *,
    verbosity: int = 0,
    run_user: tuple[int, int] | None = None,
    supervisor_pid: int | None = None,
    edge_tokens: Mapping[str, str] | None = None,
    server_tokens: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """What a role is told on its stdin: its own settings, and the tokens of
    its own edges only.  `run_user` (uid, gid): started as root, the role
    drops to it unless its spec says it keeps root."""
    spec = spec_of(role)
    if not isinstance(role_settings, spec.settings):
        raise TypeError(f"{role} takes {spec.settings.__name__}")

    def own(tokens: Mapping[str, str] | None) -> dict[str, str]:
        return {
            name: token
            for name, token in (tokens or {}).items()
            if role in (EDGES[name].client, EDGES[name].server)
        }

    document: dict[str, Any] = {
        "run_dir": run_dir,
        "verbosity": verbosity,
        "settings": settings.encode(role_settings),
        "edge_tokens": own(edge_tokens),
        "server_tokens": own(server_tokens),
    }
    if supervisor_pid is not None:
        document["supervisor_pid"] = supervisor_pid
    if run_user is not None and spec.keeps_root is None:
        document["uid"], document["gid"] = run_user
    return document


def dies_with(supervisor: int) -> Callable[[], None]:
    """A child's pre-exec step: get SIGKILL when `supervisor` dies, from birth.

    The role sets its parent-death signal again once it has confined itself
    (a change of credentials clears it), but it takes a second or two to get
    there, and its check for a dead parent then (`getppid() == 1`) misses an
    orphan adopted by a subreaper (systemd, tini -s, ...): a supervisor
    killed during that time would leave the roles to do the run on their own.
    """

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != supervisor:
            os._exit(EXIT_FAILED)

    return preexec


def start_role(
    role: str,
    document: Mapping[str, Any],
    *,
    argv: Sequence[str] | None = None,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    pass_fds: Sequence[int] = (),
    dies_with_us: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `role` (or `argv` in its place: a probe, an attacker) and hand it
    `document` (see role_document)."""
    process = subprocess.Popen(
        list(argv or role_command(role)),
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=stderr,
        env=role_environment(),
        close_fds=True,
        pass_fds=tuple(pass_fds),
        cwd="/",
        start_new_session=True,
        preexec_fn=dies_with(os.getpid()) if dies_with_us else None,
    )
    assert process.stdin is not None
    try:
        process.stdin.write(json.dumps(document).encode())
        process.stdin.close()
    except BrokenPipeError:
        # It died before reading: its status and stderr say why.
        pass
    return process

