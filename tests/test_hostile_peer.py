"""Every role, running for real, against a compromised neighbour.

The roles are started as the supervisor starts them (launch.start_role:
`python -m letskencrypt.roles X`, the JSON configuration on stdin, settings from
options.role_settings for a realistic command line, a private run directory with
one sub-directory per edge; dropping to `nobody` when we are root).  Then
this test connects to their sockets with the generated stubs and does what a
compromised netproc (or, for fileproc, certproc) could: ask for keys, for
signatures of other names, for files outside the role's directory, for
oversized and malformed messages.

Every case checks that the role refused (or, where the request is legitimate
but the ground was prepared by the attacker, that nothing left the role's
directory), that every file is byte-identical where it must be, and that every
role is still alive.  HOSTILE_CASES counts them.
"""

import base64
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID
from letskencrypt import cli, keys, launch, options, rpc
from letskencrypt.b64 import b64url, b64url_decode
from letskencrypt.roles import specs
from letskencrypt.settings import RoleSettings
from letskencrypt.supervisor import Supervisor
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
    renewal_pb2,
    renewal_pb2_grpc,
    resolver_pb2,
    resolver_pb2_grpc,
)

from tests.certfactory import INTERMEDIATE_KEY, ROOT_KEY, make_cert

NAMES = ["peer.example.org", "www.peer.example.org"]
OTHER_NAMES = ["evil.example.net"]
DIRECTORY = "https://ca.test/dir"
KID = "https://ca.test/acct/1"
NONCE = "bm9uY2U"
CONTACT = "mailto:admin@example.org"
# The third run ("eab"): an issue run with external account binding and a profile.
EAB_KID = "kid-peer"
EAB_HMAC_KEY = bytes(range(100, 148))
PROFILE = "shortlived"
NEW_ACCOUNT_URL = "https://ca.test/new-acct"
VICTIM = b"outside the roles' directories\n"
SERVED_ROLES = ("acctproc", "keyproc", "dnsproc", "chngproc", "revokeproc", "fileproc", "certproc")
TIMEOUT = 10.0
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
HUGE = 4 * 1024 * 1024
# The generated modules: every service the roles can serve.
MODULES = (account_pb2, certificate_pb2, challenge_pb2, domainkey_pb2, files_pb2, keyinfo_pb2,
           lifecycle_pb2, renewal_pb2, resolver_pb2)  # fmt: skip
EXPECTED_METHODS = {
    "letskencrypt.v1.Account": {"Describe", "Sign", "KeyChanged"},
    "letskencrypt.v1.Certificate": {"Submit", "Retire"},
    "letskencrypt.v1.Challenge": {"Publish", "Withdraw", "DnsUpdate", "DnsAnswer"},
    "letskencrypt.v1.DomainKey": {"Csr", "SignRevocation"},
    "letskencrypt.v1.Files": {"Install", "Remove"},
    "letskencrypt.v1.KeyInfo": {"Describe"},
    "letskencrypt.v1.Lifecycle": {"Stop"},
    "letskencrypt.v1.Renewal": {"Check", "Current"},
    "letskencrypt.v1.Resolver": {"Resolve", "Txt", "Authoritative", "Exchange"},
}
# One harmless call per edge: an answer (even a refusal) means the server is alive.
PROBES = {
    "acct": "/letskencrypt.v1.Account/Describe",
    "key": "/letskencrypt.v1.DomainKey/Csr",
    "keyinfo": "/letskencrypt.v1.KeyInfo/Describe",
    "keyacct": "/letskencrypt.v1.KeyInfo/Describe",
    "dns": "/letskencrypt.v1.Resolver/Resolve",
    "chng": "/letskencrypt.v1.Challenge/Withdraw",
    "rvk": "/letskencrypt.v1.Renewal/Check",
    "cert": "/letskencrypt.v1.Certificate/Submit",
    "file": "/letskencrypt.v1.Files/Install",
}


ROOT = os.geteuid() == 0
RUN_USER = cli.run_user("nobody") if ROOT else None


# --- the pod ------------------------------------------------------------------------


@dataclass
class Pod:
    """The seven served roles of one run (netproc is us), and their files."""

    base: Path
    run_dirs: dict[str, str] = field(default_factory=dict)
    # run ("run" or "revoke") -> every role's settings for it.
    settings: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Roles stopped before the end (a replaced fileproc): (name, status).
    ended: list[tuple[str, int]] = field(default_factory=list)
    stderr: dict[str, Path] = field(default_factory=dict)
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    @property
    def account_key(self) -> Path:
        return self.base / "account" / "privkey.pem"

    @property
    def audit_log(self) -> Path:
        return self.base / "account" / "audit.log"

    @property
    def domain_key(self) -> Path:
        return self.base / "domain" / "privkey.pem"

    @property
    def cert_dir(self) -> Path:
        return self.base / "certs"

    @property
    def challenge_dir(self) -> Path:
        return self.base / "challenge"

    @property
    def outside(self) -> Path:
        return self.base / "outside"

    @property
    def eab_key(self) -> Path:
        return self.base / "eab" / "hmac.key"

    def start(self, role: str, settings: RoleSettings, run: str, name: str = "") -> None:
        """What Supervisor.start does, with stderr kept in a file."""
        name = name or role
        run_user = (RUN_USER.uid, RUN_USER.gid) if RUN_USER is not None else None
        document = launch.role_document(role, self.run_dirs[run], settings, run_user=run_user)
        self.stderr[name] = self.base / "logs" / f"{name}.stderr"
        with open(self.stderr[name], "wb") as stderr:
            process = launch.start_role(role, document, stdout=None, stderr=stderr)
        self.processes[name] = process

    def wait_for_sockets(self, run: str, edges: list[str]) -> None:
        deadline = time.monotonic() + 30
        for edge in edges:
            path = rpc.socket_path(self.run_dirs[run], edge)
            while not os.path.exists(path):
                assert not self.dead(), self.logs()
                assert time.monotonic() < deadline, f"{path} never appeared: {self.logs()}"
                time.sleep(0.02)

    def channel(self, edge: str, run: str = "run") -> grpc.Channel:
        """A channel as the legitimate client opens it (with rpc.connect's caps)."""
        key = f"{run}/{edge}"
        if key not in self.channels:
            self.channels[key] = rpc.connect(self.run_dirs[run], edge)
        return self.channels[key]

    def raw_channel(self, edge: str, run: str = "run") -> grpc.Channel:
        """A channel without the client's caps: what an attacker would open."""
        key = f"raw:{run}/{edge}"
        if key not in self.channels:
            path = rpc.socket_path(self.run_dirs[run], edge)
            self.channels[key] = grpc.insecure_channel(
                f"unix:{path}",
                options=[
                    ("grpc.max_send_message_length", HUGE),
                    ("grpc.max_receive_message_length", HUGE),
                    ("grpc.enable_retries", 0),
                ],
            )
        return self.channels[key]

    def raw_call(self, edge: str, method: str, body: bytes, run: str = "run") -> bytes:
        """Any method, any bytes: no stub, no serializer."""
        call = self.raw_channel(edge, run).unary_unary(method)
        return call(body, timeout=TIMEOUT, wait_for_ready=True)

    @contextlib.contextmanager
    def revoking_fileproc(self) -> Iterator[None]:
        """The revocation's fileproc in place of the issue run's for a while:
        one fileproc at a time holds the certificate directory's lock."""
        self.replace_fileproc("run", "revoke")
        try:
            yield
        finally:
            self.replace_fileproc("revoke", "run")

    def replace_fileproc(self, stopped: str, started: str) -> None:
        name = {"run": "fileproc", "revoke": "fileproc@revoke"}
        rpc.stop_peer(self.channel("file", stopped), "fileproc", failed=False)
        process = self.processes.pop(name[stopped])
        self.ended.append((name[stopped], process.wait(timeout=15)))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(rpc.socket_path(self.run_dirs[stopped], "file"))
        self.start("fileproc", self.settings[started]["fileproc"], started, name=name[started])
        self.wait_for_sockets(started, ["file"])

    def dead(self) -> dict[str, int]:
        return {
            name: code
            for name, process in self.processes.items()
            if (code := process.poll()) is not None
        }

    def logs(self) -> dict[str, str]:
        return {name: path.read_text(errors="replace") for name, path in self.stderr.items()}

    def stop(self) -> dict[str, int]:
        """As netproc ends a run: Stop on each of its edges (certproc stops fileproc)."""
        for run, edges in (("run", ("acct", "key", "dns", "chng", "rvk", "cert")),
                           ("revoke", ("acct",)), ("eab", ("acct",)),
                           ("domainkey", ("acct", "key"))):
            for edge in edges:
                with contextlib.suppress(KeyError):
                    rpc.stop_peer(self.channel(edge, run), rpc.EDGES[edge].server, failed=False)
        codes = {f"{name} (replaced {n})": code for n, (name, code) in enumerate(self.ended)}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        for channel in self.channels.values():
            channel.close()
        for run_dir in self.run_dirs.values():
            shutil.rmtree(run_dir, ignore_errors=True)
        return codes


def command_line(base: Path, *extra: str) -> list[str]:
    return [
        "--server", DIRECTORY,
        "-C", str(base / "challenge"),
        "-c", str(base / "certs"),
        "-f", str(base / "account" / "privkey.pem"),
        "-k", str(base / "domain" / "privkey.pem"),
        "--contact", CONTACT,
        "--trust-anchors", str(base / "anchors.pem"),
        "-n", "-N",
        *extra,
        *NAMES,
    ]  # fmt: skip


def role_settings(base: Path, *extra: str) -> dict[str, RoleSettings]:
    return options.role_settings(options.build_parser().parse_args(command_line(base, *extra)))


@pytest.fixture(scope="module")
def pod() -> Iterator[Pod]:
    base = Path(tempfile.mkdtemp(prefix="letskencrypt-hostile-peer-"))
    # The roles that drop to `nobody` name their paths for Landlock after the drop.
    base.chmod(0o755)
    for directory in ("challenge", "outside", "outside/dir", "logs", "eab"):
        (base / directory).mkdir(mode=0o755)
        (base / directory).chmod(0o755)
    (base / "outside" / "victim").write_bytes(VICTIM)
    (base / "eab" / "hmac.key").write_text(b64url(EAB_HMAC_KEY) + "\n")
    (base / "eab" / "hmac.key").chmod(0o400)
    (base / "anchors.pem").write_bytes(to_pem(root()))
    for name in ("cert.pem", "chain.pem", "fullchain.pem"):
        (base / "outside" / "dir" / name).write_bytes(VICTIM)
    # The supervisor makes the certificate directory before any role starts.
    (base / "certs").mkdir(mode=0o755)
    (base / "certs").chmod(0o755)
    pod = Pod(base)
    settings = role_settings(base)
    revoking = role_settings(base, "-r")
    binding = role_settings(base, "--eab-kid", EAB_KID, "--eab-hmac-key", str(pod.eab_key),
                            "--profile", PROFILE)  # fmt: skip
    # The fourth run ("domainkey"): -r --revoke-with domain-key, reason superseded.
    by_domain_key = role_settings(base, "-r", "--revoke-with", "domain-key",
                                  "--revoke-reason", "superseded")  # fmt: skip
    pod.settings = {"run": settings, "revoke": revoking, "eab": binding,
                    "domainkey": by_domain_key}  # fmt: skip
    codes: dict[str, int] = {}
    try:
        for run in ("run", "revoke", "eab", "domainkey"):
            pod.run_dirs[run] = Supervisor(settings={}, run_user=RUN_USER).make_run_dir()
        # The key holders first: they create the keys (-n, -N).
        for role in ("acctproc", "keyproc", "dnsproc", "chngproc", "revokeproc", "fileproc",
                     "certproc"):  # fmt: skip
            pod.start(role, settings[role], "run")
        pod.wait_for_sockets("run", list(PROBES))
        # The roles of a revocation, as far as the cases need them (its
        # fileproc only while a case needs it: see Pod.revoking_fileproc).
        pod.start("acctproc", revoking["acctproc"], "revoke", name="acctproc@revoke")
        pod.wait_for_sockets("revoke", ["acct"])
        # Once the account key exists (the first acctproc made it, -n).
        pod.start("acctproc", binding["acctproc"], "eab", name="acctproc@eab")
        pod.wait_for_sockets("eab", ["acct"])
        # Once the domain key exists (the first keyproc made it, -N).
        for role in ("acctproc", "keyproc"):
            pod.start(role, by_domain_key[role], "domainkey", name=f"{role}@domainkey")
        pod.wait_for_sockets("domainkey", ["acct", "key"])
        install_good_chain(pod)
        yield pod
    finally:
        codes = pod.stop()
        logs = pod.logs()
        if os.environ.get("HOSTILE_PEER_LOGS"):
            print(json.dumps(logs, indent=1))
        shutil.rmtree(base, ignore_errors=True)
    assert all(code == 0 for code in codes.values()), (codes, logs)
    for name, text in logs.items():
        assert "Traceback" not in text, (name, text)
        assert "internal error" not in text, (name, text)


# --- certificates, keys, snapshots ---------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


def root() -> x509.Certificate:
    """The trust anchor of the pod (--trust-anchors)."""
    return make_cert("root", "root", ROOT_KEY.public_key(), ROOT_KEY, ca=True,
                     not_before=now() - timedelta(days=2), not_after=now() + timedelta(days=3650))


def intermediate() -> x509.Certificate:
    return make_cert("intermediate", "root", INTERMEDIATE_KEY.public_key(), ROOT_KEY, ca=True,
                     not_before=now() - timedelta(days=1), not_after=now() + timedelta(days=900))


def leaf(public_key: Any, names: list[str], **kw: Any) -> x509.Certificate:
    kw.setdefault("not_before", now() - timedelta(hours=1))
    kw.setdefault("not_after", now() + timedelta(days=90))
    kw.setdefault("ca", False)
    return make_cert("leaf", "intermediate", public_key, INTERMEDIATE_KEY, names=names, **kw)


def to_pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def domain_key(pod: Pod) -> Any:
    return load_pem_private_key(pod.domain_key.read_bytes(), None)


def account_key(pod: Pod) -> Any:
    return load_pem_private_key(pod.account_key.read_bytes(), None)


def good_chain(pod: Pod) -> bytes:
    return to_pem(leaf(domain_key(pod).public_key(), NAMES), intermediate())


def install_good_chain(pod: Pod) -> None:
    stub = certificate_pb2_grpc.CertificateStub(pod.channel("cert"))
    stub.Submit(certificate_pb2.SubmitRequest(pem_chain=good_chain(pod)), timeout=TIMEOUT,
                wait_for_ready=True)


def secrets_of(key: Any) -> list[bytes]:
    """Byte strings that would betray the private key if a reply held them."""
    value = key.private_numbers().private_value
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    return [raw, b64url(raw).encode(), raw.hex().encode(), pkcs8]


def assert_no_secret(reply: bytes, key: Any) -> None:
    for secret in secrets_of(key):
        assert secret not in reply


IGNORED = {"account/audit.log"}


def snapshot(pod: Pod) -> dict[str, str]:
    """Every entry under the base (not following links): type, mode, content."""
    found = {}
    for directory, dirs, files in os.walk(pod.base):
        for name in dirs + files:
            path = Path(directory) / name
            relative = str(path.relative_to(pod.base))
            if relative in IGNORED or relative.startswith("logs"):
                continue
            info = path.lstat()
            mode = f"{stat.S_IMODE(info.st_mode):o}"
            if stat.S_ISLNK(info.st_mode):
                found[relative] = "link " + os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                found[relative] = f"file {mode} {hashlib.sha256(path.read_bytes()).hexdigest()}"
            else:
                found[relative] = f"{stat.S_IFMT(info.st_mode):o} {mode}"
    return found


def outside_of(state: dict[str, str], directory: str) -> dict[str, str]:
    return {k: v for k, v in state.items() if not k.startswith(directory + "/")}


def audit_entries(pod: Pod) -> list[dict[str, Any]]:
    if not pod.audit_log.exists():
        return []
    return [json.loads(line) for line in pod.audit_log.read_text().splitlines()]


def expect_error(action: Callable[[], object], code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as info:
        action()
    error = info.value
    assert error.code() == code, (error.code(), error.details())  # type: ignore[attr-defined]
    details = error.details() or ""  # type: ignore[attr-defined]
    assert "\n" not in details
    return details


def refused(pod: Pod, action: Callable[[], object], match: str = "",
            code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> str:
    """The role refuses and nothing at all changes on disk."""
    before = snapshot(pod)
    details = expect_error(action, code)
    assert match.lower() in details.lower(), details
    assert snapshot(pod) == before
    return details


# --- the cases -------------------------------------------------------------------------

Case = Callable[[Pod], None]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(function: Case) -> Case:
        assert name not in CASES
        CASES[name] = function
        return function

    return register


# -- no private key, by any method ---


@case("descriptors-offer-no-key")
def _descriptors(pod: Pod) -> None:
    methods: dict[str, set[str]] = {}
    for module in MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            methods[service.full_name] = {method.name for method in service.methods}
        for message in module.DESCRIPTOR.message_types_by_name.values():
            for item in message.fields:
                assert not {"private", "secret", "seed"} & set(item.name.split("_")), item
    assert methods == EXPECTED_METHODS
    reply_fields = {
        account_pb2.DescribeReply: {"jwk_json", "thumbprint", "algorithm"},
        account_pb2.SignReply: {"protected", "payload", "signature"},
        keyinfo_pb2.KeyInfoReply: {"public_key_der", "names"},
        domainkey_pb2.CsrReply: {"der"},
        domainkey_pb2.SignRevocationReply: {"protected", "payload", "signature"},
        renewal_pb2.CurrentReply: {"certificate_der"},
    }
    for message, names in reply_fields.items():
        assert {item.name for item in message.DESCRIPTOR.fields} == names


def _no_such_method(edge: str, service: str) -> Case:
    def attack(pod: Pod) -> None:
        for method in (f"/letskencrypt.v1.{service}/ExportKey",
                       f"/letskencrypt.v1.{service}/PrivateKey",
                       "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                       "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"):  # fmt: skip
            refused(pod, lambda m=method: pod.raw_call(edge, m, b""), "",
                    grpc.StatusCode.UNIMPLEMENTED)

    return attack


case("acct-no-export-method")(_no_such_method("acct", "Account"))
case("key-no-export-method")(_no_such_method("key", "DomainKey"))
case("keyinfo-no-export-method")(_no_such_method("keyinfo", "KeyInfo"))
case("keyacct-no-export-method")(_no_such_method("keyacct", "KeyInfo"))


@case("acct-describe-is-public")
def _describe_public(pod: Pod) -> None:
    stub = account_pb2_grpc.AccountStub(pod.channel("acct"))
    reply = stub.Describe(account_pb2.DescribeRequest(), timeout=TIMEOUT)
    key = account_key(pod)
    jwk = json.loads(reply.jwk_json)
    assert set(jwk) == {"crv", "kty", "x", "y"}
    assert jwk == keys.jwk(key.public_key())
    assert reply.thumbprint == keys.thumbprint(key.public_key())
    assert_no_secret(reply.SerializeToString(), key)
    # A signature, too, holds nothing of the key.
    signed = stub.Sign(account_pb2.SignRequest(url=KID, nonce=NONCE, kid=KID, post_as_get=True),
                       timeout=TIMEOUT)
    assert_no_secret(signed.SerializeToString(), key)
    assert audit_entries(pod)[-1]["decision"] == "signed"


@case("keyinfo-is-public")
def _keyinfo_public(pod: Pod) -> None:
    stub = keyinfo_pb2_grpc.KeyInfoStub(pod.channel("keyinfo"))
    reply = stub.Describe(keyinfo_pb2.KeyInfoRequest(), timeout=TIMEOUT)
    key = domain_key(pod)
    public = serialization.load_der_public_key(reply.public_key_der)
    assert keys.public_key_der(public) == keys.public_key_der(key)
    with pytest.raises(ValueError):
        serialization.load_der_private_key(reply.public_key_der, None)
    assert list(reply.names) == NAMES
    assert_no_secret(reply.SerializeToString(), key)


@case("csr-is-public-and-for-our-names")
def _csr_public(pod: Pod) -> None:
    stub = domainkey_pb2_grpc.DomainKeyStub(pod.channel("key"))
    reply = stub.Csr(domainkey_pb2.CsrRequest(), timeout=TIMEOUT)
    csr = x509.load_der_x509_csr(reply.der)
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == NAMES
    assert_no_secret(reply.SerializeToString(), domain_key(pod))
    # A field netproc might smuggle in (other names) is not in the contract: ignored.
    smuggled = pod.raw_call("key", PROBES["key"], b"\x0a\x10evil.example.net")
    assert domainkey_pb2.CsrReply.FromString(smuggled).der == reply.der


@case("keyinfo-ignores-smuggled-names")
def _keyinfo_smuggled(pod: Pod) -> None:
    reply = keyinfo_pb2.KeyInfoReply.FromString(
        pod.raw_call("keyinfo", PROBES["keyinfo"], b"\x0a\x10evil.example.net\x12\x00")
    )
    assert list(reply.names) == NAMES


@case("keyproc-neither-rotates-nor-lists-its-key")
def _keyproc_writes_nothing(pod: Pod) -> None:
    """Rotation and the list of compromised keys come from keyproc's own
    settings, at its start: nothing a peer sends on any of its edges makes it
    write, and the key it serves stays the one on disk."""
    before = snapshot(pod)
    key_der = keys.public_key_der(domain_key(pod))
    for edge in ("key", "keyinfo", "keyacct"):
        for method in ("/letskencrypt.v1.DomainKey/Csr", "/letskencrypt.v1.KeyInfo/Describe",
                       "/letskencrypt.v1.KeyInfo/Rotate", "/letskencrypt.v1.KeyInfo/Commit",
                       "/letskencrypt.v1.DomainKey/Rotate"):  # fmt: skip
            with contextlib.suppress(grpc.RpcError):
                pod.raw_call(edge, method, b"\x0a\x05keyCo")
    for edge in ("keyinfo", "keyacct"):
        reply = keyinfo_pb2_grpc.KeyInfoStub(pod.channel(edge)).Describe(
            keyinfo_pb2.KeyInfoRequest(), timeout=TIMEOUT)
        assert reply.public_key_der == key_der
    assert snapshot(pod) == before
    assert sorted(os.listdir(pod.domain_key.parent)) == ["privkey.pem"]


# -- acctproc: signatures for what this run did not ask for ---


def sign(pod: Pod, payload: bytes | None, *, url: str = "https://ca.test/x", kid: str = KID,
         run: str = "run", eab: bool = False) -> account_pb2.SignReply:
    request = account_pb2.SignRequest(url=url, nonce=NONCE, kid=kid, payload=payload or b"",
                                      post_as_get=payload is None, external_account_binding=eab)
    stub = account_pb2_grpc.AccountStub(pod.channel("acct", run))
    return stub.Sign(request, timeout=TIMEOUT)


def csr_der(key: Any, names: list[str]) -> bytes:
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                       critical=False)
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def order(names: list[str]) -> bytes:
    return json.dumps({"identifiers": [{"type": "dns", "value": n} for n in names]}).encode()


def _acct_refuses(match: str, payload: Callable[[Pod], bytes | None], *, url: str = "",
                  kid: str = KID, run: str = "run", kind: str = "", eab: bool = False) -> Case:
    def attack(pod: Pod) -> None:
        before = audit_entries(pod)
        body = payload(pod)
        target = url or "https://ca.test/x"
        refused(pod, lambda: sign(pod, body, url=target, kid=kid, run=run, eab=eab), match)
        after = audit_entries(pod)
        assert after[: len(before)] == before
        (entry,) = after[len(before) :]
        assert entry["decision"] == "refused" and entry["url"] == target[:2048]
        assert entry["payload_sha256"] == hashlib.sha256(body or b"").hexdigest()
        assert entry.get("external_account_binding") == ("asked" if eab else None)
        if kind:
            assert entry["kind"] == kind

    attack.refuses_a_signature = True  # type: ignore[attr-defined]
    return attack


case("acct-new-order-other-names")(
    _acct_refuses("not this run's names", lambda p: order(OTHER_NAMES), kind="newOrder"))
case("acct-new-order-extra-name")(
    _acct_refuses("not this run's names", lambda p: order([*NAMES, *OTHER_NAMES]),
                  kind="newOrder"))
case("acct-new-order-ip-identifier")(
    _acct_refuses("not this run's names", lambda p: json.dumps(
        {"identifiers": [{"type": "ip", "value": "192.0.2.1"}]}).encode(), kind="newOrder"))
# Our names, each of the wrong type (RFC 8738): a domain name is no address.
case("acct-new-order-names-as-ip-identifiers")(
    _acct_refuses("is no IP address, not of type 'ip'", lambda p: json.dumps(
        {"identifiers": [{"type": "ip", "value": name} for name in NAMES]}).encode(),
        kind="newOrder"))
case("acct-finalize-csr-other-names")(
    _acct_refuses("not this run's names", lambda p: json.dumps(
        {"csr": b64url(csr_der(OTHER_KEY, OTHER_NAMES))}).encode(), kind="finalize"))
case("acct-finalize-csr-our-key-other-names")(
    _acct_refuses("not this run's names", lambda p: json.dumps(
        {"csr": b64url(csr_der(domain_key(p), OTHER_NAMES))}).encode(), kind="finalize"))
case("acct-finalize-csr-account-key")(
    _acct_refuses("account key", lambda p: json.dumps(
        {"csr": b64url(csr_der(account_key(p), NAMES))}).encode(), kind="finalize"))
# Issue 7: netproc's own key in a CSR for exactly this run's names, which
# acctproc once signed; the CA would have issued a certificate netproc holds.
case("acct-finalize-csr-attacker-key-our-names")(
    _acct_refuses("csr key is not the domain key held by keyproc", lambda p: json.dumps(
        {"csr": b64url(csr_der(OTHER_KEY, NAMES))}).encode(), kind="finalize"))
case("acct-finalize-keyproc-csr-with-attacker-key")(
    _acct_refuses("csr key is not the domain key held by keyproc", lambda p: json.dumps(
        {"csr": b64url(keys.build_csr(OTHER_KEY, NAMES))}).encode(), kind="finalize"))


@case("acct-finalize-signs-keyprocs-own-csr")
def _finalize_keyproc_csr(pod: Pod) -> None:
    """The legitimate finalize still goes through: keyproc's CSR, as netproc gets it."""
    csr = domainkey_pb2_grpc.DomainKeyStub(pod.channel("key")).Csr(
        domainkey_pb2.CsrRequest(), timeout=TIMEOUT).der
    body = json.dumps({"csr": b64url(csr)}).encode()
    sign(pod, body, url="https://ca.test/finalize/1")
    entry = audit_entries(pod)[-1]
    assert (entry["kind"], entry["decision"]) == ("finalize", "signed")
    assert entry["payload_sha256"] == hashlib.sha256(body).hexdigest()
case("acct-url-other-origin")(
    _acct_refuses("origin", lambda p: b"{}", url="https://evil.test/chall/1"))
case("acct-url-other-port")(
    _acct_refuses("origin", lambda p: b"{}", url="https://ca.test:8443/chall/1"))
case("acct-url-http")(_acct_refuses("not https", lambda p: b"{}", url="http://ca.test/chall/1"))
case("acct-kid-other-origin")(
    _acct_refuses("origin", lambda p: b"{}", kid="https://evil.test/acct/1"))
case("acct-url-control-characters")(
    _acct_refuses("printable", lambda p: b"{}", url="https://ca.test/a\r\nHost: evil.test"))
case("acct-oversized-payload")(
    _acct_refuses("larger than", lambda p: b'{"x": "' + b"a" * 40000 + b'"}', kind="malformed"))
case("acct-non-json-payload")(
    _acct_refuses("not JSON", lambda p: b"\x00\x01 not json", kind="malformed"))
case("acct-duplicate-fields")(
    _acct_refuses("repeats", lambda p: b'{"identifiers": [], "identifiers": []}',
                  kind="malformed"))
case("acct-key-change-in-issue-run")(
    _acct_refuses("not part of this run", lambda p: json.dumps(
        keys.sign_jws(OTHER_KEY, {"jwk": keys.jwk(OTHER_KEY.public_key()),
                                  "url": "https://ca.test/kc"},
                      json.dumps({"account": KID,
                                  "oldKey": keys.jwk(account_key(p).public_key())}).encode())
    ).encode(), url="https://ca.test/kc", kind="keyChange"))
@case("acct-asked-key-change-in-issue-run")
def _asked_key_change(pod: Pod) -> None:
    """The key change acctproc builds itself (key_change), and netproc's word
    that the CA accepted one: neither in a run that is no key rollover."""
    before = audit_entries(pod)
    stub = account_pb2_grpc.AccountStub(pod.channel("acct", "run"))
    asked = account_pb2.SignRequest(url="https://ca.test/kc", nonce=NONCE, kid=KID,
                                    key_change=True)  # fmt: skip
    refused(pod, lambda: stub.Sign(asked, timeout=TIMEOUT), "not part of this run")
    changed = account_pb2.KeyChangedRequest(account_url=KID)
    refused(pod, lambda: stub.KeyChanged(changed, timeout=TIMEOUT), "no key change was signed")
    after = audit_entries(pod)
    assert after[: len(before)] == before
    assert [(e["kind"], e["decision"]) for e in after[len(before):]] == [
        ("keyChange", "refused"), ("keyChanged", "refused")]
    # acctproc still signs with the run's own key.
    reply = stub.Describe(account_pb2.DescribeRequest(), timeout=TIMEOUT)
    assert reply.thumbprint == keys.thumbprint(account_key(pod).public_key())


_asked_key_change.refuses_a_signature = True  # type: ignore[attr-defined]


case("acct-deactivate-in-issue-run")(
    _acct_refuses("not part of this run", lambda p: b'{"status": "deactivated"}', url=KID,
                  kind="deactivate"))
case("acct-update-contact-in-issue-run")(
    _acct_refuses("contact differs", lambda p: b'{"contact": ["mailto:evil@evil.test"]}',
                  url=KID, kind="accountUpdate"))
case("acct-update-own-contact-elsewhere")(
    _acct_refuses("posted to the account URL", lambda p: json.dumps(
        {"contact": [CONTACT]}).encode(), url="https://ca.test/acct/2", kind="accountUpdate"))
case("acct-update-terms-in-issue-run")(
    _acct_refuses("exactly", lambda p: b'{"termsOfServiceAgreed": true}', url=KID,
                  kind="accountUpdate"))
case("acct-revoke-in-issue-run")(
    _acct_refuses("not part of this run", lambda p: json.dumps({"certificate": b64url(
        leaf(domain_key(p).public_key(), NAMES).public_bytes(serialization.Encoding.DER))}
    ).encode(), kind="revokeCert"))
case("acct-new-account-with-other-contact")(
    _acct_refuses("contact differs", lambda p: json.dumps(
        {"termsOfServiceAgreed": True, "contact": ["mailto:evil@evil.test"]}).encode(), kid="",
        kind="newAccount"))
case("acct-unknown-request")(
    _acct_refuses("not an ACME request", lambda p: b'{"hello": "world"}', kind="unknown"))
case("acct-revoke-run-other-names")(
    _acct_refuses("not this run's names", lambda p: json.dumps({"certificate": b64url(
        leaf(OTHER_KEY.public_key(), OTHER_NAMES).public_bytes(serialization.Encoding.DER))}
    ).encode(), run="revoke", kind="revokeCert"))
case("acct-revoke-run-new-order")(
    _acct_refuses("not part of this run", lambda p: order(NAMES), run="revoke",
                  kind="newOrder"))

# Revocation with the domain key: keyproc signs only in the "domainkey" run,
# only its own certificate, to the CA's origin, with the run's reason
# (superseded, 4); that run's acctproc signs nothing.
SUPERSEDED = 4


def sign_revocation(pod: Pod, *, run: str = "domainkey", url: str = "https://ca.test/revoke",
                    der: bytes | None = None, reason: int | None = SUPERSEDED,
                    nonce: str = NONCE) -> domainkey_pb2.SignRevocationReply:  # fmt: skip
    if der is None:
        der = leaf(domain_key(pod).public_key(), NAMES).public_bytes(serialization.Encoding.DER)
    request = domainkey_pb2.SignRevocationRequest(url=url, nonce=nonce, certificate_der=der,
                                                  reason=reason)  # fmt: skip
    return domainkey_pb2_grpc.DomainKeyStub(pod.channel("key", run)).SignRevocation(
        request, timeout=TIMEOUT)  # fmt: skip


def _key_refuses(match: str, **request: Any) -> Case:
    def attack(pod: Pod) -> None:
        refused(pod, lambda: sign_revocation(pod, **request), match)

    return attack


case("key-revoke-in-issue-run")(_key_refuses("this run is an issue run", run="run"))
case("key-revoke-other-keys-certificate")(_key_refuses(
    "is not for the domain key",
    der=leaf(OTHER_KEY.public_key(), NAMES).public_bytes(serialization.Encoding.DER)))
case("key-revoke-other-origin")(_key_refuses("origin", url="https://evil.test/revoke"))
case("key-revoke-other-reason")(_key_refuses("reason 1 is not this run's (4)", reason=1))
case("key-revoke-bad-nonce")(_key_refuses("nonce", nonce="no nonce"))
case("key-revoke-not-a-certificate")(_key_refuses("not a DER certificate", der=b"\x30\x00"))


@case("key-revoke-signs-its-own-certificate")
def _key_revoke_own(pod: Pod) -> None:
    """The legitimate request of the run goes through, with keyproc's JWK."""
    reply = sign_revocation(pod)
    header = json.loads(b64url_decode(reply.protected))
    assert header["jwk"] == keys.jwk(domain_key(pod).public_key())
    assert header["url"] == "https://ca.test/revoke" and "kid" not in header
    assert json.loads(b64url_decode(reply.payload))["reason"] == SUPERSEDED


@case("acct-idle-in-domain-key-revocation")
def _acct_idle(pod: Pod) -> None:
    body = json.dumps({"certificate": b64url(leaf(domain_key(pod).public_key(), NAMES)
                                             .public_bytes(serialization.Encoding.DER))})
    refused(pod, lambda: sign(pod, body.encode(), run="domainkey"), "uses no account")
    stub = account_pb2_grpc.AccountStub(pod.channel("acct", "domainkey"))
    refused(pod, lambda: stub.Describe(account_pb2.DescribeRequest(), timeout=TIMEOUT),
            "uses no account")  # fmt: skip


# External account binding and profiles: the "run" has neither, the "eab" run both.
REGISTRATION = json.dumps({"termsOfServiceAgreed": True, "contact": [CONTACT]}).encode()


def ordered(names: list[str], **extra: str) -> bytes:
    return json.dumps({"identifiers": [{"type": "dns", "value": n} for n in names], **extra}
                      ).encode()


case("acct-binding-in-a-run-without-eab")(
    _acct_refuses("this run has no external account binding", lambda p: REGISTRATION, kid="",
                  url=NEW_ACCOUNT_URL, eab=True, kind="newAccount"))
case("acct-netprocs-own-binding-in-a-run-without-eab")(
    _acct_refuses("never taken from netproc", lambda p: json.dumps(
        {"termsOfServiceAgreed": True, "externalAccountBinding": {
            "protected": "e30", "payload": "e30", "signature": "AA"}}).encode(), kid="",
        url=NEW_ACCOUNT_URL, kind="newAccount"))
case("acct-profile-in-a-run-without-one")(
    _acct_refuses("this run asks for no profile", lambda p: ordered(NAMES, profile=PROFILE),
                  url="https://ca.test/new-order", kind="newOrder"))
case("acct-eab-run-netprocs-own-binding")(
    _acct_refuses("never taken from netproc", lambda p: json.dumps(
        {"termsOfServiceAgreed": True, "externalAccountBinding": eab_jws(
            p, NEW_ACCOUNT_URL, keys.jwk(OTHER_KEY.public_key()))}).encode(), kid="",
        url=NEW_ACCOUNT_URL, run="eab", eab=True, kind="newAccount"))
case("acct-eab-run-registration-without-binding")(
    _acct_refuses("registers its account with its external account binding",
                  lambda p: REGISTRATION, kid="", url=NEW_ACCOUNT_URL, run="eab",
                  kind="newAccount"))
case("acct-eab-run-binding-on-a-lookup")(
    _acct_refuses("a lookup carries no external account binding",
                  lambda p: b'{"onlyReturnExisting": true}', kid="", url=NEW_ACCOUNT_URL,
                  run="eab", eab=True, kind="newAccount"))
case("acct-eab-run-binding-on-an-order")(
    _acct_refuses("only a newAccount carries", lambda p: ordered(NAMES, profile=PROFILE),
                  run="eab", eab=True, kind="newOrder"))
case("acct-eab-run-binding-for-another-origin")(
    _acct_refuses("origin", lambda p: REGISTRATION, kid="", url="https://evil.test/new-acct",
                  run="eab", eab=True, kind="newAccount"))
case("acct-eab-run-order-of-another-profile")(
    _acct_refuses("is not this run's profile", lambda p: ordered(NAMES, profile="default"),
                  run="eab", kind="newOrder"))
case("acct-eab-run-order-without-its-profile")(
    _acct_refuses("must ask for this run's profile", lambda p: order(NAMES), run="eab",
                  kind="newOrder"))


def eab_jws(pod: Pod, url: str, jwk: dict[str, str]) -> dict[str, str]:
    """A binding as acctproc would build it, with the key from its file."""
    protected = b64url(json.dumps({"alg": "HS256", "kid": EAB_KID, "url": url}).encode())
    payload = b64url(json.dumps(jwk).encode())
    mac = hmac.new(EAB_HMAC_KEY, f"{protected}.{payload}".encode(), hashlib.sha256).digest()
    return {"protected": protected, "payload": payload, "signature": b64url(mac)}


@case("acct-eab-run-signs-its-own-binding-only")
def _eab_registration(pod: Pod) -> None:
    """The legitimate registration: acctproc adds the binding it builds from
    the key file it read at its start; the HMAC key leaves it in no answer,
    and an order of this run's profile is signed."""
    before = snapshot(pod)
    reply = sign(pod, REGISTRATION, kid="", url=NEW_ACCOUNT_URL, run="eab", eab=True)
    signed = json.loads(b64url_decode(reply.payload))
    binding = signed.pop("externalAccountBinding")
    assert signed == json.loads(REGISTRATION)
    header = json.loads(b64url_decode(binding["protected"]))
    assert header == {"alg": "HS256", "kid": EAB_KID, "url": NEW_ACCOUNT_URL}
    assert json.loads(b64url_decode(binding["payload"])) == keys.jwk(account_key(pod).public_key())
    mac = hmac.new(EAB_HMAC_KEY, f"{binding['protected']}.{binding['payload']}".encode(),
                   hashlib.sha256).digest()  # fmt: skip
    assert b64url_decode(binding["signature"]) == mac
    entry = audit_entries(pod)[-1]
    assert (entry["kind"], entry["decision"], entry["external_account_binding"]) == (
        "newAccount", "signed", EAB_KID)
    sign(pod, ordered(NAMES, profile=PROFILE), url="https://ca.test/new-order", run="eab")
    entry = audit_entries(pod)[-1]
    assert (entry["kind"], entry["decision"]) == ("newOrder", "signed")
    describe = account_pb2_grpc.AccountStub(pod.channel("acct", "eab")).Describe(
        account_pb2.DescribeRequest(), timeout=TIMEOUT)
    for answer in (reply.SerializeToString(), describe.SerializeToString()):
        for form in (EAB_HMAC_KEY, b64url(EAB_HMAC_KEY).encode(),
                     base64.b64encode(EAB_HMAC_KEY)):  # fmt: skip
            assert form not in answer
    assert b64url(EAB_HMAC_KEY) not in pod.audit_log.read_text()
    assert snapshot(pod) == before


# -- chngproc: files outside its directory ---

TOKEN = "T0k3n_-" + "a" * 36


def thumbprint(pod: Pod) -> str:
    stub = account_pb2_grpc.AccountStub(pod.channel("acct"))
    return stub.Describe(account_pb2.DescribeRequest(), timeout=TIMEOUT).thumbprint


def publish(pod: Pod, token: str, key_authorization: str) -> None:
    stub = challenge_pb2_grpc.ChallengeStub(pod.channel("chng"))
    stub.Publish(challenge_pb2.PublishRequest(token=token, key_authorization=key_authorization),
                 timeout=TIMEOUT)


def withdraw(pod: Pod, token: str) -> None:
    stub = challenge_pb2_grpc.ChallengeStub(pod.channel("chng"))
    stub.Withdraw(challenge_pb2.WithdrawRequest(token=token), timeout=TIMEOUT)


def _chng_refuses(token: str, match: str, key_authorization: str | None = None) -> Case:
    def attack(pod: Pod) -> None:
        authorization = key_authorization or f"{token}.{thumbprint(pod)}"
        refused(pod, lambda: publish(pod, token, authorization), match)
        assert not (pod.base / "x").exists()

    return attack


case("chng-token-dotdot")(_chng_refuses("../x", "invalid challenge token"))
case("chng-token-absolute")(_chng_refuses("/etc/passwd", "invalid challenge token"))
case("chng-token-slash")(_chng_refuses("a/b", "invalid challenge token"))
case("chng-token-nul")(_chng_refuses("a\x00b", "invalid challenge token"))
case("chng-token-300-chars")(_chng_refuses("a" * 300, "at most 256"))
case("chng-token-empty")(_chng_refuses("", "empty"))
case("chng-token-dot")(_chng_refuses(".", "invalid challenge token"))
case("chng-key-authorization-other-token")(
    _chng_refuses(TOKEN, "does not start with the token", "other." + "A" * 43))
case("chng-key-authorization-bad-thumbprint")(
    _chng_refuses(TOKEN, "thumbprint", f"{TOKEN}.short"))
case("chng-key-authorization-newline")(
    _chng_refuses(TOKEN, "thumbprint", f"{TOKEN}.{'A' * 42}\n"))


@case("chng-token-not-utf8")
def _chng_not_utf8(pod: Pod) -> None:
    body = b"\x0a\x02\xff\xfe\x12\x02ab"  # token: two bytes that are not UTF-8
    before = snapshot(pod)
    with pytest.raises(grpc.RpcError) as info:
        pod.raw_call("chng", "/letskencrypt.v1.Challenge/Publish", body)
    assert info.value.code() != grpc.StatusCode.OK  # type: ignore[attr-defined]
    assert snapshot(pod) == before


@case("chng-withdraw-a-file-it-did-not-write")
def _chng_withdraw_foreign(pod: Pod) -> None:
    planted = pod.challenge_dir / "planted"
    planted.write_bytes(VICTIM)
    try:
        refused(pod, lambda: withdraw(pod, "planted"), "no challenge file was written")
        refused(pod, lambda: withdraw(pod, "../outside/victim"), "invalid challenge token")
        assert planted.read_bytes() == VICTIM
    finally:
        planted.unlink()


def _chng_planted(kind: str) -> Case:
    """A link under the token's name: the write must replace it, never follow it."""

    def attack(pod: Pod) -> None:
        entry = pod.challenge_dir / TOKEN
        target = pod.outside / ("victim" if kind != "dangling" else "created-by-chngproc")
        if kind == "hardlink":
            os.link(target, entry)
        else:
            entry.symlink_to(target)
        before = snapshot(pod)
        authorization = f"{TOKEN}.{thumbprint(pod)}"
        publish(pod, TOKEN, authorization)
        after = snapshot(pod)
        assert outside_of(after, "challenge") == outside_of(before, "challenge")
        assert not entry.is_symlink() and entry.read_text() == authorization
        assert (pod.outside / "victim").read_bytes() == VICTIM
        assert not (pod.outside / "created-by-chngproc").exists()
        withdraw(pod, TOKEN)
        assert not os.path.lexists(entry)
        assert list(pod.challenge_dir.iterdir()) == []

    return attack


case("chng-planted-symlink-outside")(_chng_planted("symlink"))
case("chng-planted-dangling-symlink")(_chng_planted("dangling"))
case("chng-planted-hard-link")(_chng_planted("hardlink"))


# -- fileproc, as a compromised certproc would call it ---


def install(pod: Pod, certificate: bytes, chain: bytes = b"") -> None:
    stub = files_pb2_grpc.FilesStub(pod.raw_channel("file"))
    stub.Install(files_pb2.InstallRequest(certificate_pem=certificate, chain_pem=chain),
                 timeout=TIMEOUT)


def _file_refuses(match: str, make: Callable[[Pod], tuple[bytes, bytes]]) -> Case:
    def attack(pod: Pod) -> None:
        certificate, chain = make(pod)
        refused(pod, lambda: install(pod, certificate, chain), match)

    return attack


def _leaf_pem(pod: Pod) -> bytes:
    return to_pem(leaf(domain_key(pod).public_key(), NAMES))


case("file-not-pem")(_file_refuses("not a PEM certificate", lambda p: (b"hello world\n", b"")))
case("file-empty")(_file_refuses("empty", lambda p: (b"", b"")))
case("file-oversized")(_file_refuses("larger than", lambda p: (
    _leaf_pem(p) + b"\n" * (200 * 1024), b"")))
case("file-trailing-garbage")(_file_refuses("unexpected data", lambda p: (
    _leaf_pem(p) + b"#!/bin/sh\nrm -rf /\n", b"")))
case("file-chain-trailing-garbage")(_file_refuses("unexpected data", lambda p: (
    _leaf_pem(p), to_pem(intermediate()) + b"garbage")))
case("file-private-key-block")(_file_refuses("not a PEM certificate", lambda p: (
    domain_key(p).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()), b"")))
case("file-private-key-in-chain")(_file_refuses("not a PEM certificate", lambda p: (
    _leaf_pem(p), domain_key(p).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))))
case("file-two-certificates-as-cert")(_file_refuses("exactly one", lambda p: (
    _leaf_pem(p) + to_pem(intermediate()), b"")))
case("file-non-ascii")(_file_refuses("not a PEM certificate", lambda p: (
    _leaf_pem(p).replace(b"-----\n", b"-----\n\xc3\xa9", 1), b"")))
case("file-not-der-inside")(_file_refuses("not a valid DER", lambda p: (
    b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n", b"")))


def _file_planted(make: Callable[[Pod], None], *, succeeds: bool, remove: bool = False) -> Case:
    """The attacker prepared the certificate directory; fileproc must not write
    (or remove) anything outside it, whatever it does inside."""

    def attack(pod: Pod) -> None:
        make(pod)
        before = snapshot(pod)
        try:
            if remove:  # only a revocation removes anything
                with pod.revoking_fileproc():
                    stub = files_pb2_grpc.FilesStub(pod.channel("file", "revoke"))
                    stub.Remove(files_pb2.RemoveRequest(), timeout=TIMEOUT)
            elif succeeds:
                install(pod, _leaf_pem(pod), to_pem(intermediate()))
            else:
                expect_error(lambda: install(pod, _leaf_pem(pod), to_pem(intermediate())),
                             grpc.StatusCode.INVALID_ARGUMENT)
                assert snapshot(pod) == before
            after = snapshot(pod)
            assert outside_of(after, "certs") == outside_of(before, "certs")
            assert (pod.outside / "victim").read_bytes() == VICTIM
            for file in (pod.outside / "dir").iterdir():
                assert file.read_bytes() == VICTIM
            assert sorted(p.name for p in (pod.outside / "dir").iterdir()) == [
                "cert.pem", "chain.pem", "fullchain.pem"]
            if succeeds and not remove:
                for stable in ("cert.pem", "chain.pem", "fullchain.pem"):
                    assert os.readlink(pod.cert_dir / stable) == f".live/{stable}"
                assert os.readlink(pod.cert_dir / ".live").startswith(".sets/")
        finally:
            restore_cert_dir(pod)

    return attack


def restore_cert_dir(pod: Pod) -> None:
    """Undo what a case planted, then install a good set through certproc."""
    sets = pod.cert_dir / ".sets"
    if sets.is_symlink():
        sets.unlink()
    moved = pod.base / "sets-moved"
    if moved.exists():
        if sets.exists():
            shutil.rmtree(sets)
        moved.rename(sets)
    if sets.exists():
        for entry in sets.iterdir():
            if entry.is_symlink():
                entry.unlink()
    install_good_chain(pod)


def plant_cert_link(pod: Pod) -> None:
    (pod.cert_dir / "cert.pem").unlink()
    (pod.cert_dir / "cert.pem").symlink_to(pod.outside / "victim")


def plant_live_link(pod: Pod) -> None:
    (pod.cert_dir / ".live").unlink()
    (pod.cert_dir / ".live").symlink_to(pod.outside / "dir")


def plant_sets_link(pod: Pod) -> None:
    (pod.cert_dir / ".sets").rename(pod.base / "sets-moved")
    (pod.cert_dir / ".sets").symlink_to(pod.outside / "dir")


def plant_set_link(pod: Pod) -> None:
    """The live set's own directory swapped for a link outside."""
    live = os.readlink(pod.cert_dir / ".live")
    shutil.rmtree(pod.cert_dir / live)
    (pod.cert_dir / live).symlink_to(pod.outside / "dir")


case("file-planted-cert-pem-symlink")(_file_planted(plant_cert_link, succeeds=True))
case("file-planted-live-symlink")(_file_planted(plant_live_link, succeeds=True))
case("file-planted-sets-symlink")(_file_planted(plant_sets_link, succeeds=False))
case("file-planted-set-directory-symlink")(
    _file_planted(plant_set_link, succeeds=True))
case("file-remove-through-planted-cert-pem")(
    _file_planted(plant_cert_link, succeeds=True, remove=True))
case("file-remove-through-planted-live")(
    _file_planted(plant_live_link, succeeds=True, remove=True))


# -- certproc: a chain that is not for our key and names, from netproc ---


def submit(pod: Pod, pem_chain: bytes) -> None:
    stub = certificate_pb2_grpc.CertificateStub(pod.raw_channel("cert"))
    stub.Submit(certificate_pb2.SubmitRequest(pem_chain=pem_chain), timeout=TIMEOUT)


def _cert_refuses(match: str, make: Callable[[Pod], bytes]) -> Case:
    def attack(pod: Pod) -> None:
        chain = make(pod)
        refused(pod, lambda: submit(pod, chain), match)

    return attack


def _ours(pod: Pod) -> Any:
    return domain_key(pod).public_key()


case("cert-other-key")(_cert_refuses("not for our domain key", lambda p: to_pem(
    leaf(OTHER_KEY.public_key(), NAMES), intermediate())))
case("cert-account-key")(_cert_refuses("not for our domain key", lambda p: to_pem(
    leaf(account_key(p).public_key(), NAMES), intermediate())))
case("cert-other-names")(_cert_refuses("differ from the requested", lambda p: to_pem(
    leaf(_ours(p), OTHER_NAMES), intermediate())))
case("cert-extra-name")(_cert_refuses("differ from the requested", lambda p: to_pem(
    leaf(_ours(p), [*NAMES, *OTHER_NAMES]), intermediate())))
case("cert-missing-name")(_cert_refuses("differ from the requested", lambda p: to_pem(
    leaf(_ours(p), NAMES[:1]), intermediate())))
case("cert-not-signed-by-next")(_cert_refuses("not signed by", lambda p: to_pem(
    make_cert("leaf", "intermediate", _ours(p), OTHER_KEY, ca=False, names=NAMES,
              not_before=now() - timedelta(hours=1), not_after=now() + timedelta(days=90)),
    intermediate())))
case("cert-expired")(_cert_refuses("expired", lambda p: to_pem(
    leaf(_ours(p), NAMES, not_before=now() - timedelta(days=100),
         not_after=now() - timedelta(days=10)), intermediate())))
case("cert-is-a-ca")(_cert_refuses("CA certificate", lambda p: to_pem(
    leaf(_ours(p), NAMES, ca=True), intermediate())))
case("cert-not-pem")(_cert_refuses("", lambda p: b"<html>502 Bad Gateway</html>"))
# Not to one of the CA's trust anchors, or not a certificate a CA issues.
case("cert-self-signed")(_cert_refuses("does not chain to a trust anchor", lambda p: to_pem(
    make_cert("leaf", "leaf", _ours(p), domain_key(p), ca=False, names=NAMES,
              not_before=now() - timedelta(hours=1), not_after=now() + timedelta(days=90)))))
case("cert-from-an-unknown-ca")(_cert_refuses("does not chain to a trust anchor", lambda p: to_pem(
    make_cert("leaf", "stranger", _ours(p), OTHER_KEY, ca=False, names=NAMES,
              not_before=now() - timedelta(hours=1), not_after=now() + timedelta(days=90)),
    make_cert("stranger", "stranger", OTHER_KEY.public_key(), OTHER_KEY, ca=True,
              not_before=now() - timedelta(days=1), not_after=now() + timedelta(days=900)))))
case("cert-leaf-only")(_cert_refuses("does not chain to a trust anchor", lambda p: to_pem(
    leaf(_ours(p), NAMES))))
case("cert-valid-100-years")(_cert_refuses("lifetime of 36500 days exceeds 398", lambda p: to_pem(
    leaf(_ours(p), NAMES, not_before=now() - timedelta(hours=1),
         not_after=now() - timedelta(hours=1) + timedelta(days=36500)), intermediate())))
case("cert-not-yet-valid")(_cert_refuses("not valid yet", lambda p: to_pem(
    leaf(_ours(p), NAMES, not_before=now() + timedelta(days=1),
         not_after=now() + timedelta(days=91)), intermediate())))
case("cert-intermediate-not-a-ca")(_cert_refuses("certificate 1 ('CN=intermediate') is not a CA",
    lambda p: to_pem(leaf(_ours(p), NAMES), make_cert(
        "intermediate", "root", INTERMEDIATE_KEY.public_key(), ROOT_KEY, ca=False,
        not_before=now() - timedelta(days=1), not_after=now() + timedelta(days=900)))))
case("cert-impostor-of-the-anchor")(_cert_refuses("names the trust anchor 'CN=root'",
    lambda p: to_pem(leaf(_ours(p), NAMES), make_cert(
        "intermediate", "root", INTERMEDIATE_KEY.public_key(), OTHER_KEY, ca=True,
        not_before=now() - timedelta(days=1), not_after=now() + timedelta(days=900)))))
case("cert-empty")(_cert_refuses("", lambda p: b""))
case("cert-private-key-block")(_cert_refuses("PRIVATE KEY", lambda p: good_chain(p) +
    domain_key(p).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())))
case("cert-oversized-chain")(_cert_refuses("too large", lambda p: good_chain(p) +
    b"\n" * (300 * 1024)))


def _kept_unfit(match: str, make: Callable[[Pod], bytes]) -> Case:
    """A chain submitted as one an earlier run kept: refused in the reply
    (so netproc orders anew), and still nothing is installed."""

    def attack(pod: Pod) -> None:
        stub = certificate_pb2_grpc.CertificateStub(pod.raw_channel("cert"))
        request = certificate_pb2.SubmitRequest(pem_chain=make(pod), kept=True)
        before = snapshot(pod)
        reply = stub.Submit(request, timeout=TIMEOUT)
        assert reply.unfit and match.lower() in reply.unfit.lower(), reply
        assert not reply.serial_hex
        assert snapshot(pod) == before

    return attack


case("cert-kept-other-key")(_kept_unfit("not for our domain key", lambda p: to_pem(
    leaf(OTHER_KEY.public_key(), NAMES), intermediate())))
case("cert-kept-other-names")(_kept_unfit("differ from the requested", lambda p: to_pem(
    leaf(_ours(p), OTHER_NAMES), intermediate())))
case("cert-kept-self-signed")(_kept_unfit("does not chain to a trust anchor", lambda p: to_pem(
    make_cert("leaf", "leaf", _ours(p), domain_key(p), ca=False, names=NAMES,
              not_before=now() - timedelta(hours=1), not_after=now() + timedelta(days=90)))))
case("cert-kept-not-pem")(_kept_unfit("", lambda p: b"<html>502 Bad Gateway</html>"))


# -- the run's operation is each role's own: nothing is removed in an issue run,
# nothing installed in a revocation, whoever asks ---


@case("cert-retire-in-an-issue-run")
def _cert_retire_in_issue_run(pod: Pod) -> None:
    stub = certificate_pb2_grpc.CertificateStub(pod.raw_channel("cert"))
    refused(pod, lambda: stub.Retire(certificate_pb2.RetireRequest(), timeout=TIMEOUT),
            "this is an issue run: no certificate is removed")
    for name in ("cert.pem", "chain.pem", "fullchain.pem"):
        assert (pod.cert_dir / name).is_file()


@case("file-remove-in-an-issue-run")
def _file_remove_in_issue_run(pod: Pod) -> None:
    stub = files_pb2_grpc.FilesStub(pod.raw_channel("file"))
    refused(pod, lambda: stub.Remove(files_pb2.RemoveRequest(), timeout=TIMEOUT),
            "this is an issue run: no certificate is removed")
    for name in ("cert.pem", "chain.pem", "fullchain.pem"):
        assert (pod.cert_dir / name).is_file()


@case("file-install-in-a-revoke-run")
def _file_install_in_revoke_run(pod: Pod) -> None:
    stub = files_pb2_grpc.FilesStub(pod.raw_channel("file", "revoke"))
    request = files_pb2.InstallRequest(certificate_pem=_leaf_pem(pod),
                                       chain_pem=to_pem(intermediate()))
    with pod.revoking_fileproc():
        refused(pod, lambda: stub.Install(request, timeout=TIMEOUT),
                "this is a revoke run: no certificate is installed")


# -- dnsproc: names that are not host names ---


def resolve(pod: Pod, host: str) -> list[str]:
    stub = resolver_pb2_grpc.ResolverStub(pod.channel("dns"))
    return list(stub.Resolve(resolver_pb2.ResolveRequest(host=host), timeout=TIMEOUT).addresses)


def _dns_refuses(host: str, match: str = "") -> Case:
    def attack(pod: Pod) -> None:
        details = refused(pod, lambda: resolve(pod, host), match)
        assert "\x1b" not in details and "\x00" not in details

    return attack


case("dns-escape-sequence")(_dns_refuses("ca\x1b[31m.example.org", "invalid host name"))
case("dns-newline")(_dns_refuses("ca.example.org\nevil.test", "invalid host name"))
case("dns-nul")(_dns_refuses("ca.example.org\x00.evil.test", "invalid host name"))
case("dns-300-chars")(_dns_refuses(("a" * 60 + ".") * 5, "longer than 253"))
case("dns-dotdot")(_dns_refuses("..", "invalid host name"))
case("dns-empty-label")(_dns_refuses("ca..example.org", "invalid host name"))
case("dns-empty")(_dns_refuses("", "empty"))
case("dns-bracketed-ip")(_dns_refuses("[::1]", "invalid host name"))
case("dns-with-port")(_dns_refuses("ca.example.org:443", "invalid host name"))
case("dns-underscore-srv")(_dns_refuses("_acme._tcp.example.org", "invalid host name"))
# What the C resolver would read as IPv4 addresses (127.0.0.1), unlike anything else here.
case("dns-inet-aton-short")(_dns_refuses("127.1", "ends in a number"))
case("dns-inet-aton-hex")(_dns_refuses("0x7f.1", "ends in a number"))
case("dns-inet-aton-decimal")(_dns_refuses("2130706433", "ends in a number"))


@case("dns-ip-literal-is-itself")
def _dns_ip_literal(pod: Pod) -> None:
    """An IP literal is answered with itself, without a lookup, and nothing else."""
    assert resolve(pod, "127.0.0.1") == ["127.0.0.1"]
    assert resolve(pod, "::1") == ["::1"]
    assert resolve(pod, "0:0::1") == ["::1"]


# -- revokeproc: its answers are its own ---


@case("rvk-ignores-smuggled-fields")
def _rvk_smuggled(pod: Pod) -> None:
    plain = renewal_pb2.CheckReply.FromString(pod.raw_call("rvk", PROBES["rvk"], b""))
    assert plain.decision == renewal_pb2.DECISION_UP_TO_DATE
    before = snapshot(pod)
    # "force": true and other names, as unknown fields: netproc cannot ask for a renewal.
    smuggled = pod.raw_call("rvk", PROBES["rvk"], b"\x08\x01\x12\x10evil.example.net")
    assert renewal_pb2.CheckReply.FromString(smuggled).decision == plain.decision
    assert snapshot(pod) == before


def _rvk_installed_forgery(forged: Callable[[Pod], x509.Certificate], reason: str) -> Case:
    """What a compromised certproc could install is never "up to date"."""

    def attack(pod: Pod) -> None:
        stub = renewal_pb2_grpc.RenewalStub(pod.channel("rvk"))
        try:
            install(pod, to_pem(forged(pod)))
            reply = stub.Check(renewal_pb2.CheckRequest(), timeout=TIMEOUT)
            assert reply.decision == renewal_pb2.DECISION_RENEW, reply
            assert reply.reason.startswith("installed certificate"), reply.reason
            assert reason in reply.reason, reply.reason
        finally:
            restore_cert_dir(pod)
        assert stub.Check(renewal_pb2.CheckRequest(), timeout=TIMEOUT).decision == (
            renewal_pb2.DECISION_UP_TO_DATE)

    return attack


case("rvk-installed-self-signed-100-years")(_rvk_installed_forgery(lambda p: make_cert(
    "leaf", "leaf", _ours(p), domain_key(p), ca=False, names=NAMES,
    not_before=now() - timedelta(hours=1), not_after=now() + timedelta(days=36500)),
    "lifetime of 36500 days exceeds 398 days"))
case("rvk-installed-self-signed")(_rvk_installed_forgery(lambda p: make_cert(
    "leaf", "leaf", _ours(p), domain_key(p), ca=False, names=NAMES,
    not_before=now() - timedelta(hours=1), not_after=now() + timedelta(days=90)),
    "does not chain to a trust anchor"))
case("rvk-installed-leaf-without-its-chain")(_rvk_installed_forgery(
    lambda p: leaf(_ours(p), NAMES), "does not chain to a trust anchor"))


# A set newer than the live one, as an install that could not publish it leaves it.
KEPT_SET = "kept-29991231T235959.999999Z-abcd"


def _rvk_kept(make: Callable[[Pod], bytes], offered: bool, link: bool = False) -> Case:
    """revokeproc offers a kept set only if certproc would accept it for our
    names and it is not due; it reads it without following a planted link."""

    def attack(pod: Pod) -> None:
        stub = renewal_pb2_grpc.RenewalStub(pod.channel("rvk"))
        kept = pod.cert_dir / ".sets" / KEPT_SET
        kept.mkdir()
        try:
            pem_chain = make(pod)
            (kept / "cert.pem").write_bytes(pem_chain)
            (kept / "chain.pem").write_bytes(b"")
            if link:
                # To a good chain that revokeproc may read: only O_NOFOLLOW stops it.
                (pod.cert_dir / "elsewhere.pem").write_bytes(pem_chain)
                (kept / "fullchain.pem").symlink_to(pod.cert_dir / "elsewhere.pem")
            else:
                (kept / "fullchain.pem").write_bytes(pem_chain)
            reply = stub.Check(renewal_pb2.CheckRequest(), timeout=TIMEOUT)
            assert reply.kept_chain_pem == (pem_chain if offered else b""), reply
            # The decision is still about the installed certificate.
            assert reply.decision == renewal_pb2.DECISION_UP_TO_DATE, reply
        finally:
            shutil.rmtree(kept)
            (pod.cert_dir / "elsewhere.pem").unlink(missing_ok=True)

    return attack


case("rvk-kept-good-chain-is-offered")(_rvk_kept(good_chain, offered=True))
case("rvk-kept-self-signed-is-not-offered")(_rvk_kept(lambda p: to_pem(make_cert(
    "leaf", "leaf", _ours(p), domain_key(p), ca=False, names=NAMES,
    not_before=now() - timedelta(hours=1), not_after=now() + timedelta(days=90))), offered=False))
case("rvk-kept-other-names-is-not-offered")(_rvk_kept(lambda p: to_pem(
    leaf(_ours(p), OTHER_NAMES), intermediate()), offered=False))
case("rvk-kept-due-is-not-offered")(_rvk_kept(lambda p: to_pem(
    leaf(_ours(p), NAMES, not_before=now() - timedelta(days=80),
         not_after=now() + timedelta(days=10)), intermediate()), offered=False))
case("rvk-kept-linked-outside-is-not-followed")(_rvk_kept(good_chain, offered=False, link=True))


@case("rvk-current-is-the-public-certificate")
def _rvk_current(pod: Pod) -> None:
    stub = renewal_pb2_grpc.RenewalStub(pod.channel("rvk"))
    reply = stub.Current(renewal_pb2.CurrentRequest(), timeout=TIMEOUT)
    installed = x509.load_pem_x509_certificate((pod.cert_dir / "cert.pem").read_bytes())
    assert x509.load_der_x509_certificate(reply.certificate_der) == installed
    assert_no_secret(reply.SerializeToString(), domain_key(pod))
    assert_no_secret(reply.SerializeToString(), account_key(pod))
    smuggled = pod.raw_call("rvk", "/letskencrypt.v1.Renewal/Current", b"\x0a\x05/etc/")
    assert renewal_pb2.CurrentReply.FromString(smuggled) == reply


# -- every socket: too large, not protobuf, another service ---


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def alive(pod: Pod, edge: str) -> None:
    """The role still answers on this edge (an answer, even a refusal)."""
    with contextlib.suppress(grpc.RpcError):
        pod.raw_call(edge, PROBES[edge], b"")
        return
    expect_error(lambda: pod.raw_call(edge, PROBES[edge], b""), grpc.StatusCode.INVALID_ARGUMENT)


def _oversized(edge: str) -> Case:
    def attack(pod: Pod) -> None:
        size = rpc.EDGES[edge].max_message + 1024
        body = b"\x0a" + varint(size) + b"A" * size
        refused(pod, lambda: pod.raw_call(edge, PROBES[edge], body), "",
                grpc.StatusCode.RESOURCE_EXHAUSTED)
        alive(pod, edge)

    return attack


def _garbage(edge: str) -> Case:
    def attack(pod: Pod) -> None:
        before = snapshot(pod)
        with pytest.raises(grpc.RpcError) as info:
            pod.raw_call(edge, PROBES[edge], b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
        assert info.value.code() in (  # type: ignore[attr-defined]
            grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
        assert snapshot(pod) == before
        alive(pod, edge)

    return attack


def _other_service(edge: str) -> Case:
    def attack(pod: Pod) -> None:
        method = ("/letskencrypt.v1.Account/Sign" if edge != "acct"
                  else "/letskencrypt.v1.Files/Install")
        refused(pod, lambda: pod.raw_call(edge, method, b""), "", grpc.StatusCode.UNIMPLEMENTED)
        if edge != "file":
            refused(pod, lambda: pod.raw_call(edge, "/letskencrypt.v1.Files/Remove", b""), "",
                    grpc.StatusCode.UNIMPLEMENTED)
        alive(pod, edge)

    return attack


for _edge in rpc.EDGES:
    case(f"{_edge}-oversized-message")(_oversized(_edge))
    case(f"{_edge}-not-protobuf")(_garbage(_edge))
    case(f"{_edge}-other-service")(_other_service(_edge))


HOSTILE_CASES = len(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_peer(pod: Pod, name: str) -> None:
    CASES[name](pod)
    assert pod.dead() == {}, pod.logs()
    for edge in PROBES:
        alive(pod, edge)
    assert (pod.outside / "victim").read_bytes() == VICTIM
    assert sorted(p.name for p in pod.outside.iterdir()) == ["dir", "victim"]


def test_the_roles_run_as_the_supervisor_runs_them(pod: Pod) -> None:
    for name, process in pod.processes.items():
        status = Path(f"/proc/{process.pid}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        uid = int(fields["Uid"].split()[0])
        role = name.split("@")[0]
        if RUN_USER is not None:
            assert (uid == 0) == (specs()[role].keeps_root is not None), (name, uid)
        assert fields["NoNewPrivs"].strip() == "1", name


def test_the_cases_are_many() -> None:
    assert HOSTILE_CASES >= 90
    print(f"{HOSTILE_CASES} hostile-peer cases")


def test_the_audit_log_records_every_refusal(pod: Pod) -> None:
    entries = audit_entries(pod)
    assert entries, "nothing was recorded"
    assert all(set(e) <= {"time", "url", "kind", "payload_sha256", "decision", "reason",
                          "external_account_binding"} for e in entries)
    assert all(e["decision"] in ("signed", "refused") for e in entries)
    refusals = [e for e in entries if e["decision"] == "refused"]
    expected = sum(1 for attack in CASES.values() if getattr(attack, "refuses_a_signature", 0))
    assert len(refusals) >= expected
    assert stat.S_IMODE(pod.audit_log.stat().st_mode) == 0o600
