"""The CA's trust anchors: the roots certproc verifies every chain to, and
revokeproc every installed certificate.

Built in, for Let's Encrypt (PEM files next to this module, public roots,
checked by tests/test_anchors.py against their SHA-256 fingerprints):

    production  ISRG Root X1  96bcec06264976f37460779acf28c5a7cfe8a3c0aae11a8ffcee05c0bddf08c6
                ISRG Root X2  69729b8e15a86efc177a57afb7171dfc64add28c2fca8cf1507e34453ccb1470
    staging     (STAGING) Pretend Pear X1
                              e70570a989f8565aabdf7cae27abd1621872d6a3f811e3fef27e3dba02912198
                (STAGING) Bogus Broccoli X2
                              9b2a339fe6a3e85585c4cd75536cb8c1cf7cd603b9a64bec2521858ae48da85d

Any other CA: `--trust-anchors FILE`, PEM CERTIFICATE blocks only.  The
anchors reach certproc and revokeproc as PEM text in their settings, so the
roles need no file of them; hence the caps (the settings are at most 64 KiB).

The file is checked here as text (no cryptography: the command line also
runs in containers whose image lacks it) and, where cryptography is at hand,
each anchor is parsed, must be a CA certificate and not expired.
"""

from datetime import UTC, datetime
from importlib import resources

from letskencrypt import fsutil, pem
from letskencrypt.constants import MAX_ANCHOR_BYTES, MAX_ANCHORS
from letskencrypt.errors import CertificateRejected, InputError

BUILT_IN_FILES = ("letsencrypt-production.pem", "letsencrypt-staging.pem")


def built_in(name: str) -> bytes:
    """One of BUILT_IN_FILES, as shipped in the package."""
    if name not in BUILT_IN_FILES:
        raise ValueError(f"no built-in trust anchors {name!r}")
    return resources.files("letskencrypt").joinpath("anchors", name).read_bytes()


def read_file(path: str) -> bytes:
    """The bytes of an anchor file: a readable regular file of bounded size."""
    what = f"--trust-anchors {path}"
    try:
        return fsutil.read_file(path, MAX_ANCHOR_BYTES, follow_symlinks=True)
    except fsutil.NotRegularFile:
        raise InputError(f"{what}: not a regular file") from None
    except fsutil.FileTooLarge:
        raise InputError(
            f"{what}: larger than {MAX_ANCHOR_BYTES} bytes; give only the CA's root "
            "certificates, not a system bundle"
        ) from None
    except OSError as error:
        raise InputError(f"{what}: {error.strerror}") from None


def validate(data: bytes, source: str, now: datetime | None = None) -> str:
    """The anchors as PEM text, or InputError naming `source` and the fault."""
    try:
        pem.certificate_ders(data, MAX_ANCHOR_BYTES, MAX_ANCHORS)
    except CertificateRejected as error:
        raise InputError(f"{source}: {error}") from None
    try:
        from letskencrypt import certs  # needs cryptography
    except ImportError:  # a role image without it: certproc and revokeproc check
        return data.decode("ascii")
    try:
        parsed = certs.parse_anchors(data)
    except CertificateRejected as error:
        raise InputError(f"{source}: {error}") from None
    now = now or datetime.now(UTC)
    for index, anchor in enumerate(parsed):
        if anchor.not_valid_after_utc < now:
            raise InputError(
                f"{source}: trust anchor {index} expired on {anchor.not_valid_after_utc}"
            )
    return data.decode("ascii")
