"""What a running role is given: its configuration (RoleConfig), read from
the supervisor or built by the container entry point, and its logger."""

import sys
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from letskencrypt.settings import RoleSettings
from letskencrypt.validate import safe_text

SettingsType = TypeVar("SettingsType", bound=RoleSettings)


@dataclass
class RoleConfig(Generic[SettingsType]):
    """The part of the configuration every role shares, plus its own settings."""

    role: str
    run_dir: str
    settings: SettingsType
    verbosity: int = 0
    # Set when started as root and this role must drop to an unprivileged user.
    uid: int | None = None
    gid: int | None = None
    # Started by the native supervisor (dies with it), not a container runtime.
    supervised: bool = True
    supervisor_pid: int | None = None
    # edge -> secret shared with the role at the other end (native mode only).
    edge_tokens: dict[str, str] = field(default_factory=dict)
    # edge -> secret by which the server proves itself to the client (rpc.py).
    server_tokens: dict[str, str] = field(default_factory=dict)
    # A container pod renewing a configuration file's certificates one after
    # another: this one's number, which names its sockets (rpc.socket_path).
    # A role serving every certificate of a native run (host.py): the
    # certificate's number in the run.
    instance: int | None = None
    # Which of a role's processes that serve part of a native run's
    # certificates this is (acctproc: one per account, see host.py); it
    # names its sockets' directory (rpc.socket_path).
    part: int | None = None
    # That role's own configuration: the other certificates' settings, whose
    # paths its sandbox takes in too (sandbox.profile).
    more_settings: tuple[SettingsType, ...] = ()

    @property
    def every_settings(self) -> tuple[SettingsType, ...]:
        return (self.settings, *self.more_settings)


class Logger:
    """One line per message on stderr, prefixed with the role, safe for a terminal."""

    def __init__(self, role: str, verbosity: int, certificate: int | None = None) -> None:
        self.role = role
        self.verbosity = verbosity
        # A role serving every certificate of a run (host.py) says which
        # one a line is about: "letskencrypt@<number>: ", see relay.py.
        self.prefix = "letskencrypt: " if certificate is None else f"letskencrypt@{certificate}: "

    def error(self, message: str) -> None:
        self._write(message)

    def notice(self, message: str) -> None:
        """Not an error, but shown without -v: a lasting change the operator
        should see (e.g. a key recorded as compromised)."""
        self._write(message)

    def info(self, message: str) -> None:
        if self.verbosity >= 1:
            self._write(message)

    def debug(self, message: str) -> None:
        if self.verbosity >= 2:
            self._write(message)

    def _write(self, message: str) -> None:
        sys.stderr.write(f"{self.prefix}{self.role}: {safe_text(message, 2000)}\n")
        sys.stderr.flush()
