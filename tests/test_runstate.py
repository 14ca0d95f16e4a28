import json
import os
import stat

import pytest
from letskencrypt import runstate
from letskencrypt.runstate import CertRecord, RunRecord, State

T0 = 1_800_000_000.0


def history() -> State:
    state = runstate.record(State(), "web", "changed", "issued", T0)
    state = runstate.record(state, "web", "failed", "CA said no", T0 + 10)
    state = runstate.record(state, "web", "failed", "CA said no\nagain", T0 + 20)
    state = runstate.record(state, "mail", "not-due", "", T0 + 20)
    return runstate.record_run(state, RunRecord(T0 + 19, 1.5, 1, 12))


def test_record_counts_failures_and_resets_on_success():
    state = history()
    assert state.certificates["web"] == CertRecord(
        last_run=T0 + 20,
        last_result="failed",
        last_message="CA said no again",
        last_success=T0,
        last_failure=T0 + 20,
        failures_in_row=2,
    )
    assert state.certificates["mail"] == CertRecord(T0 + 20, "not-due", "", T0 + 20, None, 0)
    after = runstate.record(state, "web", "not-due", "valid", T0 + 30)
    assert after.certificates["web"] == CertRecord(T0 + 30, "not-due", "valid", T0 + 30, T0 + 20, 0)
    revoked = runstate.record(state, "web", "revoked", "", T0 + 30)
    assert revoked.certificates["web"].failures_in_row == 0


def test_record_is_pure():
    state = history()
    before = dict(state.certificates)
    runstate.record(state, "web", "changed", "renewed", T0 + 40)
    runstate.record(state, "new", "changed", "issued", T0 + 40)
    assert state.certificates == before


def test_record_bounds_the_message_and_refuses_unknown_results():
    state = runstate.record(State(), "web", "failed", "x" * 2000 + "\x1b[31m", T0)
    message = state.certificates["web"].last_message
    assert len(message) == runstate.MAX_MESSAGE
    assert message.endswith("…")
    with pytest.raises(ValueError, match="unknown run result 'ok'"):
        runstate.record(State(), "web", "ok", "", T0)
    for handle in ["", "x" * (runstate.MAX_HANDLE + 1)]:
        with pytest.raises(ValueError, match="handle must have 1 to 200 characters"):
            runstate.record(State(), handle, "changed", "", T0)


def test_missing_file_is_no_history(tmp_path):
    assert runstate.load(str(tmp_path / "state.json")) == State()


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "var" / "lib" / "letskencrypt" / "state.json"
    old_umask = os.umask(0o077)
    try:
        runstate.save(str(path), history())
    finally:
        os.umask(old_umask)
    assert runstate.load(str(path)) == history()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o755
    assert os.listdir(path.parent) == ["state.json"]
    assert json.loads(path.read_text())["version"] == 1


def test_save_replaces_atomically(tmp_path):
    path = tmp_path / "state.json"
    runstate.save(str(path), history())
    inode = path.stat().st_ino
    kept = os.open(path, os.O_RDONLY)
    try:
        runstate.save(str(path), runstate.record(history(), "x", "changed", "", T0 + 50))
        # The old file was not rewritten in place: a reader that had it open
        # still reads the complete old state.
        assert json.loads(os.read(kept, 1 << 20))["certificates"].keys() == {"web", "mail"}
    finally:
        os.close(kept)
    assert path.stat().st_ino != inode
    assert "x" in runstate.load(str(path)).certificates
    assert os.listdir(tmp_path) == ["state.json"]


def test_save_replaces_a_symlink_not_its_target(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    path = tmp_path / "state.json"
    path.symlink_to(target)
    assert runstate.load(str(path)).warning == (
        f"run state {path}: a symlink, which is not followed; ignoring its history"
    )
    runstate.save(str(path), history())
    assert target.read_text() == "precious"
    assert not path.is_symlink()


def test_save_leaves_no_temp_file_when_it_fails(tmp_path):
    path = tmp_path / "state.json"
    path.mkdir()  # rename cannot replace a directory
    with pytest.raises(OSError):
        runstate.save(str(path), history())
    assert os.listdir(tmp_path) == ["state.json"]


def valid_document() -> dict:
    return json.loads(runstate._serialise(history()))


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"version": 2, "certificates": {}, "last_run": null}', "not version 1"),
        (b'{"version": 1, "certificates": [], "last_run": null}', "'certificates' is not"),
        (b'{"version": 1, "certificates": {}, "last_run": NaN}', "not valid JSON"),
    ],
)
def test_corrupt_file_is_no_history_with_a_warning(tmp_path, content, why):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    state = runstate.load(str(path))
    assert state.certificates == {}
    assert state.last_run is None
    assert state.warning.startswith(f"run state {path}: {why}")
    assert state.warning.endswith("; ignoring its history")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: d["certificates"]["web"].update(failures_in_row=True), "failures_in_row"),
        (lambda d: d["certificates"]["web"].update(failures_in_row=-1), "failures_in_row"),
        (lambda d: d["certificates"]["web"].update(last_run="yesterday"), "last_run is not"),
        (lambda d: d["certificates"]["web"].update(last_success=-5), "negative"),
        (lambda d: d["certificates"]["web"].update(last_result="great"), "last_result"),
        (lambda d: d["certificates"]["web"].update(last_message=7), "last_message"),
        (lambda d: d["certificates"]["web"].pop("last_failure"), "does not have the fields"),
        (lambda d: d["certificates"]["web"].update(extra=1), "does not have the fields"),
        (lambda d: d["certificates"].update({"": d["certificates"]["web"]}), "handle"),
        (lambda d: d["last_run"].update(orders=1.5), "orders is not a count"),
        (lambda d: d.update(last_run=[]), "last_run does not have"),
    ],
)
def test_wrong_types_are_no_history_with_a_warning(tmp_path, change, why):
    document = valid_document()
    change(document)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(document))
    state = runstate.load(str(path))
    assert (state.certificates, state.last_run) == ({}, None)
    assert why in state.warning


def test_oversized_file_is_not_read(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(b" " * (runstate.MAX_STATE_BYTES + 1))
    assert "larger than 4194304 bytes" in runstate.load(str(path)).warning


def test_unusable_paths_warn(tmp_path):
    assert "not a regular file" in runstate.load(str(tmp_path)).warning
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in runstate.load(str(fifo)).warning
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "nowhere")
    assert "a symlink" in runstate.load(str(link)).warning


def test_a_stored_message_is_made_safe_again(tmp_path):
    document = valid_document()
    document["certificates"]["web"]["last_message"] = "line one\nline two \x1b]0;title\x07"
    path = tmp_path / "state.json"
    path.write_text(json.dumps(document))
    assert runstate.load(str(path)).certificates["web"].last_message == "line one line two ?"
