"""Container mode with CONFIG (container.py, pod.py): every container takes
the file's certificates in order, with fixed paths and a socket per
certificate; without podman."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from letskencrypt import container, pod, rpc
from letskencrypt.errors import InputError
from letskencrypt.roles import ROLES
from letskencrypt.v1 import (
    domainkey_pb2,
    domainkey_pb2_grpc,
)

CONFIG = """\
authority pebble {
    api url "https://ca.test/dir"
    account key "/host/account.pem" ecdsa
    contact "mailto:ops@example.org"
}
authority other {
    api url "https://other.test/dir"
    account key "/host/other.pem"
}
domain first {
    domain name first.example.org
    alternative names { www.first.example.org }
    domain key "/host/first.pem" rsa
    domain certificate "/host/first.crt"
    sign with pebble
}
domain second.example.org {
    domain key "/host/second.pem"
    sign with other
}
"""


STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


def environment(tmp_path: Path, text: str = CONFIG, **extra: str) -> dict[str, str]:
    path = tmp_path / "acme-client.conf"
    path.write_text(text)
    return {"CONFIG": str(path), "VERBOSE": "1", **extra}


def test_every_role_plans_the_certificates_in_file_order(tmp_path: Path) -> None:
    environ = environment(tmp_path, ACME_SERVER="https://ignored.test/dir", CONTACT="mailto:x@y")
    for role in ROLES:
        plans = pod.plans(role, environ)
        assert [plan.handle for plan in plans] == ["first", "second.example.org"], role
        # Trust anchors: none mounted, so the two roles that check them refuse
        # a CA that is not Let's Encrypt, for that certificate alone.
        if role in ("certproc", "revokeproc"):
            assert all(plan.config is None for plan in plans)
            assert "--trust-anchors" in (plans[0].error or ""), plans[0].error
            continue
        assert [plan.config.instance for plan in plans if plan.config] == [0, 1], role


def test_paths_inside_the_containers_are_fixed(tmp_path: Path) -> None:
    environ = environment(tmp_path)
    first, second = pod.plans("keyproc", environ)
    assert first.config is not None and second.config is not None
    assert first.config.settings.key_path == "/etc/ssl/private/acme/first.pem"
    assert first.config.settings.key_type == "rsa4096"
    assert second.config.settings.key_path == "/etc/ssl/private/acme/second.example.org.pem"
    acct = pod.plans("acctproc", environ)
    assert [p.config.settings.key_path for p in acct if p.config] == [
        "/etc/acme/pebble.pem", "/etc/acme/other.pem",
    ]
    assert acct[0].config and acct[0].config.settings.key_type == "ecdsa384"
    net = pod.plans("netproc", environ)
    assert net[0].config and net[1].config
    assert net[0].config.settings.directory_url == "https://ca.test/dir"
    assert net[0].config.settings.contact == ("mailto:ops@example.org",)
    assert net[0].config.settings.names == ("first.example.org", "www.first.example.org")
    assert net[1].config.settings.directory_url == "https://other.test/dir"
    files = pod.plans("fileproc", environ)
    assert [p.config.settings.cert_dir for p in files if p.config] == [
        "/etc/ssl/acme/first", "/etc/ssl/acme/second.example.org",
    ]
    chng = pod.plans("chngproc", environ)
    assert {p.config.settings.challenge_dir for p in chng if p.config} == {"/var/www/acme"}


def test_dns01_from_the_file_with_the_mounted_tsig_key(tmp_path: Path) -> None:
    """Each certificate's challenge and DNS servers are the file's; the TSIG
    key is the file mounted into chngproc alone, whose path the other roles
    are told without reading it (there is none here: chngproc says so)."""
    text = CONFIG.replace(
        "    sign with other\n",
        "    sign with other\n    challenge dns-01\n    dns server 192.0.2.53\n"
        '    tsig key "/host/tsig.key"\n    dns check server 192.0.2.1 192.0.2.2:5353\n',
    )
    environ = environment(tmp_path, text)
    first, second = pod.plans("netproc", environ)
    assert first.config and second.config
    assert first.config.settings.challenge == "http-01"
    settings = second.config.settings
    assert (settings.challenge, settings.dns_server) == ("dns-01", "192.0.2.53:53")
    assert settings.dns_check_servers == ("192.0.2.1:53", "192.0.2.2:5353")
    first, second = pod.plans("chngproc", environ)
    assert first.config and first.config.settings.challenge_dir == "/var/www/acme"
    assert second.config is None
    assert second.error is not None
    assert second.error.endswith(f"--tsig-key {container.TSIG_KEY}: no such file")


def test_key_type_from_the_environment_wins(tmp_path: Path) -> None:
    plans = pod.plans("keyproc", environment(tmp_path, KEY_TYPE="ecdsa256"))
    assert all(p.config and p.config.settings.key_type == "ecdsa256" for p in plans)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"DAEMON": "1"}, "DAEMON=1 with CONFIG"),
        ({"DOMAINS": "example.org"}, "DOMAINS and CONFIG"),
        ({"CONFIG": "relative.conf"}, "absolute path"),
        ({"VERBOSE": "7"}, "VERBOSE"),
    ],
)
def test_what_concerns_the_whole_file_fails_at_once(
    tmp_path: Path, extra: dict[str, str], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        pod.plans("keyproc", {**environment(tmp_path), **extra})


def test_a_bad_file_fails_at_once_in_one_line(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    environ = environment(tmp_path, "domain {\n")
    assert container.every_certificate("netproc", environ) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "acme-client.conf:" in err, err


def test_a_handle_that_is_no_file_name_fails_that_certificate_alone(tmp_path: Path) -> None:
    text = CONFIG.replace("domain first {", 'domain "../first" {')
    plans = pod.plans("keyproc", environment(tmp_path, text))
    assert plans[0].config is None and "cannot name a file" in (plans[0].error or "")
    assert plans[1].config is not None


def test_socket_per_certificate() -> None:
    assert rpc.socket_path("/run/x", "key") == "/run/x/key/sock"
    assert rpc.socket_path("/run/x", "key", 0) == "/run/x/key/0/sock"
    assert rpc.socket_path("/run/x", "key", 12) == "/run/x/key/12/sock"
    assert rpc.socket_path("/run/x", "acct", part=1) == "/run/x/acct/p1/sock"


def test_summary_of_netproc() -> None:
    runner = pod.Runner("netproc", 0)
    assert pod.summary("netproc", {"a": 0, "b": 2}, 2, runner) == 0
    assert pod.summary("netproc", {"a": 2, "b": 2}, 2, runner) == 2
    assert pod.summary("netproc", {"a": 2, "b": 2}, 0, runner) == 0
    assert pod.summary("netproc", {"a": 0, "b": 1}, 2, runner) == 1
    assert pod.summary("keyproc", {"a": 0, "b": 1}, 2, runner) == 1
    assert pod.summary("keyproc", {"a": 0, "b": 0}, 2, runner) == 0


REFUSER = """
import sys
from letskencrypt import rpc
rpc.use_edge_tokens({})
failed = rpc.refuse_until_stopped(sys.argv[1], ["key", "keyinfo"], "bad key", instance=3)
print("failed" if failed else "ok")
"""


def test_a_refusing_server_answers_with_why_until_stopped(tmp_path: Path) -> None:
    """What a role that could not start for one certificate does: its client
    hears why at once, and Stop ends it."""
    for edge in ("key", "keyinfo"):
        (tmp_path / edge).mkdir()
    server = subprocess.Popen(
        [sys.executable, "-c", REFUSER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        channel = rpc.connect(str(tmp_path), "key", 3)
        # Both edges, each served once it is bound (one after the other).
        rpc.wait_ready({"key": channel, "keyinfo": rpc.connect(str(tmp_path), "keyinfo", 3)}, 30)
        assert os.path.exists(tmp_path / "key" / "3" / "sock")
        assert os.path.exists(tmp_path / "keyinfo" / "3" / "sock")
        stub = domainkey_pb2_grpc.DomainKeyStub(channel)
        started = time.monotonic()
        with pytest.raises(rpc.RpcError, match=r"^keyproc: bad key$"):
            rpc.call(stub.Csr, domainkey_pb2.CsrRequest(), peer="keyproc")
        assert time.monotonic() - started < 5
        rpc.stop_peer(channel, "keyproc", failed=True)
        output, _ = server.communicate(timeout=30)
        assert output.strip() == "failed"
        channel.close()
    finally:
        server.kill()


def test_each_certificate_runs_in_a_child_of_its_own() -> None:
    runner = pod.Runner("keyproc", 0)
    parent = os.getpid()
    assert runner.in_child(lambda: 0 if os.getpid() != parent else 5) == 0
    assert runner.in_child(lambda: 2) == 2
    assert runner.child is None


def test_a_child_that_breaks_says_so_in_one_line(capfd: pytest.CaptureFixture) -> None:
    def broken() -> int:
        raise RuntimeError("boom")

    assert pod.Runner("keyproc", 0).in_child(broken) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "internal error" in err and "boom" in err


def test_sigterm_reaches_the_child_and_ends_the_loop(tmp_path: Path) -> None:
    runner = pod.Runner("keyproc", 0)
    ready = tmp_path / "ready"

    def body() -> int:
        ready.touch()
        time.sleep(30)
        return 0

    def later() -> None:
        while not ready.exists():
            time.sleep(0.01)
        runner.forward(15, None)

    thread = threading.Thread(target=later)
    thread.start()
    started = time.monotonic()
    assert runner.in_child(body) == -15
    thread.join()
    assert runner.stopping and time.monotonic() - started < 10


def test_revokeproc_waits_for_the_directory_a_while(tmp_path: Path) -> None:
    environ = environment(tmp_path)
    staging = CONFIG.replace("https://ca.test/dir", STAGING).replace(
        "https://other.test/dir", STAGING
    )
    plans = {role: pod.plans(role, environment(tmp_path, staging)) for role in ROLES}
    waiting = {
        role for role, found in plans.items()
        if found[0].config and pod.reads_certificate_directory(found[0].config)
    }  # fmt: skip
    assert waiting == {"revokeproc"}
    plan = pod.plans("keyproc", environ)[0]
    assert plan.config is not None
    started = time.monotonic()
    pod.wait_for_directory(plan.config, 1.0)  # keyproc's settings: no cert_dir
    assert time.monotonic() - started < 0.5
    fileproc = pod.plans("fileproc", environ)[0]
    assert fileproc.config is not None
    pod.wait_for_directory(fileproc.config, 1.0)  # /etc/ssl/acme/first: missing here
    assert 0.4 < time.monotonic() - started < 3
