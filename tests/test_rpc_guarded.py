"""rpc.guarded: our errors reach the caller, anything else only the role's log."""

import errno
import os

import grpc
import pytest
from letskencrypt import rpc
from letskencrypt.errors import InputError


class Aborted(Exception):
    pass


class FakeContext:
    code: grpc.StatusCode | None = None
    details = ""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def error(self, message: str) -> None:
        self.lines.append(("error", message))

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def debug(self, message: str) -> None:
        self.lines.append(("debug", message))


class Service(rpc.Servicer):
    @rpc.guarded
    def Ours(self, request: str, context: grpc.ServicerContext) -> str:
        raise InputError(f"bad {request}")

    @rpc.guarded
    def Bug(self, request: str, context: grpc.ServicerContext) -> str:
        raise RuntimeError("secret detail")

    @rpc.guarded
    def Disk(self, request: str, context: grpc.ServicerContext) -> str:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"/var/www/acme/{request}")

    @rpc.guarded
    def Fine(self, request: str, context: grpc.ServicerContext) -> str:
        self.log.info("served")
        return request.upper()


def test_our_errors_reach_the_caller_and_not_the_log() -> None:
    log = RecordingLog()
    context = FakeContext()
    with pytest.raises(Aborted):
        Service(log).Ours("x", context)
    assert (context.code, context.details) == (grpc.StatusCode.INVALID_ARGUMENT, "bad x")
    assert log.lines == []


def test_anything_else_is_hidden_from_the_caller_and_logged() -> None:
    log = RecordingLog()
    context = FakeContext()
    with pytest.raises(Aborted):
        Service(log).Bug("x", context)
    assert (context.code, context.details) == (grpc.StatusCode.INTERNAL, "internal error")
    assert log.lines == [("error", "internal error in Bug: secret detail")]


def test_a_local_file_problem_reaches_the_caller_in_plain_words() -> None:
    """Not a bug: no "internal error", no Python type, the path and the reason."""
    log = RecordingLog()
    context = FakeContext()
    with pytest.raises(Aborted):
        Service(log).Disk("x", context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert context.details == "/var/www/acme/x: No space left on device"
    assert log.lines == []


def test_a_servicer_logs_to_the_same_log() -> None:
    log = RecordingLog()
    assert Service(log).Fine("x", FakeContext()) == "X"
    assert log.lines == [("info", "served")]
