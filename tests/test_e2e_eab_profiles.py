"""End to end, native mode: external account binding, certificate profiles
and the terms of service shown, against pebble 2.10 (Debian unstable's) and
the subset pebble 2.4 (Debian 12's) has: EAB, and no profiles."""

import base64
import json
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from letskencrypt import renewal

from tests.conftest import Paths, Result, run_client, run_config, write_config
from tests.pebble import DEFAULT_PROFILES, Pebble
from tests.test_e2e_native import assert_installed, leaf

EAB_KID = "kid-e2e"
EAB_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
WRONG_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
# Pebble's paths for newAccount and newOrder (its WFE).
NEW_ACCOUNT = "/sign-me-up"
NEW_ORDER = "/order-plz"
TERMS = "created, agreeing to the CA's terms of service"


@pytest.fixture(scope="module", params=["2.4", "2.10"])
def pebble_eab(request: pytest.FixtureRequest) -> Iterator[Pebble]:
    """A pebble of each generation that requires external account binding."""
    with Pebble(generation=request.param, eab_keys={EAB_KID: EAB_KEY}) as server:
        server.challenge_dir.chmod(0o755)
        yield server


def paths_for(tmp_path: Path, server: Pebble) -> Paths:
    tmp_path.chmod(0o755)
    return Paths(base=tmp_path, challenge_dir=server.challenge_dir)


def key_file(tmp_path: Path, key: str, name: str = "eab.key") -> str:
    """The HMAC key as a CA hands it out: base64url text and a newline."""
    path = tmp_path / "secrets" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(key + "\n")
    path.chmod(0o400)
    return str(path)


def audit(paths: Paths) -> list[dict[str, Any]]:
    log = paths.account_key.parent / "audit.log"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def requests_to(server: Pebble, path: str) -> int:
    return sum(1 for method, url in server.request_lines() if method == "POST" and url == path)


def one_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def lifetime(certificate: x509.Certificate) -> timedelta:
    # Pebble's notAfter is the last second of validity (RFC 5280: inclusive).
    return certificate.not_valid_after_utc - certificate.not_valid_before_utc + timedelta(
        seconds=1
    )


# --- external account binding ------------------------------------------------------


def test_eab_issue_with_the_right_key(pebble_eab: Pebble, tmp_path: Path) -> None:
    paths = paths_for(tmp_path, pebble_eab)
    name = f"eab{pebble_eab.generation.replace('.', '')}.example.org"
    result = run_client(pebble_eab, paths, "-n", "-N", "--eab-kid", EAB_KID,
                        "--eab-hmac-key", key_file(tmp_path, EAB_KEY), name)  # fmt: skip
    assert result.code == 0, result.stderr
    assert_installed(paths, [name])
    # The agreement the run made, shown without -v, once.
    terms = [line for line in result.stderr.splitlines() if TERMS in line]
    assert len(terms) == 1, result.stderr
    assert pebble_eab.directory()["meta"]["termsOfService"] in terms[0]  # type: ignore[index]
    registrations = [e for e in audit(paths) if e.get("external_account_binding")]
    # (Pebble rejects a nonce now and then: a retry is signed again.)
    assert {(e["kind"], e["decision"], e["external_account_binding"]) for e in registrations} == {
        ("newAccount", "signed", EAB_KID)
    }
    # The account exists now: a later run finds it (the binding goes with it).
    again = run_client(pebble_eab, paths, "-F", "--eab-kid", EAB_KID,
                       "--eab-hmac-key", key_file(tmp_path, EAB_KEY, "2.key"), name)  # fmt: skip
    assert again.code == 0, again.stderr
    assert TERMS not in again.stderr


def test_eab_required_but_not_configured(pebble_eab: Pebble, tmp_path: Path) -> None:
    paths = paths_for(tmp_path, pebble_eab)
    before = requests_to(pebble_eab, NEW_ACCOUNT)
    result = run_client(pebble_eab, paths, "-n", "-N", "noeab.example.org")
    assert result.code == 1
    assert one_line(result) == (
        "letskencrypt: netproc: the CA requires external account binding: give --eab-kid "
        "and --eab-hmac-key"
    )
    assert requests_to(pebble_eab, NEW_ACCOUNT) == before
    assert audit(paths) == []


def test_eab_with_a_wrong_key(pebble_eab: Pebble, tmp_path: Path) -> None:
    paths = paths_for(tmp_path, pebble_eab)
    before = requests_to(pebble_eab, NEW_ORDER)
    key = key_file(tmp_path, WRONG_KEY)
    result = run_client(pebble_eab, paths, "-n", "-N", "--eab-kid", EAB_KID,
                        "--eab-hmac-key", key, "wrong.example.org")  # fmt: skip
    assert result.code == 1
    line = one_line(result)
    assert line.startswith("letskencrypt: netproc: HTTP 403: unauthorized: external account"), line
    assert requests_to(pebble_eab, NEW_ORDER) == before
    assert not (paths.cert_dir / "cert.pem").exists()


def test_eab_with_an_unknown_kid(pebble_eab: Pebble, tmp_path: Path) -> None:
    paths = paths_for(tmp_path, pebble_eab)
    key = key_file(tmp_path, EAB_KEY)
    result = run_client(pebble_eab, paths, "-n", "-N", "--eab-kid", "no-such-kid",
                        "--eab-hmac-key", key, "unknown.example.org")  # fmt: skip
    assert result.code == 1
    assert one_line(result).startswith("letskencrypt: netproc: HTTP 403: unauthorized:")


def test_an_eab_key_file_that_is_not_a_key_fails_in_acctproc(
    pebble_eab: Pebble, tmp_path: Path
) -> None:
    paths = paths_for(tmp_path, pebble_eab)
    before = pebble_eab.request_count()
    result = run_client(pebble_eab, paths, "-n", "-N", "--eab-kid", EAB_KID,
                        "--eab-hmac-key", key_file(tmp_path, "not base64url!"),
                        "badkey.example.org")  # fmt: skip
    assert result.code == 1
    assert "acctproc" in result.stderr and "not base64url" in result.stderr
    assert pebble_eab.request_count() == before


# --- profiles ------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(DEFAULT_PROFILES))
def test_each_profile_gives_its_lifetime(pebble_sid: Pebble, tmp_path: Path, profile: str) -> None:
    paths = paths_for(tmp_path, pebble_sid)
    name = f"{profile}.profile.example.org"
    result = run_client(pebble_sid, paths, "-n", "-N", "--profile", profile, name)
    assert result.code == 0, result.stderr
    certificate = assert_installed(paths, [name])
    expected = DEFAULT_PROFILES[profile]["validityPeriod"]
    assert lifetime(certificate) == timedelta(seconds=expected)  # type: ignore[arg-type]
    orders = [e for e in audit(paths) if e["kind"] == "newOrder"]
    assert orders and {e["decision"] for e in orders} == {"signed"}


def test_a_shortlived_certificate_is_renewed_in_its_second_half(
    pebble_sid: Pebble, tmp_path: Path
) -> None:
    """6 days: not due when fresh (a run asks the CA nothing), due in its
    last 3 days (half of a lifetime of 10 days or less)."""
    paths = paths_for(tmp_path, pebble_sid)
    name = "short.profile.example.org"
    first = run_client(pebble_sid, paths, "-n", "-N", "--profile", "shortlived", name)
    assert first.code == 0, first.stderr
    certificate = leaf(paths)
    assert lifetime(certificate) == timedelta(days=6)
    before = pebble_sid.request_count()
    # --no-ari: the CA's renewal window is test_e2e_ari's.
    again = run_client(pebble_sid, paths, "--no-ari", "--profile", "shortlived", name)
    assert again.code == 2, again.stderr
    assert pebble_sid.request_count() == before
    not_after = certificate.not_valid_after_utc
    # Half of it (and the 3-day floor): renewal falls due 3 days before notAfter.
    assert renewal.renewal_window(certificate) == timedelta(days=3)
    fresh = certificate.not_valid_before_utc + timedelta(hours=1)
    assert renewal.decide(certificate, [name], fresh, False)[0] == renewal.Decision.UP_TO_DATE
    halfway = not_after - timedelta(days=3, hours=1)
    assert renewal.decide(certificate, [name], halfway, False)[0] == renewal.Decision.UP_TO_DATE
    near_end = not_after - timedelta(days=2, hours=23)
    decision, reason = renewal.decide(certificate, [name], near_end, False)
    assert decision == renewal.Decision.RENEW, reason
    assert renewal.decide(certificate, [name], not_after - timedelta(hours=1), False)[0] == (
        renewal.Decision.RENEW
    )


def test_an_unknown_profile_orders_nothing(pebble_sid: Pebble, tmp_path: Path) -> None:
    paths = paths_for(tmp_path, pebble_sid)
    before = requests_to(pebble_sid, NEW_ORDER), requests_to(pebble_sid, NEW_ACCOUNT)
    result = run_client(pebble_sid, paths, "-n", "-N", "--profile", "nosuch",
                        "nosuch.profile.example.org")  # fmt: skip
    assert result.code == 1
    assert one_line(result) == (
        "letskencrypt: netproc: profile 'nosuch' is not one the CA offers "
        "(it offers: default, shortlived)"
    )
    assert (requests_to(pebble_sid, NEW_ORDER), requests_to(pebble_sid, NEW_ACCOUNT)) == before


def test_a_ca_without_profiles_is_refused(pebble: Pebble, tmp_path: Path) -> None:
    """Pebble 2.4's directory has no meta.profiles."""
    paths = paths_for(tmp_path, pebble)
    before = requests_to(pebble, NEW_ORDER), requests_to(pebble, NEW_ACCOUNT)
    result = run_client(pebble, paths, "-n", "-N", "--profile", "default",
                        "noprofiles.example.org")  # fmt: skip
    assert result.code == 1
    assert one_line(result) == "letskencrypt: netproc: profile 'default': the CA offers no profiles"
    assert (requests_to(pebble, NEW_ORDER), requests_to(pebble, NEW_ACCOUNT)) == before


def test_the_terms_of_service_are_shown_when_an_account_is_created(
    pebble_sid: Pebble, tmp_path: Path
) -> None:
    paths = paths_for(tmp_path, pebble_sid)
    result = run_client(pebble_sid, paths, "-n", "-N", "terms.example.org")
    assert result.code == 0, result.stderr
    terms = pebble_sid.directory()["meta"]["termsOfService"]  # type: ignore[index]
    (line,) = result.stderr.splitlines()
    assert line.startswith("letskencrypt: netproc: account https://"), line
    assert line.endswith(f" {TERMS} {terms}"), line
    registration = [e for e in audit(paths) if e["kind"] == "newAccount"]
    assert len(registration) >= 2 and {e["decision"] for e in registration} == {"signed"}
    assert not any("external_account_binding" in e for e in registration)


def eab(key: str) -> tuple[str, ...]:
    return (f'external account binding {EAB_KID} "{key}"',)


def with_profiles(profiles: dict[str, str | None]) -> dict[str, list[str]]:
    return {h: [f"profile {p}"] if p else [] for h, p in profiles.items()}


# --- the configuration file ------------------------------------------------------------




def test_a_configuration_file_binds_the_account_and_orders_each_profile(
    pebble_eab: Pebble, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    generation = pebble_eab.generation.replace(".", "")
    profiles: dict[str, str | None] = {f"plain{generation}.conf.example.org": None}
    if pebble_eab.generation == "2.10":
        profiles.update({f"{name}.conf.example.org": name for name in DEFAULT_PROFILES})
    config = write_config(tmp_path, pebble_eab, with_profiles(profiles),
                          eab(key_file(tmp_path, EAB_KEY)))  # fmt: skip
    result = run_config(config)
    assert result.code == 0, result.stderr
    assert sum(TERMS in line for line in result.stderr.splitlines()) == 1, result.stderr
    for handle, profile in profiles.items():
        pem = (tmp_path / "state" / "certs" / handle / "cert.pem").read_bytes()
        certificate = x509.load_pem_x509_certificate(pem)
        if profile is None and pebble_eab.generation == "2.10":
            # Asked for no profile, pebble 2.10 issues by any of its own.
            lifetimes = {p["validityPeriod"] for p in DEFAULT_PROFILES.values()}
        else:
            lifetimes = {DEFAULT_PROFILES[profile or "default"]["validityPeriod"]}
        assert lifetime(certificate).total_seconds() in lifetimes, handle
    # Without the directive, the CA's requirement stops every domain before newAccount.
    text = config.read_text()
    config.write_text("\n".join(line for line in text.splitlines()
                                if "external account binding" not in line) + "\n")
    (tmp_path / "account" / "privkey.pem").unlink()
    again = run_config(config, "-F")
    assert again.code == 1
    assert "the CA requires external account binding" in again.stderr


@pytest.mark.parametrize(("option", "directive"), [
    (["--profile", "shortlived"], "profile"),
    (["--eab-kid", "k", "--eab-hmac-key", "/dev/null"], "external account binding"),
])
def test_profile_and_eab_options_go_in_the_file_with_config(
    pebble: Pebble, tmp_path: Path, option: list[str], directive: str
) -> None:
    config = write_config(tmp_path, pebble, {"x.example.org": []}, eab("/nonexistent"))
    result = run_config(config, *option)
    assert result.code == 1
    assert result.stderr == (
        f"letskencrypt: {option[0]} goes in the configuration file ({directive}) with --config\n"
    )
