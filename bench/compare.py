"""letskencrypt against uacme, acme-tiny and certbot, issuing 1, 10 and 100 certificates.

Run by hand or with ``make bench``, not in CI:

    .venv/bin/python -m bench.compare [--counts 1,10,100] [--runs 5 | --runs 1:5,10:3,100:1]
        [--clients letskencrypt,uacme,acme-tiny,certbot] [--out bench/results]

It installs what it needs (idempotent): Debian's uacme and acme-tiny, and
certbot plus matplotlib from PyPI into their own venv, build/bench-certbot.

One pebble (tests/pebble.py, on loopback, PEBBLE_AUTHZREUSE=0 so no order
can reuse an earlier authorization) serves the whole benchmark.  Every
measured run starts from nothing: a new account key, new domain keys, new
directories.  For N certificates the peers run once per certificate, one
after the other as a cron job would; letskencrypt runs once for all N from an
acme-client.conf-style configuration file (``--config``) when it has that
option, and once per certificate otherwise.

Per (client, N) it records the wall time of the whole run (median, min and
max over the timed runs), and, from one more run before them whose memory
is sampled every 5 ms, the peak PSS summed over the client's process tree
and the peak RSS of its largest process (bench/sampler.py).  The timed runs
are not sampled: reading smaps_rollup of a tree of many processes every
5 ms takes most of a CPU, which on a small machine slows the clients with
many processes.  It writes results.md, results.json and plot.png into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography import x509

from bench.sampler import Measurement, measure
from tests.pebble import Pebble

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV = ROOT / "build" / "bench-certbot"
SYSTEM_PYTHON = "/usr/bin/python3"
CERTBOT_VERSION = "5.8.0"
APT_PACKAGES = ("uacme", "acme-tiny")
LETSKENCRYPT = str(Path(sys.executable).parent / "letskencrypt")
PLOT_SCRIPT = Path(__file__).resolve().parent / "plot.py"

CLIENTS = ("letskencrypt", "uacme", "acme-tiny", "certbot")
DEFAULT_COUNTS = (1, 10, 100)
DEFAULT_RUNS = {1: 5, 10: 3, 100: 1}
PEBBLE_ENV = {
    "PEBBLE_AUTHZREUSE": "0",  # every order validates afresh
    "PEBBLE_WFE_NONCEREJECT": "0",  # no random badNonce: retries would be noise
}
# The bundle libcurl (GnuTLS) reads in Debian; uacme has no option for another.
SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
DOMAIN_SUFFIX = "bench.example.test"
NO_CONFIG_NOTE = "per-cert runs (no --config yet)"
_PLAIN_WORD = re.compile(r"[\w@%+=:,./$-]+")


class RunFailed(RuntimeError):
    """A client exited non-zero or left no valid certificate."""


# -- set-up ---------------------------------------------------------------------


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo"]


def ensure_debian_packages(packages: Sequence[str] = APT_PACKAGES) -> None:
    """apt-get install the packages that are not installed yet."""
    missing = [
        name
        for name in packages
        if "ok installed"
        not in subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True
        ).stdout
    ]
    if not missing:
        return
    print(f"installing Debian packages: {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*_sudo(), "apt-get", "update", "-q"], check=True, env=env)
    subprocess.run([*_sudo(), "apt-get", "install", "-y", "-q", *missing], check=True, env=env)


def ensure_bench_venv(venv: Path = BENCH_VENV) -> None:
    """certbot (pinned) and matplotlib in their own venv of Debian's python."""
    python = venv / "bin" / "python"
    if python.exists():
        probe = subprocess.run(
            [str(python), "-c", "import matplotlib, certbot; print(certbot.__version__)"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == CERTBOT_VERSION:
            return
    print(f"installing certbot {CERTBOT_VERSION} and matplotlib into {venv}", flush=True)
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"certbot=={CERTBOT_VERSION}", "matplotlib"],
        check=True,
    )


def letskencrypt_has_config() -> bool:
    """True once letskencrypt understands ``--config FILE``."""
    result = subprocess.run([LETSKENCRYPT, "--help"], capture_output=True, text=True)
    return "--config" in result.stdout


# -- the clients ----------------------------------------------------------------


@dataclass
class Context:
    """What every client needs to know about the CA and the web root."""

    pebble: Pebble
    webroot: Path  # pebble's challenge directory is WEBROOT/.well-known/acme-challenge
    has_config: bool
    # Memory is sampled (every 5 ms, reading /proc/PID/smaps_rollup of the
    # whole tree); a timed run is not: the sampler needs most of a CPU for
    # a tree of many processes, which would slow the clients that have them.
    sampling: bool = True

    @property
    def challenge_dir(self) -> Path:
        return self.pebble.challenge_dir

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The caller's environment without CA overrides, plus ``extra``."""
        dropped = {"SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"}
        env = {key: value for key, value in os.environ.items() if key not in dropped}
        env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1"
        env.update(extra or {})
        return env


@dataclass
class Run:
    """One measured run: its measurement and the commands it was made of."""

    measurement: Measurement
    argvs: list[list[str]] = field(default_factory=list)


class Steps:
    """Runs commands one after the other, each measured; stops at the first failure."""

    def __init__(self, client: str, sampling: bool) -> None:
        self.client = client
        self.sampling = sampling
        self.parts: list[Measurement] = []
        self.argvs: list[list[str]] = []

    def run(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None
    ) -> Measurement:
        result = measure(argv, env=env, cwd=cwd, sample=self.sampling)
        self.parts.append(result)
        self.argvs.append(list(argv))
        if result.returncode != 0:
            tail = result.stderr.decode(errors="replace")[-2000:]
            raise RunFailed(
                f"{self.client}: {shlex.join(argv)} exited {result.returncode}:\n{tail}"
            )
        return result

    def result(self) -> Run:
        return Run(Measurement.combine(self.parts), self.argvs)


def check_certificate(path: Path, name: str) -> None:
    """The first certificate in ``path`` is for ``name``."""
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as error:
        raise RunFailed(f"no certificate for {name} at {path}: {error}") from error
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    if name not in names.value.get_values_for_type(x509.DNSName):
        raise RunFailed(f"{path} is not a certificate for {name}")


def run_letskencrypt(ctx: Context, workdir: Path, names: Sequence[str]) -> Run:
    """One run with a configuration file for all names, or one run per name."""
    steps = Steps("letskencrypt", ctx.sampling)
    pebble = ctx.pebble
    env = ctx.env()
    (workdir / "keys").mkdir(mode=0o755)
    (workdir / "certs").mkdir(mode=0o755)
    account = workdir / "account.pem"
    if ctx.has_config:
        config = workdir / "acme-client.conf"
        config.write_text(acme_client_conf(ctx, workdir, names))
        steps.run(
            [
                # The CA bundle and trust anchors are the authority's, in the file.
                LETSKENCRYPT, "--config", str(config), "-n", "-N",
            ],
            env,
        )
    else:
        for name in names:
            steps.run(
                [
                    LETSKENCRYPT, "--server", pebble.directory_url,
                    "--ca-bundle", pebble.ca_bundle, "--trust-anchors", pebble.trust_anchors,
                    "-C", str(ctx.challenge_dir), "-c", str(workdir / "certs" / name),
                    "-f", str(account), "-k", str(workdir / "keys" / f"{name}.pem"),
                    "-n", "-N", name,
                ],
                env,
            )
    for name in names:
        check_certificate(workdir / "certs" / name / "cert.pem", name)
    return steps.result()


def acme_client_conf(ctx: Context, workdir: Path, names: Sequence[str]) -> str:
    """An OpenBSD acme-client.conf for ``names``, one name per certificate."""
    pebble = ctx.pebble

    def quoted(value: str | Path) -> str:
        return json.dumps(str(value))

    blocks = [
        f"state directory {quoted(workdir / 'state')}\n",
        "authority pebble {\n"
        f"    api url {quoted(pebble.directory_url)}\n"
        f"    account key {quoted(workdir / 'account.pem')}\n"
        f"    trust anchors {quoted(pebble.trust_anchors)}\n"
        f"    ca bundle {quoted(pebble.ca_bundle)}\n"
        "}\n"
    ]
    for name in names:
        blocks.append(
            f"domain {name} {{\n"
            f"    domain key {quoted(workdir / 'keys' / f'{name}.pem')}\n"
            f"    certificate directory {quoted(workdir / 'certs' / name)}\n"
            f"    challengedir {quoted(ctx.challenge_dir)}\n"
            "    sign with pebble\n"
            "}\n"
        )
    return "\n".join(blocks)


UACME_HOOK = """#!/bin/sh
# uacme hook (METHOD TYPE IDENT TOKEN AUTH): answer http-01 from pebble's challenge directory.
dir={challenge_dir}
case "$1:$2" in
    begin:http-01) printf '%s' "$5" > "$dir/$4" ;;
    done:http-01 | failed:http-01) rm -f "$dir/$4" ;;
    *) exit 1 ;;
esac
"""


def uacme_prefix(ca_file: str) -> list[str]:
    """Run uacme in a private mount namespace where the system CA file is pebble's CA.

    uacme has no option (and reads no variable) for another CA file: libcurl
    uses Debian's compiled-in bundle.  Over ``unshare`` and ``sh`` uacme
    replaces the shell (exec), so only the short-lived ``mount`` is extra.
    """
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "-r", "--mount"]
    script = f'mount --bind "$1" {SYSTEM_CA_FILE} && shift && exec "$@"'
    return [*unshare, "sh", "-c", script, "sh", ca_file]


def run_uacme(ctx: Context, workdir: Path, names: Sequence[str]) -> Run:
    """``uacme new`` for the account, then ``uacme issue`` per name."""
    steps = Steps("uacme", ctx.sampling)
    hook = workdir / "hook.sh"
    hook.write_text(UACME_HOOK.format(challenge_dir=shlex.quote(str(ctx.challenge_dir))))
    hook.chmod(0o755)
    confdir = workdir / "uacme"
    base = [
        *uacme_prefix(ctx.pebble.ca_bundle), "uacme", "-y", "-a", ctx.pebble.directory_url,
        "-c", str(confdir), "-t", "EC", "-h", str(hook),
    ]
    env = ctx.env()
    steps.run([*base, "new"], env)
    for name in names:
        steps.run([*base, "issue", name], env)
    for name in names:
        check_certificate(confdir / name / "cert.pem", name)
    return steps.result()


def run_acme_tiny(ctx: Context, workdir: Path, names: Sequence[str]) -> Run:
    """openssl for the keys and CSRs (acme-tiny makes none itself), acme-tiny per name."""
    steps = Steps("acme-tiny", ctx.sampling)
    env = ctx.env({"SSL_CERT_FILE": ctx.pebble.ca_bundle})  # urllib's default context
    account = workdir / "account.pem"
    # acme-tiny signs with RSA account keys only.
    steps.run(["openssl", "genrsa", "-out", str(account), "2048"], env)
    for name in names:
        key, csr, cert = (workdir / f"{name}.{suffix}" for suffix in ("key", "csr", "crt"))
        steps.run(
            ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
            env,
        )
        steps.run(
            [
                "openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={name}",
                "-addext", f"subjectAltName=DNS:{name}", "-out", str(csr),
            ],
            env,
        )
        issued = steps.run(
            [
                "acme-tiny", "--account-key", str(account), "--csr", str(csr),
                "--acme-dir", str(ctx.challenge_dir), "--directory-url",
                ctx.pebble.directory_url, "--disable-check", "--quiet",
            ],
            env,
        )
        cert.write_bytes(issued.stdout)
    for name in names:
        check_certificate(workdir / f"{name}.crt", name)
    return steps.result()


def run_certbot(ctx: Context, workdir: Path, names: Sequence[str]) -> Run:
    """``certbot certonly --webroot`` per name; the first run registers the account."""
    steps = Steps("certbot", ctx.sampling)
    env = ctx.env({"REQUESTS_CA_BUNDLE": ctx.pebble.ca_bundle})
    dirs = {part: workdir / part for part in ("config", "work", "logs")}
    for name in names:
        steps.run(
            [
                str(BENCH_VENV / "bin" / "certbot"), "certonly", "--webroot",
                "-w", str(ctx.webroot), "--server", ctx.pebble.directory_url, "-d", name,
                "--config-dir", str(dirs["config"]), "--work-dir", str(dirs["work"]),
                "--logs-dir", str(dirs["logs"]), "--key-type", "ecdsa",
                "--elliptic-curve", "secp256r1", "--agree-tos",
                "--register-unsafely-without-email", "--non-interactive",
            ],
            env,
        )
    for name in names:
        check_certificate(dirs["config"] / "live" / name / "cert.pem", name)
    return steps.result()


RUNNERS: dict[str, Callable[[Context, Path, Sequence[str]], Run]] = {
    "letskencrypt": run_letskencrypt,
    "uacme": run_uacme,
    "acme-tiny": run_acme_tiny,
    "certbot": run_certbot,
}


def mode(client: str, count: int, has_config: bool) -> str:
    """How ``client`` issues ``count`` certificates, for the table."""
    if count == 1:
        return "one run"
    if client != "letskencrypt":
        return f"{count} runs, one per cert"
    return "one run, --config" if has_config else NO_CONFIG_NOTE


# -- the benchmark --------------------------------------------------------------


@dataclass
class Cell:
    """All measured runs of one client at one N."""

    client: str
    count: int
    mode: str
    # Timed runs (not sampled), and the one run whose memory was sampled.
    runs: list[Run] = field(default_factory=list)
    memory: Run | None = None
    error: str = ""

    def summary(self) -> dict[str, Any]:
        seconds = [run.measurement.seconds for run in self.runs]
        sampled = [self.memory] if self.memory is not None else []
        return {
            "client": self.client,
            "count": self.count,
            "mode": self.mode,
            "runs": len(self.runs),
            "error": self.error,
            "median_s": statistics.median(seconds) if seconds else None,
            "min_s": min(seconds, default=None),
            "max_s": max(seconds, default=None),
            "peak_pss_mib": _mib(max((r.measurement.peak_pss_kib for r in sampled), default=0)),
            "peak_rss_sum_mib": _mib(
                max((r.measurement.peak_rss_kib for r in sampled), default=0)
            ),
            "peak_process_rss_mib": _mib(
                max((r.measurement.peak_process_rss_kib for r in sampled), default=0)
            ),
            "peak_processes": max((r.measurement.peak_processes for r in sampled), default=0),
            "seconds": seconds,
            "sampled_run_s": self.memory.measurement.seconds if self.memory else None,
            "argv_first_run": self.runs[0].argvs[:4] if self.runs else [],
        }


def _mib(kib: int) -> float | None:
    return round(kib / 1024, 1) if kib else None


def _placeholders(arg: str, base: Path, pebble: Pebble) -> str:
    """``arg`` with the run's temporary paths as $BENCH and $PEBBLE, for the report."""
    arg = arg.replace(str(base), "$BENCH").replace(str(ROOT) + "/", "")
    return arg.replace(str(pebble.workdir), "$PEBBLE") if pebble.workdir else arg


def measure_cell(ctx: Context, base: Path, cell: Cell, serial: int) -> None:
    """One measured run of ``cell``'s client for its N, in a new directory with new names."""
    workdir = base / f"run{serial}-{cell.client}"
    workdir.mkdir(mode=0o755)  # letskencrypt's roles run as other users
    names = [f"r{serial}-{i}.{DOMAIN_SUFFIX}" for i in range(1, cell.count + 1)]
    try:
        run = RUNNERS[cell.client](ctx, workdir, names)
    except RunFailed as error:
        cell.error = str(error)
        print(f" FAILED\n{error}", flush=True)
        return
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run.argvs = [[_placeholders(arg, base, ctx.pebble) for arg in argv] for argv in run.argvs]
    m = run.measurement
    if ctx.sampling:
        cell.memory = run
        print(
            f" memory: peak PSS {m.peak_pss_kib / 1024:.1f} MiB, "
            f"largest process {m.peak_process_rss_kib / 1024:.1f} MiB ({m.seconds:.2f} s)",
            flush=True,
        )
    else:
        cell.runs.append(run)
        print(f" {m.seconds:.2f} s", flush=True)


def benchmark(
    clients: Sequence[str], counts: Sequence[int], runs: Mapping[int, int], has_config: bool
) -> list[Cell]:
    """Every client at every N against one pebble, the clients' order rotated each run."""
    cells = {
        (client, count): Cell(client, count, mode(client, count, has_config))
        for count in counts
        for client in clients
    }
    base = Path(tempfile.mkdtemp(prefix="letskencrypt-bench-"))
    try:
        webroot = base / "webroot"
        challenge_dir = webroot / ".well-known" / "acme-challenge"
        challenge_dir.mkdir(parents=True)
        for directory in (base, webroot, challenge_dir.parent, challenge_dir):
            directory.chmod(0o755)  # letskencrypt's roles run as other users
        with Pebble(env=PEBBLE_ENV, challenge_dir=challenge_dir) as pebble:
            ctx = Context(pebble, webroot, has_config)
            serial = 0
            for count in counts:
                # Run 0 samples the memory; the others are timed.
                for index in range(runs[count] + 1):
                    ctx.sampling = index == 0
                    shift = index % len(clients)
                    for client in [*clients[shift:], *clients[:shift]]:
                        cell = cells[client, count]
                        if cell.error:
                            continue  # a client that failed once is not timed again
                        serial += 1
                        what = "memory" if ctx.sampling else f"run {index}/{runs[count]}"
                        print(f"N={count} {what} {client} ...", end="", flush=True)
                        measure_cell(ctx, base, cell, serial)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return list(cells.values())


# -- the report -----------------------------------------------------------------


def _command_output(argv: Sequence[str]) -> str:
    """The first line a command prints, "?" if it prints nothing or cannot run."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else "?"


def _debian_version(package: str) -> str:
    return _command_output(["dpkg-query", "-W", "-f=${Version}", package])


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    try:
        letskencrypt = metadata.version("letskencrypt")
    except metadata.PackageNotFoundError:
        letskencrypt = "?"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(int(meminfo[1]) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _command_output(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "pebble": _debian_version("pebble"),
        "versions": {
            "letskencrypt": letskencrypt,
            "uacme": _debian_version("uacme"),
            "acme-tiny": _debian_version("acme-tiny"),
            "certbot": _command_output([str(BENCH_VENV / "bin" / "certbot"), "--version"]),
        },
    }


Summary = dict[str, Any]


def _by_key(summaries: Sequence[Summary]) -> dict[tuple[str, int], Summary]:
    return {(s["client"], s["count"]): s for s in summaries}


def ratio(summaries: Sequence[Summary], metric: str, count: int, peer: str) -> float | None:
    """letskencrypt's ``metric`` over ``peer``'s at ``count``, None if either is missing."""
    cells = _by_key(summaries)
    ours, theirs = cells.get(("letskencrypt", count)), cells.get((peer, count))
    if not ours or not theirs or not ours.get(metric) or not theirs.get(metric):
        return None
    return float(ours[metric]) / float(theirs[metric])


def targets(
    summaries: Sequence[Summary], counts: Sequence[int]
) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each of letskencrypt's targets; met None: not measured."""
    cells = _by_key(summaries)

    def check(value: float | None, limit: float, fmt: str) -> tuple[str, bool | None]:
        if value is None:
            return "not measured", None
        return fmt.format(value), value <= limit

    rows: list[tuple[str, str, bool | None]] = []
    rows.append(("1 cert: wall ≤ 1.0x uacme's",
                 *check(ratio(summaries, "median_s", 1, "uacme"), 1.0, "{:.2f}x")))
    rows.append(("1 cert: wall ≤ 0.3x certbot's",
                 *check(ratio(summaries, "median_s", 1, "certbot"), 0.3, "{:.2f}x")))
    for count in counts:
        rows.append((f"{count} cert{'s' if count > 1 else ''}: peak PSS ≤ 1.5x certbot's",
                     *check(ratio(summaries, "peak_pss_mib", count, "certbot"), 1.5,
                            "{:.2f}x")))
    ours = cells.get(("letskencrypt", 100), {}).get("median_s")
    rows.append(("100 certs: wall ≤ 10 s",
                 *check(float(ours) if ours else None, 10.0, "{:.1f} s")))
    rows.append(("100 certs: wall ≤ 0.2x uacme's",
                 *check(ratio(summaries, "median_s", 100, "uacme"), 0.2, "{:.2f}x")))
    return rows


def _fmt(value: object, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def markdown(report: Mapping[str, Any]) -> str:
    """results.md: the machine, the table, the ratios, the targets, the commands."""
    info: Summary = report["machine"]
    summaries: list[Summary] = report["results"]
    counts: list[int] = report["counts"]
    runs: dict[str, int] = report["runs_per_count"]
    versions = info["versions"]
    lines = [
        "# letskencrypt against uacme, acme-tiny and certbot",
        "",
        f"Measured {info['date']} with `python -m bench.compare` against a local pebble.",
        "",
        f"- Machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory_gib']} GiB, "
        f"Linux {info['kernel']}, {info['os']}; load average (1, 5, 15 min) "
        f"{' '.join(info['loadavg'])} at the start, "
        f"{' '.join(info.get('loadavg_end', ['?']))} at the end "
        f"({info.get('benchmark_minutes', '?')} minutes): other work on the machine "
        "skews the times",
        f"- Pebble {info['pebble']} (Debian) on loopback, PEBBLE_VA_NOSLEEP=1, "
        "PEBBLE_AUTHZREUSE=0, PEBBLE_WFE_NONCEREJECT=0",
        f"- letskencrypt {versions['letskencrypt']} (Python {info['python']}), "
        f"uacme {versions['uacme']}, acme-tiny {versions['acme-tiny']} (Debian), "
        f"{versions['certbot']} (PyPI)",
        "- Timed runs per N: " + ", ".join(f"N={n}: {runs[str(n)]}" for n in counts)
        + "; memory from one more run per client and N, sampled every 5 ms (not timed)",
        "- Each run starts with a new account and new keys; the peers run once per "
        "certificate, one after the other.",
        "",
        "| client | N | how | runs | median wall (s) | range (s) | peak PSS (MiB) "
        "| largest process RSS (MiB) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        if s["error"]:
            lines.append(f"| {s['client']} | {s['count']} | {s['mode']} | failed "
                         "| - | - | - | - |")
            continue
        lines.append(
            f"| {s['client']} | {s['count']} | {s['mode']} | {s['runs']} "
            f"| {_fmt(s['median_s'])} | {_fmt(s['min_s'])}-{_fmt(s['max_s'])} "
            f"| {_fmt(s['peak_pss_mib'], '.1f')} | {_fmt(s['peak_process_rss_mib'], '.1f')} |"
        )
    lines += [
        "",
        "Ratios, letskencrypt over the peer (below 1: letskencrypt is faster or smaller):",
        "",
        "| N | wall / uacme | wall / certbot | PSS / uacme | PSS / certbot |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for count in counts:
        cells = [
            ratio(summaries, metric, count, peer)
            for metric in ("median_s", "peak_pss_mib")
            for peer in ("uacme", "certbot")
        ]
        lines.append(f"| {count} | " + " | ".join(_fmt(c) for c in cells) + " |")
    lines += ["", "Targets:", "", "| target | measured | met |", "| --- | ---: | --- |"]
    for target, value, met in targets(summaries, counts):
        verdict = "not measured" if met is None else ("met" if met else "**not met**")
        lines.append(f"| {target} | {value} | {verdict} |")
    failures = [s for s in summaries if s["error"]]
    if failures:
        lines += ["", "Failures:", ""]
        for s in failures:
            lines += [f"- {s['client']} at N={s['count']}:", "", "  ```",
                      *("  " + line for line in str(s["error"]).splitlines()[-15:]), "  ```"]
    lines += [
        "",
        "Commands of the first measured run (its first four; $BENCH and $PEBBLE are "
        "temporary directories, the venvs are the worktree's):",
        "",
    ]
    seen: set[str] = set()
    for s in summaries:
        if s["client"] in seen or not s["argv_first_run"]:
            continue
        seen.add(str(s["client"]))
        lines += [f"- {s['client']} (N={s['count']}):", "", "  ```"]
        lines += [f"  {_shell_words(argv)}" for argv in s["argv_first_run"]]
        lines += ["  ```"]
    lines.append("")
    return "\n".join(lines)


def _shell_words(argv: Sequence[str]) -> str:
    """``argv`` as a shell line, leaving the $BENCH/$PEBBLE placeholders unquoted."""
    return " ".join(arg if _PLAIN_WORD.fullmatch(arg) else shlex.quote(arg) for arg in argv)


def draw_plot(results_json: Path, plot: Path) -> None:
    """plot.png, drawn by bench/plot.py with the bench venv's matplotlib."""
    subprocess.run(
        [str(BENCH_VENV / "bin" / "python"), str(PLOT_SCRIPT), str(results_json), str(plot)],
        check=True,
    )


# -- command line ---------------------------------------------------------------


def parse_runs(text: str, counts: Sequence[int]) -> dict[int, int]:
    """``5`` (every N) or ``1:5,10:3,100:1``; N not named keep their default."""
    if ":" not in text:
        return {count: int(text) for count in counts}
    runs = {count: DEFAULT_RUNS.get(count, 1) for count in counts}
    for item in text.split(","):
        count, _, number = item.partition(":")
        runs[int(count)] = int(number)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--counts", default=",".join(map(str, DEFAULT_COUNTS)),
                        help="certificates per run, comma-separated (default 1,10,100)")
    parser.add_argument("--runs", default=None,
                        help="measured runs per N: one number for all, or N:R,... "
                        "(default 1:5,10:3,100:1)")
    parser.add_argument("--clients", default=",".join(CLIENTS),
                        help=f"comma-separated subset of {','.join(CLIENTS)}")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"),
                        help="directory for results.md, results.json, plot.png")
    options = parser.parse_args(argv)
    counts = sorted({int(c) for c in options.counts.split(",") if c})
    clients = [c for c in options.clients.split(",") if c]
    unknown = set(clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown clients: {', '.join(sorted(unknown))}")
    runs = (parse_runs(options.runs, counts) if options.runs
            else {c: DEFAULT_RUNS.get(c, 1) for c in counts})

    ensure_debian_packages()
    ensure_bench_venv()
    has_config = letskencrypt_has_config()
    if "letskencrypt" in clients and not has_config:
        print(f"letskencrypt has no --config yet: {NO_CONFIG_NOTE}", flush=True)

    info = machine()
    started = time.monotonic()
    cells = benchmark(clients, counts, runs, has_config)
    info["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    info["benchmark_minutes"] = round((time.monotonic() - started) / 60, 1)
    report = {
        "machine": info,
        "counts": counts,
        "runs_per_count": {str(c): runs[c] for c in counts},
        "letskencrypt_config_mode": has_config,
        "results": [cell.summary() for cell in cells],
    }
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / "results.md").write_text(markdown(report))
    draw_plot(out / "results.json", out / "plot.png")
    print((out / "results.md").read_text())
    return 1 if any(cell.error for cell in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
