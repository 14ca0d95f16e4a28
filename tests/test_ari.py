"""ACME Renewal Information (RFC 9773), piece by piece: the certificate's
ARI identifier, the renewalInfo answer as hostile input, the pick in the
window, Retry-After, what a note decides, acctproc's `replaces` policy,
the marker line and the run state.  End to end: test_e2e_ari.py."""

import dataclasses
import json
import math
import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from letskencrypt import ari, certs, fleet, options, relay, runstate, status
from letskencrypt.acme import AcmeError
from letskencrypt.context import Logger
from letskencrypt.roles import netproc
from letskencrypt.roles.acctproc import AccountService, AuditLog, RunPolicy
from letskencrypt.settings import AcctprocSettings, AriNote
from letskencrypt.v1 import account_pb2

from tests import certfactory
from tests.pebble import ari_cert_id as pebble_ari_cert_id
from tests.test_acctproc_policy import (
    ACCOUNT_KEY,
    DIRECTORY,
    KID,
    NAMES,
    NONCE,
    Aborted,
    FakeContext,
    keyproc_says,
    order,
    read_lines,
    refused,
    request,
)
from tests.test_acme import BASE, response, scripted

# RFC 9773 section 4.1's example: this keyIdentifier and serial number.
RFC_KEY_ID = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
RFC_SERIAL = 0x87654321
RFC_CERT_ID = "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ISSUER_KEY = ec.generate_private_key(ec.SECP256R1())
LEAF_KEY = ec.generate_private_key(ec.SECP256R1())


def certificate(
    serial: int = RFC_SERIAL,
    key_id: bytes | None = RFC_KEY_ID,
    names: tuple[str, ...] = ("a.test",),
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(LEAF_KEY.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=89))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    )
    if key_id is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(key_id, None, None), critical=False
        )
    return builder.sign(ISSUER_KEY, hashes.SHA256())


# --- the ARI identifier ------------------------------------------------------------


def test_ari_cert_id_is_rfc_9773s_example() -> None:
    assert certs.ari_cert_id(certificate()) == RFC_CERT_ID
    assert ari.is_cert_id(RFC_CERT_ID)


def test_ari_cert_id_of_a_serial_with_the_top_bit_clear_and_of_pebbles_helper() -> None:
    # 0x7f...: no leading zero byte; the tests' own helper agrees.
    cert = certificate(serial=0x7F0102)
    assert certs.ari_cert_id(cert) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.fwEC"
    assert certs.ari_cert_id(cert) == pebble_ari_cert_id(cert)


def test_ari_cert_id_needs_an_authority_key_identifier() -> None:
    assert certs.ari_cert_id(certificate(key_id=None)) is None


@pytest.mark.parametrize(
    "value",
    [
        "", ".", "abc", "aYhb.", ".AIdl", "a.b.c", "aYhba4dGQEHhs3uEe6CuLN4ByNQ=.AIdlQyE",
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyF",  # non-canonical: trailing bits set
        "aY hb.AIdl", "aYhb+/.AIdl", "A" * 90 + ".AIdl", "aYhb." + "A" * 30, None, 12,
        RFC_CERT_ID + "\n",
    ],
)
def test_is_cert_id_refuses(value: object) -> None:
    assert not ari.is_cert_id(value)


# --- the renewalInfo answer, hostile -------------------------------------------------


def window_body(start: object = "2026-06-10T00:00:00Z", end: object = "2026-06-12T00:00:00Z",
                **extra: object) -> bytes:  # fmt: skip
    return json.dumps({"suggestedWindow": {"start": start, "end": end}, **extra}).encode()


def test_parse_window_takes_rfc_3339() -> None:
    window = ari.parse_window(window_body(explanationURL="https://ca.test/why"), NOW)
    assert window.start == datetime(2026, 6, 10, tzinfo=UTC)
    assert window.end == datetime(2026, 6, 12, tzinfo=UTC)
    assert window.explanation == "https://ca.test/why"
    offset = ari.parse_window(window_body("2026-06-10T02:00:00.123456789+02:00",
                                          "2026-06-10t01:00:00z"), NOW)  # fmt: skip
    assert offset.start == datetime(2026, 6, 10, 0, 0, 0, 123456, tzinfo=UTC)
    assert ari.parse_window(window_body(), NOW).explanation is None


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"suggestedWindow": NaN}', "not JSON"),
        (b"{}", "without a suggestedWindow"),
        (json.dumps({"suggestedWindow": []}).encode(), "without a suggestedWindow"),
        (b" " * (ari.MAX_RENEWAL_INFO + 1), "larger than"),
        (window_body(end="2026-06-09T00:00:00Z"), "ends before it starts"),
        (window_body(end="2026-06-10T00:00:00Z"), "ends before it starts"),
        (window_body(start="2026-06-10 00:00:00Z"), "not an RFC 3339 time"),
        (window_body(start="2026-06-10T00:00:00"), "not an RFC 3339 time"),
        (window_body(start="2026-13-10T00:00:00Z"), "is no date"),
        (window_body(start="2026-02-30T00:00:00Z"), "is no date"),
        (window_body(start="2026-06-10T24:00:00Z"), "is no date"),
        (window_body(start=1781049600), "not an RFC 3339 time"),
        (window_body(start=None), "not an RFC 3339 time"),
        (window_body(start="\x1b[31m2026"), "not an RFC 3339 time"),
        (window_body(end="9999-12-31T00:00:00Z"), "in the year 9999"),
        (window_body(explanationURL="http://ca.test/why"), "not an https URL"),
        (window_body(explanationURL="javascript:alert(1)"), "not an https URL"),
        (window_body(explanationURL="https://"), "not an https URL"),
        (window_body(explanationURL="https://ca.test/\x1b[2J"), "not an https URL"),
        (window_body(explanationURL=["https://ca.test/"]), "not an https URL"),
    ],
)
def test_parse_window_refuses(body: bytes, why: str) -> None:
    with pytest.raises(ari.AriError, match=why) as info:
        ari.parse_window(body, NOW)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


def test_pick_is_uniform_within_the_window() -> None:
    window = ari.Window(NOW, NOW + timedelta(hours=10))
    rng = random.Random(1)
    picks = [ari.pick(window, rng) for _ in range(2000)]
    assert all(window.start <= pick <= window.end for pick in picks)
    # Spread over the whole window: each tenth gets its share.
    tenths = [int((p - NOW).total_seconds() // 3600) for p in picks]
    assert all(150 < tenths.count(tenth) < 250 for tenth in range(10))


@pytest.mark.parametrize(
    ("given", "used"),
    [(None, 6 * 3600.0), (0.0, 60.0), (59.0, 60.0), (3600.0, 3600.0), (86401.0, 86400.0),
     (1e10, 86400.0), (float("nan"), 6 * 3600.0), (float("inf"), 6 * 3600.0)],
)  # fmt: skip
def test_retry_after_is_clamped(given: float | None, used: float) -> None:
    assert ari.clamp_retry(given) == used
    window = ari.Window(NOW, NOW + timedelta(days=1))
    assert ari.note(RFC_CERT_ID, window, given, NOW).retry_until == NOW.timestamp() + used


# --- what a note decides ---------------------------------------------------------------


def a_note(chosen: timedelta, retry: timedelta = timedelta(hours=6),
           cert_id: str = RFC_CERT_ID, now: datetime = NOW) -> AriNote:  # fmt: skip
    """A note made at `now` whose picked time is `chosen` from it."""
    at = (now + chosen).timestamp()
    return AriNote(cert_id=cert_id, start=at - 10, end=at + 10, chosen=at,
                   retry_until=(now + retry).timestamp())  # fmt: skip


def test_judge() -> None:
    judge = ari.judge
    assert judge(None, RFC_CERT_ID, NOW)[0] == ari.ASK
    assert judge(a_note(timedelta(days=3)), RFC_CERT_ID, NOW)[0] == ari.WAIT
    assert judge(a_note(-timedelta(seconds=1)), RFC_CERT_ID, NOW)[0] == ari.RENEW
    # Another certificate's note, or one whose Retry-After has passed: ask.
    other = "aYhb.AIdl"
    assert judge(a_note(-timedelta(days=1), cert_id=other), RFC_CERT_ID, NOW)[0] == ari.ASK
    assert judge(a_note(timedelta(days=3), retry=-timedelta(1)), RFC_CERT_ID, NOW)[0] == ari.ASK
    # A CA without ARI: the lifetime rule alone, until it is looked at again.
    assert judge(ari.no_ari(NOW), RFC_CERT_ID, NOW)[0] == ari.WAIT
    assert judge(ari.no_ari(NOW - timedelta(days=2)), RFC_CERT_ID, NOW)[0] == ari.ASK


def test_notes_round_trip_and_hostile_ones_are_refused() -> None:
    good = ari.note(RFC_CERT_ID, ari.Window(NOW, NOW + timedelta(days=1), "https://ca.test/w"),
                    3600, NOW)  # fmt: skip
    assert ari.note_from_json(json.loads(json.dumps(ari.note_to_json(good)))) == good
    assert ari.note_from_json(ari.note_to_json(ari.no_ari(NOW))) == ari.no_ari(NOW)
    document = ari.note_to_json(good)
    for change in (
        {"chosen": document["end"] + 1}, {"start": None}, {"cert_id": "../x"},
        {"retry_until": None}, {"retry_until": True}, {"explanation": "http://x"},
        {"chosen": float("inf")}, {"extra": 1}, {"cert_id": "", "start": 1.0},
    ):  # fmt: skip
        with pytest.raises(ari.AriError):
            ari.note_from_json({**document, **change})


def test_the_lifetime_rule_or_the_ari_time_decides_a_fleet_job(tmp_path: Path) -> None:
    """fleet.due: due by the lifetime rule whatever ARI says (a window far
    ahead never lets a certificate expire); by the picked time when the
    lifetime rule is content; asked when there is no note."""
    tmp_path.chmod(0o755)
    pki = certfactory.make_pki()
    now = datetime.now(UTC)
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    names = ["a.example.org"]

    def install(not_before: datetime, not_after: datetime) -> x509.Certificate:
        leaf = leaf_with_key_id(names, not_before, not_after)
        (cert_dir / "cert.pem").write_bytes(certfactory.pem(leaf))
        (cert_dir / "chain.pem").write_bytes(certfactory.pem(pki.intermediate))
        return leaf

    args = options.build_parser().parse_args([
        "--server", "https://ca.test/dir", "--trust-anchors", str(anchors(tmp_path, pki)),
        "-c", str(cert_dir), "-C", str(tmp_path / "chal"), "-f", str(tmp_path / "acct.pem"),
        "-k", str(tmp_path / "dom.pem"), *names,
    ])  # fmt: skip
    job = fleet.Job(handle="a", names=tuple(names), settings=options.role_settings(args),
                    cert_dir=str(cert_dir), authority="ca", account_key="")  # fmt: skip
    fresh = install(now - timedelta(days=1), now + timedelta(days=89))
    cert_id = certs.ari_cert_id(fresh)
    assert cert_id is not None
    ahead = a_note(timedelta(days=400), cert_id=cert_id, now=now)
    assert fleet.due(job, now, ahead)[0] is False
    assert fleet.due(job, now, None) == (True, "renewal information not asked yet for this "
                                               "certificate")  # fmt: skip
    past = a_note(-timedelta(hours=1), retry=timedelta(days=1), cert_id=cert_id, now=now)
    assert fleet.due(job, now, past)[0] is True
    # With --no-ari only the lifetime rule.
    no_ari = dataclasses.replace(job, settings={
        **job.settings, "netproc": dataclasses.replace(job.settings["netproc"], ari=False)})
    assert fleet.due(no_ari, now, None)[0] is False
    # Due by its lifetime: renewed, whatever the CA's window says.
    old = install(now - timedelta(days=80), now + timedelta(days=10))
    far = a_note(timedelta(days=400), cert_id=str(certs.ari_cert_id(old)), now=now)
    assert fleet.due(job, now, far)[0] is True
    # A lane gets the note, and acctproc the id of the certificate installed now.
    settings = fleet.with_ari(job, past)
    assert settings["netproc"].ari_note == past  # type: ignore[attr-defined]
    assert settings["acctproc"].replaces == certs.ari_cert_id(old)  # type: ignore[attr-defined]
    # The command line computes acctproc's from the installed certificate too.
    assert options.role_settings(args)["acctproc"].replaces == certs.ari_cert_id(old)  # type: ignore[attr-defined]


def leaf_with_key_id(names: list[str], not_before: datetime, not_after: datetime
                     ) -> x509.Certificate:  # fmt: skip
    """A leaf of certfactory's intermediate, with an authorityKeyIdentifier."""
    key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(
        certfactory.INTERMEDIATE_KEY.public_key()
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "intermediate")]))
        .public_key(certfactory.LEAF_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(key_id, critical=False)
    )
    return builder.sign(certfactory.INTERMEDIATE_KEY, hashes.SHA256())


def anchors(tmp_path: Path, pki: certfactory.Pki) -> Path:
    path = tmp_path / "anchors.pem"
    path.write_bytes(certfactory.pem(pki.root))
    return path


# --- netproc's request -------------------------------------------------------------------


ARI_DIRECTORY = {"renewalInfo": f"{BASE}/ari/"}


def ari_client(*answers: Any) -> tuple[Any, Any]:
    client, transport, *_ = scripted(*answers)
    transport.responses[0] = response(200, {**json.loads(transport.responses[0].body),
                                            **ARI_DIRECTORY}, nonce=None)  # fmt: skip
    return client, transport


def test_renewal_info_is_an_unsigned_bounded_get() -> None:
    client, transport = ari_client(response(200, json.loads(window_body()), nonce=None,
                                            Retry_After="3600"))  # fmt: skip
    window, retry_after = client.renewal_info(RFC_CERT_ID)
    assert window.start == datetime(2026, 6, 10, tzinfo=UTC) and retry_after == 3600.0
    method, url, _headers, max_body = transport.calls[-1]
    assert (method, url, max_body) == ("GET", f"{BASE}/ari/{RFC_CERT_ID}", ari.MAX_RENEWAL_INFO)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (response(404, {"type": "urn:ietf:params:acme:error:malformed"}, nonce=None), "HTTP 404"),
        (response(200, json.loads(window_body()), nonce=None, Content_Type="text/html"),
         "expected application/json"),
        (response(200, {"suggestedWindow": {"start": "x", "end": "y"}}, nonce=None),
         "RFC 3339"),
    ],
)
def test_renewal_info_refuses(answer: Any, why: str) -> None:
    client, _ = ari_client(answer)
    with pytest.raises(AcmeError, match=why):
        client.renewal_info(RFC_CERT_ID)


def test_renewal_info_needs_the_directory_to_offer_it() -> None:
    client, transport, *_ = scripted()
    with pytest.raises(AcmeError, match="offers no renewalInfo"):
        client.renewal_info(RFC_CERT_ID)
    assert len(transport.calls) == 1  # the directory only


def test_renewal_info_of_another_origin_is_refused() -> None:
    client, transport, *_ = scripted()
    evil = {**json.loads(transport.responses[0].body), "renewalInfo": "https://evil.test/ari"}
    transport.responses[0] = response(200, evil, nonce=None)
    with pytest.raises(AcmeError, match="not on the CA's origin"):
        client.renewal_info(RFC_CERT_ID)


ORDER_ANSWER = {"status": "pending", "authorizations": [f"{BASE}/authz/1"],
                "finalize": f"{BASE}/fin/1"}  # fmt: skip


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (409, "alreadyReplaced"),
        (400, "malformed"),  # Boulder, for a certificate it does not know
        # pebble, for a certificate it has not indexed yet (it finalizes an
        # order in a goroutine and indexes it by serial afterwards).
        (500, "serverInternal"),
        (403, "unauthorized"),  # Boulder, for another account's certificate
    ],
)
def test_a_new_order_carries_replaces_and_drops_it_when_refused(status: int, kind: str) -> None:
    refusal = {"type": f"urn:ietf:params:acme:error:{kind}", "detail": "replaces: no"}
    client, _transport, signer, _sleeps, lines = scripted(
        response(200),  # newNonce
        response(status, refusal),
        response(201, ORDER_ANSWER, Location=f"{BASE}/order/1"),
    )
    order = client.new_order(["a.test"], replaces=RFC_CERT_ID)
    assert order.url == f"{BASE}/order/1"
    payloads = [json.loads(payload) for _url, _nonce, _kid, payload in signer.calls]
    assert payloads[0]["replaces"] == RFC_CERT_ID
    assert "replaces" not in payloads[1] and len(payloads) == 2
    assert any("without saying which certificate it replaces" in line for line in lines)


def test_an_order_refused_again_without_replaces_fails_with_the_second_answer() -> None:
    first = {"type": "urn:ietf:params:acme:error:serverInternal", "detail": "replaces: no"}
    second = {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many"}
    client, _transport, signer, _sleeps, _lines = scripted(
        response(200), response(500, first), response(429, second),
    )  # fmt: skip
    with pytest.raises(AcmeError, match="too many"):
        client.new_order(["a.test"], replaces=RFC_CERT_ID)
    assert len(signer.calls) == 2


def test_an_order_with_replaces_still_waits_out_a_rate_limit() -> None:
    limited = {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "slow down"}
    client, _transport, signer, sleeps, _lines = scripted(
        response(200),
        response(429, limited, Retry_After="2"),
        response(201, ORDER_ANSWER, Location=f"{BASE}/order/1"),
    )
    client.new_order(["a.test"], replaces=RFC_CERT_ID)
    payloads = [json.loads(payload) for _url, _nonce, _kid, payload in signer.calls]
    assert sleeps == [2.0] and all(p["replaces"] == RFC_CERT_ID for p in payloads)


def test_an_order_without_replaces_is_not_resent_for_it() -> None:
    refusal = {"type": "urn:ietf:params:acme:error:malformed", "detail": "no"}
    client, _transport, signer, _sleeps, _lines = scripted(response(200), response(400, refusal))
    with pytest.raises(AcmeError, match="no"):
        client.new_order(["a.test"])
    assert len(signer.calls) == 1


# --- acctproc: replaces ---------------------------------------------------------------


def replacing_policy(replaces: str | None, replaces_any: bool = False) -> RunPolicy:
    settings = AcctprocSettings(
        key_path="/nonexistent/account.pem", audit_log="/nonexistent/audit.log",
        operation="issue", names=tuple(NAMES), directory_url=DIRECTORY,
        replaces=replaces, replaces_any=replaces_any,
    )  # fmt: skip
    return RunPolicy.from_settings(settings, ACCOUNT_KEY, keyproc_says())


def replacing(value: object) -> Any:
    return request({**order(*NAMES), "replaces": value}, url="https://ca.test/order")


def test_replaces_is_signed_only_for_the_installed_certificate() -> None:
    mine = replacing_policy(RFC_CERT_ID)
    assert mine.judge(replacing(RFC_CERT_ID)) == "newOrder"
    assert mine.judge(request(order(*NAMES), url="https://ca.test/order")) == "newOrder"
    refused(mine, replacing("aYhb.AIdl"), "newOrder", "not the installed certificate's")
    refused(mine, replacing("not an id"), "newOrder", "not an ARI certificate identifier")
    refused(mine, replacing(["x"]), "newOrder", "not an ARI certificate identifier")
    refused(replacing_policy(None), replacing(RFC_CERT_ID), "newOrder",
            "this run replaces no certificate")  # fmt: skip
    # A daemon's or a container's: any well-formed one, never a malformed one.
    anyone = replacing_policy(None, replaces_any=True)
    assert anyone.judge(replacing("aYhb.AIdl")) == "newOrder"
    refused(anyone, replacing("aYhb.AIdl/../x"), "newOrder", "not an ARI certificate identifier")
    # Only a newOrder carries it.
    refused(mine, request({"csr": "x", "replaces": RFC_CERT_ID}), "finalize",
            "a finalize payload is exactly")  # fmt: skip


def test_replaces_is_audited_signed_or_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    service = AccountService(ACCOUNT_KEY, replacing_policy(RFC_CERT_ID),
                             AuditLog.open(str(path), str(tmp_path / "k")),
                             Logger("acctproc", 0))  # fmt: skip

    def sign(value: object) -> None:
        payload = json.dumps({**order(*NAMES), "replaces": value}).encode()
        service.Sign(account_pb2.SignRequest(url="https://ca.test/order", nonce=NONCE, kid=KID,
                                             payload=payload), FakeContext())  # fmt: skip

    sign(RFC_CERT_ID)
    with pytest.raises(Aborted):
        sign("aYhb.AIdl")
    with pytest.raises(Aborted):
        sign("\x1b[2Jx")
    lines = read_lines(path)
    assert [(e["decision"], e["replaces"]) for e in lines] == [
        ("signed", RFC_CERT_ID), ("refused", "aYhb.AIdl"), ("refused", "?x"),
    ]


# --- the marker line and the run state --------------------------------------------------


def test_the_marker_line_carries_the_note_up_and_drops_a_bad_one() -> None:
    note = ari.note(RFC_CERT_ID, ari.Window(NOW, NOW + timedelta(days=1)), None, NOW)
    read_end, write_end = os.pipe()
    lane = relay.Relay(output=os.open(os.devnull, os.O_WRONLY))
    lane.add("netproc", os.fdopen(read_end, "rb", buffering=0), counts=True)
    good = {"requests": 2, "orders": 0, "ari": ari.note_to_json(note)}
    bad = {"requests": 1, "orders": 0, "ari": {**ari.note_to_json(note), "chosen": -5}}
    os.write(write_end, f"{relay.COUNTS_MARKER}{json.dumps(good)}\n".encode())
    os.write(write_end, f"{relay.COUNTS_MARKER}{json.dumps(bad)}\n".encode())
    os.close(write_end)
    lane.drain()
    assert lane.counts == {"requests": 3, "orders": 0}
    assert lane.ari == {"netproc": note}


def test_the_run_state_keeps_the_note(tmp_path: Path) -> None:
    note = ari.note(RFC_CERT_ID, ari.Window(NOW, NOW + timedelta(days=1)), None, NOW)
    path = str(tmp_path / "state.json")
    state = runstate.record(runstate.State(), "a", "changed", "", 1.0, note)
    state = runstate.record(state, "a", "not-due", "", 2.0)  # no news: the note stays
    runstate.save(path, state)
    assert runstate.load(path).certificates["a"].ari == note
    # A file from before ARI (no "ari") is read; a hostile note makes it unusable.
    document = json.loads(Path(path).read_text())
    del document["certificates"]["a"]["ari"]
    Path(path).write_text(json.dumps(document))
    assert runstate.load(path).certificates["a"].ari is None
    document["certificates"]["a"]["ari"] = {"cert_id": "x"}
    Path(path).write_text(json.dumps(document))
    loaded = runstate.load(path)
    assert loaded.certificates == {} and loaded.warning is not None


def test_cli_names_the_installed_certificates_id_for_acctproc(tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    assert options.installed_ari_cert_id(str(cert_dir)) is None
    (cert_dir / "cert.pem").write_bytes(certificate().public_bytes(serialization.Encoding.PEM))
    assert options.installed_ari_cert_id(str(cert_dir)) == RFC_CERT_ID
    (cert_dir / "cert.pem").write_bytes(b"garbage")
    assert options.installed_ari_cert_id(str(cert_dir)) is None


# --- when the next check comes -------------------------------------------------------


def test_a_daemon_wakes_no_later_than_the_picked_time() -> None:
    soon = time.time() + 100
    note = AriNote(cert_id=RFC_CERT_ID, start=soon - 10, end=soon + 10, chosen=soon,
                   retry_until=soon + 3600)  # fmt: skip
    assert 95 < netproc.until_ari_renewal(note) <= 100
    assert netproc.until_ari_renewal(None) == math.inf
    assert netproc.until_ari_renewal(ari.no_ari(datetime.now(UTC))) == math.inf
    gone = dataclasses.replace(note, start=soon - 1000, end=soon - 500, chosen=soon - 800)
    assert netproc.until_ari_renewal(gone) == netproc.MIN_ARI_WAIT


def test_status_shows_the_ari_window_when_it_comes_first(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    leaf = leaf_with_key_id(["a.example.org"], now - timedelta(days=1), now + timedelta(days=89))
    (cert_dir / "cert.pem").write_bytes(certfactory.pem(leaf))
    entry = status.Entry(handle="a", names=("a.example.org",), cert_dir=str(cert_dir),
                         key_type=None, authority="ca", directory_url=DIRECTORY)  # fmt: skip
    note = a_note(timedelta(days=2), cert_id=str(certs.ari_cert_id(leaf)), now=now)
    state = runstate.record(runstate.State(), "a", "changed", "", now.timestamp(), note)
    (facts,) = status.gather([entry], state, now)
    assert facts.next_renewal == datetime.fromtimestamp(note.chosen or 0, UTC)
    assert facts.renewal_reason.startswith("ARI window ")
    assert not facts.due
    assert "ARI window" in status.render_text([facts])
    assert json.loads(status.render_json([facts]))["certificates"][0]["ari"]["chosen"]
    # A note of another certificate is not this one's.
    other = runstate.record(runstate.State(), "a", "changed", "", now.timestamp(),
                            dataclasses.replace(note, cert_id="aYhb.AIdl"))  # fmt: skip
    (facts,) = status.gather([entry], other, now)
    assert facts.ari is None and facts.renewal_reason.startswith("lifetime rule")
