"""The relay's output formats: plain text as before, timestamps for a
daemon, one JSON object per line, a lane's lines labelled with its
certificate, and the counts line taken, not shown."""

import json
import os
import re

from letskencrypt.relay import COUNTS_MARKER, Relay

Stream = tuple[str, bytes, dict[str, bool]]


def relayed(relay_options: dict[str, object], streams: list[Stream]) -> list[str]:
    read_out, write_out = os.pipe()
    relay = Relay(output=write_out, **relay_options)  # type: ignore[arg-type]
    for label, data, options in streams:
        read_end, write_end = os.pipe()
        os.write(write_end, data)
        os.close(write_end)
        relay.add(label, os.fdopen(read_end, "rb", buffering=0), **options)
    relay.drain()
    relay.close()
    os.close(write_out)
    with os.fdopen(read_out, "rb") as output:
        return output.read().decode().splitlines()


def test_text_is_as_before() -> None:
    lines = relayed({}, [("netproc", b"letskencrypt: netproc: order pending\n", {})])
    assert lines == ["letskencrypt: netproc: order pending"]


def test_a_daemon_s_lines_start_with_the_time() -> None:
    lines = relayed({"timestamps": True}, [("keyproc", b"letskencrypt: keyproc: ready\n", {})])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ letskencrypt: keyproc: ready", lines[0])


def test_json_names_time_certificate_role_and_event() -> None:
    lines = relayed(
        {"log_format": "json", "certificate": "example.org"},
        [("certproc", b"letskencrypt: certproc: installed serial 1\n", {})],
    )
    event = json.loads(lines[0])
    assert set(event) == {"time", "certificate", "role", "event"}
    assert event["certificate"] == "example.org"
    assert event["role"] == "certproc"
    assert event["event"] == "installed serial 1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["time"])


def test_a_lane_s_lines_carry_its_certificate_and_roles_stay_who_they_are() -> None:
    lane = (
        b"letskencrypt: netproc: order pending\n"
        # A role cannot pass for another: its relay prefixed the line with its name.
        b"letskencrypt: chngproc: letskencrypt: netproc: forged\n"
        b"letskencrypt: interrupted by SIGTERM\n"
    )
    text = relayed({}, [("a.example", lane, {"nested": True})])
    assert text == [
        "letskencrypt: a.example: netproc: order pending",
        "letskencrypt: a.example: chngproc: letskencrypt: netproc: forged",
        "letskencrypt: a.example: interrupted by SIGTERM",
    ]
    as_json = relayed({"log_format": "json"}, [("a.example", lane, {"nested": True})])
    events = [json.loads(line) for line in as_json]
    assert [(e["certificate"], e["role"]) for e in events] == [
        ("a.example", "netproc"), ("a.example", "chngproc"), ("a.example", None),
    ]  # fmt: skip


def test_the_counts_line_is_taken_only_from_a_counting_stream() -> None:
    read_out, write_out = os.pipe()
    relay = Relay(output=write_out)
    for label, counts in (("netproc", True), ("chngproc", False)):
        read_end, write_end = os.pipe()
        os.write(write_end, f'{COUNTS_MARKER}{{"requests": 7, "orders": 1}}\n'.encode())
        os.close(write_end)
        relay.add(label, os.fdopen(read_end, "rb", buffering=0), counts=counts)
    relay.drain()
    relay.close()
    os.close(write_out)
    with os.fdopen(read_out, "rb") as output:
        shown = output.read().decode().splitlines()
    assert relay.counts == {"requests": 7, "orders": 1}
    assert shown == [f'letskencrypt: chngproc: {COUNTS_MARKER}{{"requests": 7, "orders": 1}}']


def test_a_counts_line_out_of_bounds_counts_nothing() -> None:
    read_out, write_out = os.pipe()
    relay = Relay(output=write_out)
    read_end, write_end = os.pipe()
    bad = f'{COUNTS_MARKER}{{"requests": -1, "orders": 1e99}}\n{COUNTS_MARKER}[]\n'
    os.write(write_end, bad.encode())
    os.close(write_end)
    relay.add("netproc", os.fdopen(read_end, "rb", buffering=0), counts=True)
    relay.drain()
    relay.close()
    os.close(write_out)
    os.close(read_out)
    assert relay.counts == {"requests": 0, "orders": 0}


def shared_relay(data: bytes, handles: dict[int, str]) -> tuple[Relay, list[str]]:
    read_out, write_out = os.pipe()
    relay = Relay(output=write_out)
    relay.handles = handles
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    relay.add("acctproc", os.fdopen(read_end, "rb", buffering=0), counts=True, shared=True)
    relay.drain()
    relay.close()
    os.close(write_out)
    with os.fdopen(read_out, "rb") as output:
        return relay, output.read().decode().splitlines()


def test_a_shared_role_s_lines_carry_the_certificate_they_are_about() -> None:
    relay, lines = shared_relay(
        b"letskencrypt@1: acctproc: refused: a finalize for another key\n"
        b"letskencrypt: acctproc: no certificate named\n"
        # Its own name stays: a shared role cannot pass for another.
        b"letskencrypt@0: netproc: forged\n"
        b"letskencrypt@9: acctproc: a certificate the run does not have\n",
        {0: "a.example", 1: "b.example"},
    )
    assert lines == [
        "letskencrypt: b.example: acctproc: refused: a finalize for another key",
        "letskencrypt: acctproc: no certificate named",
        "letskencrypt: a.example: acctproc: letskencrypt: netproc: forged",
        "letskencrypt: acctproc: a certificate the run does not have",
    ]
    # What a certificate's failure said is its own last line.
    assert relay.last_lines["b.example"] == "acctproc: refused: a finalize for another key"


def test_a_result_line_gives_its_certificate_s_status() -> None:
    results = [
        {"requests": 9, "orders": 1, "certificate": 0, "status": 0},
        {"requests": 2, "orders": 0, "certificate": 1, "status": "interrupted"},
        # Not a certificate of the run, not a status: nothing counted.
        {"requests": 5, "orders": 5, "certificate": 5, "status": 0},
        {"requests": 5, "orders": 5, "certificate": 0, "status": True},
        {"requests": 5, "orders": 5, "certificate": 0, "status": 7},
    ]
    data = "".join(f"{COUNTS_MARKER}{json.dumps(result)}\n" for result in results)
    relay, lines = shared_relay(data.encode(), {0: "a.example", 1: "b.example"})
    assert lines == []
    assert relay.statuses == {"a.example": 0, "b.example": "interrupted"}
    assert relay.counts == {"requests": 11, "orders": 1}
