"""The self-sandbox, tried for real: each role's profile applied in a probe
process that then attempts what it forbids, the real role processes inspected
through /proc while they serve, and `letskencrypt sandbox-check` itself.

These tests need what this project's machines have: Linux with Landlock
(ABI 6 or later) and libseccomp.  Where a layer is missing the tests of that
layer are skipped and one test says which.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from letskencrypt import cli, launch, namespace, process, rpc, sandbox, sandbox_check
from letskencrypt.context import RoleConfig
from letskencrypt.roles import ROLES, spec_of
from letskencrypt.sandbox_check import ATTEMPTS, Identity
from letskencrypt.settings import DnsprocSettings, RoleSettings, encode
from letskencrypt.v1 import (
    account_pb2,
    account_pb2_grpc,
    certificate_pb2,
    certificate_pb2_grpc,
    challenge_pb2,
    challenge_pb2_grpc,
    domainkey_pb2,
    domainkey_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    keyinfo_pb2,
    keyinfo_pb2_grpc,
    lifecycle_pb2,
    lifecycle_pb2_grpc,
    renewal_pb2,
    renewal_pb2_grpc,
    resolver_pb2,
    resolver_pb2_grpc,
)

from tests.certfactory import make_pki, pem

ROOT = os.geteuid() == 0
RUN_USER = cli.run_user("nobody")
ABI = sandbox.landlock_abi()

# The errno each forbidden action fails with, by the layer that stops it first.
EXPECTED = {
    "read": "EACCES",
    "account_key": "EACCES",
    "domain_key": "EACCES",
    "write": "EACCES",
    "create": "EACCES",
    "chmod": "EPERM",
    "inet_tcp": "EPERM",
    "inet_udp": "EPERM",
    "inet6_tcp": "EPERM",
    "inet6_udp": "EPERM",
    "netlink": "EPERM",
    "packet": "EPERM",
    "tcp_connect": "EACCES",
    "execve": "EPERM",
    "ptrace": "EPERM",
    "mem": "EACCES",
    "environ": "EACCES",
    "tty": "EACCES",
    "tiocsti": "EPERM",
    "signal_parent": "EPERM",
    "signal_init": "EPERM",
    "abstract": "EPERM",
    "named": "EPERM",
    "mount": "EPERM",
    "unshare": "EPERM",
    "io_uring": "EPERM",
    "signal": "EPERM",
    "signal_all": "EPERM",
}
# In its private namespaces (namespace.py) a role does not even see the path
# or the peer: the namespace answers before Landlock would.
EXPECTED_IN_NAMESPACES = {
    **{key: "ENOENT" for key in ("read", "account_key", "domain_key", "write", "create")},
    **{key: "ENOENT" for key in ("mem", "environ", "tty")},
}
# Denied to an unprivileged user with or without the sandbox (TIOCSTI on a
# terminal that is not one's own needs CAP_SYS_ADMIN; the parent is root's).
NEEDS_PRIVILEGE = {"mount", "packet", "tiocsti", "signal_parent", "signal_init"}
# Denied before the sandbox to everyone: a role has no controlling terminal.
NEVER = {"tty": "ENXIO"}


# What the design says (the specs are checked against it in test_specs.py).
KEEPS_ROOT = frozenset({"chngproc", "fileproc"})
NETWORK_ROLES = frozenset({"netproc", "dnsproc"})


def expected(role: str, key: str, namespaces: bool) -> str:
    """The errno of the layer that stops the action first: the second stage
    (sandbox.seal: no connect() at all for the roles that only serve), else
    the namespaces, else Landlock."""
    seals = spec_of(role).serves_only
    if key == "tcp_connect" and seals and role not in NETWORK_ROLES:
        return "EPERM"
    if namespaces and key == "named" and not seals:
        return "ENOENT"
    if namespaces and key == "abstract" and role not in NETWORK_ROLES and not seals:
        return "ECONNREFUSED"
    if namespaces and key in EXPECTED_IN_NAMESPACES:
        return EXPECTED_IN_NAMESPACES[key]
    return EXPECTED[key]




def test_every_attempt_has_an_expected_errno() -> None:
    assert set(EXPECTED) == {attempt.key for attempt in ATTEMPTS}


def test_this_kernel_has_every_layer() -> None:
    """Says plainly when the other tests skip a layer for want of it."""
    assert sandbox.landlock_gaps(ABI) == []
    assert sandbox.import_pyseccomp().get_api() >= 2


# --- probes: the real profile, then every forbidden action ---------------------------


@pytest.fixture(scope="module", params=[True, False], ids=["namespaces", "no-namespaces"])
def reports(request: pytest.FixtureRequest) -> Iterator[dict[str, dict]]:
    """Probes with every layer, and without the namespaces: what Landlock and
    seccomp hold alone."""
    with namespaces_turned(on=request.param):
        reports = sandbox_check.run_probes(RUN_USER)
    for report in reports.values():
        report["namespaces"] = request.param
    yield reports


@contextlib.contextmanager
def namespaces_turned(on: bool) -> Iterator[None]:
    saved = os.environ.pop(namespace.DISABLE_VARIABLE, None)
    if not on:
        os.environ[namespace.DISABLE_VARIABLE] = "1"
    try:
        yield
    finally:
        os.environ.pop(namespace.DISABLE_VARIABLE, None)
        if saved is not None:
            os.environ[namespace.DISABLE_VARIABLE] = saved


def probe_uid(role: str) -> int:
    if RUN_USER is not None and role not in KEEPS_ROOT:
        return RUN_USER.uid
    return os.getuid()


@pytest.mark.parametrize("role", ROLES)
def test_forbidden_actions_fail_with_the_right_errno(reports: dict, role: str) -> None:
    report = reports[role]
    assert "crashed" not in report, report
    assert report["uid"] == probe_uid(role)
    missing = sandbox_check.missing_layers(report)
    assert (sandbox.NAMESPACES in missing) != report["namespaces"], report["gaps"]
    for attempt in ATTEMPTS:
        after = report["after"][attempt.key]
        if spec_of(role).network.value in attempt.allowed_for:
            assert after == "ok", (attempt.key, after)
            continue
        if attempt.layers <= missing:
            continue  # this kernel lacks the layer: test_this_kernel_has_every_layer fails
        wanted = expected(role, attempt.key, report["namespaces"])
        assert after == wanted, (attempt.key, after, report["stderr"])


@pytest.mark.parametrize("role", ROLES)
def test_the_same_actions_work_without_the_sandbox(reports: dict, role: str) -> None:
    """So it is the sandbox that denies them, not a missing permission."""
    report = reports[role]
    privileged = report["uid"] == 0
    for attempt in ATTEMPTS:
        if attempt.key in NEVER:
            assert report["before"][attempt.key] == NEVER[attempt.key]
        elif attempt.key in NEEDS_PRIVILEGE and not privileged:
            assert report["before"][attempt.key] == "EPERM"
        else:
            assert report["before"][attempt.key] == "ok", (attempt.key, report["before"])


@pytest.mark.parametrize("role", ROLES)
def test_what_the_role_needs_still_works(reports: dict, role: str) -> None:
    """Its sockets serve a gRPC call; chngproc publishes and withdraws a token,
    fileproc installs and removes a certificate set, revokeproc reads cert.pem
    through .live and .sets, netproc makes a TLS context and connects, dnsproc
    resolves."""
    assert reports[role]["works"] == sandbox_check.WORKS


@pytest.mark.parametrize("role", ROLES)
def test_probe_state(reports: dict, role: str) -> None:
    state = reports[role]["state"]
    assert state["dumpable"] == 0
    assert state["no_new_privs"] == 1
    assert state["threads"]
    # The second stage stacks a filter on the first in the roles that only serve.
    filters = "2" if spec_of(role).serves_only else "1"
    for thread in state["threads"]:
        assert thread == {"Seccomp": "2", "NoNewPrivs": "1", "Seccomp_filters": filters}
    assert state["capabilities"] == dict.fromkeys(process.CAPABILITY_SETS, 0)
    assert state["session"] is True
    assert state["tty_nr"] == 0
    assert not any(map(sandbox_check.is_terminal, state["stdio"])), state["stdio"]


def test_roles_that_only_serve_are_sealed() -> None:
    """The second stage (sandbox.seal) is for exactly the roles that call no one."""
    sealed = {role for role in ROLES if spec_of(role).serves_only}
    # acctproc asks keyproc for the domain key (the keyacct edge).
    assert sealed == {"keyproc", "dnsproc", "chngproc", "fileproc", "revokeproc"}


def test_fileproc_writes_but_cannot_read_the_domain_key(reports: dict) -> None:
    report = reports["fileproc"]
    assert report["before"]["domain_key"] == "ok"
    assert report["after"]["domain_key"] == ("ENOENT" if report["namespaces"] else "EACCES")
    assert report["works"] == sandbox_check.WORKS


# --- profiles ------------------------------------------------------------------------


def config_for(role: str, base: Path) -> RoleConfig:
    return RoleConfig(role, str(base / "run"), settings=sandbox_check.role_settings(base)[role])


def rules_beyond_common(role: str, base: Path) -> dict[str, sandbox.Fs]:
    rules = {rule.path: rule.access for rule in sandbox.profile(config_for(role, base)).rules}
    common = {rule.path for rule in sandbox.profile(config_for("certproc", base)).rules}
    return {path: access for path, access in rules.items() if path not in common}


def test_profiles_grant_each_role_its_own_paths_only(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert rules_beyond_common("acctproc", tmp_path) == {
        str(run / "acct"): sandbox.Fs.MAKE_SOCK | sandbox.Fs.REMOVE_FILE
    }
    chngproc = rules_beyond_common("chngproc", tmp_path)
    challenge = chngproc[str(tmp_path / "challenge")]
    assert challenge == sandbox.Fs.MAKE_REG | sandbox.Fs.WRITE_FILE | sandbox.Fs.REMOVE_FILE
    fileproc = rules_beyond_common("fileproc", tmp_path)
    assert not fileproc[str(tmp_path / "certs")] & sandbox.Fs.READ_FILE
    # Read the certificates only (no key may live beneath the directory),
    # and list .sets for a set an earlier run kept.
    revokeproc = rules_beyond_common("revokeproc", tmp_path)
    assert revokeproc == {
        str(tmp_path / "certs"): sandbox.Fs.READ_FILE | sandbox.Fs.READ_DIR,
        str(run / "rvk"): sandbox.Fs.MAKE_SOCK | sandbox.Fs.REMOVE_FILE,
    }
    for role in ROLES:
        for rule in sandbox.profile(config_for(role, tmp_path)).rules:
            assert rule.path != "/"
            assert not rule.access & sandbox.Fs.EXECUTE


def test_the_working_directory_is_not_a_python_path(tmp_path: Path) -> None:
    """`python -m` puts it first on sys.path; it is no place of code."""
    code = (
        "import os, sys; sys.path.insert(0, os.getcwd())\n"
        "from letskencrypt import sandbox; print(os.getcwd() in sandbox.python_paths())"
    )
    for cwd in (tmp_path, "/"):
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True
        )
        assert result.stdout == "False\n"


# --- when the kernel lacks a layer ----------------------------------------------------


def run_confined(body: str, *, strict: bool, prelude: str = "") -> subprocess.CompletedProcess:
    """Apply certproc's profile in a fresh interpreter, after `prelude`, then run `body`."""
    code = f"""
import json, os, socket, sys
from letskencrypt import sandbox
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.settings import CertprocSettings
{prelude}
config = RoleConfig("certproc", "/nonexistent", settings=CertprocSettings(operation="issue"))
try:
    gaps = sandbox.apply(config, Logger("certproc", 0), strict={strict})
except sandbox.SandboxError as error:
    print(json.dumps({{"error": str(error)}}))
    sys.exit(0)
print(json.dumps({{"gaps": gaps}}))
{body}
"""
    return subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


NO_LANDLOCK = "sandbox.landlock_abi = lambda: 0"
NO_LIBSECCOMP = (
    "def broken():\n    raise RuntimeError('Unable to find libseccomp')\n"
    "sandbox.import_pyseccomp = broken"
)
TRY_TO_READ = """
try:
    open("/etc/passwd").read()
    print("read")
except PermissionError:
    print("denied")
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    print("socket")
except PermissionError:
    print("no socket")
"""


def test_without_landlock_the_role_says_so_and_goes_on() -> None:
    result = run_confined(TRY_TO_READ, strict=False, prelude=NO_LANDLOCK)
    first, *rest = result.stdout.splitlines()
    gaps = json.loads(first)["gaps"]
    assert [sandbox.feature_of(gap) for gap in gaps] == ["landlock"]
    assert rest == ["read", "no socket"]  # seccomp still holds
    assert result.stderr.count("\n") == 1
    assert "letskencrypt: certproc: sandbox: not applied: landlock" in result.stderr


def test_without_landlock_strict_refuses() -> None:
    result = run_confined(TRY_TO_READ, strict=True, prelude=NO_LANDLOCK)
    assert "--strict" in json.loads(result.stdout)["error"]
    assert "landlock" in json.loads(result.stdout)["error"]


def test_without_libseccomp_the_role_says_so_and_goes_on() -> None:
    result = run_confined(TRY_TO_READ, strict=False, prelude=NO_LIBSECCOMP)
    first, *rest = result.stdout.splitlines()
    assert [sandbox.feature_of(g) for g in json.loads(first)["gaps"]] == ["seccomp"]
    assert rest == ["denied", "socket"]  # Landlock still holds
    assert "not applied: seccomp: libseccomp is not usable here" in result.stderr


def test_without_libseccomp_strict_refuses() -> None:
    result = run_confined("", strict=True, prelude=NO_LIBSECCOMP)
    assert "seccomp" in json.loads(result.stdout)["error"]


def test_a_thread_before_confinement_is_refused() -> None:
    prelude = "import threading, time; threading.Thread(target=time.sleep, args=(5,)).start()"
    result = run_confined("", strict=False, prelude=prelude)
    assert "2 threads exist before confinement" in json.loads(result.stdout)["error"]


def test_strict_role_exits_1_with_one_line(tmp_path: Path) -> None:
    """A real role under --strict on a kernel without Landlock."""
    run_dir = tmp_path / "run"
    (run_dir / "dns").mkdir(parents=True)
    code = (
        "import letskencrypt.sandbox as s\n"
        "s.landlock_abi = lambda: 0\n"
        "from letskencrypt import process\n"
        "process.run_role('dnsproc')\n"
    )
    document = {"run_dir": str(run_dir), "settings": encode(DnsprocSettings(strict=True))}
    result = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(document), cwd="/",
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("letskencrypt: dnsproc: sandbox incomplete (--strict)")
    assert result.stderr.count("\n") == 1


# --- the real roles, running ------------------------------------------------------------


class RoleProcess:
    def __init__(self, role: str, base: Path, settings: RoleSettings) -> None:
        self.role = role
        self.base = base
        run_user = (RUN_USER.uid, RUN_USER.gid) if RUN_USER is not None else None
        document = launch.role_document(role, str(base / "run"), settings, run_user=run_user)
        self.process = launch.start_role(role, document, stdout=None)

    def channel(self, edge: str) -> grpc.Channel:
        return rpc.connect(str(self.base / "run"), edge)

    def status(self) -> list[dict[str, str]]:
        """Each thread's /proc status fields."""
        threads = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                text = (task / "status").read_text()
                threads.append(
                    dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
                )
        return threads

    def stop(self) -> tuple[int, str]:
        edges = spec_of(self.role).serves
        if edges:
            with self.channel(edges[0]) as channel:
                lifecycle_pb2_grpc.LifecycleStub(channel).Stop(
                    lifecycle_pb2.StopRequest(), timeout=10
                )
        else:
            self.process.send_signal(signal.SIGKILL)
        assert self.process.stderr is not None
        code = self.process.wait(timeout=15)
        return code, self.process.stderr.read().decode()


@pytest.fixture
def base() -> Iterator[Path]:
    """A role's directories, reachable by the run user (pytest's are root's only)."""
    top = Path(tempfile.mkdtemp(prefix="letskencrypt-test-sandbox-"))
    top.chmod(0o711)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def start_role(role: str, top: Path) -> RoleProcess:
    if RUN_USER is not None and role not in KEEPS_ROOT:
        identity = Identity(RUN_USER.uid, RUN_USER.gid)
    else:
        identity = Identity(os.getuid(), os.getgid())
    base = sandbox_check.make_base(top, role, identity)
    # Real keys this time, made by the role itself.
    for key in (sandbox_check.ACCOUNT_KEY, sandbox_check.DOMAIN_KEY):
        (base / key).unlink()
    settings = sandbox_check.role_settings(base)[role]
    if hasattr(settings, "create"):
        settings = dataclasses.replace(settings, create=True)  # type: ignore[call-arg]
    return RoleProcess(role, base, settings)


def wait_for_socket(process: RoleProcess) -> None:
    deadline = time.monotonic() + 20
    for edge in spec_of(process.role).serves:
        path = rpc.socket_path(str(process.base / "run"), edge)
        while not os.path.exists(path):
            assert process.process.poll() is None, process.process.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"{process.role} did not bind {path}"
            time.sleep(0.02)


def call_the_service(process: RoleProcess) -> None:
    """One real call per role, made through its sandboxed socket."""
    role = process.role
    if role == "acctproc":
        with process.channel("acct") as channel:
            reply = account_pb2_grpc.AccountStub(channel).Describe(
                account_pb2.DescribeRequest(), timeout=10
            )
            assert reply.thumbprint
    elif role == "keyproc":
        with process.channel("key") as channel:
            stub = domainkey_pb2_grpc.DomainKeyStub(channel)
            assert stub.Csr(domainkey_pb2.CsrRequest(), timeout=10).der
        with process.channel("keyinfo") as channel:
            info = keyinfo_pb2_grpc.KeyInfoStub(channel).Describe(
                keyinfo_pb2.KeyInfoRequest(), timeout=10
            )
            assert list(info.names) == [sandbox_check.NAME]
    elif role == "dnsproc":
        with process.channel("dns") as channel:
            reply = resolver_pb2_grpc.ResolverStub(channel).Resolve(
                resolver_pb2.ResolveRequest(host="localhost"), timeout=10
            )
            assert "127.0.0.1" in reply.addresses
    elif role == "chngproc":
        token = "T" * 43
        with process.channel("chng") as channel:
            stub = challenge_pb2_grpc.ChallengeStub(channel)
            stub.Publish(
                challenge_pb2.PublishRequest(token=token, key_authorization=f"{token}.{'K' * 43}"),
                timeout=10,
            )
            assert (process.base / "challenge" / token).read_text() == f"{token}.{'K' * 43}"
            stub.Withdraw(challenge_pb2.WithdrawRequest(token=token), timeout=10)
            assert not (process.base / "challenge" / token).exists()
    elif role == "certproc":
        with process.channel("cert") as channel, pytest.raises(grpc.RpcError) as refused:
            certificate_pb2_grpc.CertificateStub(channel).Submit(
                certificate_pb2.SubmitRequest(pem_chain=b"not a chain"), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    elif role == "fileproc":
        pki = make_pki()
        leaf = pem(pki.leaf([sandbox_check.NAME]))
        with process.channel("file") as channel:
            files_pb2_grpc.FilesStub(channel).Install(
                files_pb2.InstallRequest(certificate_pem=leaf, chain_pem=pem(pki.intermediate)),
                timeout=10,
            )
        assert (process.base / "certs" / "cert.pem").read_bytes() == leaf
    elif role == "revokeproc":
        with process.channel("rvk") as channel:
            stub = renewal_pb2_grpc.RenewalStub(channel)
            reply = stub.Check(renewal_pb2.CheckRequest(), timeout=10)
            assert reply.decision != renewal_pb2.DECISION_UNSPECIFIED
            current = stub.Current(renewal_pb2.CurrentRequest(), timeout=10)
            assert current.certificate_der


@contextlib.contextmanager
def serving_role(role: str, top: Path) -> Iterator[RoleProcess]:
    """A real role, serving, one real call made through its socket; on the
    way out it is stopped and must exit 0 without a word.  certproc serves
    only once fileproc does: it gets one, which it stops when it is stopped."""
    process = start_role(role, top)
    fileproc = None
    if role == "certproc":
        if RUN_USER is not None:
            # Their edge's directory as the supervisor makes it: fileproc keeps root.
            edge = process.base / "run" / "file"
            os.chown(edge, 0, RUN_USER.gid)
            edge.chmod(0o2770)
        settings = sandbox_check.role_settings(process.base)["fileproc"]
        fileproc = RoleProcess("fileproc", process.base, settings)
    try:
        wait_for_socket(process)
        call_the_service(process)
        yield process
        code, stderr = process.stop()
        if fileproc is not None:
            assert fileproc.process.stderr is not None
            assert fileproc.process.wait(timeout=15) == 0
            assert fileproc.process.stderr.read() == b""
    finally:
        for started in (process, fileproc):
            if started is not None and started.process.poll() is None:
                started.process.kill()
                started.process.wait()
    assert code == 0, stderr
    assert stderr == ""


@pytest.mark.parametrize("role", [role for role in ROLES if role != "netproc"])
def test_running_role_is_sandboxed_and_serves(base: Path, role: str) -> None:
    with serving_role(role, base) as process:
        threads = process.status()
        assert len(threads) > 1  # gRPC's threads, started after confinement
        for thread in threads:
            assert thread["Seccomp"].strip() == "2", thread["Name"]
            assert thread["NoNewPrivs"].strip() == "1", thread["Name"]
        expected_uid = RUN_USER.uid if RUN_USER and role not in KEEPS_ROOT else os.getuid()
        assert int(threads[0]["Uid"].split()[0]) == expected_uid


def test_running_netproc_is_sandboxed(base: Path) -> None:
    """netproc drives; alone, it waits for its peers with its channels open."""
    process = start_role("netproc", base)
    try:
        deadline = time.monotonic() + 20
        while len(threads := process.status()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for thread in threads:
            assert thread["Seccomp"].strip() == "2"
            assert thread["NoNewPrivs"].strip() == "1"
    finally:
        process.stop()


# --- sandbox-check ------------------------------------------------------------------------


def sandbox_check_command(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "letskencrypt", "sandbox-check", *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=180, check=False)


def test_sandbox_check_strict_passes_here() -> None:
    result = sandbox_check_command("--strict")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[2].split() == list(ROLES)
    assert "NOT ENFORCED" not in result.stdout
    assert "not available" not in result.stdout
    assert lines[-1].startswith("*")


@pytest.mark.skipif(not ROOT or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_sandbox_check_as_an_unprivileged_user() -> None:
    nobody = RUN_USER.uid if RUN_USER else 65534
    result = sandbox_check_command("--strict", user=str(nobody))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"probes as uid {nobody}" in result.stdout


def test_sandbox_check_fails_when_a_restriction_does_not_hold() -> None:
    """The verdicts, on a made-up report where reading outside went through."""
    report = {
        "role": "certproc",
        "network": "none",
        "serves_only": False,
        "gaps": [],
        "before": {a.key: "ok" for a in ATTEMPTS},
        "after": {a.key: EXPECTED[a.key] for a in ATTEMPTS} | {"read": "ok"},
        "works": sandbox_check.WORKS,
        "uid": 65534,
        "state": {
            "dumpable": 0,
            "no_new_privs": 1,
            "threads": [{"Seccomp": "2", "NoNewPrivs": "1"}],
            "capabilities": dict.fromkeys(process.CAPABILITY_SETS, 0),
            "session": True,
            "tty_nr": 0,
            "stdio": ["/dev/null", "pipe:[1]", "/tmp/x"],
        },
    }
    rows, broken, weak = sandbox_check.table({"certproc": report})
    assert broken and weak
    assert ["read a file outside", "NOT ENFORCED"] in rows
    lacking = report | {"gaps": ["landlock: none here", "namespaces: none here"]}
    rows, broken, weak = sandbox_check.table({"certproc": lacking})
    assert not broken and weak
    assert ["read a file outside", "not available"] in rows
