"""`--metrics-file`: the certificates' and the last run's numbers for
Prometheus, in the text exposition format 0.0.4, for node_exporter's
textfile collector.

Every metric is a gauge; times are unix times in seconds.  Per certificate
(label `certificate`, its handle): notAfter, when renewal becomes due,
the last success and failure, the failures in a row and whether renewal is
due now; per run: its start, duration, and the orders and requests it
made.  A sample whose value is unknown (no certificate, no run recorded,
renewal due at once, an unreadable certificate's due) is left out rather
than given a made-up value.

The file is replaced atomically (publicfile.replace_file), so the collector
never reads half of it.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from letskencrypt import publicfile, runstate, status

PREFIX = "letskencrypt_"


@dataclass(frozen=True)
class _Metric:
    name: str
    help: str


NOT_AFTER = _Metric("certificate_not_after_seconds", "The installed certificate's notAfter.")
NEXT_RENEWAL = _Metric(
    "certificate_next_renewal_seconds",
    "When renewal of the certificate becomes due (absent when it is due at once).",
)
LAST_SUCCESS = _Metric(
    "certificate_last_success_seconds", "When a run last succeeded for the certificate."
)
LAST_FAILURE = _Metric(
    "certificate_last_failure_seconds", "When a run last failed for the certificate."
)
FAILURES_IN_ROW = _Metric(
    "certificate_failures_in_row", "How many runs in a row have failed for the certificate."
)
DUE = _Metric("certificate_due", "Whether renewal of the certificate is due (1) or not (0).")
RUN_DURATION = _Metric("run_duration_seconds", "How long the last run took.")
RUN_ORDERS = _Metric("run_orders", "How many ACME orders the last run made.")
RUN_REQUESTS = _Metric("run_requests", "How many requests the last run sent to the CA.")
RUN_TIMESTAMP = _Metric("run_timestamp_seconds", "When the last run started.")

Sample = tuple[dict[str, str], float | None]
Reading = Callable[[status.Facts, runstate.CertRecord | None], float | None]


def _timestamp(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


PER_CERTIFICATE: tuple[tuple[_Metric, Reading], ...] = (
    (NOT_AFTER, lambda facts, record: _timestamp(facts.not_after)),
    (NEXT_RENEWAL, lambda facts, record: _timestamp(facts.next_renewal)),
    (LAST_SUCCESS, lambda facts, record: record.last_success if record else None),
    (LAST_FAILURE, lambda facts, record: record.last_failure if record else None),
    (FAILURES_IN_ROW, lambda facts, record: record.failures_in_row if record else None),
    (DUE, lambda facts, record: None if facts.error else int(facts.due)),
)


def escape_label_value(value: str) -> str:
    """A label value as the format wants it: backslash, double quote and
    line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(value)


def _family(metric: _Metric, samples: Iterable[Sample]) -> list[str]:
    """The lines of one metric: HELP, TYPE and its known samples; none at
    all if no sample is known."""
    name = PREFIX + metric.name
    lines = []
    for labels, value in samples:
        if value is None:
            continue
        pairs = ",".join(f'{key}="{escape_label_value(text)}"' for key, text in labels.items())
        selector = f"{{{pairs}}}" if pairs else ""
        lines.append(f"{name}{selector} {_number(value)}")
    if not lines:
        return []
    return [f"# HELP {name} {metric.help}", f"# TYPE {name} gauge", *lines]


def render(facts: list[status.Facts], state: runstate.State) -> str:
    """The whole textfile: the certificates in `facts`, the last run of `state`."""
    lines: list[str] = []
    for metric, reading in PER_CERTIFICATE:
        samples = [
            ({"certificate": one.handle}, reading(one, state.certificates.get(one.handle)))
            for one in facts
        ]
        lines += _family(metric, samples)
    run = state.last_run
    if run is not None:
        lines += _family(RUN_DURATION, [({}, run.duration)])
        lines += _family(RUN_ORDERS, [({}, run.orders)])
        lines += _family(RUN_REQUESTS, [({}, run.requests)])
        lines += _family(RUN_TIMESTAMP, [({}, run.started)])
    return "".join(line + "\n" for line in lines)


def write(path: str, text: str) -> None:
    """Replace `path` atomically with `text`, mode 0644.  OSError if that
    fails (its directory must exist)."""
    publicfile.replace_file(path, text.encode("utf-8"))
