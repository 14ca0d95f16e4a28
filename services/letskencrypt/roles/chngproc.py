"""chngproc: publishes http-01 key authorisations in the challenge directory.

Holds: write access to the challenge directory, nothing else.
Network: none.  Serves: Challenge on the `chng` edge.
File names are validated base64url tokens (no `/`, no `..`), files are written
through a descriptor of the directory and renamed into place, so a caller
cannot make chngproc write anywhere else.  Every file written is removed when
the run ends, whether it succeeded or not.
"""

import os
import secrets
import signal
import threading

import grpc

from letskencrypt import fsutil, process, rpc
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import InputError
from letskencrypt.settings import ChngprocSettings
from letskencrypt.spec import Fs, Grant, RoleSpec
from letskencrypt.v1 import challenge_pb2, challenge_pb2_grpc
from letskencrypt.validate import validate_key_authorization, validate_token

SPEC = RoleSpec(
    name="chngproc",
    summary="publishes and withdraws http-01 challenge files",
    settings=ChngprocSettings,
    serves=("chng",),
    paths=lambda settings: [
        Grant(
            settings.challenge_dir,
            Fs.MAKE_REG | Fs.WRITE_FILE | Fs.REMOVE_FILE,
            what="challenge directory",
        )
    ],
    keeps_root="the challenge directory is the web server's, often writable by root only",
    # It removes its files from the web root even when the supervisor is
    # killed outright: SIGTERM (see rpc.serve_until_stopped), not SIGKILL.
    parent_death_signal=signal.SIGTERM,
)

# One authorisation per name, at most 100 names in an order.
MAX_FILES = 100
# The web server serving the directory reads them.
CHALLENGE_FILE_MODE = 0o444


class ChallengeDirectory:
    """The challenge directory, opened once; remembers every file it wrote."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fd = fsutil.open_directory(path)
        except OSError as error:
            reason = (error.strerror or "cannot open").lower()
            raise InputError(f"challenge directory {path}: {reason}") from None
        self.written: set[str] = set()
        self.lock = threading.Lock()

    def publish(self, token: str, key_authorization: str) -> None:
        with self.lock:
            if token not in self.written and len(self.written) >= MAX_FILES:
                raise InputError(f"more than {MAX_FILES} challenge files in one run")
            # rename replaces a planted symlink itself, never its target.  The
            # directory is not fsynced: the files live for this run only.
            try:
                fsutil.replace(
                    token,
                    key_authorization.encode("ascii"),
                    CHALLENGE_FILE_MODE,
                    dir_fd=self.fd,
                    temp_name=f".{token}.{secrets.token_hex(8)}.tmp",
                    sync_directory=False,
                )
            except OSError as error:
                raise InputError(
                    f"challenge directory {self.path}: cannot write a file: {error.strerror}"
                ) from None
            self.written.add(token)

    def withdraw(self, token: str) -> None:
        with self.lock:
            if token not in self.written:
                raise InputError("no challenge file was written for this token")
            self._remove(token)
            self.written.discard(token)

    def withdraw_all(self) -> None:
        """Remove every file written; the first failure is raised once all were tried."""
        with self.lock:
            failures = []
            for token in sorted(self.written):
                try:
                    self._remove(token)
                except InputError as error:
                    failures.append(error)
            self.written.clear()
            if failures:
                raise failures[0]

    def _remove(self, token: str) -> None:
        try:
            os.unlink(token, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise InputError(
                f"challenge directory {self.path}: cannot remove {token}: {error.strerror}"
            ) from None


class ChallengeService(rpc.Servicer, challenge_pb2_grpc.ChallengeServicer):
    def __init__(self, directory: ChallengeDirectory, log: Logger) -> None:
        super().__init__(log)
        self.directory = directory

    @rpc.guarded
    def Publish(
        self, request: challenge_pb2.PublishRequest, context: grpc.ServicerContext
    ) -> challenge_pb2.PublishReply:
        token = validate_token(request.token)
        key_authorization = validate_key_authorization(token, request.key_authorization)
        self.directory.publish(token, key_authorization)
        self.log.debug(f"published {self.directory.path}/{token}")
        return challenge_pb2.PublishReply()

    @rpc.guarded
    def Withdraw(
        self, request: challenge_pb2.WithdrawRequest, context: grpc.ServicerContext
    ) -> challenge_pb2.WithdrawReply:
        token = validate_token(request.token)
        self.directory.withdraw(token)
        self.log.debug(f"withdrew {self.directory.path}/{token}")
        return challenge_pb2.WithdrawReply()


def run(config: RoleConfig[ChngprocSettings], log: Logger) -> int:
    directory = ChallengeDirectory(config.settings.challenge_dir)
    process.confine(config)
    try:
        rpc.serve_until_stopped(
            config.run_dir,
            {
                "chng": [
                    (
                        challenge_pb2_grpc.add_ChallengeServicer_to_server,
                        ChallengeService(directory, log),
                    )
                ]
            },
            config.instance,
        )
    finally:
        directory.withdraw_all()
    return 0

