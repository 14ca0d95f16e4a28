"""End to end, native mode: the account's lifecycle against pebble 2.4 (Debian
12's) and 2.10 (Debian unstable's): a key rollover (RFC 8555 7.3.5) then an
issue with the new key, a deactivation (7.3.6) with -F, on a terminal and
without one, and the account in `status`.  (A changed contact reaching the
CA is test_interop_matrix.py's cell.)

What the CA knows is asked of the CA itself, with the test's own JWS: a
newAccount lookup (onlyReturnExisting) by a key finds its account, with the
contact and status pebble holds."""

import json
import os
import pty
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from letskencrypt import keys

from tests.conftest import (
    LETSKENCRYPT,
    RUN_TIMEOUT,
    TERMS_LINE,
    Paths,
    Result,
    run_client,
    run_config,
    write_config,
)
from tests.pebble import Pebble
from tests.test_e2e_native import assert_installed

GENERATIONS = ["pebble", "pebble_sid"]


@pytest.fixture(params=GENERATIONS)
def server(request: pytest.FixtureRequest) -> Pebble:
    return request.getfixturevalue(request.param)


def paths_for(tmp_path: Path, server: Pebble) -> Paths:
    tmp_path.chmod(0o755)
    return Paths(base=tmp_path, challenge_dir=server.challenge_dir)


@dataclass
class Found:
    """What the CA answered a lookup by a key: HTTP status, account URL, body."""

    status: int
    url: str | None
    document: dict[str, object]


def lookup(server: Pebble, key_path: Path) -> Found:
    """newAccount {"onlyReturnExisting": true}, signed by the key at `key_path`
    (again on badNonce, which pebble sends for 5% of nonces)."""
    key = keys.load_key(str(key_path))
    directory = server.directory()
    url = str(directory["newAccount"])
    with requests.Session() as session:
        session.trust_env = False  # no proxy, no REQUESTS_CA_BUNDLE
        session.verify = server.ca_bundle
        for _ in range(10):
            nonce = session.head(str(directory["newNonce"]), timeout=10).headers["Replay-Nonce"]
            jws = keys.sign_jws(key, {"nonce": nonce, "url": url,
                                      "jwk": keys.jwk(key.public_key())},
                                b'{"onlyReturnExisting":true}')  # fmt: skip
            response = session.post(url, data=json.dumps(jws), timeout=10,
                                    headers={"Content-Type": "application/jose+json"})  # fmt: skip
            document = response.json()
            if document.get("type") != "urn:ietf:params:acme:error:badNonce":
                return Found(response.status_code, response.headers.get("Location"), document)
    raise AssertionError("pebble rejected 10 nonces in a row")


def one_line(result: Result) -> str:
    assert result.code == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def issue(server: Pebble, paths: Paths, name: str, *args: str) -> Result:
    result = run_client(server, paths, "-n", "-N", *args, name)
    assert result.code == 0, result.stderr
    assert_installed(paths, [name])
    return result


def new_key(path: Path, key_type: str = "ecdsa384") -> Path:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    keys.create_key(str(path), key_type)
    return path


def audit(paths: Paths) -> list[tuple[str, str]]:
    """(kind, decision) of each audited request, a request signed again at
    once (pebble rejects some nonces: a badNonce retry) counted once."""
    log = paths.account_key.parent / "audit.log"
    entries = [(e["kind"], e["decision"]) for e in map(json.loads, log.read_text().splitlines())]
    return [entry for i, entry in enumerate(entries) if i == 0 or entry != entries[i - 1]]


def test_key_rollover_then_issue_with_the_new_key(server: Pebble, tmp_path: Path) -> None:
    paths = paths_for(tmp_path, server)
    name = f"rollover-{server.generation}.example.org"
    issue(server, paths, name)
    old_pem = paths.account_key.read_bytes()
    before = lookup(server, paths.account_key)
    assert before.status == 200 and before.url
    fresh = new_key(tmp_path / "new" / "account.pem")
    fresh_pem = fresh.read_bytes()

    rolled = run_client(server, paths, "--rollover-account-key", str(fresh), name)
    assert rolled.code == 0, rolled.stderr
    (kept,) = paths.account_key.parent.glob("privkey.pem.old-*")
    assert rolled.stderr == (
        f"letskencrypt: acctproc: account {before.url}: the CA changed its key; signing with "
        "the new key\n"
        f"letskencrypt: netproc: account {before.url}: key changed\n"
        f"letskencrypt: account key {paths.account_key} replaced with the key of {fresh}, to "
        f"which the CA changed the account (the old one is kept as {kept})\n"
    )
    # The key file holds the new key now, the old one is kept beside it, NEWKEY is untouched.
    assert kept.read_bytes() == old_pem
    assert oct(kept.stat().st_mode & 0o777) == oct(paths.account_key.stat().st_mode & 0o777)
    assert oct(paths.account_key.stat().st_mode & 0o777) == "0o400"
    assert fresh.read_bytes() == fresh_pem
    assert keys.spki_sha256(keys.load_key(str(paths.account_key))) == keys.spki_sha256(
        keys.load_key(str(fresh)))
    # The CA: the same account by the new key, none by the old one.
    after = lookup(server, paths.account_key)
    assert (after.status, after.url) == (200, before.url)
    gone = lookup(server, kept)
    assert gone.status == 400 and gone.document["type"] == (
        "urn:ietf:params:acme:error:accountDoesNotExist")
    assert audit(paths)[-4:] == [
        ("newAccount", "signed"), ("keyChange", "signed"), ("keyChanged", "switched"),
        ("newAccount", "signed"),
    ]  # fmt: skip

    # The next run issues with the new key, on the same account.
    renewed = run_client(server, paths, "-F", "-v", name)
    assert renewed.code == 0, renewed.stderr
    assert f"account {before.url} found" in renewed.stderr
    assert not TERMS_LINE.search(renewed.stderr)
    assert_installed(paths, [name])
    # A second rollover to the same key: it is the account key now.
    again = run_client(server, paths, "--rollover-account-key", str(fresh), name)
    assert one_line(again) == (
        f"letskencrypt: new account key {fresh} is the account key {paths.account_key}: "
        "give a new key"
    )


def test_a_rollover_needs_an_account_at_the_ca(server: Pebble, tmp_path: Path) -> None:
    """A key the CA does not know: nothing changes, on disk or at the CA."""
    paths = paths_for(tmp_path, server)
    name = f"no-account-{server.generation}.example.org"
    new_key(paths.account_key, "ecdsa256")
    fresh = new_key(tmp_path / "new" / "account.pem")
    new_key(paths.domain_key, "ecdsa256")
    result = run_client(server, paths, "--rollover-account-key", str(fresh), name)
    assert one_line(result) == "letskencrypt: netproc: the CA has no account for this key"
    assert not list(paths.account_key.parent.glob("privkey.pem.old-*"))
    assert lookup(server, fresh).status == 400


def test_rollover_refusals(tmp_path: Path, pebble: Pebble) -> None:
    paths = paths_for(tmp_path, pebble)
    new_key(paths.account_key, "ecdsa256")
    new_key(paths.domain_key, "ecdsa256")
    fresh = new_key(tmp_path / "new" / "account.pem")
    name = "refusals.example.org"
    count = pebble.request_count()

    def refused(*args: str) -> str:
        return one_line(run_client(pebble, paths, *args, name))

    assert refused("--rollover-account-key", str(fresh), "-r") == (
        "letskencrypt: --rollover-account-key does not go with -r")
    assert refused("--rollover-account-key", str(fresh), "--deactivate-account") == (
        "letskencrypt: --rollover-account-key does not go with --deactivate-account")
    assert refused("--rollover-account-key", str(tmp_path / "none.pem")) == (
        f"letskencrypt: --rollover-account-key {tmp_path / 'none.pem'}: no such file (make the "
        "new key first)")
    assert refused("--rollover-account-key", str(paths.domain_key)) == (
        f"letskencrypt: --rollover-account-key {paths.domain_key}: is the domain key of this "
        "run; give the new key's own file")
    copy = tmp_path / "new" / "domain-copy.pem"
    copy.write_bytes(paths.domain_key.read_bytes())
    copy.chmod(0o400)
    assert refused("--rollover-account-key", str(copy)) == (
        f"letskencrypt: new account key {copy} is the domain key {paths.domain_key}: give a "
        "key of its own")
    fresh.chmod(0o440)
    assert refused("--rollover-account-key", str(fresh)) == (
        f"letskencrypt: --rollover-account-key {fresh}: its group or others may use it (mode "
        f"440): chmod 400 {fresh}")
    fresh.chmod(0o400)
    junk = tmp_path / "new" / "junk.pem"
    junk.write_text("not a key\n")
    junk.chmod(0o600)
    assert refused("--rollover-account-key", str(junk)) == (
        f"letskencrypt: new account key {junk}: not a PEM private key")
    config = tmp_path / "letskencrypt.conf"
    config.write_text("")
    refusal = subprocess.run([LETSKENCRYPT, "--config", str(config), "--deactivate-account"],
                             capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    assert (refusal.returncode, refusal.stderr) == (1, (
        "letskencrypt: --rollover-account-key and --deactivate-account do not go with "
        "--config: give the authority's account key with -f (see --help)\n"))  # fmt: skip
    assert pebble.request_count() == count


def deactivate(
    server: Pebble, paths: Paths, name: str, *args: str, answer: str | None = None
) -> Result:
    """--deactivate-account ARGS, without a terminal, or on a terminal (a
    pseudo-terminal) where `answer` is typed."""
    argv = [LETSKENCRYPT, "--server", server.directory_url, "--ca-bundle", server.ca_bundle,
            "--trust-anchors", server.trust_anchors, "-C", str(paths.challenge_dir),
            "-c", str(paths.cert_dir), "-f", str(paths.account_key), "-k", str(paths.domain_key),
            "--deactivate-account", *args, name]  # fmt: skip
    if answer is None:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                                   check=False, stdin=subprocess.DEVNULL)  # fmt: skip
        return Result(completed.returncode, completed.stdout, completed.stderr)
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer.encode())
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                                   check=False, stdin=terminal)  # fmt: skip
    finally:
        os.close(terminal)
        os.close(controller)
    return Result(completed.returncode, completed.stdout, completed.stderr)


def test_deactivate_without_a_terminal_sends_nothing(server: Pebble, tmp_path: Path) -> None:
    paths = paths_for(tmp_path, server)
    name = f"keep-{server.generation}.example.org"
    issue(server, paths, name)
    count = server.request_count()
    assert one_line(deactivate(server, paths, name)) == (
        "letskencrypt: --deactivate-account: no terminal to confirm on; give -F (--force) to "
        "deactivate without asking; nothing was sent"
    )
    assert server.request_count() == count
    found = lookup(server, paths.account_key)
    assert (found.status, found.document["status"]) == (200, "valid")


def test_deactivate_asks_on_the_terminal(tmp_path: Path, pebble: Pebble) -> None:
    paths = paths_for(tmp_path, pebble)
    name = "asked.example.org"
    issue(pebble, paths, name)
    count = pebble.request_count()
    prompt = (
        f"letskencrypt: deactivate the account of {paths.account_key} at "
        f"{pebble.directory_url}? Its key can no longer be used with that CA, and that cannot "
        "be undone. Type yes to go on: "
    )
    no = deactivate(pebble, paths, name, answer="y\n")
    assert (no.code, no.stderr) == (1, f"{prompt}letskencrypt: --deactivate-account: not "
                                       "confirmed; nothing was sent\n")  # fmt: skip
    assert pebble.request_count() == count
    yes = deactivate(pebble, paths, name, answer="yes\n")
    assert yes.code == 0, yes.stderr
    assert yes.stderr.startswith(prompt) and yes.stderr.endswith("its account is deactivated\n")
    assert lookup(pebble, paths.account_key).status == 403


def test_deactivate_with_force_then_the_key_is_refused(server: Pebble, tmp_path: Path) -> None:
    paths = paths_for(tmp_path, server)
    name = f"deactivate-{server.generation}.example.org"
    issue(server, paths, name)
    account = lookup(server, paths.account_key).url
    done = deactivate(server, paths, name, "-F")
    assert done.code == 0, done.stderr
    assert done.stderr == (
        f"letskencrypt: netproc: account {account} deactivated\n"
        f"letskencrypt: account key {paths.account_key} can no longer be used with "
        f"{server.directory_url}: its account is deactivated\n"
    )
    assert audit(paths)[-2:] == [("newAccount", "signed"), ("deactivate", "signed")]
    found = lookup(server, paths.account_key)
    assert found.status == 403, found
    # A later run with that key fails in one line, whatever it asks.
    refused = ("letskencrypt: netproc: HTTP 403: unauthorized: An account with the provided "
               "public key exists but is deactivated")
    for args in (("-F",), ("-F", "-n")):
        assert one_line(run_client(server, paths, *args, name)) == refused
    assert one_line(deactivate(server, paths, name, "-F")) == refused


def test_status_shows_the_account(server: Pebble, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    name = f"status-{server.generation}.example.org"
    config = write_config(tmp_path, server, {name: []},
                          authority=('contact "mailto:status@example.org"',))  # fmt: skip
    result = run_config(config)
    assert result.code == 0, result.stderr
    found = lookup(server, tmp_path / "account" / "privkey.pem")
    shown = subprocess.run([LETSKENCRYPT, "status", "--config", str(config), "--json"],
                           capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True)
    document = json.loads(shown.stdout)
    (account,) = document["accounts"]
    assert account["authority"] == "ca"
    assert (account["url"], account["contact"], account["status"]) == (
        found.url, ["mailto:status@example.org"], "valid")
    assert account["seen"].endswith("Z")
    text = subprocess.run([LETSKENCRYPT, "status", "--config", str(config)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True).stdout
    assert (f"account ca\n  url      {found.url}\n  contact  mailto:status@example.org\n"
            "  status   valid\n") in text  # fmt: skip
