"""Debian unstable's pebble 2.10 as the second test CA: the fixture, and the client against it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.conftest import Paths, run_client
from tests.pebble import (
    DEFAULT_PROFILES,
    PEBBLE_SID_DIR,
    Pebble,
    PebbleError,
    ari_cert_id,
)
from tests.test_e2e_native import ROLES, assert_installed, start_client, watch_roles

REPO_ROOT = Path(__file__).resolve().parent.parent
EAB_KID = "kid-1"
EAB_KEY = base64.urlsafe_b64encode(secrets.token_bytes(48)).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def pebble_eab() -> Iterator[Pebble]:
    """A 2.10 pebble that requires external account binding with one key.

    Its VA sleeps up to 10 s before validating, so authorizations stay
    pending (with Retry-After) for a while once a challenge is answered.
    """
    with Pebble(
        generation="2.10",
        eab_keys={EAB_KID: EAB_KEY},
        retry_after={"authz": 3, "order": 5},
        env={"PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_VA_NOSLEEP": "0", "PEBBLE_VA_SLEEPTIME": "10"},
    ) as server:
        yield server


@pytest.fixture
def sid_paths(tmp_path: Path, pebble_sid: Pebble) -> Paths:
    tmp_path.chmod(0o755)
    return Paths(base=tmp_path, challenge_dir=pebble_sid.challenge_dir)


# --- a minimal ES256 JWS, just enough for newAccount ---------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Account:
    """An ES256 account key and the JWS requests pebble needs to see it."""

    def __init__(self, server: Pebble) -> None:
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = server.ca_bundle
        self.directory = self.session.get(server.directory_url, timeout=5).json()
        self.key = ec.generate_private_key(ec.SECP256R1())
        numbers = self.key.public_key().public_numbers()
        self.jwk = {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
        }

    def _sign(self, protected: str, payload: str) -> str:
        der = self.key.sign(f"{protected}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def eab(self, kid: str, hmac_key: str) -> dict[str, str]:
        """RFC 8555 7.3.4: the account JWK, signed with HS256 under the EAB key."""
        url = self.directory["newAccount"]
        protected = _b64(json.dumps({"alg": "HS256", "kid": kid, "url": url}).encode())
        payload = _b64(json.dumps(self.jwk).encode())
        key = base64.urlsafe_b64decode(hmac_key + "=" * (-len(hmac_key) % 4))
        mac = hmac.new(key, f"{protected}.{payload}".encode(), hashlib.sha256).digest()
        return {"protected": protected, "payload": payload, "signature": _b64(mac)}

    def new_account(self, payload: dict[str, object]) -> requests.Response:
        """POST newAccount, signed with the account key's JWK."""
        return self.post(self.directory["newAccount"], payload)

    def post(
        self, url: str, payload: dict[str, object] | None, kid: str | None = None
    ) -> requests.Response:
        """A JWS POST (POST-as-GET for ``payload=None``), by JWK or by ``kid``."""
        nonce = self.session.head(self.directory["newNonce"], timeout=5).headers["Replay-Nonce"]
        header: dict[str, object] = {"alg": "ES256", "nonce": nonce, "url": url}
        header.update({"kid": kid} if kid else {"jwk": self.jwk})
        protected = _b64(json.dumps(header).encode())
        body = "" if payload is None else _b64(json.dumps(payload).encode())
        return self.session.post(
            url,
            data=json.dumps(
                {"protected": protected, "payload": body, "signature": self._sign(protected, body)}
            ),
            headers={"Content-Type": "application/jose+json"},
            timeout=10,
        )


# --- the fixture --------------------------------------------------------------


def _listening_addresses(pid: int) -> list[str]:
    """Local addresses (hex, as in /proc/net) of the TCP listeners and UDP sockets of ``pid``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode in inodes and (table.startswith("udp") or state == "0A"):
                found.append(local.rsplit(":", 1)[0])
    return found


def test_binaries_come_from_the_sid_cache(pebble_sid: Pebble) -> None:
    assert pebble_sid.generation == "2.10"
    assert Path(pebble_sid.binary).is_relative_to(PEBBLE_SID_DIR)
    version = (PEBBLE_SID_DIR / "VERSION").read_text().strip()
    assert version.startswith("2.1"), version  # 2.10 or later, as fetch_pebble checks


def test_listens_on_loopback_only(pebble_sid: Pebble) -> None:
    assert len(pebble_sid.pids) == 2
    for pid in pebble_sid.pids:
        addresses = _listening_addresses(pid)
        assert addresses, pid
        assert set(addresses) == {"0100007F"}, addresses  # 127.0.0.1


def test_directory_lists_order_ari_and_profiles(pebble_sid: Pebble) -> None:
    directory = pebble_sid.directory()
    for resource in ("newNonce", "newAccount", "newOrder", "revokeCert", "renewalInfo"):
        assert str(directory[resource]).startswith(f"https://localhost:{pebble_sid.api_port}/")
    meta = directory["meta"]
    assert isinstance(meta, dict)
    assert meta["profiles"] == {
        name: profile["description"] for name, profile in DEFAULT_PROFILES.items()
    }
    assert set(meta["profiles"]) == {"default", "shortlived"}
    assert meta["externalAccountRequired"] is False
    assert pebble_sid.ari


def test_profiles_merge_over_the_defaults() -> None:
    extra = {"tlsserver": {"description": "Like Let's Encrypt's", "validityPeriod": 86400 * 45}}
    with Pebble(generation="2.10", profiles=extra) as server:
        meta = server.directory()["meta"]
        assert isinstance(meta, dict)
        assert set(meta["profiles"]) == {"default", "shortlived", "tlsserver"}
        assert meta["profiles"]["tlsserver"] == "Like Let's Encrypt's"


def test_options_2_4_lacks_are_refused() -> None:
    with pytest.raises(ValueError, match=r"2\.10"):
        Pebble(profiles={"x": {"validityPeriod": 1}})
    with pytest.raises(ValueError, match=r"2\.10"):
        Pebble(retry_after={"authz": 1, "order": 1})
    with pytest.raises(ValueError):
        Pebble(generation="2.10", retry_after={"orders": 1})
    with pytest.raises(ValueError):
        Pebble(generation="9.9")  # type: ignore[arg-type]
    assert not Pebble().ari


def test_eab_required_refuses_an_account_without_binding(pebble_eab: Pebble) -> None:
    meta = pebble_eab.directory()["meta"]
    assert isinstance(meta, dict)
    assert meta["externalAccountRequired"] is True

    account = _Account(pebble_eab)
    refused = account.new_account({"termsOfServiceAgreed": True})
    assert refused.status_code == 403, refused.text
    assert refused.json()["type"] == "urn:ietf:params:acme:error:externalAccountRequired"

    wrong = account.new_account(
        {"termsOfServiceAgreed": True, "externalAccountBinding": account.eab(EAB_KID, "A" * 64)}
    )
    assert wrong.status_code >= 400, wrong.text

    accepted = account.new_account(
        {"termsOfServiceAgreed": True, "externalAccountBinding": account.eab(EAB_KID, EAB_KEY)}
    )
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["status"] == "valid"

    # retry_after: once its challenge is being validated, a pending
    # authorization comes with Retry-After: 3 s.
    # (The VA may draw a sleep of 0 s and finish first: try a few orders.)
    kid = accepted.headers["Location"]
    for attempt in range(5):
        order = account.post(
            account.directory["newOrder"],
            {"identifiers": [{"type": "dns", "value": f"eab{attempt}.example.org"}]},
            kid,
        )
        assert order.status_code == 201, order.text
        authz_url = order.json()["authorizations"][0]
        authz = account.post(authz_url, None, kid)
        assert authz.json()["status"] == "pending"
        assert "Retry-After" not in authz.headers  # nothing being validated yet
        challenge = next(c for c in authz.json()["challenges"] if c["type"] == "http-01")
        account.post(challenge["url"], {}, kid)
        authz = account.post(authz_url, None, kid)
        if authz.json()["status"] == "pending":
            break
    assert authz.json()["status"] == "pending", authz.text
    assert abs(_retry_after_seconds(authz) - 3) <= 1  # an HTTP-date has 1 s granularity


def _retry_after_seconds(response: requests.Response) -> int:
    """Retry-After in seconds; pebble 2.10 sends seconds or an HTTP-date, both seen."""
    value = response.headers["Retry-After"]
    if value.isdigit():
        return int(value)
    delta = parsedate_to_datetime(value) - parsedate_to_datetime(response.headers["Date"])
    return int(delta.total_seconds())


def test_alternate_roots_become_trust_anchors() -> None:
    with Pebble(generation="2.10", alternate_roots=2) as server:
        anchors = x509.load_pem_x509_certificates(Path(server.trust_anchors).read_bytes())
        assert len(anchors) == 3
        assert anchors[2] == x509.load_pem_x509_certificate(server.root_pem(2).encode())


def test_set_renewal_info_answers(pebble_sid: Pebble, sid_paths: Paths) -> None:
    result = run_client(pebble_sid, sid_paths, "-n", "-N", "ari.example.org")
    assert result.code == 0, result.stderr
    leaf = x509.load_pem_x509_certificate((sid_paths.cert_dir / "cert.pem").read_bytes())

    # pebble's own suggestion first: a window inside the certificate's lifetime.
    info, retry_after = pebble_sid.renewal_info(leaf)
    window = info["suggestedWindow"]
    assert isinstance(window, dict)
    start = datetime.fromisoformat(str(window["start"]))
    assert leaf.not_valid_before_utc < start < leaf.not_valid_after_utc
    assert retry_after is not None and retry_after > 0

    # Then one we set, by serial, in the past: "renew now".
    now = datetime.now(UTC).replace(microsecond=0)
    before = pebble_sid.request_count()
    pebble_sid.set_renewal_info(
        leaf.serial_number, now - timedelta(hours=2), now - timedelta(hours=1),
        explanation_url="https://acme.test/why",
    )  # fmt: skip
    assert pebble_sid.request_count() == before  # management requests are not counted
    info, _ = pebble_sid.renewal_info((sid_paths.cert_dir / "fullchain.pem").read_text())
    window = info["suggestedWindow"]
    assert isinstance(window, dict)
    assert datetime.fromisoformat(str(window["start"])) == now - timedelta(hours=2)
    assert datetime.fromisoformat(str(window["end"])) == now - timedelta(hours=1)
    assert info["explanationURL"] == "https://acme.test/why"

    # A certificate pebble never issued, and something that is no certificate.
    with pytest.raises(PebbleError):
        pebble_sid.set_renewal_info(_foreign_certificate(), now, now)
    with pytest.raises(ValueError):
        pebble_sid.set_renewal_info("not a certificate", now, now)


def _foreign_certificate(serial: int = 0x87654321) -> x509.Certificate:
    """A self-signed certificate with the AKI of draft-ietf-acme-ari's example."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(datetime(2025, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2025, 2, 1, tzinfo=UTC))
        .add_extension(
            x509.AuthorityKeyIdentifier(b"\x69\x88\x5b\x6b\x87\x46\x40\x41\xe1\xb3", None, None),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def test_ari_cert_id_encodes_a_high_bit_serial() -> None:
    # draft-ietf-acme-ari's example: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3,
    # serial 00:87:65:43:21.
    assert ari_cert_id(_foreign_certificate()) == "aYhba4dGQEHhsw.AIdlQyE"


# --- the client against 2.10 ----------------------------------------------------


def test_client_issues_through_all_eight_roles(pebble_sid: Pebble, sid_paths: Paths) -> None:
    names = ["sid.example.org", "www.sid.example.org"]
    before = pebble_sid.request_count()
    client = start_client(pebble_sid, sid_paths, "-n", "-N", *names)
    seen = watch_roles(client)
    _, stderr = client.communicate()
    assert client.returncode == 0, stderr
    assert sorted(name for name, _uid in seen.values() if name in ROLES) == sorted(ROLES), seen
    certificate = assert_installed(sid_paths, names)
    assert pebble_sid.cert_status(certificate.serial_number) == "Valid"
    assert pebble_sid.request_count() > before
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime <= timedelta(days=90)


def test_main_runs_the_sid_generation(tmp_path: Path) -> None:
    state = tmp_path / "state.env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.pebble", "--sid", "--state-file", str(state)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        values: dict[str, str] = {}
        while "PEBBLE_LOG" not in values:
            line = proc.stdout.readline()
            assert line, "tests.pebble --sid exited before printing its state"
            key, _, value = line.strip().partition("=")
            values[key] = value
        assert values["PEBBLE_GENERATION"] == "2.10"
        directory = requests.get(values["DIRECTORY_URL"], verify=values["CA_BUNDLE"], timeout=5)
        assert "renewalInfo" in directory.json()
    finally:
        proc.terminate()
        rc = proc.wait(10)
    assert rc == 0
    assert not state.exists()
