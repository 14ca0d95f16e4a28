"""A real run, started from a terminal as an operator would: no role holds
the terminal or shares the supervisor's session, every role ends with no
capability at all, Ctrl-C stops the run cleanly, and what the roles print
reaches the terminal only through the supervisor's relay, made safe."""

import fcntl
import os
import pty
import select
import subprocess
import tempfile
import termios
import time
from pathlib import Path

from letskencrypt import process, relay
from letskencrypt.roles import spec_of

from tests.conftest import LETSKENCRYPT, Paths
from tests.pebble import Pebble

ROLES = {"netproc", "acctproc", "keyproc", "dnsproc", "chngproc", "certproc", "fileproc",
         "revokeproc"}  # fmt: skip


def controlling_terminal(slave: int) -> None:
    """A child's pre-exec step: a session of its own with `slave` as its
    terminal, in the foreground, as a shell gives a command."""
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)


def read_available(master: int, into: bytearray, wait: float = 0.0) -> None:
    while select.select([master], [], [], wait)[0]:
        try:
            data = os.read(master, 65536)
        except OSError:
            return
        if not data:
            return
        into += data
        wait = 0.0


def status_fields(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def confined(pid: int) -> bool:
    """The role has applied its sandbox, second stage included where it has one."""
    fields = status_fields(pid)
    want = "2" if spec_of(fields["Name"]).serves_only else "1"
    return fields["Seccomp"] == "2" and fields.get("Seccomp_filters") == want


def test_roles_hold_no_terminal_no_capability_and_ctrl_c_stops_the_run(
    pebble: Pebble, paths: Paths
) -> None:
    master, slave = pty.openpty()
    argv = [
        LETSKENCRYPT, "-v", "-n", "-N", "--daemon", "--interval", "3600",
        "--server", pebble.directory_url, "--ca-bundle", pebble.ca_bundle,
        "--trust-anchors", pebble.trust_anchors,
        "-C", str(paths.challenge_dir), "-c", str(paths.cert_dir),
        "-f", str(paths.account_key), "-k", str(paths.domain_key), "tty.example.org",
    ]  # fmt: skip
    client = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
        preexec_fn=lambda: controlling_terminal(slave),
    )  # fmt: skip
    os.close(slave)
    output = bytearray()
    try:
        # The first certificate: chngproc and fileproc wrote as root, without
        # any capability, into root's 0755 directories.
        deadline = time.monotonic() + 60
        while not (paths.cert_dir / ".generation").exists():
            assert client.poll() is None, output.decode(errors="replace")
            assert time.monotonic() < deadline, output.decode(errors="replace")
            read_available(master, output, 0.1)
        roles = {status_fields(pid)["Name"]: pid for pid in children_of(client.pid)}
        assert set(roles) == ROLES
        for name, pid in roles.items():
            assert confined(pid), name
            session, tty_nr = int(stat_fields(pid)[3]), int(stat_fields(pid)[4])
            assert session == pid != os.getsid(client.pid), name
            assert tty_nr == 0, name
            for fd in (0, 1, 2):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                assert not target.startswith(("/dev/pts", "/dev/tty", "/dev/ptmx")), (name, fd)
            fields = status_fields(pid)
            sets = {key: int(fields[key], 16) for key in process.CAPABILITY_SETS}
            assert sets == dict.fromkeys(process.CAPABILITY_SETS, 0), (name, sets)
            for task in Path(f"/proc/{pid}/task").iterdir():
                try:
                    task_status = (task / "status").read_text()
                except FileNotFoundError:
                    continue  # a thread (one of gRPC's) that ended meanwhile
                assert "CapEff:\t0000000000000000" in task_status, name
        # The supervisor is the session leader with the terminal, in the foreground.
        assert int(stat_fields(client.pid)[4]) != 0
        # Ctrl-C, typed at the terminal.
        os.write(master, b"\x03")
        deadline = time.monotonic() + 30
        while client.poll() is None:
            assert time.monotonic() < deadline, output.decode(errors="replace")
            read_available(master, output, 0.1)
        read_available(master, output, 0.2)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        os.close(master)
    text = output.decode(errors="replace")
    assert client.returncode == 0, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    # The roles' lines came through the relay (netproc's, with -v).
    assert "letskencrypt: netproc: stopping on SIGTERM" in text, text
    for pid in roles.values():
        assert not Path(f"/proc/{pid}").exists()
    assert list(paths.challenge_dir.iterdir()) == []


# --- the relay, on its own ------------------------------------------------------------


def relayed(*chunks: bytes) -> list[str]:
    """What a Relay writes (to a file) for a role that printed `chunks` on stderr."""
    role_read, role_write = os.pipe()
    with tempfile.TemporaryFile() as output:
        lines = relay.Relay(output=output.fileno())
        lines.add("keyproc", os.fdopen(role_read, "rb", buffering=0))
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                written = os.write(role_write, view[:60000])
                view = view[written:]
                lines.pump(0.01)
        os.close(role_write)
        lines.close()
        output.seek(0)
        return output.read().decode().splitlines()


def test_the_relay_makes_a_hostile_role_s_output_safe() -> None:
    lines = relayed(
        b"letskencrypt: keyproc: fine\n",
        b"\x1b]0;owned\x07\x1b[2Jclear\rscreen\x9b31m\n",
        b"A" * 10_000 + b"\n",
        b"no newline at the end",
    )
    assert lines[0] == "letskencrypt: keyproc: fine"
    assert lines[1].startswith("letskencrypt: keyproc: ")
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for line in lines for c in line)
    assert len(lines[2]) <= len("letskencrypt: keyproc: ") + relay.MAX_LINE
    assert lines[3] == "letskencrypt: keyproc: no newline at the end"
    assert len(lines) == 4


def test_the_relay_caps_a_role_s_volume() -> None:
    lines = relayed(b"x\n" * (relay.MAX_VOLUME // 2 + 1000))
    # Two bytes a line: MAX_VOLUME / 2 of them, then one saying the rest is dropped.
    assert len(lines) == relay.MAX_VOLUME // 2 + 1
    assert "dropping the rest" in lines[-1]


def test_the_relay_does_not_wait_for_a_stuck_stderr() -> None:
    """Our stderr is a pipe no one reads: lines are queued, then dropped."""
    out_read, out_write = os.pipe()
    os.set_blocking(out_write, True)
    lines = relay.Relay(output=out_write)
    started = time.monotonic()
    for _ in range(20000):
        lines.write("letskencrypt: " + "y" * 200)
    assert time.monotonic() - started < 5
    assert lines.dropped > 0
    lines.pending.clear()
    lines.close()
    os.close(out_read)
    os.close(out_write)
