"""Tests of the Pebble test fixture itself (they start the real pebble binary)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.pebble import Pebble

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pebble() -> Iterator[Pebble]:
    with Pebble(env={"PEBBLE_WFE_NONCEREJECT": "0"}) as p:
        yield p


def _session(p: Pebble) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = p.ca_bundle
    return s


def _raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET with the path sent verbatim (no client-side dot-segment cleanup)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _procs_mentioning(needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_directory(pebble: Pebble) -> None:
    assert pebble.directory_url.startswith("https://localhost:")
    assert pebble.directory_url.endswith("/dir")
    d = _session(pebble).get(pebble.directory_url, timeout=5).json()
    for key in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange"):
        assert d[key].startswith(f"https://localhost:{pebble.api_port}/"), key


def test_request_count_is_exact(pebble: Pebble) -> None:
    s = _session(pebble)
    before = pebble.request_count()
    s.get(pebble.directory_url, timeout=5)
    s.get(pebble.directory_url, timeout=5)
    assert pebble.request_count() == before + 2
    nonce_url = s.get(pebble.directory_url, timeout=5).json()["newNonce"]
    s.head(nonce_url, timeout=5)
    assert pebble.request_count() == before + 4
    assert pebble.request_lines()[-2:] == [("GET", "/dir"), ("HEAD", "/nonce-plz")]
    # Management-interface calls are not ACME requests.
    pebble.root_pem()
    assert pebble.request_count() == before + 4


def test_env_reaches_pebble(pebble: Pebble) -> None:
    log = pebble.log_text()
    assert "Configured to reject 0% of good nonces" in log
    assert "Disabling random VA sleeps" in log


def test_challenge_server(pebble: Pebble) -> None:
    token = "tok_EN-abc123"
    (pebble.challenge_dir / token).write_text("tok_EN-abc123.thumb")
    prefix = "/.well-known/acme-challenge/"
    assert _raw_get(pebble.http_port, prefix + token) == (200, b"tok_EN-abc123.thumb")
    assert _raw_get(pebble.http_port, prefix + "missing")[0] == 404
    # ca.pem sits in the parent of challenge_dir: traversal must not reach it.
    assert (pebble.challenge_dir.parent / "ca.pem").exists()
    for bad in (
        prefix + "../ca.pem",
        prefix + "..%2fca.pem",
        prefix + "%2e%2e/ca.pem",
        prefix + "..",
        prefix + "sub/" + token,
        prefix,
        "/" + token,
        "/.well-known/" + token,
    ):
        assert _raw_get(pebble.http_port, bad)[0] == 404, bad


def test_roots_and_intermediates(pebble: Pebble) -> None:
    root = x509.load_pem_x509_certificate(pebble.root_pem().encode())
    inter = x509.load_pem_x509_certificate(pebble.intermediate_pem().encode())
    assert inter.issuer == root.subject
    inter.verify_directly_issued_by(root)


def test_cert_status_unknown_serial(pebble: Pebble) -> None:
    with pytest.raises(KeyError):
        pebble.cert_status(0x1234567890ABCDEF)


def test_stop_leaves_nothing_behind() -> None:
    p = Pebble()
    p.start()
    workdir = p.workdir
    assert workdir is not None
    pids = p.pids
    assert len(pids) == 2
    assert _procs_mentioning(str(workdir))  # pebble's -config lives there
    p.stop()
    assert not workdir.exists()
    assert _procs_mentioning(str(workdir)) == []
    assert not any(_pid_alive(pid) for pid in pids)
    assert "ACME directory available" in p.log_text()  # kept after stop
    p.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{p.http_port}/", timeout=2)


def test_context_manager_cleans_up_on_error() -> None:
    workdir = None
    with pytest.raises(RuntimeError, match="boom"), Pebble() as p:
        workdir = p.workdir
        raise RuntimeError("boom")
    assert workdir is not None and not workdir.exists()
    assert _procs_mentioning(str(workdir)) == []


def test_main_entry_point(tmp_path: Path) -> None:
    state = tmp_path / "state.env"
    chall = tmp_path / "chall"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.pebble",
            "--challenge-dir",
            str(chall),
            "--state-file",
            str(state),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        values: dict[str, str] = {}
        while "PEBBLE_LOG" not in values:
            line = proc.stdout.readline()
            assert line, "tests.pebble exited before printing its state"
            key, _, value = line.strip().partition("=")
            values[key] = value
        assert values["CHALLENGE_DIR"] == str(chall.resolve())
        assert chall.is_dir()
        file_values = dict(line.partition("=")[::2] for line in state.read_text().splitlines())
        assert file_values == values
        d = requests.get(values["DIRECTORY_URL"], verify=values["CA_BUNDLE"], timeout=5)
        assert "newOrder" in d.json()
        workdir = str(Path(values["CA_BUNDLE"]).parent)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
    assert rc == 0
    assert not state.exists()
    assert chall.is_dir()  # caller-owned directory is left alone
    assert not os.path.exists(workdir)
    assert _procs_mentioning(workdir) == []


# --- a minimal ES256 ACME client, just enough for one issuance ---------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _MiniAcme:
    def __init__(self, p: Pebble) -> None:
        self.s = _session(p)
        self.key = ec.generate_private_key(ec.SECP256R1())
        nums = self.key.public_key().public_numbers()
        self.jwk = {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64(nums.x.to_bytes(32, "big")),
            "y": _b64(nums.y.to_bytes(32, "big")),
        }
        canon = json.dumps(self.jwk, sort_keys=True, separators=(",", ":")).encode()
        self.thumbprint = _b64(hashlib.sha256(canon).digest())
        self.kid: str | None = None
        self.requests = 1
        self.dir = self.s.get(p.directory_url, timeout=5).json()
        self.nonce = ""

    def post(self, url: str, payload: object | None) -> requests.Response:
        for _ in range(5):
            if not self.nonce:
                self.requests += 1
                self.nonce = self.s.head(self.dir["newNonce"], timeout=5).headers["Replay-Nonce"]
            header: dict[str, object] = {"alg": "ES256", "nonce": self.nonce, "url": url}
            if self.kid:
                header["kid"] = self.kid
            else:
                header["jwk"] = self.jwk
            protected = _b64(json.dumps(header).encode())
            body = "" if payload is None else _b64(json.dumps(payload).encode())
            der = self.key.sign(f"{protected}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
            r, s = decode_dss_signature(der)
            sig = _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
            self.requests += 1
            resp = self.s.post(
                url,
                data=json.dumps({"protected": protected, "payload": body, "signature": sig}),
                headers={"Content-Type": "application/jose+json"},
                timeout=10,
            )
            self.nonce = resp.headers.get("Replay-Nonce", "")
            if resp.status_code == 400 and "badNonce" in resp.text:
                continue
            assert resp.status_code < 300, resp.text
            return resp
        raise AssertionError("too many badNonce")

    def poll(self, url: str, want: str) -> dict[str, object]:
        for _ in range(100):
            obj: dict[str, object] = self.post(url, None).json()
            if obj["status"] == want:
                return obj
            assert obj["status"] not in ("invalid", "revoked"), obj
            time.sleep(0.05)
        raise AssertionError(f"{url} never became {want}")


def test_full_issuance_and_revocation(pebble: Pebble) -> None:
    start_count = pebble.request_count()
    acme = _MiniAcme(pebble)
    acme.kid = acme.post(acme.dir["newAccount"], {"termsOfServiceAgreed": True}).headers["Location"]
    domain = "issuance.test"
    order_resp = acme.post(
        acme.dir["newOrder"], {"identifiers": [{"type": "dns", "value": domain}]}
    )
    order_url, order = order_resp.headers["Location"], order_resp.json()
    for authz_url in order["authorizations"]:
        authz = acme.post(authz_url, None).json()
        chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
        pebble.put_challenge(chall["token"], f"{chall['token']}.{acme.thumbprint}")
        acme.post(chall["url"], {})
        acme.poll(authz_url, "valid")

    cert_key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(cert_key, hashes.SHA256())
    )
    acme.post(order["finalize"], {"csr": _b64(csr.public_bytes(serialization.Encoding.DER))})
    order = acme.poll(order_url, "valid")
    chain_pem = acme.post(str(order["certificate"]), None).content
    chain = x509.load_pem_x509_certificates(chain_pem)
    leaf = chain[0]
    assert leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == [domain]
    chain[1].verify_directly_issued_by(x509.load_pem_x509_certificate(pebble.root_pem().encode()))

    assert pebble.cert_status(leaf.serial_number) == "Valid"
    info = pebble.cert_info(leaf.serial_number)
    assert int(str(info["Serial"]), 16) == leaf.serial_number
    assert x509.load_pem_x509_certificate(str(info["Certificate"]).encode()) == leaf

    acme.post(
        acme.dir["revokeCert"],
        {"certificate": _b64(leaf.public_bytes(serialization.Encoding.DER)), "reason": 4},
    )
    assert pebble.cert_status(leaf.serial_number) == "Revoked"
    assert pebble.cert_info(leaf.serial_number)["Reason"] == 4

    # Every request the mini client sent shows up exactly once in the count.
    assert pebble.request_count() - start_count == acme.requests
