"""keyproc signs a revokeCert with the domain key (RFC 8555 7.6) only as its
own settings allow; acctproc in such a run signs nothing; the command line
and the ACME client that lead there (see roles/keyproc.py)."""

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from letskencrypt import keys, options
from letskencrypt.acme import AcmeError
from letskencrypt.acme import client as acme_client
from letskencrypt.b64 import b64url, b64url_decode
from letskencrypt.constants import REVOCATION_REASONS
from letskencrypt.context import Logger
from letskencrypt.errors import InputError
from letskencrypt.roles import acctproc, keyproc
from letskencrypt.roles.keyproc import DomainKeyService, RevocationPolicy
from letskencrypt.roles.netproc import RemoteRevocationSigner
from letskencrypt.settings import (
    AcctprocSettings,
    KeyprocSettings,
    NetprocSettings,
    decode,
    encode,
)
from letskencrypt.v1 import account_pb2, domainkey_pb2

from tests import certfactory
from tests.test_acme import BASE, RecordingSigner, response, scripted

ORIGIN = "https://ca.test:443"
URL = "https://ca.test/revoke-cert"
NONCE = "bm9uY2U"
NAMES = ["a.example.org"]
DOMAIN_KEY = certfactory.LEAF_KEY
PKI = certfactory.make_pki()
OURS = PKI.leaf(NAMES).public_bytes(serialization.Encoding.DER)
THEIRS = PKI.leaf(NAMES, key=certfactory.OTHER_KEY).public_bytes(serialization.Encoding.DER)
SUPERSEDED = 4


def keyproc_settings(**changes: Any) -> KeyprocSettings:
    fields: dict[str, Any] = {
        "key_path": "/keys/domain.pem", "names": tuple(NAMES), "operation": "revoke",
        "revoke_with_domain_key": True, "ca_origin": ORIGIN, "revoke_reason": SUPERSEDED,
    }  # fmt: skip
    fields.update(changes)
    return KeyprocSettings(**fields)


def service(settings: KeyprocSettings | None = None) -> DomainKeyService:
    settings = settings or keyproc_settings()
    policy = RevocationPolicy(settings, DOMAIN_KEY)
    return DomainKeyService(DOMAIN_KEY, b"csr", policy, Logger("keyproc", 1))


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)


def ask(
    domain_key: DomainKeyService,
    *,
    url: str = URL,
    nonce: str = NONCE,
    der: bytes = OURS,
    reason: int | None = SUPERSEDED,
) -> domainkey_pb2.SignRevocationReply:
    request = domainkey_pb2.SignRevocationRequest(
        url=url, nonce=nonce, certificate_der=der, reason=reason
    )
    return domain_key.SignRevocation(request, FakeContext())


def refusal(domain_key: DomainKeyService, **request: Any) -> str:
    context = FakeContext()
    fields = {"url": URL, "nonce": NONCE, "certificate_der": OURS, "reason": SUPERSEDED}
    fields.update(request)
    with pytest.raises(Aborted):
        domain_key.SignRevocation(domainkey_pb2.SignRevocationRequest(**fields), context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "\n" not in context.details
    return context.details


def verify_es256(public_key: ec.EllipticCurvePublicKey, reply: Any) -> None:
    raw = b64url_decode(reply.signature)
    signature = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
    signed = f"{reply.protected}.{reply.payload}".encode()
    public_key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))


# --- keyproc's policy -------------------------------------------------------------------


def test_signs_the_revocation_of_its_own_certificate(capsys: pytest.CaptureFixture[str]) -> None:
    reply = ask(service())
    header = json.loads(b64url_decode(reply.protected))
    assert header == {
        "alg": "ES256", "jwk": keys.jwk(DOMAIN_KEY.public_key()), "nonce": NONCE, "url": URL,
    }  # fmt: skip
    assert json.loads(b64url_decode(reply.payload)) == {
        "certificate": b64url(OURS), "reason": SUPERSEDED,
    }  # fmt: skip
    verify_es256(DOMAIN_KEY.public_key(), reply)
    with pytest.raises(InvalidSignature):
        verify_es256(certfactory.OTHER_KEY.public_key(), reply)
    assert "signed the revocation" in capsys.readouterr().err


def test_without_a_reason_the_payload_names_none() -> None:
    reply = ask(service(keyproc_settings(revoke_reason=None)), reason=None)
    assert json.loads(b64url_decode(reply.payload)) == {"certificate": b64url(OURS)}


def test_an_rsa_domain_key_signs_rs256() -> None:
    rsa_key = keys.generate_key("rsa2048")
    leaf = certfactory.make_cert(
        "leaf", "intermediate", rsa_key.public_key(), certfactory.INTERMEDIATE_KEY,  # type: ignore[arg-type]
        ca=False, names=NAMES,
    )  # fmt: skip
    policy = RevocationPolicy(keyproc_settings(), rsa_key)
    domain_key = DomainKeyService(rsa_key, b"csr", policy, Logger("keyproc", 0))
    reply = ask(domain_key, der=leaf.public_bytes(serialization.Encoding.DER))
    assert json.loads(b64url_decode(reply.protected))["alg"] == "RS256"


ED25519_LEAF = certfactory.make_cert(
    "leaf", "intermediate", ed25519.Ed25519PrivateKey.generate().public_key(),  # type: ignore[arg-type]
    certfactory.INTERMEDIATE_KEY, ca=False, names=NAMES,
).public_bytes(serialization.Encoding.DER)  # fmt: skip

REFUSALS = {
    "ed25519-certificate": ({"certificate_der": ED25519_LEAF}, "not a DER certificate of an RSA"),
    "another-keys-certificate": ({"certificate_der": THEIRS}, "is not for the domain key"),
    "not-a-certificate": ({"certificate_der": b"\x30\x03junk"}, "not a DER certificate"),
    "no-certificate": ({"certificate_der": b""}, "empty or larger than"),
    "huge-certificate": ({"certificate_der": b"\x30" * 20000}, "empty or larger than"),
    "trailing-bytes": ({"certificate_der": OURS + b"\x00"}, "DER certificate"),
    "another-host": ({"url": "https://evil.example/revoke-cert"}, "not on the CA's origin"),
    "another-port": ({"url": "https://ca.test:444/revoke-cert"}, "not on the CA's origin"),
    "plain-http": ({"url": "http://ca.test/revoke-cert"}, "is not https"),
    "odd-characters": ({"url": "https://ca.test/revoke cert"}, "characters URL parsers"),
    "no-url": ({"url": ""}, "the URL is empty"),
    "no-nonce": ({"nonce": ""}, "the nonce is not base64url"),
    "nonce-with-padding": ({"nonce": "bm9uY2U="}, "the nonce is not base64url"),
    "nonce-too-long": ({"nonce": "n" * 129}, "the nonce is not base64url"),
    "another-reason": ({"reason": 1}, "reason 1 is not this run's (4)"),
    "no-reason": ({"reason": None}, "reason none is not this run's (4)"),
    "unused-reason": ({"reason": 7}, "reason 7 is not this run's (4)"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    request, reason = REFUSALS[case]
    details = refusal(service(), **request)
    assert details.startswith("refused to sign a revocation with the domain key: ")
    assert reason in details
    # Logged in keyproc too, in the same words.
    assert f"letskencrypt: keyproc: {details}" in capsys.readouterr().err


def test_a_reason_when_the_run_has_none_is_refused() -> None:
    details = refusal(service(keyproc_settings(revoke_reason=None)), reason=0)
    assert details.endswith("reason 0 is not this run's (none)")


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        (keyproc_settings(operation="issue", revoke_with_domain_key=False, ca_origin=None,
                          revoke_reason=None), "this run is an issue run"),
        (keyproc_settings(revoke_with_domain_key=False), "a revocation with the account key"),
    ],
    ids=["issue-run", "revoke-with-account-key"],
)
def test_refused_in_a_run_of_another_operation(settings: KeyprocSettings, said: str) -> None:
    assert refusal(service(settings)).endswith(said)


def test_at_most_a_few_signatures_per_run() -> None:
    domain_key = service()
    # A refused request does not count.
    refusal(domain_key, certificate_der=THEIRS)
    for _ in range(keyproc.MAX_REVOCATION_SIGNATURES):
        ask(domain_key)
    assert refusal(domain_key).endswith(
        f"signed {keyproc.MAX_REVOCATION_SIGNATURES} already in this run"
    )


def test_the_limit_covers_netprocs_bad_nonce_retries() -> None:
    assert keyproc.MAX_REVOCATION_SIGNATURES == 1 + acme_client.MAX_BAD_NONCE_RETRIES


def test_the_csr_is_served_as_before() -> None:
    reply = service().Csr(domainkey_pb2.CsrRequest(), FakeContext())
    assert reply.der == b"csr"


# --- settings ----------------------------------------------------------------------------


def test_keyproc_settings_round_trip_and_checks() -> None:
    settings = keyproc_settings()
    assert decode(KeyprocSettings, encode(settings)) == settings
    with pytest.raises(InputError, match="revoke_with_domain_key goes with a revoke run"):
        keyproc_settings(operation="issue")
    with pytest.raises(InputError, match="revoke_with_domain_key goes with a revoke run"):
        keyproc_settings(ca_origin=None)


def test_an_idle_acctproc_goes_with_a_revocation_only() -> None:
    fields: dict[str, Any] = {
        "key_path": "/k", "directory_url": "https://ca.test/dir", "names": ("a.example",),
        "audit_log": "/a",
    }  # fmt: skip
    assert AcctprocSettings(**fields, operation="revoke", idle=True).idle
    with pytest.raises(InputError, match="idle goes with a revoke run only"):
        AcctprocSettings(**fields, operation="issue", idle=True)


# --- acctproc in a revocation with the domain key ---------------------------------------


def test_an_idle_acctproc_refuses_everything() -> None:
    idle = acctproc.IdleAccountService(Logger("acctproc", 0))
    for call, request in (
        (idle.Sign, account_pb2.SignRequest(url=URL, nonce=NONCE, kid="", payload=b"{}")),
        (idle.Describe, account_pb2.DescribeRequest()),
    ):
        context = FakeContext()
        with pytest.raises(Aborted):
            call(request, context)  # type: ignore[operator]
        assert context.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "this run revokes with the domain key and uses no account" in context.details


def test_an_idle_acctproc_opens_nothing() -> None:
    fields: dict[str, Any] = {
        "key_path": "/nowhere/account.pem", "directory_url": "https://ca.test/dir",
        "names": ("a.example",), "audit_log": "/nowhere/audit.log", "operation": "revoke",
    }  # fmt: skip
    assert list(acctproc.SPEC.opens(AcctprocSettings(**fields, idle=True))) == []
    assert len(list(acctproc.SPEC.opens(AcctprocSettings(**fields)))) == 2


# --- the command line --------------------------------------------------------------------


def role_settings(tmp_path: Path, *argv: str) -> dict[str, Any]:
    anchors = tmp_path / "roots.pem"
    anchors.write_bytes(certfactory.pem(PKI.root))
    return options.role_settings(options.build_parser().parse_args([
        "--server", "https://ca.test:8443/dir", "--trust-anchors", str(anchors),
        "-f", str(tmp_path / "account.pem"), "-k", str(tmp_path / "keys" / "domain.pem"),
        "-c", str(tmp_path / "certs"), "-C", str(tmp_path / "challenges"),
        *argv, *NAMES,
    ]))  # fmt: skip


def test_revoke_with_domain_key_reaches_keyproc_netproc_and_acctproc(tmp_path: Path) -> None:
    settings = role_settings(
        tmp_path, "-r", "-n", "--revoke-with", "domain-key", "--revoke-reason", "cACompromise"
    )
    key, net, account = settings["keyproc"], settings["netproc"], settings["acctproc"]
    assert isinstance(key, KeyprocSettings) and isinstance(net, NetprocSettings)
    assert (key.revoke_with_domain_key, key.ca_origin, key.revoke_reason) == (
        True, "https://ca.test:8443", 2)  # fmt: skip
    assert (net.revoke_with_domain_key, net.revoke_reason) == (True, 2)
    assert isinstance(account, AcctprocSettings)
    # No account key is read, nor (-n) made.
    assert account.idle and not account.create


def test_revoke_with_account_is_the_default(tmp_path: Path) -> None:
    for argv in (("-r",), ("-r", "--revoke-with", "account")):
        settings = role_settings(tmp_path, *argv)
        assert not settings["keyproc"].revoke_with_domain_key
        assert settings["keyproc"].ca_origin is None
        assert not settings["netproc"].revoke_with_domain_key
        assert not settings["acctproc"].idle


def test_revoke_with_goes_with_r(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^--revoke-with goes with -r$"):
        role_settings(tmp_path, "--revoke-with", "domain-key")


@pytest.mark.parametrize("name", ["aACompromise", "removeFromCRL", "privilegeWithdrawn"])
def test_every_rfc5280_reason_is_taken(tmp_path: Path, name: str) -> None:
    settings = role_settings(tmp_path, "-r", "--revoke-reason", name)
    assert settings["netproc"].revoke_reason == REVOCATION_REASONS[name]


# --- the ACME client ---------------------------------------------------------------------


def test_a_revocation_with_the_certificate_key_needs_no_account() -> None:
    client, _transport, account_signer, _sleeps, _lines = scripted(response(200), response(200))
    client.kid = None
    certificate_key = RecordingSigner()
    assert client.revoke(b"der", 4, certificate_key=certificate_key) is True
    assert account_signer.calls == []
    ((url, _nonce, kid, payload),) = certificate_key.calls
    assert (url, kid) == (f"{BASE}/revoke", None)
    assert json.loads(payload) == {"certificate": b64url(b"der"), "reason": 4}


def test_a_bad_nonce_asks_the_certificate_key_again() -> None:
    bad_nonce = {"type": "urn:ietf:params:acme:error:badNonce", "detail": "stale"}
    client, *_ = scripted(response(200), response(400, bad_nonce), response(200))
    certificate_key = RecordingSigner()
    assert client.revoke(b"der", None, certificate_key=certificate_key) is True
    assert len(certificate_key.calls) == 2


def test_already_revoked_by_the_certificate_key_is_the_end_asked_for() -> None:
    already = {"type": "urn:ietf:params:acme:error:alreadyRevoked", "detail": "revoked"}
    client, *_ = scripted(response(200), response(400, already))
    assert client.revoke(b"der", certificate_key=RecordingSigner()) is False


def test_a_reason_the_ca_refuses_is_one_line_naming_it() -> None:
    refused = {"type": "urn:ietf:params:acme:error:badRevocationReason", "detail": "not 2"}
    client, *_ = scripted(response(200), response(400, refused))
    with pytest.raises(AcmeError) as info:
        client.revoke(b"der", 2, certificate_key=RecordingSigner())
    message = str(info.value)
    assert message.startswith(
        "the CA does not accept the revocation reason cACompromise (2) (badRevocationReason): "
    )
    assert "not 2" in message and "\n" not in message


# --- netproc's side ----------------------------------------------------------------------


class KeyprocStub:
    """keyproc's DomainKey as netproc calls it, served by a real DomainKeyService."""

    def __init__(self, domain_key: DomainKeyService, tamper: bool = False) -> None:
        self.domain_key = domain_key
        self.tamper = tamper
        self.requests: list[domainkey_pb2.SignRevocationRequest] = []

    def SignRevocation(
        self, request: domainkey_pb2.SignRevocationRequest, **_options: Any
    ) -> domainkey_pb2.SignRevocationReply:
        self.requests.append(request)
        reply = self.domain_key.SignRevocation(request, FakeContext())
        if self.tamper:
            reply.payload = b64url(b'{"certificate":"AAAA"}')
        return reply


def revocation_payload(reason: int | None) -> bytes:
    document: dict[str, Any] = {"certificate": b64url(OURS)}
    if reason is not None:
        document["reason"] = reason
    return json.dumps(document, separators=(",", ":")).encode()


def test_netproc_sends_keyprocs_signature_of_the_same_payload() -> None:
    stub = KeyprocStub(service(keyproc_settings(revoke_reason=None)))
    signer = RemoteRevocationSigner(stub, OURS, None)  # type: ignore[arg-type]
    jws = signer.sign(URL, NONCE, None, revocation_payload(None))
    assert jws["payload"] == b64url(revocation_payload(None))
    (request,) = stub.requests
    assert not request.HasField("reason")
    assert (request.url, request.nonce, request.certificate_der) == (URL, NONCE, OURS)


def test_netproc_refuses_a_signature_of_another_payload() -> None:
    stub = KeyprocStub(service(), tamper=True)
    signer = RemoteRevocationSigner(stub, OURS, SUPERSEDED)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="keyproc signed another revocation"):
        signer.sign(URL, NONCE, None, revocation_payload(SUPERSEDED))
    # Nor does it ask keyproc for anything but a revocation with its JWK.
    with pytest.raises(InputError, match="signs only the revocation"):
        signer.sign(URL, NONCE, "https://ca.test/acct/1", revocation_payload(SUPERSEDED))
