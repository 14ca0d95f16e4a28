"""The account's way from netproc to `letskencrypt status`, each step taking
the one before as hostile: the counts line's "account" (relay), acctproc's
report line, the run state's "accounts" (runstate), the status output; and
the account key's replacement after a rollover (keyfiles)."""

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from letskencrypt import keyfiles, keys, runstate, status
from letskencrypt.errors import KeyFileError
from letskencrypt.relay import COUNTS_MARKER, REPORT_MARKER, Relay, account_report
from letskencrypt.runstate import AccountRecord, State

URL = "https://ca.test/acct/1"
ACCOUNT = {"url": URL, "contact": ["mailto:a@example.org"], "status": "valid"}
T0 = 1_800_000_000.0


def relay_of(streams: list[tuple[str, bytes, dict[str, bool]]]) -> tuple[Relay, list[str]]:
    read_out, write_out = os.pipe()
    relay = Relay(output=write_out)
    for label, data, options in streams:
        read_end, write_end = os.pipe()
        os.write(write_end, data)
        os.close(write_end)
        relay.add(label, os.fdopen(read_end, "rb", buffering=0), **options)
    relay.drain()
    relay.close()
    os.close(write_out)
    with os.fdopen(read_out, "rb") as output:
        return relay, output.read().decode().splitlines()


def test_the_counts_line_carries_the_account_of_its_stream_only() -> None:
    line = f"{COUNTS_MARKER}{json.dumps({'requests': 3, 'orders': 0, 'account': ACCOUNT})}\n"
    relay, shown = relay_of([
        ("netproc", line.encode(), {"counts": True}),
        ("chngproc", line.encode(), {}),
    ])  # fmt: skip
    assert relay.accounts == {"netproc": ACCOUNT}
    assert relay.counts == {"requests": 3, "orders": 0}
    assert shown == [f"letskencrypt: chngproc: {line.strip()}"]

    # A run of many certificates: netproc's result line for each names it,
    # and the account is that certificate's.
    result = {"requests": 1, "orders": 1, "account": ACCOUNT, "certificate": 1, "status": 0}
    relay = Relay(output=os.open(os.devnull, os.O_WRONLY))
    relay.handles = {0: "a.example", 1: "b.example"}
    read_end, write_end = os.pipe()
    os.write(write_end, f"{COUNTS_MARKER}{json.dumps(result)}\n".encode())
    os.close(write_end)
    relay.add("netproc", os.fdopen(read_end, "rb", buffering=0), counts=True, shared=True)
    relay.drain()
    assert relay.accounts == {"b.example": ACCOUNT}
    assert relay.statuses == {"b.example": 0}


@pytest.mark.parametrize(
    ("account", "expected"),
    [
        ([], None),
        ({**ACCOUNT, "url": ""}, None),
        ({**ACCOUNT, "url": "x" * 2001}, None),
        ({**ACCOUNT, "contact": "mailto:a@example.org"}, None),
        ({**ACCOUNT, "contact": [7]}, None),
        ({**ACCOUNT, "status": ""}, None),
        ({**ACCOUNT, "status": None}, None),
        ({**ACCOUNT, "status": "valid\x1b[2J" + "x" * 100},
         {**ACCOUNT, "status": "valid?" + "x" * 33 + "…"}),
        ({**ACCOUNT, "contact": ["", *[f"mailto:{n}@example.org" for n in range(20)]]},
         {**ACCOUNT, "contact": [f"mailto:{n}@example.org" for n in range(10)]}),
    ],
)
def test_an_account_report_is_bounded_and_safe(account: object, expected: object) -> None:
    assert account_report(account) == expected


def test_a_report_line_is_its_role_s_and_not_shown() -> None:
    report = f'{REPORT_MARKER}{{"account_key_changed": "ab"}}\n'.encode()
    relay, shown = relay_of([
        ("acctproc", report, {}),
        ("netproc", f'{REPORT_MARKER}{{"account_key_changed": "cd"}}\n'.encode(), {}),
        ("lane", report, {"nested": True}),
    ])  # fmt: skip
    assert relay.reports == {"acctproc": {"account_key_changed": "ab"},
                             "netproc": {"account_key_changed": "cd"}}  # fmt: skip
    # A lane's line is the lane's own output, shown as it is.
    assert shown == [f"letskencrypt: lane: {report.decode().strip()}"]


def test_the_run_state_keeps_accounts_per_authority(tmp_path: Path) -> None:
    record = AccountRecord(url=URL, contact=("mailto:a@example.org",), status="valid", seen=T0)
    state = runstate.record_account(State(), "ca", record)
    path = str(tmp_path / "state.json")
    runstate.save(path, state)
    assert runstate.load(path).accounts == {"ca": record}
    with pytest.raises(ValueError, match="url"):
        runstate.record_account(state, "ca", AccountRecord(url="", contact=(), status="valid",
                                                           seen=T0))  # fmt: skip
    # A file of before accounts has none.
    document = json.loads(Path(path).read_text())
    del document["accounts"]
    Path(path).write_text(json.dumps(document))
    assert runstate.load(path).accounts == {}


@pytest.mark.parametrize(
    ("accounts", "why"),
    [
        ([], "'accounts' is not an object"),
        ({"ca": {"url": URL}}, "does not have the fields"),
        ({"ca": {"url": URL, "contact": "x", "status": "valid", "seen": T0}}, "contact"),
        ({"ca": {"url": URL, "contact": ["x"] * 11, "status": "valid", "seen": T0}}, "contact"),
        ({"ca": {"url": 7, "contact": [], "status": "valid", "seen": T0}}, "url"),
        ({"ca": {"url": URL, "contact": [], "status": "v" * 41, "seen": T0}}, "status"),
        ({"ca": {"url": URL, "contact": [], "status": "valid", "seen": -1}}, "negative"),
        ({"": {"url": URL, "contact": [], "status": "valid", "seen": T0}}, "handle"),
    ],
)
def test_a_hostile_accounts_entry_makes_the_file_unusable(
    tmp_path: Path, accounts: object, why: str
) -> None:
    path = tmp_path / "state.json"
    document = {"version": 1, "certificates": {}, "last_run": None, "accounts": accounts}
    path.write_text(json.dumps(document))
    state = runstate.load(str(path))
    assert state.accounts == {} and state.warning is not None and why in state.warning


def test_status_shows_each_authority_s_account_once() -> None:
    state = runstate.record_account(State(), "ca", AccountRecord(
        url=URL, contact=("mailto:a@example.org", "mailto:b@example.org"), status="deactivated",
        seen=T0))  # fmt: skip
    accounts = status.gather_accounts(["ca", "other", "ca"], state)
    assert [a.authority for a in accounts] == ["ca", "other"]
    assert status.render_accounts_text(accounts) == (
        "\naccount ca\n"
        f"  url      {URL}\n"
        "  contact  mailto:a@example.org, mailto:b@example.org\n"
        "  status   deactivated\n"
        "  seen     2027-01-15 08:00:00 UTC\n"
        "\naccount other\n"
        "  (not seen yet: no run has reached the CA)\n"
    )
    document = json.loads(status.render_json([], accounts))
    assert document["accounts"] == [
        {"authority": "ca", "url": URL, "contact": ["mailto:a@example.org", "mailto:b@example.org"],
         "status": "deactivated", "seen": "2027-01-15T08:00:00Z"},
        {"authority": "other", "url": None, "contact": [], "status": None, "seen": None},
    ]  # fmt: skip
    assert "accounts" not in json.loads(status.render_json([]))


def test_the_account_key_is_replaced_and_the_old_one_kept(tmp_path: Path) -> None:
    directory = tmp_path / "account"
    directory.mkdir(mode=0o700)
    key_path = directory / "privkey.pem"
    old = keys.create_key(str(key_path), "ecdsa256")
    old_pem = key_path.read_bytes()
    new_path = tmp_path / "new.pem"
    new = keys.create_key(str(new_path), "ecdsa384")
    new_pem = new_path.read_bytes()
    now = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    # Not the key the CA changed to: nothing moves.
    with pytest.raises(KeyFileError, match="no longer the key the CA changed the account to"):
        keyfiles.replace_account_key(str(key_path), str(new_path), keys.spki_sha256(old), now)
    assert sorted(p.name for p in directory.iterdir()) == ["privkey.pem"]
    kept = keyfiles.replace_account_key(str(key_path), str(new_path), keys.spki_sha256(new), now)
    assert kept == str(directory / "privkey.pem.old-20270115T080000Z")
    assert Path(kept).read_bytes() == old_pem
    assert keys.spki_sha256(keys.load_key(str(key_path))) == keys.spki_sha256(new)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o400
    assert new_path.read_bytes() == new_pem
    assert sorted(p.name for p in directory.iterdir()) == [
        "privkey.pem", "privkey.pem.old-20270115T080000Z"]
