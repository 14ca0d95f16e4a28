"""Tests for letskencrypt.acme: pure helpers, a scripted fake CA, hostile local
HTTPS servers, and end-to-end issuance against a real pebble on loopback."""

from __future__ import annotations

import datetime
import email.utils
import http.server
import json
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from letskencrypt import keys
from letskencrypt.acme import (
    AcmeClient,
    AcmeError,
    HttpResponse,
    Order,
    Transport,
    check_url,
    format_problem,
    parse_retry_after,
    validate_nonce,
)
from letskencrypt.acme.transport import PinnedAdapter, host_header
from letskencrypt.errors import LetskencryptError
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from tests.pebble import Pebble

BASE = "https://ca.test"
DIRECTORY = {
    "newNonce": f"{BASE}/nonce",
    "newAccount": f"{BASE}/acct",
    "newOrder": f"{BASE}/order",
    "revokeCert": f"{BASE}/revoke",
    "meta": {"termsOfService": "https://elsewhere.test/tos.pdf"},
}


# --- format_problem -----------------------------------------------------------


def test_format_problem_basic():
    line = format_problem(
        {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many"}, 429
    )
    assert line == "HTTP 429: rateLimited: too many"


def test_format_problem_strips_escapes_and_newlines():
    line = format_problem(
        {
            "type": "urn:ietf:params:acme:error:malformed\x1b[31m",
            "detail": "bad\x1b]0;owned\x07 thing\nsecond line\r\x1b[2J\u202e",
        },
        400,
    )
    assert "\x1b" not in line
    assert "\n" not in line and "\r" not in line
    assert "\u202e" not in line and "\x07" not in line
    assert "second line" in line
    assert line.startswith("HTTP 400: malformed")


def test_format_problem_subproblems():
    line = format_problem(
        {
            "type": "urn:ietf:params:acme:error:rejectedIdentifier",
            "detail": "Some names were rejected",
            "subproblems": [
                {
                    "type": "urn:ietf:params:acme:error:caa",
                    "detail": "CAA forbids\x1b[0m",
                    "identifier": {"type": "dns", "value": "a.example"},
                },
                {"type": "urn:ietf:params:acme:error:dns", "identifier": "nonsense"},
                "not a dict",
            ],
        },
        403,
    )
    assert "rejectedIdentifier: Some names were rejected" in line
    assert "[dns:a.example] caa: CAA forbids" in line
    assert "[(no identifier)] dns" in line
    assert "(+1 more subproblems)" in line
    assert "\x1b" not in line and "\n" not in line


@pytest.mark.parametrize(
    "problem",
    [
        None,
        "",
        b"\xff\xfe garbage",
        "<html>\n<h1>502 Bad Gateway</h1>\x1b[5m</html>",
        ["a", "list"],
        42,
        {"type": 5, "detail": ["x"], "subproblems": "no"},
        {},
    ],
)
def test_format_problem_garbage(problem: object):
    line = format_problem(problem, 502)
    assert line.startswith("HTTP 502: ")
    assert len(line) > len("HTTP 502: ")
    assert "\n" not in line and "\x1b" not in line


def test_format_problem_is_bounded():
    line = format_problem({"type": "x", "detail": "A" * 100_000}, 500)
    assert len(line) < 1000
    assert len(format_problem("B" * 100_000, 500)) < 300


def test_format_problem_without_status():
    assert format_problem({"type": "urn:x:y", "detail": "d"}, 0) == "urn:x:y: d"


# --- nonces, URLs, Retry-After ------------------------------------------------


@pytest.mark.parametrize("nonce", ["abc", "A-_z09", "x" * 128])
def test_validate_nonce_accepts(nonce: str):
    assert validate_nonce(nonce) == nonce


@pytest.mark.parametrize("nonce", ["", "x" * 129, "abc=", "a b", "a+b/c", "ü", "a\x1b[1m", None, 5])
def test_validate_nonce_rejects(nonce: object):
    with pytest.raises(AcmeError):
        validate_nonce(nonce)


@pytest.mark.parametrize(
    "url",
    [f"{BASE}/x", f"{BASE}:443/x", "https://CA.test/x?y=1", f"{BASE}"],
)
def test_check_url_same_origin(url: str):
    assert check_url(url, f"{BASE}/dir", "test") == url


@pytest.mark.parametrize(
    "url",
    [
        "http://ca.test/x",
        "ftp://ca.test/x",
        "https://ca.test:8443/x",
        "https://evil.test/x",
        "https://ca.test.evil.test/x",
        "https://user@ca.test/x",
        "https://evil.test\\@ca.test/x",
        "https://ca.test/x y",
        "https://ca.test/\x00",
        "https://ca.test:99999/x",
        "//ca.test/x",
        "/relative",
        "https://ca.test/" + "a" * 3000,
        "",
        None,
        ["https://ca.test/x"],
    ],
)
def test_check_url_rejects(url: object):
    with pytest.raises(AcmeError):
        check_url(url, f"{BASE}/dir", "test")


def test_parse_retry_after():
    now = datetime.datetime(2015, 10, 21, 7, 28, 0, tzinfo=datetime.UTC)
    assert parse_retry_after(None) is None
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 3 ") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("-5") is None
    assert parse_retry_after("1.5") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after("9" * 5000) >= 1e8  # no int() blow-up


def test_parse_retry_after_takes_every_http_date_form():
    """RFC 9110 section 5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms."""
    now = datetime.datetime(2015, 10, 21, 7, 28, 0, tzinfo=datetime.UTC)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now=now) == 60.0
    assert parse_retry_after("Wed Oct 21 07:30:00 2015", now=now) == 120.0
    assert parse_retry_after("Wed Oct  1 07:30:00 2015", now=now) == 0.0  # past: now


@pytest.mark.parametrize(
    "value", ["Wed, 32 Oct 2015 07:28:30 GMT", "Wed, 21 Oct 2015 25:00:00 GMT", "tomorrow", "5 s"]
)
def test_parse_retry_after_refuses_garbage_dates(value: str):
    assert parse_retry_after(value) is None


# --- a scripted fake CA (no network) -----------------------------------------


def response(
    status: int = 200, body: object = None, nonce: str | None = "n0", **headers: str | None
):
    """An answer; with a body, of the media type RFC 8555 gives it unless
    Content_Type says otherwise (None: no Content-Type)."""
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    if body is not None:
        kind = "application/problem+json" if status >= 400 else "application/json"
        headers = {"Content_Type": kind, **headers}
    hdrs = CaseInsensitiveDict(
        {k.replace("_", "-"): v for k, v in headers.items() if v is not None}
    )
    if nonce is not None:
        hdrs["Replay-Nonce"] = nonce
    return HttpResponse(status, hdrs, raw)


class ScriptedTransport:
    def __init__(self, *responses: HttpResponse):
        self.responses = [response(200, DIRECTORY, nonce=None), *responses]
        self.calls: list[tuple[str, str, dict[str, str], int | None]] = []

    def request(self, method, url, *, body=None, headers=None, max_body=None):
        self.calls.append((method, url, dict(headers or {}), max_body))
        if not self.responses:
            raise AssertionError(f"unexpected {method} {url}")
        return self.responses.pop(0)


class RecordingSigner:
    def __init__(self):
        self.calls: list[tuple[str, str, str | None, bytes | None]] = []
        # The challenge type each call named (http-01: none named).
        self.challenge_types: list[str] = []

    def sign(self, url, nonce, kid, payload, external_account_binding=False,
             challenge_type="http-01"):  # fmt: skip
        self.calls.append((url, nonce, kid, payload))
        self.challenge_types.append(challenge_type)
        return {"protected": "p", "payload": "", "signature": "s"}


class FakeTime:
    """A monotonic clock that only sleeping moves: no test really sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def scripted(*responses: HttpResponse, **kwargs: Any):
    transport = ScriptedTransport(*responses)
    signer = RecordingSigner()
    fake = FakeTime()
    lines: list[str] = []
    client = AcmeClient(
        transport,  # type: ignore[arg-type]
        signer,
        f"{BASE}/dir",
        log=lines.append,
        sleep=fake.sleep,
        clock=fake.clock,
        **kwargs,
    )
    client.kid = f"{BASE}/acct/1"
    return client, transport, signer, fake.sleeps, lines


BAD_NONCE = {"type": "urn:ietf:params:acme:error:badNonce", "detail": "stale"}


def test_directory_validation():
    client, *_ = scripted()
    directory = client.directory()
    assert directory.new_order == f"{BASE}/order"
    assert directory.terms_of_service == "https://elsewhere.test/tos.pdf"
    assert client.directory() is directory  # cached, one GET


@pytest.mark.parametrize(
    "change",
    [
        {"newNonce": "http://ca.test/nonce"},
        {"newAccount": "https://evil.test/acct"},
        {"newOrder": None},
        {"newOrder": ["x"]},
        {"revokeCert": "https://ca.test:444/revoke"},
    ],
)
def test_directory_rejects_bad_urls(change: dict[str, Any]):
    client, transport, *_ = scripted()
    transport.responses[0] = response(200, {**DIRECTORY, **change}, nonce=None)
    with pytest.raises(AcmeError):
        client.directory()


@pytest.mark.parametrize("body", [b"[1,2]", b"not json", b"[" * 100_000, b'{"newNonce": 1}'])
def test_directory_rejects_garbage(body: bytes):
    client, transport, *_ = scripted()
    transport.responses[0] = response(200, body, nonce=None)
    with pytest.raises(AcmeError):
        client.directory()


# --- media types (RFC 8555 sections 6.2, 6.7 and 7.4.2) ---------------------------


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        ("text/html; charset=utf-8", "text/html"),
        (None, "no Content-Type"),
        ("application/problem+json", "application/problem+json"),
        ("application/jsonp", "application/jsonp"),
        ("", "no Content-Type"),
        ("text/\x1b[2Jhtml", "text/?html"),
    ],
)
def test_directory_must_be_json(content_type: str | None, shown: str):
    client, transport, *_ = scripted()
    transport.responses[0] = response(200, DIRECTORY, nonce=None, Content_Type=content_type)
    with pytest.raises(AcmeError) as info:
        client.directory()
    assert str(info.value) == f"{BASE}/dir: expected application/json, the CA sent {shown}"


@pytest.mark.parametrize(
    "content_type", ["application/json", "Application/JSON; charset=UTF-8", "application/json ;q"]
)
def test_media_type_takes_parameters_and_any_case(content_type: str):
    client, transport, *_ = scripted()
    transport.responses[0] = response(200, DIRECTORY, nonce=None, Content_Type=content_type)
    assert client.directory().new_order == f"{BASE}/order"


def test_order_must_be_json():
    client, *_ = scripted(
        response(200), response(201, ORDER, Location=f"{BASE}/order/1", Content_Type="text/plain")
    )
    with pytest.raises(AcmeError) as info:
        client.new_order(["a.test"])
    assert str(info.value) == f"{BASE}/order: expected application/json, the CA sent text/plain"


def test_challenge_answer_must_be_json():
    client, *_ = scripted(response(200), response(200, {}, Content_Type="text/html"))
    with pytest.raises(AcmeError, match="expected application/json, the CA sent text/html"):
        client.respond(f"{BASE}/chall/1")


def test_certificate_must_be_a_pem_chain():
    pem = make_ca()[1].public_bytes(serialization.Encoding.PEM)
    client, *_ = scripted(response(200), response(200, pem, Content_Type="application/json"))
    with pytest.raises(AcmeError) as info:
        client.download(f"{BASE}/cert/1")
    assert str(info.value) == (
        f"{BASE}/cert/1: expected application/pem-certificate-chain, the CA sent application/json"
    )
    kind = "application/pem-certificate-chain; charset=utf-8"  # pebble's
    client, *_ = scripted(response(200), response(200, pem, Content_Type=kind))
    assert client.download(f"{BASE}/cert/1").default == pem


def test_revocation_answer_is_not_read():
    client, *_ = scripted(response(200), response(200, nonce="n1"))
    client.revoke(b"der")


@pytest.mark.parametrize("content_type", ["application/json", "text/html", None])
def test_error_of_another_media_type_is_not_read_as_a_problem(content_type: str | None):
    rejected = {"type": "urn:ietf:params:acme:error:unauthorized", "detail": "go away"}
    client, *_ = scripted(response(200), response(403, rejected, Content_Type=content_type))
    with pytest.raises(AcmeError) as info:
        client.post(f"{BASE}/x", {}, client.kid)
    shown = content_type or "no Content-Type"
    assert str(info.value) == f"HTTP 403 Forbidden: the CA sent {shown}, not a problem document"
    assert info.value.problem_type is None and info.value.status == 403


def test_bad_nonce_of_another_media_type_is_not_retried():
    client, transport, signer, *_ = scripted(
        response(200),
        response(400, BAD_NONCE, nonce="n1", Content_Type="application/json"),
        response(200, {}),
    )
    with pytest.raises(AcmeError, match="HTTP 400 Bad Request: the CA sent application/json"):
        client.post(f"{BASE}/x", {}, client.kid)
    assert len(signer.calls) == 1 and len(transport.responses) == 1


def test_unknown_status_error_of_another_media_type():
    client, *_ = scripted(response(200), response(499, b"", Content_Type=None))
    with pytest.raises(AcmeError) as info:
        client.post(f"{BASE}/x", {}, client.kid)
    assert str(info.value) == "HTTP 499: the CA sent no Content-Type, not a problem document"


def test_post_retries_bad_nonce_with_fresh_nonce():
    client, transport, signer, _, lines = scripted(
        response(200, nonce="first"),  # HEAD newNonce
        response(400, BAD_NONCE, nonce="second"),
        response(400, BAD_NONCE, nonce="third"),
        response(200, {"ok": True}, nonce="fourth"),
    )
    result = client.post(f"{BASE}/x", {"a": 1}, client.kid)
    assert json.loads(result.body) == {"ok": True}
    assert [call[1] for call in signer.calls] == ["first", "second", "third"]
    assert [call[0] for call in transport.calls] == ["GET", "HEAD", "POST", "POST", "POST"]
    assert transport.calls[2][2]["Content-Type"] == "application/jose+json"
    assert sum("nonce" in line for line in lines) == 2
    assert client._nonce == "fourth"


def test_post_gives_up_after_five_bad_nonces():
    client, _, signer, *_ = scripted(
        response(200), *[response(400, BAD_NONCE, nonce=f"n{i}") for i in range(6)]
    )
    with pytest.raises(AcmeError, match="badNonce") as info:
        client.post(f"{BASE}/x", None, client.kid)
    assert info.value.problem_type == "urn:ietf:params:acme:error:badNonce"
    assert len(signer.calls) == 6


def test_post_heads_new_nonce_when_error_has_none():
    client, transport, signer, *_ = scripted(
        response(200, nonce="a"),
        response(400, BAD_NONCE, nonce=None),
        response(200, nonce="b"),  # HEAD again
        response(200, {}),
    )
    client.post(f"{BASE}/x", None, client.kid)
    assert [c[0] for c in transport.calls] == ["GET", "HEAD", "POST", "HEAD", "POST"]
    assert [c[1] for c in signer.calls] == ["a", "b"]


def test_post_rejects_invalid_nonce_header():
    client, *_ = scripted(response(200, nonce="bad nonce!"))
    with pytest.raises(AcmeError, match="Replay-Nonce"):
        client.post(f"{BASE}/x", None, client.kid)


RATE_LIMITED = {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "slow down"}


def test_post_honours_retry_after_on_busy():
    client, _, signer, sleeps, _ = scripted(
        response(200),
        response(503, {"type": "about:blank", "detail": "busy"}, Retry_After="7"),
        response(429, {"type": "about:blank"}),
        response(500, b"<html>oops</html>", Content_Type="text/html"),
        response(201, {}),
    )
    client.post(f"{BASE}/x", {}, client.kid)
    assert sleeps == [7.0, 2.0, 4.0]  # Retry-After, then backoff without one
    assert len(signer.calls) == 4


def test_post_busy_retries_are_bounded():
    client, _, _, sleeps, _ = scripted(
        response(200), *[response(503, {"type": "x"}, Retry_After="1") for _ in range(4)]
    )
    with pytest.raises(AcmeError, match="HTTP 503") as info:
        client.post(f"{BASE}/x", {}, client.kid)
    assert info.value.status == 503
    assert info.value.retry_after == 1.0
    assert sleeps == [1.0, 1.0, 1.0]


def test_post_retry_after_beyond_the_budget_fails_at_once():
    client, transport, _, sleeps, _ = scripted(
        response(200), response(429, RATE_LIMITED, Retry_After="3600"), response(201, {})
    )
    with pytest.raises(AcmeError) as info:
        client.post(f"{BASE}/x", {}, client.kid)
    assert str(info.value) == (
        "HTTP 429: rateLimited: slow down; the CA asks to retry in 3600 s, "
        "beyond the 90 s budget left (--poll-timeout)"
    )
    assert info.value.retry_after == 3600.0
    assert info.value.problem_type == "urn:ietf:params:acme:error:rateLimited"
    assert sleeps == []
    assert len(transport.responses) == 1  # not sent again


def test_post_rate_limit_without_retry_after_is_not_tried_again():
    client, transport, signer, sleeps, _ = scripted(
        response(200), response(429, RATE_LIMITED), response(201, {})
    )
    with pytest.raises(AcmeError, match="rateLimited") as info:
        client.post(f"{BASE}/x", {}, client.kid)
    assert info.value.retry_after is None
    assert info.value.problem_type == "urn:ietf:params:acme:error:rateLimited"
    assert sleeps == [] and len(signer.calls) == 1
    assert len(transport.responses) == 1


def test_post_error_carries_retry_after_when_not_busy():
    client, *_ = scripted(
        response(200), response(403, {"type": "urn:x", "detail": "no"}, Retry_After="30")
    )
    with pytest.raises(AcmeError) as info:
        client.post(f"{BASE}/x", {}, client.kid)
    assert info.value.retry_after == 30.0
    assert str(info.value) == "HTTP 403: urn:x: no"


def test_post_refuses_other_origin_before_signing():
    client, transport, signer, *_ = scripted()
    with pytest.raises(AcmeError):
        client.post("https://evil.test/x", {}, client.kid)
    assert signer.calls == [] and transport.calls == []


def test_post_error_is_formatted():
    client, *_ = scripted(
        response(200),
        response(403, {"type": "urn:ietf:params:acme:error:unauthorized", "detail": "no\x1b[1m"}),
    )
    with pytest.raises(AcmeError) as info:
        client.post(f"{BASE}/x", {}, client.kid)
    assert str(info.value) == "HTTP 403: unauthorized: no?"


def test_account_lookup_then_create():
    missing = {"type": "urn:ietf:params:acme:error:accountDoesNotExist"}
    client, _, signer, _, lines = scripted(
        response(200),
        response(400, missing),
        response(201, {"status": "valid"}, Location=f"{BASE}/acct/7"),
    )
    client.kid = None
    assert client.account(["mailto:a@example.com"]) == f"{BASE}/acct/7"
    payloads = [json.loads(call[3]) for call in signer.calls]
    assert payloads == [
        {"onlyReturnExisting": True},
        {"termsOfServiceAgreed": True, "contact": ["mailto:a@example.com"]},
    ]
    assert all(call[2] is None for call in signer.calls)  # JWK, not kid
    assert client.kid == f"{BASE}/acct/7"
    assert any("created" in line for line in lines)


def test_account_lookup_only():
    missing = {"type": "urn:ietf:params:acme:error:accountDoesNotExist"}
    client, *_ = scripted(response(200), response(400, missing))
    with pytest.raises(AcmeError, match="no account"):
        client.account([], create=False)


@pytest.mark.parametrize("location", [None, "https://evil.test/acct/1", "http://ca.test/acct/1"])
def test_account_location_must_be_same_origin(location: str | None):
    headers = {} if location is None else {"Location": location}
    client, *_ = scripted(response(200), response(200, {"status": "valid"}, **headers))
    with pytest.raises(AcmeError):
        client.account([])


# --- the account's contact (issue 8: a changed --contact updates the account) ---


def found(contact: object = None) -> HttpResponse:
    """newAccount's answer for an existing account, showing `contact` (None: none)."""
    body: dict[str, Any] = {"status": "valid"}
    if contact is not None:
        body["contact"] = contact
    return response(200, body, Location=f"{BASE}/acct/7")


@pytest.mark.parametrize(
    ("shown", "wanted", "differs"),
    [
        (None, ["mailto:a@example.org"], True),
        ([], ["mailto:a@example.org"], True),
        (["mailto:old@example.org"], ["mailto:a@example.org"], True),
        (["mailto:a@example.org"], ["mailto:a@example.org"], False),
        (["mailto:b@example.org", "mailto:a@example.org"],
         ["mailto:a@example.org", "mailto:b@example.org"], False),
        (["mailto:a@example.org"], ["mailto:a@example.org", "mailto:b@example.org"], True),
        ("mailto:a@example.org", ["mailto:a@example.org"], True),  # not a list
        ([7], ["mailto:a@example.org"], True),
        (["x" * 2000], ["mailto:a@example.org"], True),
    ],
)
def test_the_accounts_contact_as_the_ca_shows_it(shown: object, wanted: list[str],
                                                  differs: bool) -> None:
    client, _, signer, *_ = scripted(response(200), found(shown))
    client.kid = None
    client.account(wanted)
    assert client.contact_differs(wanted) is differs
    # Found, not created: only the lookup was signed.
    assert [json.loads(call[3]) for call in signer.calls] == [{"onlyReturnExisting": True}]


def test_update_contact_posts_the_contact_to_the_account_url() -> None:
    wanted = ["mailto:new@example.org", "mailto:ops@example.org"]
    client, transport, signer, _, lines = scripted(
        response(200), found(["mailto:old@example.org"]),
        response(200, {"status": "valid", "contact": wanted}),
    )
    client.kid = None
    kid = client.account(wanted)
    client.update_contact(wanted)
    url, _nonce, signed_kid, payload = signer.calls[-1]
    assert (url, signed_kid) == (kid, kid)
    assert json.loads(payload or b"") == {"contact": wanted}
    assert transport.calls[-1][:2] == ("POST", kid)
    assert not client.contact_differs(wanted)
    assert any("contact set to mailto:new@example.org, mailto:ops@example.org" in line
               for line in lines)


def test_a_refused_contact_update_is_an_error_naming_the_problem() -> None:
    client, *_ = scripted(
        response(200), found(["mailto:old@example.org"]),
        response(400, {"type": "urn:ietf:params:acme:error:invalidContact",
                       "detail": "no such domain"}),
    )
    client.kid = None
    client.account(["mailto:new@example.org"])
    with pytest.raises(AcmeError, match="invalidContact: no such domain"):
        client.update_contact(["mailto:new@example.org"])


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def notice(self, message: str) -> None:
        self.lines.append(("notice", message))

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def error(self, message: str) -> None:
        self.lines.append(("error", message))


def netproc_settings(*contact: str) -> Any:
    from letskencrypt.settings import NetprocSettings

    return NetprocSettings(directory_url=f"{BASE}/dir", names=("a.test",), contact=contact)


def test_netproc_sets_a_changed_contact() -> None:
    from letskencrypt.roles import netproc

    client, _, signer, *_ = scripted(
        response(200), found(["mailto:old@example.org"]),
        response(200, {"status": "valid", "contact": ["mailto:new@example.org"]}),
    )
    client.kid = None
    log = FakeLog()
    netproc.find_account(client, netproc_settings("mailto:new@example.org"), log)  # type: ignore[arg-type]
    assert json.loads(signer.calls[-1][3] or b"") == {"contact": ["mailto:new@example.org"]}
    assert log.lines == []


@pytest.mark.parametrize(
    ("shown", "contact"),
    [(["mailto:old@example.org"], ()), (["mailto:a@example.org"], ("mailto:a@example.org",))],
)
def test_netproc_leaves_the_contact_alone(shown: list[str], contact: tuple[str, ...]) -> None:
    """Without --contact, or when the CA shows it already: no update."""
    from letskencrypt.roles import netproc

    client, _, signer, *_ = scripted(response(200), found(shown))
    client.kid = None
    netproc.find_account(client, netproc_settings(*contact), FakeLog())  # type: ignore[arg-type]
    assert len(signer.calls) == 1


def test_netproc_goes_on_when_the_ca_refuses_the_contact() -> None:
    from letskencrypt.roles import netproc

    client, *_ = scripted(
        response(200), found(["mailto:old@example.org"]),
        response(400, {"type": "urn:ietf:params:acme:error:invalidContact",
                       "detail": "no\x1b[2J such domain"}),
    )
    client.kid = None
    log = FakeLog()
    netproc.find_account(client, netproc_settings("mailto:new@example.org"), log)  # type: ignore[arg-type]
    assert log.lines == [(
        "notice",
        f"account {BASE}/acct/7: could not set the contact to mailto:new@example.org "
        "(HTTP 400: invalidContact: no? such domain); going on with the account as it is",
    )]
    assert client.kid == f"{BASE}/acct/7"


ORDER = {
    "status": "pending",
    "identifiers": [{"type": "dns", "value": "a.test"}],
    "authorizations": [f"{BASE}/authz/1"],
    "finalize": f"{BASE}/order/1/finalize",
}


def test_new_order_parses():
    client, _, signer, *_ = scripted(
        response(200), response(201, ORDER, Location=f"{BASE}/order/1")
    )
    order = client.new_order(["a.test"])
    assert order.url == f"{BASE}/order/1"
    assert order.authorizations == (f"{BASE}/authz/1",)
    assert order.certificate is None
    assert json.loads(signer.calls[0][3]) == {"identifiers": [{"type": "dns", "value": "a.test"}]}


@pytest.mark.parametrize(
    "change",
    [
        {"status": "weird"},
        {"status": 1},
        {"authorizations": f"{BASE}/authz/1"},
        {"authorizations": []},
        {"authorizations": [1]},
        {"authorizations": ["https://evil.test/authz/1"]},
        {"finalize": "http://ca.test/finalize"},
        {"finalize": None},
        {"certificate": "https://evil.test/cert"},
    ],
)
def test_new_order_rejects_bad_fields(change: dict[str, Any]):
    client, *_ = scripted(
        response(200), response(201, {**ORDER, **change}, Location=f"{BASE}/order/1")
    )
    with pytest.raises(AcmeError):
        client.new_order(["a.test"])


def test_issue_reports_an_invalid_order_with_its_problem():
    problem = {"type": "urn:ietf:params:acme:error:rejectedIdentifier", "detail": "no\x1b[1m"}
    client, _, signer, *_ = scripted(
        response(200),
        response(201, {**ORDER, "status": "invalid", "error": problem}, Location=f"{BASE}/order/1"),
    )
    with pytest.raises(AcmeError) as info:
        client.issue(["a.test"], bytes, lambda _t, _k: None, lambda _t: None, "t" * 43)
    assert str(info.value) == f"{BASE}/order/1 is invalid; rejectedIdentifier: no?"
    assert len(signer.calls) == 1


def authz(authz_status: str = "pending", **challenge: Any) -> dict[str, Any]:
    return {
        "status": authz_status,
        "identifier": {"type": "dns", "value": "a.test"},
        "challenges": [
            {"type": "dns-01", "url": f"{BASE}/chall/0", "token": "!!", "status": "pending"},
            {
                "type": "http-01",
                "url": f"{BASE}/chall/1",
                "token": "tok_en-1",
                "status": "pending",
                **challenge,
            },
        ],
    }


def test_authorization_selects_http01():
    client, *_ = scripted(response(200), response(200, authz()))
    result = client.authorization(f"{BASE}/authz/1")
    assert result.identifier == "dns:a.test"
    assert result.challenge is not None
    assert result.challenge.url == f"{BASE}/chall/1"
    assert result.challenge.token == "tok_en-1"


@pytest.mark.parametrize(
    "challenge",
    [
        {"token": "../../etc/passwd"},
        {"token": ""},
        {"token": None},
        {"url": "https://evil.test/chall/1"},
        {"status": "bogus"},
    ],
)
def test_authorization_rejects_bad_challenge(challenge: dict[str, Any]):
    client, *_ = scripted(response(200), response(200, authz(**challenge)))
    with pytest.raises(AcmeError):
        client.authorization(f"{BASE}/authz/1")


# --- IP identifiers (RFC 8738) ------------------------------------------------------


def test_new_order_orders_addresses_as_ip_identifiers():
    client, _, signer, *_ = scripted(
        response(200), response(201, ORDER, Location=f"{BASE}/order/1")
    )
    client.new_order(["a.test", "192.0.2.1", "2001:db8::1"])
    assert json.loads(signer.calls[0][3]) == {"identifiers": [
        {"type": "dns", "value": "a.test"},
        {"type": "ip", "value": "192.0.2.1"},
        {"type": "ip", "value": "2001:db8::1"},
    ]}  # fmt: skip


def _identifier_problem(kind: str, *blamed: tuple[str, str]) -> dict[str, Any]:
    document: dict[str, Any] = {"type": f"urn:ietf:params:acme:error:{kind}", "detail": "no"}
    if blamed:
        document["subproblems"] = [
            {"type": f"urn:ietf:params:acme:error:{kind}", "detail": "not this one",
             "identifier": {"type": t, "value": v}}
            for t, v in blamed
        ]  # fmt: skip
    return document


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        (["a.test", "192.0.2.1"], _identifier_problem("rejectedIdentifier")),
        (["::1"], _identifier_problem("malformed")),
        (["a.test", "::1"], _identifier_problem("unsupportedIdentifier", ("ip", "::1"))),
        (["a.test", "::1"],
         _identifier_problem("rejectedIdentifier", ("dns", "a.test"), ("ip", "::1"))),
    ],
)
def test_a_ca_that_refuses_addresses_is_named_at_the_order(names, problem):
    client, transport, signer, *_ = scripted(response(200), response(400, problem))
    publish: list[str] = []
    with pytest.raises(AcmeError) as info:
        client.issue(names, bytes, lambda t, _k: publish.append(t), lambda _t: None, "t" * 43)
    message = str(info.value)
    assert message.startswith("the CA does not issue certificates for IP addresses (HTTP 400: ")
    assert info.value.problem_type == problem["type"]
    assert len(signer.calls) == 1 and not publish and not transport.responses


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        # No address in the order.
        (["a.test"], _identifier_problem("rejectedIdentifier")),
        # The CA blames the domain name alone.
        (["a.test", "::1"], _identifier_problem("rejectedIdentifier", ("dns", "a.test"))),
        # Not a refusal of an identifier.
        (["a.test", "::1"], _identifier_problem("rateLimited")),
        (["a.test", "::1"], _identifier_problem("caa")),
    ],
)
def test_other_refusals_are_not_said_to_be_of_addresses(names, problem):
    client, *_ = scripted(response(200), response(400, problem))
    with pytest.raises(AcmeError) as info:
        client.new_order(names)
    assert str(info.value).startswith("HTTP 400: ")
    assert "IP addresses" not in str(info.value)


def _ip_authz(kind: str, value: str, **extra: Any) -> dict[str, Any]:
    return {**authz(), "identifier": {"type": kind, "value": value}, **extra}


@pytest.mark.parametrize(
    ("names", "identifier", "extra"),
    [
        (["a.test"], ("dns", "a.test"), {}),
        (["a.test"], ("dns", "A.Test"), {}),
        (["192.0.2.1", "a.test"], ("ip", "192.0.2.1"), {}),
        # The same address, however the CA writes it.
        (["2001:db8::1"], ("ip", "2001:DB8:0:0:0:0:0:1"), {}),
        # RFC 8555 7.1.4: a wildcard's authorization names the domain below it.
        (["*.a.test"], ("dns", "a.test"), {"wildcard": True}),
    ],
)
def test_an_authorization_for_an_ordered_identifier_is_answered(names, identifier, extra):
    pending = _ip_authz(*identifier, **extra)
    client, _, signer, *_ = scripted(
        response(200),
        response(200, pending),
        response(200, {"type": "http-01", "status": "pending"}),
        response(200, {**pending, "status": "valid"}),
    )
    published: list[str] = []
    client._authorize(f"{BASE}/authz/1", lambda t, _k: published.append(t), lambda _t: None,
                      "t" * 43, names)  # fmt: skip
    assert published == ["tok_en-1"]
    assert len(signer.calls) == 3


def _dns_authz(value: str, **extra: Any) -> dict[str, Any]:
    document = _ip_authz("dns", value, **extra)
    dns01 = {"type": "dns-01", "url": f"{BASE}/chall/2", "token": "dns_tok-1", "status": "pending"}
    return {**document, "challenges": [*document["challenges"][1:], dns01]}


@pytest.mark.parametrize(
    ("names", "value", "extra", "where"),
    [
        (["a.test"], "A.test", {}, "a.test"),
        # The wildcard's record is at the name below the "*." (RFC 8555 8.4).
        (["*.a.test", "a.test"], "a.test", {"wildcard": True}, "a.test"),
    ],
)
def test_dns01_answers_the_dns01_challenge_at_the_identifiers_name(names, value, extra, where):
    pending = _dns_authz(value, **extra)
    client, _, signer, *_ = scripted(
        response(200),
        response(200, pending),
        response(200, {"type": "dns-01", "status": "pending"}),
        response(200, {**pending, "status": "valid"}),
    )
    calls: list[tuple[str, str, str]] = []
    client._authorize(
        f"{BASE}/authz/1",
        lambda token, key_authorization, *, name: calls.append(("publish", token, name)),
        lambda token, *, name: calls.append(("withdraw", token, name)),
        "t" * 43, names, "dns-01",
    )  # fmt: skip
    assert calls == [("publish", "dns_tok-1", where), ("withdraw", "dns_tok-1", where)]
    # The POST answering the challenge went to the dns-01 one, saying so to the signer.
    assert signer.calls[1][0] == f"{BASE}/chall/2"
    assert signer.challenge_types[1] == "dns-01"


def test_dns01_leaves_an_address_to_http01():
    """RFC 8738: dns-01 validates no address; in a dns-01 run its authorization
    is answered over http-01, and publish gets no name."""
    pending = _ip_authz("ip", "192.0.2.1")
    client, _, signer, *_ = scripted(
        response(200),
        response(200, pending),
        response(200, {"type": "http-01", "status": "pending"}),
        response(200, {**pending, "status": "valid"}),
    )
    calls: list[tuple[Any, ...]] = []
    client._authorize(
        f"{BASE}/authz/1",
        lambda token, key_authorization, **where: calls.append(("publish", token, where)),
        lambda token, **where: calls.append(("withdraw", token, where)),
        "t" * 43, ["example.test", "192.0.2.1"], "dns-01",
    )  # fmt: skip
    assert calls == [("publish", "tok_en-1", {}), ("withdraw", "tok_en-1", {})]
    assert signer.calls[1][0] == f"{BASE}/chall/1"
    assert signer.challenge_types[1] == "http-01"


def test_dns01_says_what_is_wrong_with_the_cas_dns01_challenge():
    """An http-01 run ignores the dns-01 challenge whatever it is; a dns-01 run names it."""
    client, *_ = scripted(response(200), response(200, authz()))
    with pytest.raises(AcmeError, match="unusable dns-01 challenge: invalid challenge token"):
        client._authorize(f"{BASE}/authz/1", lambda *a, **k: None, lambda *a, **k: None,
                          "t" * 43, ["a.test"], "dns-01")  # fmt: skip


@pytest.mark.parametrize(
    ("names", "identifier", "extra"),
    [
        (["a.test"], ("dns", "b.test"), {}),
        (["a.test"], ("ip", "a.test"), {}),
        # An ordered address is no DNS name, nor the other way round.
        (["192.0.2.1"], ("dns", "192.0.2.1"), {}),
        (["1.2.3.com"], ("ip", "1.2.3.com"), {}),
        (["192.0.2.1"], ("ip", "::ffff:192.0.2.1"), {}),
        (["192.0.2.1"], ("ip", "192.0.2.2"), {}),
        (["a.test"], ("dns", "a.test"), {"wildcard": True}),
        (["*.a.test"], ("dns", "a.test"), {}),
        (["a.test"], ("email", "a.test"), {}),
        (["a.test"], ("dns", 5), {}),
    ],
)
def test_an_authorization_for_anything_else_is_refused(names, identifier, extra):
    client, _, signer, *_ = scripted(response(200), response(200, _ip_authz(*identifier, **extra)))
    published: list[str] = []
    with pytest.raises(AcmeError, match="which the order did not ask for"):
        client._authorize(f"{BASE}/authz/1", lambda t, _k: published.append(t),
                          lambda _t: None, "t" * 43, names)  # fmt: skip
    assert not published and len(signer.calls) == 1


# --- a server that is no ACME CA, and messages in plain words -----------------------


def test_non_acme_directory():
    client, transport, *_ = scripted()
    transport.responses[0] = response(200, {"status": "ok", "version": "1.2"}, nonce=None)
    with pytest.raises(AcmeError) as info:
        client.directory()
    assert str(info.value) == (
        f"{BASE}/dir: not an ACME directory (no newNonce, newAccount, newOrder URLs)"
    )


def test_directory_missing_one_url():
    client, transport, *_ = scripted()
    partial = {key: value for key, value in DIRECTORY.items() if key != "newOrder"}
    transport.responses[0] = response(200, {**partial, "newNonce": None}, nonce=None)
    with pytest.raises(AcmeError) as info:
        client.directory()
    assert str(info.value) == f"{BASE}/dir: not an ACME directory (no newNonce, newOrder URLs)"


PYTHON_WORDS = re.compile(r"\b(NoneType|dict|list|str|int|float|bool|tuple|bytes)\b|\[\]|\{\}")


@pytest.mark.parametrize(
    ("document", "call"),
    [
        ({**DIRECTORY, "newNonce": 5}, "directory"),
        ({**DIRECTORY, "newAccount": {"url": "x"}}, "directory"),
        ({**DIRECTORY, "newOrder": ["https://ca.test/order"]}, "directory"),
        ({**DIRECTORY, "revokeCert": True}, "directory"),
        ({"newNonce": 1.5}, "directory"),
        ({**ORDER, "authorizations": [None]}, "order"),
        ({**ORDER, "finalize": {}}, "order"),
        ({**ORDER, "status": None}, "order"),
        ({**ORDER, "authorizations": {}}, "order"),
        ({**ORDER, "certificate": 7}, "order"),
        (authz(token=5), "authorization"),
        (authz(token=None), "authorization"),
        (authz(url=[]), "authorization"),
        ({**authz(), "challenges": {}}, "authorization"),
        ({"status": {"a": 1}}, "account"),
        ({"status": ["x"]}, "account"),
    ],
)
def test_messages_name_no_python_type(document: dict[str, Any], call: str):
    client, transport, *_ = scripted(response(200), response(201, document, Location=f"{BASE}/x/1"))
    if call == "directory":
        transport.responses = [response(200, document, nonce=None)]
    with pytest.raises(AcmeError) as info:
        if call == "directory":
            client.directory()
        elif call == "order":
            client.new_order(["a.test"])
        elif call == "authorization":
            client.authorization(f"{BASE}/authz/1")
        else:
            client.account([])
    message = str(info.value)
    assert PYTHON_WORDS.search(message) is None, message
    assert "\n" not in message


def test_a_missing_nonce_names_no_type():
    with pytest.raises(AcmeError) as info:
        validate_nonce(None)
    assert str(info.value) == "CA sent an invalid Replay-Nonce"


def test_poll_honours_retry_after_exactly():
    client, transport, _, sleeps, _ = scripted(
        response(200),
        response(200, {"status": "pending"}, Retry_After="3"),
        response(200, {"status": "pending"}, Retry_After="75"),
        response(200, {"status": "pending"}, Retry_After="0"),
        response(200, {"status": "valid"}),
    )
    result = client.poll(f"{BASE}/authz/1", {"valid"}, {"invalid"}, what="authorization")
    assert result["status"] == "valid"
    # Never sooner than asked, never clamped to a maximum; "0" still waits a second.
    assert sleeps == [3.0, 75.0, 1.0]
    assert [call[0] for call in transport.calls].count("POST") == 4


def test_poll_backs_off_without_retry_after():
    client, _, _, sleeps, _ = scripted(
        response(200),
        *[response(200, {"status": "processing"}) for _ in range(9)],
        response(200, {"status": "valid"}),
    )
    client.poll(f"{BASE}/order/1", {"valid"}, {"invalid"}, what="order")
    assert sleeps == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4])


def test_poll_backoff_ends_with_the_budget():
    client, transport, _, sleeps, _ = scripted(
        response(200),
        *[response(200, {"status": "processing"}) for _ in range(12)],
        poll_timeout=20,
    )
    with pytest.raises(AcmeError) as info:
        client.poll(f"{BASE}/order/1", {"valid"}, {"invalid"}, what="order")
    assert str(info.value) == (
        f"order {BASE}/order/1 is still processing after 20 s (--poll-timeout); giving up"
    )
    # The last wait cut to what was left.
    assert sleeps == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 7.225])
    assert len(transport.responses) == 12 - 11  # and one poll at the very end


def test_poll_retry_after_beyond_the_budget_fails_at_once():
    client, transport, _, sleeps, _ = scripted(
        response(200),
        response(200, {"status": "processing"}, Retry_After="120"),
        response(200, {"status": "valid"}),
    )
    with pytest.raises(AcmeError) as info:
        client.poll(f"{BASE}/order/1", {"valid"}, {"invalid"}, what="order")
    assert str(info.value) == (
        f"order {BASE}/order/1: the CA asks to poll again in 120 s, "
        "beyond the 90 s budget left (--poll-timeout)"
    )
    assert info.value.retry_after == 120.0
    assert sleeps == []
    assert len(transport.responses) == 1  # never polled again


def test_poll_retry_after_as_http_date():
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    client, _, _, sleeps, _ = scripted(
        response(200),
        response(200, {"status": "pending"}, Retry_After=email.utils.format_datetime(when, True)),
        response(200, {"status": "valid"}),
    )
    client.poll(f"{BASE}/authz/1", {"valid"}, {"invalid"}, what="authorization")
    assert len(sleeps) == 1 and 28 < sleeps[0] <= 30


@pytest.mark.parametrize("value", ["-5", "1.5", "soon", "Mon, 32 Jan 2024 00:00:00 GMT", ""])
def test_poll_garbage_retry_after_is_no_retry_after(value: str):
    client, _, _, sleeps, _ = scripted(
        response(200),
        response(200, {"status": "pending"}, Retry_After=value),
        response(200, {"status": "pending"}, Retry_After=value),
        response(200, {"status": "valid"}),
    )
    client.poll(f"{BASE}/authz/1", {"valid"}, {"invalid"}, what="authorization")
    assert sleeps == pytest.approx([0.025, 0.05])


def test_one_budget_covers_the_whole_order():
    """The authorization's polls use up the budget the order's polls then lack:
    a budget per poll would wait 10 s more."""
    order = {**ORDER, "status": "pending"}
    client, transport, _, sleeps, _ = scripted(
        response(200),  # newNonce
        response(201, order, Location=f"{BASE}/order/1"),
        response(200, authz()),
        response(200, {"type": "http-01", "status": "pending"}),  # the challenge response
        response(200, authz(), Retry_After="4"),
        response(200, authz(), Retry_After="4"),
        response(200, authz("valid")),
        *[response(200, {**ORDER, "status": "pending"}) for _ in range(10)],
        poll_timeout=10,
    )
    with pytest.raises(AcmeError) as info:
        client.issue(["a.test"], bytes, lambda _t, _k: None, lambda _t: None, "t" * 43)
    assert str(info.value) == (
        f"order {BASE}/order/1 is still pending after 10 s (--poll-timeout); giving up"
    )
    assert sleeps == pytest.approx([4.0, 4.0, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 0.425])
    assert len(transport.responses) == 2


def test_poll_invalid_authz_reports_challenge_error():
    failed = authz(
        "invalid",
        status="invalid",
        error={
            "type": "urn:ietf:params:acme:error:unauthorized",
            "detail": "Invalid response from http://a.test/.well-known/acme-challenge/x\x1b[2J",
        },
    )
    client, *_ = scripted(response(200), response(200, failed))
    with pytest.raises(AcmeError) as info:
        client.poll(f"{BASE}/authz/1", {"valid"}, {"invalid"}, what="authorization")
    message = str(info.value)
    assert "dns:a.test" in message and "is invalid" in message
    assert "http-01 challenge: unauthorized: Invalid response" in message
    assert "\x1b" not in message


def test_finalize_requires_certificate_url():
    ready = {**ORDER, "status": "ready"}
    client, _, signer, *_ = scripted(response(200), response(200, {**ORDER, "status": "valid"}))
    order = Order.from_json(f"{BASE}/order/1", ready, BASE)
    with pytest.raises(AcmeError, match="no certificate URL"):
        client.finalize(order, b"\x30\x03csr")
    assert json.loads(signer.calls[0][3]) == {"csr": keys.b64url(b"\x30\x03csr")}


def test_finalize_polls_until_valid():
    valid = {**ORDER, "status": "valid", "certificate": f"{BASE}/cert/1"}
    client, transport, _, sleeps, _ = scripted(
        response(200),
        response(200, {**ORDER, "status": "processing"}, Retry_After="5"),  # the finalize
        response(200, {**ORDER, "status": "processing"}),
        response(200, {**ORDER, "status": "processing"}, Retry_After="2"),
        response(200, valid),
    )
    order = Order.from_json(f"{BASE}/order/1", {**ORDER, "status": "ready"}, BASE)
    final = client.finalize(order, b"csr")
    assert final.certificate == f"{BASE}/cert/1"
    # The finalize's own Retry-After comes first, then the backoff's 2nd wait.
    assert sleeps == pytest.approx([5.0, 0.05, 2.0])
    assert [call[1] for call in transport.calls[3:]] == [f"{BASE}/order/1"] * 3


def test_download_checks_pem_and_asks_for_chain():
    client, transport, *_ = scripted(
        response(200),
        response(200, b"<html>not a cert</html>", Content_Type="application/pem-certificate-chain"),
    )
    with pytest.raises(AcmeError, match="unusable certificate chain"):
        client.download(f"{BASE}/cert/1")
    _, _, headers, max_body = transport.calls[-1]
    assert headers["Accept"] == "application/pem-certificate-chain"
    assert max_body == 256 * 1024


@pytest.mark.parametrize("reason", [-1, 7, 11, "1"])
def test_revoke_rejects_bad_reason(reason: Any):
    client, *_ = scripted()
    with pytest.raises(AcmeError, match="reason"):
        client.revoke(b"der", reason=reason)


def test_revoke_says_whether_the_ca_revoked_it_now_or_before():
    client, *_ = scripted(response(200), response(200))
    assert client.revoke(b"der", reason=1) is True
    already = {"type": "urn:ietf:params:acme:error:alreadyRevoked", "detail": "revoked"}
    client, *_ = scripted(response(200), response(400, already))
    assert client.revoke(b"der") is False
    refused = {"type": "urn:ietf:params:acme:error:unauthorized", "detail": "not yours"}
    client, *_ = scripted(response(200), response(403, refused))
    with pytest.raises(AcmeError, match="not yours"):
        client.revoke(b"der")


def test_calls_need_an_account():
    client, *_ = scripted()
    client.kid = None
    with pytest.raises(AcmeError, match="account"):
        client.new_order(["a.test"])


def test_acme_error_is_a_letskencrypt_error():
    assert issubclass(AcmeError, LetskencryptError)


# --- hostile HTTPS servers on 127.0.0.1 ---------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str = "test CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], names: list[str], tmp: Path):
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


Route = Callable[["Handler"], None]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HostileServer.Server

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.request_body = self.rfile.read(length) if length else b""
        self.server.owner.seen.append((self.command, self.path, dict(self.headers)))
        route = self.server.owner.routes.get(self.path.split("?")[0])
        if route is None:
            self.reply(404, b"{}")
        else:
            route(self)

    do_GET = do_POST = do_HEAD = _dispatch

    def reply(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        if "Content_Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class HostileServer:
    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        owner: HostileServer

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # clients that hang up on us are the point of these tests

    def __init__(self, cert_path: Path, key_path: Path):
        self.routes: dict[str, Route] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.httpd = self.Server(("127.0.0.1", 0), Handler)
        self.httpd.owner = self
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "acme.test") -> str:
        return f"https://{host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class LoopbackResolver:
    def __init__(self, addresses: list[str] | None = None):
        self.addresses = addresses or ["127.0.0.1"]
        self.calls: list[str] = []

    def resolve(self, host: str) -> list[str]:
        self.calls.append(host)
        return list(self.addresses)


@pytest.fixture(scope="module")
def test_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return make_ca()


@pytest.fixture
def server(tmp_path: Path, test_ca):
    srv = HostileServer(*make_leaf(test_ca, ["acme.test"], tmp_path))
    srv.ca_pem = test_ca[1].public_bytes(serialization.Encoding.PEM)
    yield srv
    srv.close()


def transport_for(server: HostileServer, **kwargs: Any) -> Transport:
    resolver = kwargs.pop("resolver", None) or LoopbackResolver()
    return Transport(resolver, server.ca_pem, **kwargs)


def ok(handler: Handler) -> None:
    handler.reply(200, b'{"ok": true}', Content_Type="application/json")


def test_transport_pins_resolver_and_verifies_name(server: HostileServer):
    def echo(handler: Handler) -> None:
        handler.reply(200, handler.headers.get("User-Agent", "").encode())

    server.routes["/ua"] = echo
    resolver = LoopbackResolver()
    transport = transport_for(server, resolver=resolver)
    # acme.test has no DNS entry: only our resolver can make this work.
    first = transport.request("GET", server.url("/ua"))
    second = transport.request("GET", server.url("/ua"))
    assert first.status == 200 and first.body.startswith(b"letskencrypt/")
    assert second.body == first.body
    assert resolver.calls == ["acme.test"]  # cached for the transport's life
    _, _, headers = server.seen[0]
    assert headers["Host"] == f"acme.test:{server.port}"
    assert headers["Accept-Encoding"] == "identity"


def test_transport_tries_addresses_in_order(server: HostileServer):
    server.routes["/ok"] = ok
    # Nothing listens on ::1 at this port, so the second address must be used.
    transport = transport_for(server, resolver=LoopbackResolver(["::1", "127.0.0.1"]))
    assert transport.request("GET", server.url("/ok")).status == 200


def test_transport_reports_unreachable_addresses(server: HostileServer):
    transport = transport_for(server, resolver=LoopbackResolver(["::1"]))
    with pytest.raises(AcmeError, match="cannot connect"):
        transport.request("GET", server.url("/ok"))


@pytest.mark.parametrize("answer", [[], ["not-an-ip"], "127.0.0.1"])
def test_transport_rejects_bad_resolver_answers(server: HostileServer, answer: Any):
    resolver = LoopbackResolver()
    resolver.resolve = lambda host: answer  # type: ignore[method-assign]
    with pytest.raises(AcmeError, match="resolver"):
        transport_for(server, resolver=resolver).request("GET", server.url("/ok"))


def test_transport_checks_certificate_host_name(server: HostileServer):
    server.routes["/ok"] = ok
    with pytest.raises(AcmeError, match=r"(?i)certificate"):
        transport_for(server).request("GET", server.url("/ok", host="other.test"))


def test_transport_trusts_only_given_anchors(server: HostileServer):
    server.routes["/ok"] = ok
    other_ca = make_ca("unrelated CA")[1].public_bytes(serialization.Encoding.PEM)
    transport = Transport(LoopbackResolver(), other_ca)
    with pytest.raises(AcmeError, match=r"(?i)certificate"):
        transport.request("GET", server.url("/ok"))


def test_transport_rejects_bad_trust_anchors():
    with pytest.raises(AcmeError, match="trust anchors"):
        Transport(LoopbackResolver(), b"not a pem")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "ftp://acme.test/x", "acme.test/x"])
def test_transport_https_only(url: str):
    resolver = LoopbackResolver()
    transport = Transport(resolver, make_ca()[1].public_bytes(serialization.Encoding.PEM))
    with pytest.raises(AcmeError, match="https"):
        transport.request("GET", url)
    assert resolver.calls == []


def test_transport_ignores_proxy_environment(server: HostileServer, monkeypatch):
    server.routes["/ok"] = ok
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    assert transport_for(server).request("GET", server.url("/ok")).status == 200


def test_transport_refuses_redirect(server: HostileServer):
    def redirect(handler: Handler) -> None:
        handler.reply(302, b"", Location=server.url("/ok"))

    server.routes["/old"] = redirect
    server.routes["/ok"] = ok
    with pytest.raises(AcmeError, match="redirect"):
        transport_for(server).request("GET", server.url("/old"))
    assert [path for _, path, _ in server.seen] == ["/old"]


def test_transport_body_cap_declared(server: HostileServer):
    server.routes["/big"] = lambda h: h.reply(200, b"x" * (1024 * 1024 + 1))
    with pytest.raises(AcmeError, match="1048576-byte limit"):
        transport_for(server).request("GET", server.url("/big"))


def test_transport_body_cap_streamed(server: HostileServer):
    def chunked(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"y" * 16384
        try:
            for _ in range(100):
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            handler.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    server.routes["/chunked"] = chunked
    with pytest.raises(AcmeError, match="65536-byte limit"):
        transport_for(server, max_body=65536).request("GET", server.url("/chunked"))


def test_transport_body_cap_per_request(server: HostileServer):
    server.routes["/mid"] = lambda h: h.reply(200, b"z" * 5000)
    transport = transport_for(server)
    assert len(transport.request("GET", server.url("/mid")).body) == 5000
    with pytest.raises(AcmeError, match="limit"):
        transport.request("GET", server.url("/mid"), max_body=4096)


def test_transport_refuses_compressed_body(server: HostileServer):
    server.routes["/gz"] = lambda h: h.reply(200, b"\x1f\x8b...", Content_Encoding="gzip")
    with pytest.raises(AcmeError, match="Content-Encoding"):
        transport_for(server).request("GET", server.url("/gz"))


def _drip(handler: Handler, data: bytes) -> None:
    stop = time.monotonic() + 5
    try:
        for byte in data:
            if time.monotonic() > stop:
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.02)
    except OSError:
        return


def test_transport_deadline_on_dripping_body(server: HostileServer):
    def drip_body(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        _drip(handler, b"d" * 100000)

    server.routes["/drip"] = drip_body
    transport = transport_for(server, read_timeout=5.0, deadline=0.5)
    start = time.monotonic()
    with pytest.raises(AcmeError, match=r"no answer within 0\.5 s"):
        transport.request("GET", server.url("/drip"))
    assert time.monotonic() - start < 2.5


def test_transport_deadline_on_dripping_headers(server: HostileServer):
    def drip_headers(handler: Handler) -> None:
        _drip(handler, b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"s" * 5000 + b"\r\n\r\n")

    server.routes["/drip"] = drip_headers
    transport = transport_for(server, read_timeout=5.0, deadline=0.5)
    start = time.monotonic()
    with pytest.raises(AcmeError, match="no answer within"):
        transport.request("GET", server.url("/drip"))
    assert time.monotonic() - start < 2.5
    # The transport stays usable after a request was cut off.
    server.routes["/ok"] = ok
    assert transport.request("GET", server.url("/ok")).status == 200


def test_transport_deadline_on_dripping_tls_handshake():
    """A server that starts a 16 KiB TLS record and drips it must not hold us."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)  # ClientHello
            conn.sendall(b"\x16\x03\x03\x40\x00")  # handshake record, 16 KiB
            stop = time.monotonic() + 5
            try:
                while time.monotonic() < stop:
                    conn.sendall(b"\x00")
                    time.sleep(0.02)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    transport = Transport(
        LoopbackResolver(),
        make_ca()[1].public_bytes(serialization.Encoding.PEM),
        read_timeout=5.0,
        deadline=0.5,
    )
    start = time.monotonic()
    try:
        with pytest.raises(AcmeError, match="no answer within"):
            transport.request("GET", f"https://acme.test:{port}/")
        assert time.monotonic() - start < 2.5
    finally:
        listener.close()


def test_transport_opens_no_files(server: HostileServer):
    """netproc reads the CA bundle before dropping privileges: no file access,
    and no trust anchors beyond the PEM we were given."""
    server.routes["/ok"] = ok
    opened: list[object] = []
    recording = threading.Event()

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "open" and recording.is_set() and threading.current_thread() is main:
            opened.append(args[0])

    main = threading.current_thread()
    sys.addaudithook(hook)  # cannot be removed; inert once `recording` is cleared
    recording.set()
    try:
        transport = transport_for(server)
        transport.request("GET", server.url("/ok"))
        transport.request("HEAD", server.url("/ok"))
    finally:
        recording.clear()
    assert opened == []
    # requests would load its CA bundle into the context; only our anchor may be there.
    context = transport._session.get_adapter(server.url("/ok")).context
    assert context.cert_store_stats()["x509_ca"] == 1


@pytest.mark.parametrize(
    ("host", "port", "header"),
    [
        ("acme.test", 443, "acme.test"),
        ("acme.test", 14000, "acme.test:14000"),
        ("127.0.0.1", 443, "127.0.0.1"),
        ("::1", 8443, "[::1]:8443"),
    ],
)
def test_host_header_names_the_ca_not_the_address(host: str, port: int, header: str):
    assert host_header(host, port) == header


def test_transport_uses_public_extension_points_only():
    """The adapter overrides no private name of requests' HTTPAdapter, and the
    session, pools and connections are requests' and urllib3's own classes."""
    transport = Transport(LoopbackResolver(), make_ca()[1].public_bytes(serialization.Encoding.PEM))
    adapter = transport._session.get_adapter("https://acme.test/")
    assert isinstance(adapter, PinnedAdapter)
    overridden = {name for name in vars(PinnedAdapter) if hasattr(HTTPAdapter, name)}
    assert overridden - {"__init__", "__doc__", "__module__"} == {
        "init_poolmanager",
        "get_connection_with_tls_context",
        "send",
    }
    assert type(transport._session) is requests.Session
    assert type(adapter.poolmanager) is urllib3.PoolManager


def test_transport_read_timeout(server: HostileServer):
    def silent(handler: Handler) -> None:
        time.sleep(2)

    server.routes["/silent"] = silent
    start = time.monotonic()
    with pytest.raises(AcmeError, match=r"/silent: read timed out after 0\.3 s$"):
        transport_for(server, read_timeout=0.3).request("GET", server.url("/silent"))
    assert time.monotonic() - start < 1.5


JSON = {"Content-Type": "application/json"}


def _directory(server: HostileServer, **change: str) -> bytes:
    directory = {
        "newNonce": server.url("/nonce"),
        "newAccount": server.url("/acct"),
        "newOrder": server.url("/order"),
    }
    directory.update(change)
    return json.dumps(directory).encode()


def test_client_refuses_http_url_in_directory(server: HostileServer):
    body = _directory(server, newNonce=f"http://acme.test:{server.port}/nonce")
    server.routes["/dir"] = lambda h: h.reply(200, body, **JSON)
    client = AcmeClient(transport_for(server), RecordingSigner(), server.url("/dir"))
    with pytest.raises(AcmeError, match="not https"):
        client.directory()


@pytest.mark.parametrize("host", ["elsewhere.test", "acme.test:1"])
def test_client_refuses_other_origin_in_directory(server: HostileServer, host: str):
    body = _directory(server, newOrder=f"https://{host}/order")
    server.routes["/dir"] = lambda h: h.reply(200, body, **JSON)
    client = AcmeClient(transport_for(server), RecordingSigner(), server.url("/dir"))
    with pytest.raises(AcmeError, match="origin"):
        client.directory()


def test_client_refuses_other_origin_location(server: HostileServer):
    nonce = {"Replay-Nonce": "abc"}
    server.routes["/dir"] = lambda h: h.reply(200, _directory(server), **JSON)
    server.routes["/nonce"] = lambda h: h.reply(200, b"", **nonce)
    server.routes["/acct"] = lambda h: h.reply(
        200, b'{"status": "valid"}', Location="https://elsewhere.test/acct/1", **nonce, **JSON
    )
    client = AcmeClient(transport_for(server), RecordingSigner(), server.url("/dir"))
    with pytest.raises(AcmeError, match="origin"):
        client.account([])
    methods = [(method, path) for method, path, _ in server.seen]
    assert methods == [("GET", "/dir"), ("HEAD", "/nonce"), ("POST", "/acct")]
    assert server.seen[2][2]["Content-Type"] == "application/jose+json"


# --- end to end against pebble ------------------------------------------------


class KeySigner:
    """In-process stand-in for acctproc."""

    def __init__(self, key: keys.PrivateKey):
        self.key = key
        self.jwk = keys.jwk(key.public_key())

    def sign(self, url, nonce, kid, payload, external_account_binding=False):
        protected: dict[str, object] = {"nonce": nonce, "url": url}
        if kid is None:
            protected["jwk"] = self.jwk
        else:
            protected["kid"] = kid
        return keys.sign_jws(self.key, protected, payload)


@pytest.fixture(
    scope="module",
    params=[{"PEBBLE_AUTHZREUSE": "100"}, {"PEBBLE_WFE_NONCEREJECT": "50"}],
    ids=["pebble", "nonce-reject-50"],
)
def pebble(request: pytest.FixtureRequest):
    with Pebble(env=request.param) as instance:
        yield instance


def test_end_to_end(pebble: Pebble):
    nonce_reject = "PEBBLE_WFE_NONCEREJECT" in pebble.env
    ca_pem = Path(pebble.ca_bundle).read_bytes()
    account_key = keys.generate_key("ecdsa256")
    lines: list[str] = []

    def client() -> AcmeClient:
        return AcmeClient(
            Transport(LoopbackResolver(), ca_pem),
            KeySigner(account_key),
            pebble.directory_url,
            log=lines.append,
            # At 50 % rejection, 5 retries fail one request in 64: too flaky.
            bad_nonce_retries=40 if nonce_reject else 5,
            poll_timeout=30,
        )

    acme = client()
    kid = acme.account(["mailto:admin@letskencrypt.test"])
    assert client().account([], create=False) == kid

    names = ["a.letskencrypt.test", "b.letskencrypt.test"]
    cert_key = keys.generate_key("ecdsa256")
    published: dict[str, str] = {}

    def publish(token: str, key_authorization: str) -> None:
        published[token] = key_authorization
        pebble.put_challenge(token, key_authorization)

    def withdraw(token: str) -> None:
        (pebble.challenge_dir / token).unlink()

    before = pebble.request_count()
    pem = acme.issue(
        names,
        lambda: keys.build_csr(cert_key, names),
        publish,
        withdraw,
        keys.thumbprint(account_key),
    ).default
    if not nonce_reject:
        assert pebble.request_count() - before < 25
    assert len(published) == 2
    assert all(ka.endswith("." + keys.thumbprint(account_key)) for ka in published.values())
    assert list(pebble.challenge_dir.iterdir()) == []

    chain = x509.load_pem_x509_certificates(pem)
    leaf = chain[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == names
    assert keys.public_key_der(leaf.public_key()) == keys.public_key_der(cert_key)

    if not nonce_reject:  # pebble reuses valid authorizations: nothing to publish
        published.clear()
        acme.issue(
            names,
            lambda: keys.build_csr(cert_key, names),
            publish,
            withdraw,
            keys.thumbprint(account_key),
        )
        assert published == {}

    assert pebble.cert_status(leaf.serial_number) == "Valid"
    acme.revoke(leaf.public_bytes(serialization.Encoding.DER), reason=4)
    assert pebble.cert_status(leaf.serial_number) == "Revoked"
    if nonce_reject:
        assert any("rejected our nonce" in line for line in lines)


def test_end_to_end_ca_error_is_formatted(pebble: Pebble):
    """A CA error on a real server comes back formatted, with its type."""
    ca_pem = Path(pebble.ca_bundle).read_bytes()
    account_key = keys.generate_key("ecdsa256")
    acme = AcmeClient(
        Transport(LoopbackResolver(), ca_pem),
        KeySigner(account_key),
        pebble.directory_url,
        bad_nonce_retries=40,
    )
    with pytest.raises(AcmeError, match="no ACME account"):
        acme.new_order(["c.letskencrypt.test"])
    acme.account([])
    with pytest.raises(AcmeError) as info:
        acme.new_order(["not a domain!"])
    assert info.value.status == 400
    assert info.value.problem_type is not None
    assert str(info.value).startswith("HTTP 400: ")
