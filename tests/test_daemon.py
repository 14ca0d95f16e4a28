"""Daemon (sidecar) mode, native: renews when due, survives a CA outage with
backoff, tells the web server through `.generation`, stops cleanly on SIGTERM;
and (on a fake clock) never orders again sooner than the CA asked."""

import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from letskencrypt import acme
from letskencrypt.constants import EXIT_CHANGED
from letskencrypt.errors import InputError, LetskencryptError
from letskencrypt.roles import netproc
from letskencrypt.settings import NetprocSettings, Schedule

from tests.conftest import LETSKENCRYPT, Paths
from tests.pebble import Pebble


class Switch:
    """A loopback TCP forwarder to pebble that can be turned off (a CA outage)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self.pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def pipe(a: socket.socket, b: socket.socket) -> None:
        with a, b:
            while True:
                ready, _, _ = select.select([a, b], [], [], 30)
                if not ready:
                    return
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (b if source is a else a).sendall(data)

    def close(self) -> None:
        self.closed = True
        self.listener.close()


@pytest.fixture
def switch(pebble: Pebble) -> Iterator[Switch]:
    forwarder = Switch(urlsplit(pebble.directory_url).port or 443)
    yield forwarder
    forwarder.close()


def start_daemon(pebble: Pebble, paths: Paths, server: str, *args: str) -> subprocess.Popen[str]:
    argv = [
        LETSKENCRYPT, "-v", "-n", "-N", "--daemon", "--server", server,
        "--ca-bundle", pebble.ca_bundle, "--trust-anchors", pebble.trust_anchors,
        "-C", str(paths.challenge_dir),
        "-c", str(paths.cert_dir), "-f", str(paths.account_key), "-k", str(paths.domain_key),
        *args,
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def generation(paths: Paths) -> str:
    try:
        return (paths.cert_dir / ".generation").read_text()
    except FileNotFoundError:
        return ""


def stop(daemon: subprocess.Popen[str]) -> str:
    daemon.send_signal(signal.SIGTERM)
    _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr
    return stderr


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_daemon_renews_when_due_and_stops_on_sigterm(pebble: Pebble, paths: Paths) -> None:
    daemon = start_daemon(
        pebble, paths, pebble.directory_url, "--interval", "1", "--jitter", "0.2",
        "daemon.example.org",
    )
    try:
        wait_for(lambda: generation(paths), 60, "the first certificate")
        first = generation(paths)
        certificate = (paths.cert_dir / "cert.pem").read_bytes()

        # Up to date: the checks go on, but no request reaches the CA.
        before = pebble.request_count()
        time.sleep(3)
        assert pebble.request_count() == before
        assert generation(paths) == first

        # The certificate goes away (as if it expired): the next check renews.
        os.unlink(paths.cert_dir / ".live")
        wait_for(lambda: generation(paths) not in ("", first), 60, "a renewal")
        assert (paths.cert_dir / "cert.pem").read_bytes() != certificate
        roles = children_of(daemon.pid)
        assert len(roles) == 8
    finally:
        stderr = stop(daemon)
    assert "installed a new certificate" in stderr
    for pid in roles:
        assert not Path(f"/proc/{pid}").exists()
    assert list(paths.challenge_dir.iterdir()) == []


def test_daemon_survives_a_ca_outage_with_backoff(
    pebble: Pebble, paths: Paths, switch: Switch
) -> None:
    server = f"https://localhost:{switch.port}/dir"
    daemon = start_daemon(
        pebble, paths, server, "--interval", "30", "--jitter", "0", "--backoff", "1",
        "outage.example.org",
    )
    try:
        # The CA is down: failures, each followed by a longer wait.
        time.sleep(5)
        assert daemon.poll() is None, "the daemon must survive the outage"
        assert generation(paths) == ""
        switch.up = True
        wait_for(lambda: generation(paths), 60, "a certificate once the CA is back")
    finally:
        stderr = stop(daemon)
    attempts = [line for line in stderr.splitlines() if "(attempt " in line]
    assert len(attempts) >= 2, stderr
    delays = [float(line.rsplit("next in ", 1)[1].split()[0]) for line in attempts]
    assert delays[1] > delays[0], delays
    assert "installed a new certificate" in stderr


# --- the wait after a failure, on a fake clock ----------------------------------------

SCHEDULE = Schedule(interval=43200.0, jitter=0.0, backoff=60.0)
DAY = 86400.0


def rate_limited(retry_after: float | None) -> acme.AcmeError:
    return acme.AcmeError(
        "HTTP 429: rateLimited: too many certificates",
        problem_type=acme.RATE_LIMITED,
        status=429,
        retry_after=retry_after,
    )


@pytest.mark.parametrize(
    ("error", "failures", "low", "high", "why"),
    [
        (InputError("no network"), 1, 45.0, 60.0, ""),
        (acme.AcmeError("HTTP 503", retry_after=10.0), 1, 45.0, 60.0, ""),
        (acme.AcmeError("HTTP 503", retry_after=3600.0), 1, 3600.0, 3600.0, ", as the CA asks"),
        (rate_limited(None), 1, 43200.0, 43200.0, ", the interval, after a rate limit"),
        (
            rate_limited(30 * DAY),
            1,
            7 * DAY,
            7 * DAY,
            ", the longest wait, though the CA asks for 2592000 s",
        ),
        # The daemon's own backoff has grown beyond what the CA asks.
        (rate_limited(3600.0), 10, 23040.0, 30720.0, ""),
    ],
)
def test_wait_after_failure(
    error: LetskencryptError, failures: int, low: float, high: float, why: str
) -> None:
    for _ in range(20):  # the backoff's random part
        delay, reason = netproc.wait_after_failure(SCHEDULE, failures, error)
        assert low <= delay <= high
        assert reason == why


class FakeEvent:
    """keep_renewing's threading.Event: wait() moves a fake clock, at once."""

    now = 0.0
    last: "FakeEvent | None" = None

    def __init__(self) -> None:
        self.flag = False
        FakeEvent.now = 0.0
        FakeEvent.last = self

    def is_set(self) -> bool:
        return self.flag

    def set(self) -> None:
        self.flag = True

    def wait(self, seconds: float) -> bool:
        FakeEvent.now += seconds
        return self.flag


class Lines:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, message: str) -> None:
        self.errors.append(message)

    def info(self, message: str) -> None:
        pass


def test_daemon_orders_again_no_sooner_than_the_ca_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes: list[object] = [rate_limited(7200.0), rate_limited(None), EXIT_CHANGED]
    checks: list[float] = []

    def obtain(
        _peers: object, _settings: object, _ca_pem: bytes, _log: object, _ari: object = None
    ) -> int:
        checks.append(FakeEvent.now)
        outcome = outcomes.pop(0)
        if not outcomes and FakeEvent.last is not None:
            FakeEvent.last.set()  # SIGTERM after this check
        if isinstance(outcome, LetskencryptError):
            raise outcome
        assert isinstance(outcome, int)
        return outcome

    monkeypatch.setattr(netproc, "obtain", obtain)
    monkeypatch.setattr(netproc, "threading", SimpleNamespace(Event=FakeEvent))
    no_signals = SimpleNamespace(signal=lambda *_args: None, SIGTERM=signal.SIGTERM)
    monkeypatch.setattr(netproc, "signal", no_signals)
    log = Lines()
    settings = NetprocSettings(directory_url="https://ca.test/dir", names=("a.test",))
    assert netproc.keep_renewing(None, settings, SCHEDULE, b"", log) == 0  # type: ignore[arg-type]
    # Retry-After 7200 s, then a rate limit without one: the whole interval.
    assert checks == [0.0, 7200.0, 7200.0 + 43200.0]
    assert log.errors == [
        "HTTP 429: rateLimited: too many certificates (attempt 1; next in 7200 s, as the CA asks)",
        "HTTP 429: rateLimited: too many certificates "
        "(attempt 2; next in 43200 s, the interval, after a rate limit)",
        "installed a new certificate",
    ]
