"""acctproc signs only what the run asked for: the classifier, the policy, the
audit log and the settings that feed them (see roles/acctproc.py)."""

import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from letskencrypt import container, keys, options, rpc
from letskencrypt.b64 import b64url, b64url_decode
from letskencrypt.context import Logger
from letskencrypt.errors import InputError
from letskencrypt.roles import acctproc
from letskencrypt.roles.acctproc import (
    AccountService,
    AuditLog,
    ExternalAccountBinding,
    KeyprocDomainKey,
    Refused,
    Request,
    RunPolicy,
    classify,
)
from letskencrypt.roles.keyproc import KeyInfoService
from letskencrypt.settings import (
    AcctprocSettings,
    NetprocSettings,
    RoleSettings,
    decode,
    encode,
)
from letskencrypt.v1 import account_pb2, keyinfo_pb2, keyinfo_pb2_grpc

from tests import certfactory

DIRECTORY = "https://ca.test/dir"
KID = "https://ca.test/acct/1"
NONCE = "bm9uY2U"
NAMES = ["a.example.org", "b.example.org"]
CONTACT = ["mailto:admin@example.org"]
ACCOUNT_KEY = keys.generate_key("ecdsa256")
DOMAIN_KEY = keys.generate_key("ecdsa256")
OTHER_KEY = keys.generate_key("ecdsa256")
RSA_KEY = keys.generate_key("rsa2048")


DOMAIN_KEY_DER = keys.public_key_der(DOMAIN_KEY)


def keyproc_says(der: bytes = DOMAIN_KEY_DER) -> Callable[[], bytes]:
    """What keyproc answers on the keyacct edge (its public key), as a source."""
    return lambda: der


EAB_KID = "kid-1"
EAB_HMAC_KEY = bytes(range(32))
BINDING = ExternalAccountBinding(EAB_KID, EAB_HMAC_KEY)
NEW_ACCOUNT_URL = "https://ca.test/new-acct"
REGISTRATION = {"termsOfServiceAgreed": True, "contact": CONTACT}


def policy(
    operation: str = "issue",
    names: list[str] = NAMES,
    domain_key: Callable[[], bytes] | None = None,
    contact: list[str] = CONTACT,
    *,
    binding: ExternalAccountBinding | None = None,
    profile: str | None = None,
    new_key_path: str | None = None,
) -> RunPolicy:
    settings = AcctprocSettings(
        key_path="/nonexistent/account.pem",
        key_type="ecdsa256",
        audit_log="/nonexistent/audit.log",
        operation=operation,
        names=tuple(names),
        contact=tuple(contact),
        directory_url=DIRECTORY,
        eab_kid=None if binding is None else binding.kid,
        eab_hmac_key=None if binding is None else "/nonexistent/eab.key",
        profile=profile,
        new_key_path=new_key_path,
    )
    return RunPolicy.from_settings(settings, ACCOUNT_KEY, domain_key or keyproc_says(), binding)


def request(
    payload: Any = None,
    *,
    kid: str = KID,
    url: str = "https://ca.test/some/where",
    nonce: str = NONCE,
    post_as_get: bool | None = None,
    eab: bool = False,
) -> Request:
    """payload: None (POST-as-GET), bytes (as they are) or a JSON document;
    eab: netproc asks for this run's external account binding."""
    if post_as_get is None:
        post_as_get = payload is None
    if payload is None:
        raw = b""
    elif isinstance(payload, bytes):
        raw = payload
    else:
        raw = json.dumps(payload).encode()
    return Request(url=url, nonce=nonce, kid=kid, payload=raw, post_as_get=post_as_get,
                   external_account_binding=eab)  # fmt: skip


def order(*names: str, kind: str = "dns") -> dict[str, Any]:
    return {"identifiers": [{"type": kind, "value": name} for name in names]}


def csr(
    names: list[str] = NAMES,
    key: ec.EllipticCurvePrivateKey = DOMAIN_KEY,
    *,
    extra_san: list[x509.GeneralName] | None = None,
    extension: x509.ExtensionType | None = None,
    subject: list[x509.NameAttribute] | None = None,
) -> bytes:
    if subject is None:
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, names[0])]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    general: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    builder = builder.add_extension(
        x509.SubjectAlternativeName(general + (extra_san or [])), critical=False
    )
    if extension is not None:
        builder = builder.add_extension(extension, critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def finalize(der: bytes) -> dict[str, str]:
    return {"csr": b64url(der)}


def certificate_der(names: list[str | x509.GeneralName]) -> bytes:
    pki = certfactory.make_pki()
    return pki.leaf(names).public_bytes(serialization.Encoding.DER)


def revocation(names: list[str | x509.GeneralName] = NAMES, **extra: Any) -> dict[str, Any]:
    return {"certificate": b64url(certificate_der(names)), **extra}


def key_change(
    *, account: str = KID, old: dict[str, str] | None = None, url: str = "https://ca.test/kc",
    new_key: ec.EllipticCurvePrivateKey = OTHER_KEY,
) -> dict[str, str]:
    inner = {"account": account, "oldKey": old or keys.jwk(ACCOUNT_KEY.public_key())}
    header = {"jwk": keys.jwk(new_key.public_key()), "url": url}
    return keys.sign_jws(new_key, header, json.dumps(inner).encode())


def judge(p: RunPolicy, r: Request) -> str:
    return p.judge(r)


def refused(p: RunPolicy, r: Request, kind: str, reason: str) -> None:
    with pytest.raises(Refused, match=reason) as info:
        p.judge(r)
    assert info.value.kind == kind
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"refused to sign {kind}: ")


# --- the classifier -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "has_kid", "kind"),
    [
        (None, True, "post-as-get"),
        ({}, True, "challenge"),
        ({"onlyReturnExisting": True}, False, "newAccount"),
        ({"termsOfServiceAgreed": True, "contact": CONTACT}, False, "newAccount"),
        ({"termsOfServiceAgreed": True}, True, "accountUpdate"),
        ({"contact": CONTACT}, True, "accountUpdate"),
        ({"contact": CONTACT}, False, "accountUpdate"),
        ({"externalAccountBinding": {}}, False, "newAccount"),
        (order(*NAMES), True, "newOrder"),
        ({"csr": "x"}, True, "finalize"),
        ({"certificate": "x", "reason": 1}, True, "revokeCert"),
        ({"status": "deactivated"}, True, "deactivate"),
        ({"protected": "a", "payload": "b", "signature": "c"}, True, "keyChange"),
        ({"payload": "b"}, True, "keyChange"),
        ({"hello": "world"}, True, "unknown"),
    ],
)
def test_classify(document: dict[str, Any] | None, has_kid: bool, kind: str) -> None:
    assert classify(document, has_kid) == kind


def test_every_kind_has_a_policy_row() -> None:
    assert set(acctproc.POLICY) == {
        "post-as-get", "newAccount", "newOrder", "challenge", "finalize",
        "revokeCert", "accountUpdate", "deactivate", "authzDeactivate", "keyChange",
    }  # fmt: skip
    issue = {kind for kind, ops in acctproc.POLICY.items() if "issue" in ops}
    revoke = {kind for kind, ops in acctproc.POLICY.items() if "revoke" in ops}
    assert issue == {
        "post-as-get", "newAccount", "newOrder", "challenge", "finalize", "accountUpdate",
        "authzDeactivate",
    }  # fmt: skip
    assert revoke == {"post-as-get", "newAccount", "revokeCert", "accountUpdate"}


# --- an issue run: what it signs ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "req", "kind"),
    [
        ("post-as-get", request(None), "post-as-get"),
        ("lookup", request({"onlyReturnExisting": True}, kid=""), "newAccount"),
        ("register", request({"termsOfServiceAgreed": True, "contact": CONTACT}, kid=""),
         "newAccount"),
        ("register-no-contact", request({"termsOfServiceAgreed": True}, kid=""), "newAccount"),
        ("order", request(order(*NAMES)), "newOrder"),
        ("order-other-order", request(order(*reversed(NAMES))), "newOrder"),
        ("order-with-dates", request({**order(*NAMES), "notBefore": "2026-01-01T00:00:00Z",
                                      "notAfter": "2026-02-01T00:00:00Z"}), "newOrder"),
        ("challenge", request({}), "challenge"),
        ("finalize", request(finalize(keys.build_csr(DOMAIN_KEY, NAMES))), "finalize"),
        ("kid-with-port", request(None, kid="https://ca.test:443/acct/1"), "post-as-get"),
    ],
)
def test_issue_run_signs(name: str, req: Request, kind: str) -> None:
    assert judge(policy("issue"), req) == kind


# --- IP addresses (RFC 8738) --------------------------------------------------------

IP_NAMES = ["a.example.org", "192.0.2.1", "2001:db8::1"]


def ip(text: str) -> x509.IPAddress:
    return x509.IPAddress(ipaddress.ip_address(text))


def ip_order(*identifiers: tuple[str, str]) -> dict[str, Any]:
    return {"identifiers": [{"type": kind, "value": value} for kind, value in identifiers]}


def ip_csr(
    sans: list[x509.GeneralName] | None = None, common_name: str | None = "a.example.org"
) -> bytes:
    sans = sans or [x509.DNSName("a.example.org"), ip("192.0.2.1"), ip("2001:db8::1")]
    subject = [] if common_name is None else [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    return csr([], extra_san=sans, subject=subject)


def test_a_run_with_addresses_signs_their_order_and_csr() -> None:
    p = policy("issue", names=IP_NAMES)
    identifiers = [("dns", "a.example.org"), ("ip", "192.0.2.1"), ("ip", "2001:db8::1")]
    assert judge(p, request(ip_order(*identifiers))) == "newOrder"
    assert judge(p, request(ip_order(*reversed(identifiers)))) == "newOrder"
    assert judge(p, request(finalize(keys.build_csr(DOMAIN_KEY, IP_NAMES)))) == "finalize"
    assert judge(p, request(finalize(ip_csr()))) == "finalize"
    assert judge(p, request(finalize(ip_csr(common_name=None)))) == "finalize"
    only = policy("issue", names=["::1"])
    assert judge(only, request(ip_order(("ip", "::1")))) == "newOrder"
    assert judge(only, request(finalize(keys.build_csr(DOMAIN_KEY, ["::1"])))) == "finalize"


@pytest.mark.parametrize(
    ("payload", "kind", "reason"),
    [
        # The type must be the name's: never an address as a DNS name, nor
        # a domain name as an address.
        (ip_order(("dns", "a.example.org"), ("dns", "192.0.2.1"), ("ip", "2001:db8::1")),
         "newOrder", "identifier '192.0.2.1' is an IP address, not of type 'dns'"),
        (ip_order(("ip", "a.example.org"), ("ip", "192.0.2.1"), ("ip", "2001:db8::1")),
         "newOrder", "identifier 'a.example.org' is no IP address, not of type 'ip'"),
        # Addresses as this run writes them, and no other.
        (ip_order(("dns", "a.example.org"), ("ip", "192.0.2.1"), ("ip", "2001:DB8::1")),
         "newOrder", "not this run's names"),
        (ip_order(("dns", "a.example.org"), ("ip", "192.0.2.1"), ("ip", "2001:db8:0::1")),
         "newOrder", "not this run's names"),
        (ip_order(("dns", "a.example.org"), ("ip", "192.0.2.1"), ("ip", "::ffff:192.0.2.1")),
         "newOrder", "not this run's names"),
        (ip_order(("dns", "a.example.org"), ("ip", "192.0.2.1")),
         "newOrder", "not this run's names"),
        (ip_order(("dns", "a.example.org"), ("ip", "192.0.2.1"), ("ip", "2001:db8::1"),
                  ("ip", "192.0.2.2")), "newOrder", "not this run's names"),
        (finalize(ip_csr([x509.DNSName("a.example.org"), x509.DNSName("192.0.2.1"),
                          ip("2001:db8::1")])),
         "finalize", "csr asks for the IP address '192.0.2.1' as a DNS name"),
        (finalize(ip_csr([x509.DNSName("a.example.org"), ip("192.0.2.1")])),
         "finalize", "not this run's names"),
        (finalize(ip_csr([x509.DNSName("a.example.org"), ip("192.0.2.1"), ip("2001:db8::1"),
                          ip("192.0.2.2")])), "finalize", "not this run's names"),
        (finalize(ip_csr(common_name="192.0.2.1")), "finalize",
         "csr subject names an IP address"),
    ],
)
def test_a_run_with_addresses_refuses(payload: dict[str, Any], kind: str, reason: str) -> None:
    refused(policy("issue", names=IP_NAMES), request(payload), kind, re.escape(reason))


def test_a_revoke_run_with_addresses_signs_only_their_certificate() -> None:
    p = policy("revoke", names=IP_NAMES)
    good = [ip("2001:db8::1"), "a.example.org", ip("192.0.2.1")]
    assert judge(p, request(revocation(good))) == "revokeCert"
    for bad in (
        ["a.example.org", "192.0.2.1", ip("2001:db8::1")],  # an address as a dNSName
        ["a.example.org", ip("192.0.2.1")],
    ):
        refused(p, request(revocation(bad)), "revokeCert", "not this run's names")


# --- an issue run: what it refuses -------------------------------------------------

BAD_SIGNATURE_CSR = bytearray(csr())
BAD_SIGNATURE_CSR[-1] ^= 0x01

ISSUE_REFUSALS = [
    # (id, request, kind, reason)
    ("revoke-in-issue-run", request(revocation()), "revokeCert", "not part of this run"),
    ("key-change", request(key_change()), "keyChange", "not part of this run"),
    ("deactivate-account", request({"status": "deactivated"}, url=KID), "deactivate",
     "not part of this run"),
    # The one account update an issue run signs is {"contact": --contact} to
    # the account URL (test_a_run_sets_its_own_contact_only).
    ("update-contact", request({"contact": ["mailto:evil@example.net"]}, url=KID),
     "accountUpdate", "contact differs"),
    ("update-contact-added", request({"contact": [*CONTACT, "mailto:evil@example.net"]},
                                     url=KID), "accountUpdate", "contact differs"),
    ("update-contact-cleared", request({"contact": []}, url=KID), "accountUpdate",
     "contact differs"),
    ("update-contact-not-list", request({"contact": CONTACT[0]}, url=KID), "accountUpdate",
     "contact differs"),
    ("update-contact-elsewhere", request({"contact": CONTACT}, url="https://ca.test/acct/2"),
     "accountUpdate", "posted to the account URL"),
    ("update-contact-and-terms", request({"contact": CONTACT, "termsOfServiceAgreed": True},
                                         url=KID), "accountUpdate", "exactly"),
    ("update-contact-without-kid", request({"contact": CONTACT}, url=KID, kid=""),
     "accountUpdate", "needs the account URL"),
    ("agree-new-terms", request({"termsOfServiceAgreed": True}, url=KID), "accountUpdate",
     "exactly"),
    ("unknown-fields", request({"hello": "world"}), "unknown", "not an ACME request"),
    ("order-other-names", request(order("evil.example.net")), "newOrder",
     "not this run's names"),
    ("order-subset", request(order(NAMES[0])), "newOrder", "not this run's names"),
    ("order-superset", request(order(*NAMES, "evil.example.net")), "newOrder",
     "not this run's names"),
    ("order-duplicate", request(order(*NAMES, NAMES[0])), "newOrder", "not this run's names"),
    ("order-upper-case", request(order(*(n.upper() for n in NAMES))), "newOrder",
     "not this run's names"),
    ("order-ip", request(order(*NAMES, "192.0.2.1", kind="ip")), "newOrder",
     "'a.example.org' is no IP address, not of type 'ip'"),
    ("order-email", request(order(*NAMES, "me@example.org", kind="email")), "newOrder",
     "type 'email' is not dns or ip"),
    ("order-extra-identifier-field",
     request({"identifiers": [{"type": "dns", "value": n, "x": 1} for n in NAMES]}),
     "newOrder", "exactly"),
    # (replaces is RFC 9773's, see test_ari)
    ("order-extra-field", request({**order(*NAMES), "replacing": "abc"}), "newOrder",
     "unexpected field 'replacing'"),
    ("order-empty", request({"identifiers": []}), "newOrder", "not a list"),
    ("order-not-list", request({"identifiers": "a.example.org"}), "newOrder", "not a list"),
    ("order-bad-date", request({**order(*NAMES), "notAfter": 5}), "newOrder", "timestamp"),
    ("order-without-kid", request(order(*NAMES), kid=""), "newOrder", "needs the account URL"),
    ("finalize-other-names", request(finalize(csr(["evil.example.net"]))), "finalize",
     "not this run's names"),
    ("finalize-subset", request(finalize(csr([NAMES[0]]))), "finalize", "not this run's names"),
    ("finalize-extra-ip",
     request(finalize(csr(extra_san=[x509.IPAddress(ipaddress.ip_address("192.0.2.1"))]))),
     "finalize", "not this run's names"),
    ("finalize-extra-uri",
     request(finalize(csr(extra_san=[x509.UniformResourceIdentifier("https://a.example.org/")]))),
     "finalize", "other than DNS names and IP addresses"),
    ("finalize-account-key", request(finalize(csr(key=ACCOUNT_KEY))), "finalize",
     "account key"),
    # Issue 7: netproc's own key, for exactly this run's names.
    ("finalize-other-key", request(finalize(csr(key=OTHER_KEY))), "finalize",
     "csr key is not the domain key held by keyproc"),
    ("finalize-other-key-rsa", request(finalize(keys.build_csr(RSA_KEY, NAMES))), "finalize",
     "csr key is not the domain key held by keyproc"),
    ("finalize-ca-extension",
     request(finalize(csr(extension=x509.BasicConstraints(ca=True, path_length=None)))),
     "finalize", "extension other than subjectAltName"),
    ("finalize-other-subject",
     request(finalize(csr(subject=[x509.NameAttribute(NameOID.COMMON_NAME, "evil.example.net")]))),
     "finalize", "subject"),
    ("finalize-bad-signature", request(finalize(bytes(BAD_SIGNATURE_CSR))), "finalize",
     "signature|not a DER"),
    ("finalize-not-der", request(finalize(b"\x30\x03abc")), "finalize", "not a DER"),
    ("finalize-not-base64url", request({"csr": "a+b/c="}), "finalize", "not base64url"),
    ("finalize-extra-field", request({**finalize(csr()), "x": 1}), "finalize", "exactly"),
    ("new-account-with-kid", request({"onlyReturnExisting": True}), "newAccount",
     "JWK embedded"),
    ("new-account-other-contact",
     request({"termsOfServiceAgreed": True, "contact": ["mailto:evil@example.net"]}, kid=""),
     "newAccount", "contact differs"),
    ("new-account-terms-false", request({"termsOfServiceAgreed": False}, kid=""), "newAccount",
     "must be true"),
    ("new-account-eab", request({"termsOfServiceAgreed": True, "externalAccountBinding": {}},
                                kid=""), "newAccount", "external account binding"),
    ("new-account-asks-for-eab", request(REGISTRATION, kid="", eab=True), "newAccount",
     "this run has no external account binding"),
    ("new-account-terms-text", request({"termsOfServiceAgreed": "true"}, kid=""), "newAccount",
     "must be true"),
    ("new-account-terms-missing", request({"onlyReturnExisting": True, "termsOfServiceAgreed":
                                           False}, kid=""), "newAccount", "exactly"),
    ("order-with-profile", request({**order(*NAMES), "profile": "shortlived"}), "newOrder",
     "this run asks for no profile"),
    ("order-asks-for-eab", request(order(*NAMES), eab=True), "newOrder",
     "only a newAccount carries an external account binding"),
    ("new-account-lookup-one", request({"onlyReturnExisting": 1}, kid=""), "newAccount",
     "exactly"),
    ("new-account-lookup-plus", request({"onlyReturnExisting": True, "contact": CONTACT},
                                        kid=""), "newAccount", "exactly"),
    ("post-as-get-without-kid", request(None, kid=""), "post-as-get", "needs the account URL"),
    ("post-as-get-with-payload", request(b"{}", post_as_get=True), "malformed",
     "empty payload"),
    ("not-json", request(b"not json"), "malformed", "not JSON"),
    ("empty-payload", request(b"", post_as_get=False), "malformed", "not JSON"),
    ("json-array", request(b"[1, 2]"), "malformed", "not a JSON object"),
    ("json-nan", request(b'{"reason": NaN}'), "malformed", "not JSON"),
    ("not-utf8", request(b'{"x": "\xff"}'), "malformed", "not JSON"),
    ("duplicate-keys", request(b'{"identifiers": [], "identifiers": []}'), "malformed",
     "repeats the field 'identifiers'"),
    ("oversized", request(b'{"x": "' + b"a" * (33 * 1024) + b'"}'), "malformed",
     "larger than"),
    ("other-origin", request({}, url="https://evil.test/x"), "challenge", "origin"),
    ("other-port", request({}, url="https://ca.test:8443/x"), "challenge", "origin"),
    ("http", request({}, url="http://ca.test/x"), "challenge", "not https"),
    ("credentials", request({}, url="https://user@ca.test/x"), "challenge", "credentials"),
    ("kid-other-origin", request({}, kid="https://evil.test/acct/1"), "challenge", "origin"),
    ("kid-http", request({}, kid="http://ca.test/acct/1"), "challenge", "not https"),
    ("url-with-space", request({}, url="https://ca.test/a b"), "challenge", "printable"),
    ("url-with-newline", request({}, url="https://ca.test/a\nb"), "challenge", "printable"),
    ("url-too-long", request({}, url="https://ca.test/" + "a" * 2100), "challenge", "longer"),
    ("url-empty", request({}, url=""), "challenge", "empty"),
    ("nonce-bad", request({}, nonce="a b"), "challenge", "nonce"),
    ("nonce-empty", request({}, nonce=""), "challenge", "nonce"),
]


@pytest.mark.parametrize(
    ("req", "kind", "reason"),
    [case[1:] for case in ISSUE_REFUSALS],
    ids=[case[0] for case in ISSUE_REFUSALS],
)
def test_issue_run_refuses(req: Request, kind: str, reason: str) -> None:
    refused(policy("issue"), req, kind, reason)


def test_a_run_sets_its_own_contact_only() -> None:
    """Issue and revoke runs sign {"contact": this run's --contact} posted to
    the account URL (netproc sends it when the CA shows another contact),
    and nothing else of an account update; a run without --contact none."""
    update = request({"contact": CONTACT}, url=KID)
    for operation in ("issue", "revoke"):
        p = policy(operation)
        assert judge(p, update) == "accountUpdate"
        refused(p, request({"contact": list(reversed([*CONTACT, "mailto:b@example.org"]))},
                           url=KID), "accountUpdate", "contact differs")
        refused(p, request({"status": "deactivated"}, url=KID), "deactivate",
                "not part of this run")
        quiet = policy(operation, contact=[])
        refused(quiet, request({"contact": []}, url=KID), "accountUpdate", "no --contact")
        refused(quiet, update, "accountUpdate", "no --contact")
    two = ["mailto:a@example.org", "mailto:b@example.org"]
    p = policy("issue", contact=two)
    assert judge(p, request({"contact": two}, url=KID)) == "accountUpdate"
    refused(p, request({"contact": two[:1]}, url=KID), "accountUpdate", "contact differs")


# --- external account binding (RFC 8555 7.3.4) ----------------------------------------


def bound(p: RunPolicy, req: Request) -> dict[str, Any]:
    """What acctproc signs for `req`, judged first."""
    assert p.judge(req) == "newAccount"
    return json.loads(p.payload_to_sign(req))


def test_a_run_with_eab_signs_its_registration_with_its_own_binding() -> None:
    p = policy(binding=BINDING)
    req = request(REGISTRATION, kid="", url=NEW_ACCOUNT_URL, eab=True)
    signed = bound(p, req)
    binding = signed.pop("externalAccountBinding")
    assert signed == REGISTRATION
    assert set(binding) == {"protected", "payload", "signature"}
    header = json.loads(b64url_decode(binding["protected"]))
    assert header == {"alg": "HS256", "kid": EAB_KID, "url": NEW_ACCOUNT_URL}
    assert json.loads(b64url_decode(binding["payload"])) == keys.jwk(ACCOUNT_KEY.public_key())
    mac = hmac.new(EAB_HMAC_KEY, f"{binding['protected']}.{binding['payload']}".encode(),
                   hashlib.sha256).digest()  # fmt: skip
    assert b64url_decode(binding["signature"]) == mac
    # Without contact, too; and the lookup goes without a binding.
    assert "externalAccountBinding" in bound(
        p, request({"termsOfServiceAgreed": True}, kid="", url=NEW_ACCOUNT_URL, eab=True))
    assert p.judge(request({"onlyReturnExisting": True}, kid="")) == "newAccount"
    assert p.payload_to_sign(request({"onlyReturnExisting": True}, kid="")) == (
        b'{"onlyReturnExisting": true}')


EAB_REFUSALS = [
    ("registration-without-binding", request(REGISTRATION, kid=""), "newAccount",
     "registers its account with its external account binding"),
    ("netprocs-own-binding", request({**REGISTRATION, "externalAccountBinding": BINDING.jws(
        NEW_ACCOUNT_URL, keys.jwk(ACCOUNT_KEY.public_key()))}, kid="", url=NEW_ACCOUNT_URL,
        eab=True), "newAccount", "never taken from netproc"),
    ("netprocs-binding-for-another-key", request({**REGISTRATION, "externalAccountBinding":
        BINDING.jws(NEW_ACCOUNT_URL, keys.jwk(OTHER_KEY.public_key()))}, kid=""), "newAccount",
        "never taken from netproc"),
    ("lookup-with-binding", request({"onlyReturnExisting": True}, kid="", eab=True),
     "newAccount", "a lookup carries no external account binding"),
    # With a kid, a registration's payload is an account update's.
    ("binding-with-kid", request(REGISTRATION, eab=True), "accountUpdate",
     "only a newAccount carries"),
    ("lookup-with-kid-and-binding", request({"onlyReturnExisting": True}, eab=True),
     "newAccount", "JWK embedded"),
    ("binding-on-order", request(order(*NAMES), eab=True), "newOrder",
     "only a newAccount carries"),
    ("binding-on-post-as-get", request(None, eab=True), "post-as-get",
     "only a newAccount carries"),
    ("binding-on-contact-update", request({"contact": CONTACT}, url=KID, eab=True),
     "accountUpdate", "only a newAccount carries"),
    ("binding-other-origin", request(REGISTRATION, kid="", url="https://evil.test/new-acct",
                                     eab=True), "newAccount", "origin"),
    ("binding-terms-false", request({"termsOfServiceAgreed": False}, kid="", eab=True),
     "newAccount", "must be true"),
    ("binding-other-contact", request({"termsOfServiceAgreed": True, "contact": [
        "mailto:evil@example.net"]}, kid="", eab=True), "newAccount", "contact differs"),
]


@pytest.mark.parametrize(
    ("req", "kind", "reason"),
    [case[1:] for case in EAB_REFUSALS],
    ids=[case[0] for case in EAB_REFUSALS],
)
def test_a_run_with_eab_refuses(req: Request, kind: str, reason: str) -> None:
    refused(policy(binding=BINDING), req, kind, reason)


def test_a_revoke_run_with_eab_registers_with_it_too() -> None:
    p = policy("revoke", binding=BINDING)
    assert "externalAccountBinding" in bound(p, request(REGISTRATION, kid="", eab=True))
    refused(p, request(order(*NAMES), eab=True), "newOrder", "not part of this run")


@pytest.mark.parametrize(("text", "key"), [
    (b64url(EAB_HMAC_KEY), EAB_HMAC_KEY),
    (b64url(EAB_HMAC_KEY) + "\n", EAB_HMAC_KEY),
    ("  " + base64.urlsafe_b64encode(bytes(33)).decode() + "\r\n", bytes(33)),
    (base64.urlsafe_b64encode(b"\xfb" * 20).decode(), b"\xfb" * 20),
])
def test_the_hmac_key_file(tmp_path: Path, text: str, key: bytes) -> None:
    path = tmp_path / "eab.key"
    path.write_text(text)
    binding = ExternalAccountBinding.read("k", str(path))
    assert (binding.kid, binding.hmac_key) == ("k", key)
    assert b64url(key) not in repr(binding)


@pytest.mark.parametrize(("content", "message"), [
    (b"", "too short"),
    (b64url(bytes(15)).encode(), "15 bytes, too short"),
    (base64.b64encode(b"\xfb" * 20), "not base64url"),
    (b"not base64url!", "not base64url"),
    (b"\xff\xfe", "not base64url"),
    (b"a" * 2000, "larger than 1024 bytes"),
    (b64url(bytes(32)).encode() + b"\n" + b64url(bytes(32)).encode(), "not base64url"),
])
def test_an_hmac_key_file_that_is_no_key(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "eab.key"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        ExternalAccountBinding.read("k", str(path))
    assert str(info.value).startswith(f"EAB HMAC key {path}: ")
    assert "\n" not in str(info.value)


def test_an_hmac_key_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No such file"):
        ExternalAccountBinding.read("k", str(tmp_path / "missing"))
    with pytest.raises(InputError, match="not a regular file"):
        ExternalAccountBinding.read("k", str(tmp_path))


def test_the_binding_must_be_the_settings_own() -> None:
    settings = AcctprocSettings(key_path="/k", audit_log="/a", operation="issue",
                                names=tuple(NAMES), directory_url=DIRECTORY)  # fmt: skip
    with pytest.raises(InputError, match="not this run's"):
        RunPolicy.from_settings(settings, ACCOUNT_KEY, keyproc_says(), BINDING)
    with_eab = AcctprocSettings(key_path="/k", audit_log="/a", operation="issue",
                                names=tuple(NAMES), directory_url=DIRECTORY,
                                eab_kid="other", eab_hmac_key="/e")  # fmt: skip
    for binding in (None, BINDING):
        with pytest.raises(InputError, match="not this run's"):
            RunPolicy.from_settings(with_eab, ACCOUNT_KEY, keyproc_says(), binding)
    with pytest.raises(InputError, match="go together"):
        AcctprocSettings(key_path="/k", audit_log="/a", operation="issue", names=tuple(NAMES),
                         directory_url=DIRECTORY, eab_kid="k")  # fmt: skip


# --- certificate profiles --------------------------------------------------------------


def test_a_run_with_a_profile_orders_that_profile_only() -> None:
    p = policy(profile="shortlived")
    assert judge(p, request({**order(*NAMES), "profile": "shortlived"})) == "newOrder"
    refused(p, request({**order(*NAMES), "profile": "default"}), "newOrder",
            "profile 'default' is not this run's profile 'shortlived'")
    refused(p, request({**order(*NAMES), "profile": "Shortlived"}), "newOrder",
            "is not this run's profile")
    refused(p, request({**order(*NAMES), "profile": ["shortlived"]}), "newOrder",
            r"profile '\(not text\)'")
    refused(p, request({**order(*NAMES), "profile": None}), "newOrder",
            "must ask for this run's profile 'shortlived'")
    refused(p, request(order(*NAMES)), "newOrder", "must ask for this run's profile")
    refused(p, request({**order("evil.example.net"), "profile": "shortlived"}), "newOrder",
            "not this run's names")
    # The profile goes in the order, nowhere else.
    refused(p, request({**finalize(csr()), "profile": "shortlived"}), "finalize", "exactly")
    refused(policy("revoke", profile="shortlived"),
            request({**order(*NAMES), "profile": "shortlived"}), "newOrder",
            "not part of this run")


# --- a revocation run -------------------------------------------------------------------


def test_revoke_run_signs_the_lookup_and_the_revocation() -> None:
    p = policy("revoke")
    assert judge(p, request({"onlyReturnExisting": True}, kid="")) == "newAccount"
    assert judge(p, request(None)) == "post-as-get"
    assert judge(p, request(revocation())) == "revokeCert"
    assert judge(p, request(revocation(reason=4))) == "revokeCert"
    assert judge(p, request(revocation(list(reversed(NAMES)), reason=0))) == "revokeCert"


REVOKE_REFUSALS = [
    ("order", request(order(*NAMES)), "newOrder", "not part of this run"),
    ("challenge", request({}), "challenge", "not part of this run"),
    ("finalize", request(finalize(csr())), "finalize", "not part of this run"),
    ("other-names", request(revocation(["evil.example.net"])), "revokeCert",
     "not this run's names"),
    ("reason-7", request(revocation(reason=7)), "revokeCert", "revocation reason"),
    ("reason-bool", request(revocation(reason=True)), "revokeCert", "revocation reason"),
    ("reason-string", request(revocation(reason="4")), "revokeCert", "revocation reason"),
    ("extra-field", request(revocation(x=1)), "revokeCert", "unexpected field"),
    ("not-a-certificate", request({"certificate": b64url(b"\x30\x00")}), "revokeCert",
     "not a DER certificate"),
    ("key-change", request(key_change()), "keyChange", "not part of this run"),
    ("deactivate", request({"status": "deactivated"}, url=KID), "deactivate",
     "not part of this run"),
]


@pytest.mark.parametrize(
    ("req", "kind", "reason"),
    [case[1:] for case in REVOKE_REFUSALS],
    ids=[case[0] for case in REVOKE_REFUSALS],
)
def test_revoke_run_refuses(req: Request, kind: str, reason: str) -> None:
    refused(policy("revoke"), req, kind, reason)


# --- the operations that have no command line yet ------------------------------------


def test_rollover_run() -> None:
    """A key change's inner JWS is acctproc's own (AccountService.sign_key_change):
    one that netproc built is refused, in a rollover run as in any other."""
    p = policy("rollover", new_key_path="/nonexistent/new.pem")
    url = "https://ca.test/kc"
    refused(p, request(key_change(url=url), url=url), "keyChange", "built by acctproc")
    refused(p, request({"protected": 1, "payload": "", "signature": ""}, url=url), "keyChange",
            "built by acctproc")
    refused(p, request(order(*NAMES)), "newOrder", "not part of this run")
    refused(p, request({"status": "deactivated"}, url=KID), "deactivate", "not part of this run")
    assert judge(p, request({"onlyReturnExisting": True}, kid="")) == "newAccount"


def test_deactivate_run() -> None:
    p = policy("deactivate")
    assert judge(p, request({"status": "deactivated"}, url=KID)) == "deactivate"
    # An authorization is deactivated the same way, at its own URL: not this run.
    refused(p, request({"status": "deactivated"}, url="https://ca.test/authz/1"),
            "authzDeactivate", "not part of this run")
    refused(p, request({"status": "valid"}, url=KID), "deactivate", "deactivated")
    refused(p, request({"contact": CONTACT}, url=KID), "accountUpdate", "not part of this run")


def test_a_failed_issue_run_may_give_up_its_authorizations() -> None:
    """RFC 8555 7.5.2: {"status": "deactivated"} at an authorization's URL, in
    an issue run only, on the CA's origin, and nothing else in the payload."""
    authz = "https://ca.test/authz/1"
    assert judge(policy("issue"), request({"status": "deactivated"}, url=authz)) == (
        "authzDeactivate"
    )
    for operation in ("revoke", "deactivate", "update-account", "persist-record"):
        refused(policy(operation), request({"status": "deactivated"}, url=authz),
                "authzDeactivate", "not part of this run")  # fmt: skip
    p = policy("issue")
    refused(p, request({"status": "valid"}, url=authz), "authzDeactivate", "deactivated")
    refused(p, request({"status": "deactivated", "x": 1}, url=authz), "authzDeactivate",
            "deactivated")
    refused(p, request({"status": "deactivated"}, url="https://evil.test/authz/1"),
            "authzDeactivate", "origin")
    # The account itself stays out of an issue run's reach.
    refused(p, request({"status": "deactivated"}, url=KID), "deactivate", "not part of this run")


def test_update_account_run() -> None:
    p = policy("update-account")
    assert judge(p, request({"contact": CONTACT}, url=KID)) == "accountUpdate"
    assert judge(p, request({"termsOfServiceAgreed": True}, url=KID)) == "accountUpdate"
    refused(p, request({"contact": CONTACT}, url="https://ca.test/acct/2"), "accountUpdate",
            "account URL")
    refused(p, request({"contact": ["mailto:evil@example.net"]}, url=KID), "accountUpdate",
            "contact differs")
    refused(p, request({"contact": CONTACT, "status": "deactivated"}, url=KID), "deactivate",
            "not part of this run")
    refused(p, request({"contact": CONTACT}, kid=""), "accountUpdate", "needs the account URL")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"operation": "steal", "names": NAMES}, "operation must be one of issue, revoke, "),
        ({"names": NAMES}, "AcctprocSettings.operation is missing"),
        ({"operation": "issue"}, "AcctprocSettings.names is missing"),
        ({"operation": "issue", "names": []}, "no names"),
        ({"operation": "issue", "names": ["a.example.org", ""]}, "no names"),
        ({"operation": "issue", "names": NAMES, "contact": "mailto:x@example.org"},
         "AcctprocSettings.contact is not a list"),
        ({"operation": "issue", "names": NAMES, "contact": [7]},
         r"AcctprocSettings.contact\[\] is not text"),
        ({"operation": "issue", "names": NAMES, "extra": 1},
         "unknown field AcctprocSettings.extra"),
    ],
)
def test_policy_needs_its_settings(settings: dict[str, Any], message: str) -> None:
    """What acctproc is told on its stdin, decoded as process.read_config does."""
    document = {
        "directory_url": DIRECTORY,
        "key_path": "/nonexistent/account.pem",
        "key_type": "ecdsa256",
        "audit_log": "/nonexistent/audit.log",
        **settings,
    }
    with pytest.raises(InputError, match=message):
        decoded = decode(AcctprocSettings, document)
        RunPolicy.from_settings(decoded, ACCOUNT_KEY, keyproc_says())


# --- the domain key: keyproc's word, not netproc's (issue 7) -------------------------


class Unreachable:
    """A domain key source whose keyproc does not answer; counts the attempts."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        raise rpc.RpcError("keyproc is not reachable (did it exit?)")


def test_finalize_for_our_names_with_another_key_is_refused() -> None:
    """netproc's own key in a CSR for exactly this run's names: no signature."""
    p = policy("issue")
    for key in (OTHER_KEY, RSA_KEY):
        refused(p, request(finalize(keys.build_csr(key, NAMES))), "finalize",
                "csr key is not the domain key held by keyproc")
    assert judge(p, request(finalize(keys.build_csr(DOMAIN_KEY, NAMES)))) == "finalize"
    # Whatever keyproc says is the key, that one and only that one is signed.
    q = policy("issue", domain_key=keyproc_says(keys.public_key_der(OTHER_KEY)))
    assert judge(q, request(finalize(keys.build_csr(OTHER_KEY, NAMES)))) == "finalize"
    refused(q, request(finalize(keys.build_csr(DOMAIN_KEY, NAMES))), "finalize",
            "not the domain key")


def test_finalize_is_refused_when_keyproc_cannot_be_reached() -> None:
    source = Unreachable()
    p = policy("issue", domain_key=source)
    refused(p, request(finalize(keys.build_csr(DOMAIN_KEY, NAMES))), "finalize",
            "cannot learn the domain key from keyproc: keyproc is not reachable")
    assert source.calls == 1
    # Nothing else of the run needs keyproc.
    assert judge(p, request(order(*NAMES))) == "newOrder"
    assert judge(p, request(None)) == "post-as-get"
    # keyproc is asked only about a CSR that passed every other check.
    refused(p, request(finalize(csr(["evil.example.net"]))), "finalize", "not this run's names")
    refused(p, request(finalize(csr(key=ACCOUNT_KEY))), "finalize", "account key")
    assert source.calls == 1


def test_a_refusal_for_want_of_keyproc_is_audited(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    service = AccountService(
        ACCOUNT_KEY, policy("issue", domain_key=Unreachable()),
        AuditLog.open(str(path), str(tmp_path / "k")), Logger("acctproc", 0),
    )
    payload = json.dumps(finalize(keys.build_csr(DOMAIN_KEY, NAMES))).encode()
    context = FakeContext()
    with pytest.raises(Aborted):
        service.Sign(account_pb2.SignRequest(url="https://ca.test/finalize/1", nonce=NONCE,
                                             kid=KID, payload=payload), context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    (entry,) = read_lines(path)
    assert (entry["kind"], entry["decision"]) == ("finalize", "refused")
    assert entry["reason"].startswith("cannot learn the domain key from keyproc")
    assert entry["payload_sha256"] == hashlib.sha256(payload).hexdigest()


class CountingKeyInfo(KeyInfoService):
    """keyproc's own KeyInfo service, counting the calls."""

    def __init__(self, public_key_der: bytes, names: list[str]) -> None:
        super().__init__(public_key_der, names, Logger("keyproc", 0))
        self.calls = 0

    def Describe(
        self, request: keyinfo_pb2.KeyInfoRequest, context: grpc.ServicerContext
    ) -> keyinfo_pb2.KeyInfoReply:
        self.calls += 1
        return super().Describe(request, context)


@pytest.fixture
def run_dir() -> Iterator[str]:
    """Short, for the 107 bytes of a unix socket path."""
    path = tempfile.mkdtemp(prefix="lk-keyacct-")
    os.mkdir(os.path.join(path, "keyacct"), 0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def keyproc_on(run_dir: str, service: KeyInfoService) -> grpc.Server:
    register = keyinfo_pb2_grpc.add_KeyInfoServicer_to_server
    return rpc.serve(run_dir, "keyacct", [(register, service)], rpc.Stopper())


def from_keyproc(run_dir: str, timeout: float = 5.0) -> KeyprocDomainKey:
    return KeyprocDomainKey(
        lambda: rpc.connect(run_dir, "keyacct"), NAMES, keys.public_key_der(ACCOUNT_KEY),
        timeout=timeout,
    )


def test_the_domain_key_comes_from_keyproc_once(run_dir: str) -> None:
    service = CountingKeyInfo(DOMAIN_KEY_DER, NAMES)
    server = keyproc_on(run_dir, service)
    source = from_keyproc(run_dir)
    try:
        p = policy("issue", domain_key=source)
        assert judge(p, request(finalize(keys.build_csr(DOMAIN_KEY, NAMES)))) == "finalize"
        refused(p, request(finalize(keys.build_csr(OTHER_KEY, NAMES))), "finalize",
                "csr key is not the domain key held by keyproc")
        assert judge(p, request(finalize(keys.build_csr(DOMAIN_KEY, NAMES)))) == "finalize"
        assert service.calls == 1
    finally:
        source.close()
        server.stop(None).wait(5)


def test_keyproc_unreachable_refuses_until_it_answers(run_dir: str) -> None:
    source = from_keyproc(run_dir, timeout=0.5)
    p = policy("issue", domain_key=source)
    good = request(finalize(keys.build_csr(DOMAIN_KEY, NAMES)))
    try:
        refused(p, good, "finalize", "cannot learn the domain key from keyproc: keyproc")
        # A failure is not kept: once keyproc serves, the same request is signed.
        server = keyproc_on(run_dir, CountingKeyInfo(DOMAIN_KEY_DER, NAMES))
        try:
            source.timeout = 5.0
            assert judge(p, good) == "finalize"
        finally:
            server.stop(None).wait(5)
    finally:
        source.close()


@pytest.mark.parametrize(
    ("der", "names", "reason"),
    [
        (DOMAIN_KEY_DER, ["evil.example.net"], "keyproc's names .* are not this run's names"),
        (DOMAIN_KEY_DER, [NAMES[0]], "not this run's names"),
        (DOMAIN_KEY_DER, [*NAMES, "evil.example.net"], "not this run's names"),
        (keys.public_key_der(ACCOUNT_KEY), NAMES, "is the account key"),
        (b"", NAMES, "not a DER public key"),
        (b"\x30\x03abc", NAMES, "not a DER public key"),
        (DOMAIN_KEY_DER + b"\x00", NAMES, "not a DER public key|not in canonical DER"),
    ],
    ids=["other-names", "fewer-names", "more-names", "account-key", "empty", "not-der",
         "trailing-byte"],
)
def test_a_keyproc_answer_that_is_not_this_run_refuses_finalize(
    run_dir: str, der: bytes, names: list[str], reason: str
) -> None:
    server = keyproc_on(run_dir, CountingKeyInfo(der, names))
    source = from_keyproc(run_dir)
    try:
        with pytest.raises(InputError, match=reason):
            source()
        refused(policy("issue", domain_key=source),
                request(finalize(keys.build_csr(DOMAIN_KEY, NAMES))), "finalize",
                "cannot learn the domain key from keyproc")
    finally:
        source.close()
        server.stop(None).wait(5)


# --- the audit log ---------------------------------------------------------------------


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_audit_log_is_created_0600_and_appends(tmp_path: Path) -> None:
    key = tmp_path / "privkey.pem"
    key.write_bytes(b"key")
    path = tmp_path / "audit.log"
    path.write_text('{"earlier": true}\n')
    path.chmod(0o600)
    log = AuditLog.open(str(path), str(key))
    log.record("https://ca.test/x\n", "newOrder", b"{}", "refused", "no\x1b[31m")
    log.record("https://ca.test/y", "post-as-get", b"", "signed")
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and lines[0] == '{"earlier": true}'
    first, second = (json.loads(line) for line in lines[1:])
    assert first["url"] == "https://ca.test/x\n" and first["decision"] == "refused"
    assert "\x1b" not in first["reason"]
    assert second == {
        "time": second["time"],
        "url": "https://ca.test/y",
        "kind": "post-as-get",
        "payload_sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "decision": "signed",
    }
    assert second["time"].endswith("Z") and "T" in second["time"]
    fresh = tmp_path / "fresh.log"
    AuditLog.open(str(fresh), str(key))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_audit_log_refuses_what_is_not_its_own_file(tmp_path: Path) -> None:
    key = tmp_path / "privkey.pem"
    key.write_bytes(b"key")
    outside = tmp_path / "outside"
    outside.write_bytes(b"outside\n")
    link = tmp_path / "link.log"
    link.symlink_to(outside)
    with pytest.raises(InputError, match="audit log"):
        AuditLog.open(str(link), str(key))
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="audit log"):
        AuditLog.open(str(fifo), str(key))  # and does not hang
    with pytest.raises(InputError, match="is the account key"):
        AuditLog.open(str(key), str(key))
    hard = tmp_path / "hard.log"
    os.link(outside, hard)
    with pytest.raises(InputError, match="hard links"):
        AuditLog.open(str(hard), str(key))
    assert outside.read_bytes() == b"outside\n"
    assert key.read_bytes() == b"key"


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)


def test_sign_records_every_request_and_refuses_with_invalid_argument(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    service = AccountService(
        ACCOUNT_KEY, policy("issue"), AuditLog.open(str(path), str(tmp_path / "k")),
        Logger("acctproc", 0),
    )
    good = account_pb2.SignRequest(
        url="https://ca.test/order", nonce=NONCE, kid=KID,
        payload=json.dumps(order(*NAMES)).encode(),
    )
    reply = service.Sign(good, FakeContext())
    header = json.loads(b64url_decode(reply.protected))
    assert header == {"nonce": NONCE, "url": good.url, "kid": KID, "alg": "ES256"}
    assert json.loads(b64url_decode(reply.payload)) == order(*NAMES)

    bad = account_pb2.SignRequest(
        url="https://ca.test/order", nonce=NONCE, kid=KID,
        payload=json.dumps(order("evil.example.net")).encode(),
    )
    context = FakeContext()
    with pytest.raises(Aborted):
        service.Sign(bad, context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert context.details.startswith("refused to sign newOrder: identifiers ['evil.example.net']")

    lookup = account_pb2.SignRequest(
        url="https://ca.test/new-acct", nonce=NONCE, payload=b'{"onlyReturnExisting": true}'
    )
    embedded = json.loads(b64url_decode(service.Sign(lookup, FakeContext()).protected))
    assert embedded["jwk"] == keys.jwk(ACCOUNT_KEY.public_key()) and "kid" not in embedded

    lines = read_lines(path)
    assert [(e["kind"], e["decision"]) for e in lines] == [
        ("newOrder", "signed"), ("newOrder", "refused"), ("newAccount", "signed"),
    ]
    assert lines[1]["reason"].startswith("identifiers ['evil.example.net']")
    assert "reason" not in lines[0]
    assert lines[0]["payload_sha256"] == hashlib.sha256(good.payload).hexdigest()


def test_sign_adds_the_binding_and_audits_it_both_ways(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    service = AccountService(
        ACCOUNT_KEY, policy("issue", binding=BINDING, profile="shortlived"),
        AuditLog.open(str(path), str(tmp_path / "k")), Logger("acctproc", 0),
    )
    body = json.dumps(REGISTRATION).encode()
    registration = account_pb2.SignRequest(url=NEW_ACCOUNT_URL, nonce=NONCE, payload=body,
                                           external_account_binding=True)  # fmt: skip
    reply = service.Sign(registration, FakeContext())
    header = json.loads(b64url_decode(reply.protected))
    assert header["jwk"] == keys.jwk(ACCOUNT_KEY.public_key()) and header["url"] == NEW_ACCOUNT_URL
    signed = json.loads(b64url_decode(reply.payload))
    assert json.loads(b64url_decode(signed["externalAccountBinding"]["protected"]))["kid"] == (
        EAB_KID)
    # The outer signature covers the payload with the binding in it.
    raw = b64url_decode(reply.signature)
    signature = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
    ACCOUNT_KEY.public_key().verify(signature, f"{reply.protected}.{reply.payload}".encode(),
                                    ec.ECDSA(hashes.SHA256()))  # fmt: skip

    attempts = [
        # netproc's own binding, a binding asked for on an order, a registration without it.
        account_pb2.SignRequest(url=NEW_ACCOUNT_URL, nonce=NONCE, payload=json.dumps(
            {**REGISTRATION, "externalAccountBinding": {}}).encode()),
        account_pb2.SignRequest(url="https://ca.test/order", nonce=NONCE, kid=KID,
                                payload=json.dumps(order(*NAMES)).encode(),
                                external_account_binding=True),
        account_pb2.SignRequest(url=NEW_ACCOUNT_URL, nonce=NONCE, payload=body),
        # An order of another profile, then of this run's.
        account_pb2.SignRequest(url="https://ca.test/order", nonce=NONCE, kid=KID,
                                payload=json.dumps({**order(*NAMES), "profile": "default"})
                                .encode()),
        account_pb2.SignRequest(url="https://ca.test/order", nonce=NONCE, kid=KID,
                                payload=json.dumps({**order(*NAMES), "profile": "shortlived"})
                                .encode()),
    ]
    for attempt in attempts[:4]:
        context = FakeContext()
        with pytest.raises(Aborted):
            service.Sign(attempt, context)
        assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    service.Sign(attempts[4], FakeContext())

    lines = read_lines(path)
    assert [(e["kind"], e["decision"], e.get("external_account_binding")) for e in lines] == [
        ("newAccount", "signed", EAB_KID),
        ("newAccount", "refused", None),
        ("newOrder", "refused", "asked"),
        ("newAccount", "refused", None),
        ("newOrder", "refused", None),
        ("newOrder", "signed", None),
    ]
    assert lines[0]["payload_sha256"] == hashlib.sha256(body).hexdigest()
    assert "never taken from netproc" in lines[1]["reason"]
    assert "only a newAccount" in lines[2]["reason"]
    assert "registers its account with its external account binding" in lines[3]["reason"]
    assert "profile 'default' is not this run's profile 'shortlived'" in lines[4]["reason"]
    # The HMAC key is in no line.
    assert b64url(EAB_HMAC_KEY) not in path.read_text()


def test_sign_without_eab_refuses_a_binding_and_audits_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    service = AccountService(ACCOUNT_KEY, policy("issue"),
                             AuditLog.open(str(path), str(tmp_path / "k")), Logger("acctproc", 0))
    context = FakeContext()
    with pytest.raises(Aborted):
        service.Sign(account_pb2.SignRequest(url=NEW_ACCOUNT_URL, nonce=NONCE,
                                             payload=json.dumps(REGISTRATION).encode(),
                                             external_account_binding=True), context)
    assert "this run has no external account binding" in context.details
    (line,) = read_lines(path)
    assert (line["kind"], line["decision"], line["external_account_binding"]) == (
        "newAccount", "refused", "asked")


# --- a key rollover and a deactivation, through the service ------------------------------

KEY_CHANGE_URL = "https://ca.test/rollover-account-key"
NEW_KEY = keys.generate_key("ecdsa384")


def rollover_service(
    tmp_path: Path, operation: str = "rollover", domain_key: Callable[[], bytes] | None = None
) -> tuple[AccountService, Path]:
    path = tmp_path / "audit.log"
    rollover = operation == "rollover"
    service = AccountService(
        ACCOUNT_KEY,
        policy(operation, domain_key=domain_key,
               new_key_path="/nonexistent/new.pem" if rollover else None),
        AuditLog.open(str(path), str(tmp_path / "k")),
        Logger("acctproc", 0),
        NEW_KEY if rollover else None,
    )  # fmt: skip
    return service, path


def ask_key_change(
    service: AccountService, *, url: str = KEY_CHANGE_URL, kid: str = KID, payload: bytes = b""
) -> account_pb2.SignReply:
    return service.Sign(account_pb2.SignRequest(url=url, nonce=NONCE, kid=kid, payload=payload,
                                                key_change=True), FakeContext())  # fmt: skip


def refused_call(call: Callable[[FakeContext], object], reason: str) -> None:
    context = FakeContext()
    with pytest.raises(Aborted):
        call(context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in context.details, context.details


def verify(key: keys.PrivateKey, jws: dict[str, str] | account_pb2.SignReply) -> None:
    """The flattened JWS is signed by `key` (EC: r || s as JWS has it)."""
    protected, payload, raw = (
        (jws["protected"], jws["payload"], b64url_decode(jws["signature"]))
        if isinstance(jws, dict) else (jws.protected, jws.payload, b64url_decode(jws.signature))
    )  # fmt: skip
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    half = len(raw) // 2
    signature = encode_dss_signature(int.from_bytes(raw[:half]), int.from_bytes(raw[half:]))
    digest = hashes.SHA256() if key.curve.key_size == 256 else hashes.SHA384()
    key.public_key().verify(signature, f"{protected}.{payload}".encode(), ec.ECDSA(digest))


def test_a_rollover_run_builds_and_signs_both_jws_then_uses_the_new_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, path = rollover_service(tmp_path)
    reply = ask_key_change(service)
    outer = json.loads(b64url_decode(reply.protected))
    assert outer == {"nonce": NONCE, "url": KEY_CHANGE_URL, "kid": KID, "alg": "ES256"}
    verify(ACCOUNT_KEY, reply)
    inner = json.loads(b64url_decode(reply.payload))
    inner_header = json.loads(b64url_decode(inner["protected"]))
    assert inner_header == {"jwk": keys.jwk(NEW_KEY.public_key()), "url": KEY_CHANGE_URL,
                            "alg": "ES384"}  # fmt: skip
    assert json.loads(b64url_decode(inner["payload"])) == {
        "account": KID, "oldKey": keys.jwk(ACCOUNT_KEY.public_key())}
    verify(NEW_KEY, inner)
    # A badNonce retry is signed again; the old key still signs the rest until the CA said yes.
    ask_key_change(service)
    lookup = account_pb2.SignRequest(url=NEW_ACCOUNT_URL, nonce=NONCE,
                                     payload=b'{"onlyReturnExisting": true}')  # fmt: skip
    assert json.loads(b64url_decode(service.Sign(lookup, FakeContext()).protected))["jwk"] == (
        keys.jwk(ACCOUNT_KEY.public_key()))

    refused_call(lambda c: service.KeyChanged(
        account_pb2.KeyChangedRequest(account_url="https://ca.test/acct/2"), c),
        "not the account whose key change was signed")  # fmt: skip
    described = service.KeyChanged(account_pb2.KeyChangedRequest(account_url=KID), FakeContext())
    assert described.thumbprint == keys.thumbprint(NEW_KEY.public_key())
    assert described.algorithm == "ES384"
    report = capsys.readouterr().out
    digest = keys.spki_sha256(NEW_KEY)
    assert report == f'letskencrypt-report: {{"account_key_changed": "{digest}"}}\n'

    # From now on: the new key only, and no second key change.
    embedded = service.Sign(lookup, FakeContext())
    assert json.loads(b64url_decode(embedded.protected))["jwk"] == keys.jwk(NEW_KEY.public_key())
    verify(NEW_KEY, embedded)
    verify(NEW_KEY, service.Sign(account_pb2.SignRequest(url=KID, nonce=NONCE, kid=KID,
                                                         post_as_get=True), FakeContext()))
    refused_call(lambda c: service.Sign(account_pb2.SignRequest(
        url=KEY_CHANGE_URL, nonce=NONCE, kid=KID, key_change=True), c), "changed already")
    refused_call(lambda c: service.KeyChanged(
        account_pb2.KeyChangedRequest(account_url=KID), c), "changed already")

    lines = read_lines(path)
    assert [(e["kind"], e["decision"]) for e in lines] == [
        ("keyChange", "signed"), ("keyChange", "signed"), ("newAccount", "signed"),
        ("keyChanged", "refused"), ("keyChanged", "switched"), ("newAccount", "signed"),
        ("post-as-get", "signed"), ("keyChange", "refused"), ("keyChanged", "refused"),
    ]  # fmt: skip
    assert lines[0]["new_key_sha256"] == lines[4]["new_key_sha256"] == digest
    assert lines[0]["payload_sha256"] == hashlib.sha256(b64url_decode(reply.payload)).hexdigest()


@pytest.mark.parametrize(
    ("name", "ask", "reason"),
    [
        ("foreign-origin", {"url": "https://evil.test/rollover-account-key"}, "origin"),
        ("foreign-account", {"kid": "https://evil.test/acct/1"}, "origin"),
        ("netproc-payload", {"payload": json.dumps(key_change(url=KEY_CHANGE_URL)).encode()},
         "netproc sends none"),
        ("no-kid", {"kid": ""}, "needs the account URL"),
    ],
)
def test_a_rollover_run_refuses_a_key_change_and_audits_it(
    tmp_path: Path, name: str, ask: dict[str, Any], reason: str
) -> None:
    service, path = rollover_service(tmp_path)
    refused_call(lambda c: service.Sign(account_pb2.SignRequest(
        nonce=NONCE, key_change=True, **{"url": KEY_CHANGE_URL, "kid": KID, **ask}), c), reason)
    (line,) = read_lines(path)
    assert (line["kind"], line["decision"]) == ("keyChange", "refused")
    assert reason in line["reason"]
    # Nothing was signed: there is nothing the CA could have accepted.
    refused_call(lambda c: service.KeyChanged(
        account_pb2.KeyChangedRequest(account_url=KID), c), "no key change was signed")


def test_a_key_change_is_for_one_account_a_few_times(tmp_path: Path) -> None:
    service, path = rollover_service(tmp_path)
    ask_key_change(service)
    refused_call(lambda c: service.Sign(account_pb2.SignRequest(
        url=KEY_CHANGE_URL, nonce=NONCE, kid="https://ca.test/acct/2", key_change=True), c),
        "another account")  # fmt: skip
    for _ in range(acctproc.MAX_KEY_CHANGE_SIGNATURES - 1):
        ask_key_change(service)
    refused_call(lambda c: service.Sign(account_pb2.SignRequest(
        url=KEY_CHANGE_URL, nonce=NONCE, kid=KID, key_change=True), c), "more than")
    decisions = [(e["kind"], e["decision"]) for e in read_lines(path)]
    assert decisions.count(("keyChange", "signed")) == acctproc.MAX_KEY_CHANGE_SIGNATURES
    assert decisions.count(("keyChange", "refused")) == 2


def test_a_new_key_that_is_the_domain_key_is_refused(tmp_path: Path) -> None:
    keyproc = keyproc_says(keys.public_key_der(NEW_KEY))
    service, path = rollover_service(tmp_path, domain_key=keyproc)
    refused_call(lambda c: service.Sign(account_pb2.SignRequest(
        url=KEY_CHANGE_URL, nonce=NONCE, kid=KID, key_change=True), c), "domain key")
    (line,) = read_lines(path)
    assert (line["kind"], line["decision"]) == ("keyChange", "refused")


@pytest.mark.parametrize("operation", ["issue", "revoke", "deactivate"])
def test_no_key_change_in_another_run(tmp_path: Path, operation: str) -> None:
    service, path = rollover_service(tmp_path, operation)
    refused_call(lambda c: service.Sign(account_pb2.SignRequest(
        url=KEY_CHANGE_URL, nonce=NONCE, kid=KID, key_change=True), c), "not part of this run")
    # Nor one that netproc built itself.
    refused_call(lambda c: service.Sign(account_pb2.SignRequest(
        url=KEY_CHANGE_URL, nonce=NONCE, kid=KID,
        payload=json.dumps(key_change(url=KEY_CHANGE_URL)).encode()), c), "not part of this run")
    refused_call(lambda c: service.KeyChanged(
        account_pb2.KeyChangedRequest(account_url=KID), c), "no key change was signed")
    assert [(e["kind"], e["decision"]) for e in read_lines(path)] == [
        ("keyChange", "refused"), ("keyChange", "refused"), ("keyChanged", "refused")]


@pytest.mark.parametrize("operation", ["issue", "revoke", "rollover", "deactivate"])
def test_a_deactivation_only_in_a_deactivation_run_audited_either_way(
    tmp_path: Path, operation: str
) -> None:
    service, path = rollover_service(tmp_path, operation)
    deactivation = account_pb2.SignRequest(url=KID, nonce=NONCE, kid=KID,
                                           payload=b'{"status": "deactivated"}')  # fmt: skip
    if operation == "deactivate":
        reply = service.Sign(deactivation, FakeContext())
        verify(ACCOUNT_KEY, reply)
        assert json.loads(b64url_decode(reply.payload)) == {"status": "deactivated"}
        decision = "signed"
    else:
        refused_call(lambda c: service.Sign(deactivation, c), "not part of this run")
        decision = "refused"
    (line,) = read_lines(path)
    assert (line["kind"], line["decision"]) == ("deactivate", decision)


def test_no_record_no_signature(tmp_path: Path) -> None:
    read_only = os.open(os.devnull, os.O_RDONLY)
    service = AccountService(ACCOUNT_KEY, policy("issue"), AuditLog(read_only),
                             Logger("acctproc", 0))
    context = FakeContext()
    with pytest.raises(Aborted):
        service.Sign(account_pb2.SignRequest(url="https://ca.test/x", nonce=NONCE, kid=KID,
                                             post_as_get=True), context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "audit log" in context.details
    os.close(read_only)


def test_concurrent_records_stay_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog.open(str(path), str(tmp_path / "k"))

    def write() -> None:
        for _ in range(50):
            log.record("https://ca.test/" + "x" * 1000, "post-as-get", b"", "signed")

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(read_lines(path)) == 200


# --- the settings: from the command line and the container entry point ---------------


def settings_for(*argv: str) -> dict[str, RoleSettings]:
    return options.role_settings(options.build_parser().parse_args(list(argv)))


def test_cli_gives_acctproc_the_run_and_netproc_no_audit_log(tmp_path: Path) -> None:
    key = str(tmp_path / "acct" / "privkey.pem")
    settings = settings_for("-f", key, "--contact", CONTACT[0], *NAMES)
    acct = settings["acctproc"]
    assert isinstance(acct, AcctprocSettings)
    assert acct.operation == "issue"
    assert acct.names == tuple(NAMES)
    assert acct.contact == tuple(CONTACT)
    assert acct.audit_log == str(tmp_path / "acct" / "audit.log")
    for role, own in settings.items():
        if role != "acctproc":
            assert "audit.log" not in json.dumps(encode(own)), role
    assert settings_for("-r", "-f", key, *NAMES)["acctproc"].operation == "revoke"
    custom = settings_for("-f", key, "--audit-log", str(tmp_path / "x.log"), *NAMES)
    assert custom["acctproc"].audit_log == str(tmp_path / "x.log")


def test_cli_gives_only_acctproc_and_netproc_an_account_operation(tmp_path: Path) -> None:
    key = str(tmp_path / "acct" / "privkey.pem")
    new = tmp_path / "new.pem"
    keys.create_key(str(new), "ecdsa256")
    rollover = settings_for("-f", key, "--rollover-account-key", str(new), *NAMES)
    acct, net = rollover["acctproc"], rollover["netproc"]
    assert isinstance(acct, AcctprocSettings) and isinstance(net, NetprocSettings)
    assert (acct.operation, acct.new_key_path) == ("rollover", str(new))
    assert (net.rollover, net.deactivate, net.revoke) == (True, False, False)
    assert acctproc.SPEC.opens(acct)[-1].path == str(new)
    for role, own in rollover.items():
        if role not in ("acctproc", "netproc"):
            assert str(new) not in json.dumps(encode(own)), role
            assert getattr(own, "operation", "issue") == "issue", role
    deactivation = settings_for("-f", key, "--deactivate-account", *NAMES)
    assert deactivation["acctproc"].operation == "deactivate"
    assert isinstance(deactivation["netproc"], NetprocSettings)
    assert deactivation["netproc"].deactivate
    for argv, message in [
        (("--rollover-account-key", str(new), "-r"), "does not go with -r"),
        (("--deactivate-account", "--daemon"), "does not go with --daemon"),
        (("--deactivate-account", "-n"), "does not go with -n"),
        (("--rollover-account-key", str(new), "--account-key-type", "rsa2048"),
         "does not go with --account-key-type"),
        (("--rollover-account-key", key), "no such file"),
    ]:
        with pytest.raises(InputError, match=message):
            settings_for("-f", key, *argv, *NAMES)
    with pytest.raises(InputError, match="new_key_path goes with a rollover run"):
        AcctprocSettings(key_path=key, audit_log="/a", operation="issue", names=tuple(NAMES),
                         directory_url=DIRECTORY, new_key_path=str(new))  # fmt: skip
    with pytest.raises(InputError, match="more than one operation"):
        NetprocSettings(directory_url=DIRECTORY, names=tuple(NAMES), rollover=True, revoke=True)


def test_cli_gives_the_eab_key_file_to_acctproc_alone(tmp_path: Path) -> None:
    key = str(tmp_path / "acct" / "privkey.pem")
    eab = tmp_path / "eab.key"
    # The command line never reads it: not a key at all passes here.
    eab.write_text("anything")
    settings = settings_for("-f", key, "--eab-kid", "kid-1", "--eab-hmac-key", str(eab),
                            "--profile", "shortlived", *NAMES)  # fmt: skip
    acct = settings["acctproc"]
    assert isinstance(acct, AcctprocSettings)
    assert (acct.eab_kid, acct.eab_hmac_key, acct.profile) == ("kid-1", str(eab), "shortlived")
    netproc = settings["netproc"]
    assert netproc.external_account_binding is True  # type: ignore[attr-defined]
    assert netproc.profile == "shortlived"  # type: ignore[attr-defined]
    for role, own in settings.items():
        if role != "acctproc":
            document = json.dumps(encode(own))
            assert "eab.key" not in document and "kid-1" not in document, role
    grants = acctproc.SPEC.opens(acct)
    assert any(g.path == str(eab) and g.what == "EAB HMAC key" for g in grants)
    plain = settings_for("-f", key, *NAMES)
    assert (plain["acctproc"].eab_kid, plain["acctproc"].profile) == (None, None)  # type: ignore[attr-defined]
    assert not any(g.what == "EAB HMAC key" for g in acctproc.SPEC.opens(plain["acctproc"]))


@pytest.mark.parametrize(("argv", "message"), [
    (["--eab-kid", "k"], "--eab-kid and --eab-hmac-key go together"),
    (["--eab-hmac-key", "EAB"], "--eab-kid and --eab-hmac-key go together"),
    (["--eab-kid", "k", "--eab-hmac-key", "MISSING"], "--eab-hmac-key .*: no such file"),
    (["--eab-kid", "k", "--eab-hmac-key", "DIR"], "--eab-hmac-key .*: a directory"),
    (["--eab-kid", "a b", "--eab-hmac-key", "EAB"], "--eab-kid 'a b': give the key ID"),
    (["--eab-kid", "", "--eab-hmac-key", "EAB"], "--eab-kid '': give the key ID"),
    (["--eab-kid", "k\x1b[2J", "--eab-hmac-key", "EAB"], "give the key ID"),
    (["--eab-kid", "k", "--eab-hmac-key", "ACCOUNT"], "not a key or the audit log"),
    (["--eab-kid", "k", "--eab-hmac-key", "CERTS/eab.key"], "inside the certificate directory"),
    (["--profile", "short lived"], "--profile 'short lived': a profile name is"),
    (["--profile", ""], "a profile name is"),
    (["--profile=-x"], "a profile name is"),
    (["--profile", "x" * 65], "a profile name is"),
])
def test_cli_refuses_eab_and_profile_mistakes(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    account = tmp_path / "acct" / "privkey.pem"
    account.parent.mkdir()
    account.write_text("key")
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "eab.key").write_text("k")
    (tmp_path / "eab.key").write_text("k")
    places = {"EAB": tmp_path / "eab.key", "MISSING": tmp_path / "missing", "DIR": tmp_path,
              "ACCOUNT": account, "CERTS": tmp_path / "certs"}  # fmt: skip
    for name, place in places.items():
        argv = [arg.replace(name, str(place)) if arg.startswith(name) else arg for arg in argv]
    with pytest.raises(InputError, match=message):
        settings_for("-f", str(account), "-c", str(tmp_path / "certs"), *argv, *NAMES)


@pytest.mark.parametrize("which", ["account", "domain"])
def test_cli_refuses_a_key_as_audit_log(tmp_path: Path, which: str) -> None:
    account, domain = str(tmp_path / "a.pem"), str(tmp_path / "d.pem")
    target = account if which == "account" else domain
    with pytest.raises(InputError, match="audit-log"):
        settings_for("-f", account, "-k", domain, "--audit-log", target, *NAMES)


def test_container_acctproc_gets_the_run_through_cli() -> None:
    config = container.role_config(
        "acctproc", {"DOMAINS": " ".join(NAMES), "CONTACT": CONTACT[0]}
    )
    assert config.settings.operation == "issue"
    assert config.settings.names == tuple(NAMES)
    assert config.settings.contact == tuple(CONTACT)
    assert config.settings.audit_log == "/etc/acme/audit.log"
    netproc = container.role_config("netproc", {"DOMAINS": " ".join(NAMES)})
    assert "audit" not in json.dumps(encode(netproc.settings))


# --- challenge types (--challenge): a response only of the run's type --------------


def challenge(challenge_type: str, **changes: Any) -> Request:
    return dataclasses.replace(request({}, **changes), challenge_type=challenge_type)


def with_challenge(kind: str, operation: str = "issue") -> RunPolicy:
    return dataclasses.replace(policy(operation), challenge=kind)


def test_an_http_01_run_answers_http_01_only() -> None:
    p = policy("issue")
    assert p.challenge == "http-01"
    assert judge(p, challenge("")) == "challenge"  # no type: http-01, as ever
    assert judge(p, challenge("http-01")) == "challenge"
    refused(p, challenge("dns-persist-01"), "challenge",
            "a dns-persist-01 challenge response; this run answers http-01 only")
    refused(p, challenge("dns-01"), "challenge", "this run answers http-01 only")


def test_a_dns_persist_01_run_answers_dns_persist_01_only() -> None:
    p = with_challenge("dns-persist-01")
    assert judge(p, challenge("dns-persist-01")) == "challenge"
    refused(p, challenge(""), "challenge", "a http-01 challenge response; this run answers "
            "dns-persist-01 only")  # fmt: skip
    refused(p, challenge("http-01"), "challenge", "this run answers dns-persist-01 only")
    refused(p, challenge("dns-01"), "challenge", "this run answers dns-persist-01 only")
    refused(p, challenge("\x1b[2Jdns-persist-01"), "challenge", "only")
    # Its type changes nothing else: the origin and the run's operation still rule.
    refused(p, challenge("dns-persist-01", url="https://evil.test/x"), "challenge", "origin")
    refused(with_challenge("dns-persist-01", "revoke"), challenge("dns-persist-01"),
            "challenge", "not part of this run")


def test_a_dns_01_run_answers_dns_01_and_http_01_for_its_addresses_only() -> None:
    """dns-01 validates no IP address (RFC 8738): a dns-01 run whose names hold
    one answers that one's http-01 challenge; without addresses, dns-01 only."""
    p = with_challenge("dns-01")
    assert judge(p, challenge("dns-01")) == "challenge"
    refused(p, challenge(""), "challenge", "this run answers dns-01 only")
    refused(p, challenge("dns-persist-01"), "challenge", "this run answers dns-01 only")
    mixed = dataclasses.replace(p, names=(*NAMES, "192.0.2.1"))
    assert judge(mixed, challenge("dns-01")) == "challenge"
    assert judge(mixed, challenge("")) == "challenge"
    assert judge(mixed, challenge("http-01")) == "challenge"
    refused(mixed, challenge("dns-persist-01"), "challenge", "this run answers dns-01 only")
    # An http-01 run with addresses answers no dns-01 challenge.
    refused(dataclasses.replace(policy("issue"), names=(*NAMES, "192.0.2.1")),
            challenge("dns-01"), "challenge", "this run answers http-01 only")  # fmt: skip


@pytest.mark.parametrize("kind", ["http-01", "dns-persist-01"])
def test_only_a_challenge_response_names_a_challenge_type(kind: str) -> None:
    p = with_challenge(kind)
    refused(p, dataclasses.replace(request(order(*NAMES)), challenge_type=kind), "newOrder",
            "only a challenge response names a challenge type")
    refused(p, dataclasses.replace(request(None), challenge_type=kind), "post-as-get",
            "only a challenge response names a challenge type")


def test_the_challenge_type_comes_from_the_settings() -> None:
    settings = AcctprocSettings(
        key_path="/k", audit_log="/a", operation="issue", names=tuple(NAMES),
        directory_url=DIRECTORY, challenge="dns-persist-01",
    )  # fmt: skip
    p = RunPolicy.from_settings(settings, ACCOUNT_KEY, keyproc_says())
    assert p.challenge == "dns-persist-01"
    assert decode(AcctprocSettings, encode(settings)) == settings
    with pytest.raises(InputError, match="challenge must be one of"):
        AcctprocSettings(key_path="/k", audit_log="/a", operation="issue", names=("a.b",),
                         directory_url=DIRECTORY, challenge="tls-alpn-01")  # fmt: skip


def test_a_persist_record_run_signs_the_account_lookup_only() -> None:
    p = with_challenge("dns-persist-01", "persist-record")
    assert judge(p, request({"onlyReturnExisting": True}, kid="")) == "newAccount"
    assert judge(p, request({"termsOfServiceAgreed": True}, kid="")) == "newAccount"
    assert judge(p, request(None)) == "post-as-get"
    for req, kind in [
        (request(order(*NAMES)), "newOrder"),
        (challenge("dns-persist-01"), "challenge"),
        (request(finalize(csr())), "finalize"),
        (request(revocation()), "revokeCert"),
        (request({"contact": CONTACT}, url=KID), "accountUpdate"),
        (request({"status": "deactivated"}, url=KID), "deactivate"),
    ]:
        refused(p, req, kind, "not part of this run")


def test_the_audit_log_keeps_the_challenge_type(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    service = AccountService(
        ACCOUNT_KEY, with_challenge("dns-persist-01"),
        AuditLog.open(str(path), str(tmp_path / "k")), Logger("acctproc", 0),
    )  # fmt: skip
    answer = account_pb2.SignRequest(url="https://ca.test/chal/1", nonce=NONCE, kid=KID,
                                     payload=b"{}", challenge_type="dns-persist-01")
    service.Sign(answer, FakeContext())
    other = account_pb2.SignRequest(url="https://ca.test/chal/2", nonce=NONCE, kid=KID,
                                    payload=b"{}")
    context = FakeContext()
    with pytest.raises(Aborted):
        service.Sign(other, context)
    assert context.details == ("refused to sign challenge: a http-01 challenge response; "
                               "this run answers dns-persist-01 only")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["kind"], e["decision"], e.get("challenge_type")) for e in lines] == [
        ("challenge", "signed", "dns-persist-01"),
        ("challenge", "refused", None),
    ]


def test_netproc_settings_know_the_challenge_and_one_operation() -> None:
    base = {"directory_url": DIRECTORY, "names": tuple(NAMES)}
    assert NetprocSettings(**base).challenge == "http-01"
    with pytest.raises(InputError, match="challenge must be one of"):
        NetprocSettings(**base, challenge="tls-alpn-01")
    with pytest.raises(InputError, match="more than one operation"):
        NetprocSettings(**base, persist_record=True, rollover=True)
    with pytest.raises(InputError, match="more than one operation"):
        NetprocSettings(**base, persist_record=True, revoke=True)
