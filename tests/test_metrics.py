import os
import re
import stat
from datetime import UTC, datetime, timedelta

import pytest
from letskencrypt import filestore, metrics, runstate, status
from letskencrypt.runstate import RunRecord
from letskencrypt.status import Entry

from tests.certfactory import NOW, make_pki, pem

DAY = timedelta(days=1)
T_RUN = datetime(2026, 11, 26, 17, 30, tzinfo=UTC).timestamp()
NOT_AFTER = (NOW + 90 * DAY).timestamp()

# The text format 0.0.4, strictly: names, label pairs with escaped values,
# a Go float; HELP and TYPE before the samples of their metric.
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
LABELS = rf"\{{(?:{NAME}={LABEL_VALUE}(?:,{NAME}={LABEL_VALUE})*)?\}}"
VALUE = r"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|Inf|NaN)"
SAMPLE_RE = re.compile(rf"(?P<name>{NAME})(?P<labels>{LABELS})? (?P<value>{VALUE})")
HELP_RE = re.compile(rf"# HELP (?P<name>{NAME}) [^\n]*")
TYPE_RE = re.compile(rf"# TYPE (?P<name>{NAME}) gauge")
PAIR_RE = re.compile(rf"({NAME})=({LABEL_VALUE})")


def unescape(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), quoted[1:-1])


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `text`, checking every line against the format."""
    assert text.endswith("\n")
    samples = {}
    described: dict[str, str] = {}
    for line in text[:-1].split("\n"):
        if match := HELP_RE.fullmatch(line):
            assert match["name"] not in described, f"HELP twice: {line}"
            described[match["name"]] = "help"
        elif match := TYPE_RE.fullmatch(line):
            assert described.get(match["name"]) == "help", f"TYPE without HELP: {line}"
            described[match["name"]] = "type"
        else:
            match = SAMPLE_RE.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            assert described.get(match["name"]) == "type", f"sample before its TYPE: {line}"
            labels = tuple(
                (key, unescape(value)) for key, value in PAIR_RE.findall(match["labels"] or "")
            )
            key = (match["name"], labels)
            assert key not in samples, f"sample twice: {line}"
            samples[key] = float(match["value"])
    return samples


def cert(handle: str) -> tuple[tuple[str, str], ...]:
    return (("certificate", handle),)


@pytest.fixture(scope="module")
def pki():
    return make_pki()


def entry(cert_dir, handle) -> Entry:
    return Entry(handle, ("a.example",), str(cert_dir), None, "le", "https://acme.example/dir")


@pytest.fixture
def facts_and_state(tmp_path, pki):
    """One current certificate that has had failures, one never issued."""
    current = tmp_path / "current"
    current.mkdir()
    leaf = pki.leaf(["a.example"], not_before=NOW, not_after=NOW + 90 * DAY)
    filestore.install(str(current), pem(leaf), pem(pki.intermediate))
    state = runstate.record(runstate.State(), "current", "changed", "issued", T_RUN)
    state = runstate.record(state, "current", "failed", "boom", T_RUN + 60)
    state = runstate.record(state, "current", "failed", "boom", T_RUN + 120.5)
    state = runstate.record_run(state, RunRecord(T_RUN + 100, 20.25, 1, 14))
    facts = status.gather(
        [entry(current, "current"), entry(tmp_path / "new", "new")], state, NOW + DAY
    )
    return facts, state


def test_render_values(facts_and_state):
    samples = parse(metrics.render(*facts_and_state))
    assert samples == {
        ("letskencrypt_certificate_not_after_seconds", cert("current")): NOT_AFTER,
        ("letskencrypt_certificate_next_renewal_seconds", cert("current")): NOT_AFTER - 30 * 86400,
        ("letskencrypt_certificate_last_success_seconds", cert("current")): T_RUN,
        ("letskencrypt_certificate_last_failure_seconds", cert("current")): T_RUN + 120.5,
        ("letskencrypt_certificate_failures_in_row", cert("current")): 2,
        ("letskencrypt_certificate_due", cert("current")): 0,
        ("letskencrypt_certificate_due", cert("new")): 1,
        ("letskencrypt_run_duration_seconds", ()): 20.25,
        ("letskencrypt_run_orders", ()): 1,
        ("letskencrypt_run_requests", ()): 14,
        ("letskencrypt_run_timestamp_seconds", ()): T_RUN + 100,
    }


def test_render_text_shape(facts_and_state):
    text = metrics.render(*facts_and_state)
    assert "letskencrypt_run_orders 1\n" in text
    assert 'letskencrypt_certificate_failures_in_row{certificate="current"} 2\n' in text
    assert "# TYPE letskencrypt_certificate_due gauge\n" in text
    assert f"letskencrypt_run_timestamp_seconds {int(T_RUN) + 100}\n" in text


def test_unknown_values_are_left_out(tmp_path):
    facts = status.gather([entry(tmp_path / "none", "new")], runstate.State(), NOW)
    text = metrics.render(facts, runstate.State())
    assert parse(text) == {("letskencrypt_certificate_due", cert("new")): 1}
    assert "run_" not in text
    assert metrics.render([], runstate.State()) == ""


def test_an_unreadable_certificate_has_no_due(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cert.pem").write_text("garbage")
    state = runstate.record(runstate.State(), "broken", "failed", "x", T_RUN)
    facts = status.gather([entry(broken, "broken")], state, NOW)
    assert set(parse(metrics.render(facts, state))) == {
        ("letskencrypt_certificate_last_failure_seconds", cert("broken")),
        ("letskencrypt_certificate_failures_in_row", cert("broken")),
    }


def test_label_values_are_escaped(tmp_path):
    handle = 'a\\b"c\nd'
    facts = status.gather([entry(tmp_path / "none", handle)], runstate.State(), NOW)
    text = metrics.render(facts, runstate.State())
    assert 'letskencrypt_certificate_due{certificate="a\\\\b\\"c\\nd"} 1\n' in text
    assert parse(text) == {("letskencrypt_certificate_due", cert(handle)): 1}
    assert metrics.escape_label_value('\\"\n') == '\\\\\\"\\n'


def test_the_strict_parser_refuses_what_the_format_does():
    assert parse('# HELP x h\n# TYPE x gauge\nx{certificate="a\\\\"} 1\n')
    for bad in [
        '# HELP x h\n# TYPE x gauge\nx{certificate="a"b"} 1\n',
        '# HELP x h\n# TYPE x gauge\nx{certificate="a\nb"} 1\n',
        '# HELP x h\n# TYPE x gauge\nx{certificate="a\\"} 1\n',
        "# HELP x h\n# TYPE x gauge\nx 1",
        "# HELP x h\n# TYPE x gauge\nx one\n",
        "x 1\n",
    ]:
        with pytest.raises(AssertionError):
            parse(bad)


def test_write_is_atomic_and_public(tmp_path, facts_and_state):
    path = tmp_path / "textfiles" / "letskencrypt.prom"
    path.parent.mkdir()
    text = metrics.render(*facts_and_state)
    old_umask = os.umask(0o077)
    try:
        metrics.write(str(path), "old\n")
        inode = path.stat().st_ino
        metrics.write(str(path), text)
    finally:
        os.umask(old_umask)
    assert path.read_text() == text
    assert path.stat().st_ino != inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["letskencrypt.prom"]


def test_write_needs_its_directory_and_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(FileNotFoundError):
        metrics.write(str(tmp_path / "missing" / "letskencrypt.prom"), "x 1\n")
    assert os.listdir(tmp_path) == []
    (tmp_path / "letskencrypt.prom").mkdir()
    with pytest.raises(OSError):
        metrics.write(str(tmp_path / "letskencrypt.prom"), "x 1\n")
    assert os.listdir(tmp_path) == ["letskencrypt.prom"]
