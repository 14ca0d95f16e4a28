"""Test helper: small real PKIs (root -> intermediate -> leaf) built with cryptography."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime(2026, 11, 26, 18, 0, 0, tzinfo=UTC)

# EC key generation is fast; a few fixed keys keep the tests quick.
ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
INTERMEDIATE_KEY = ec.generate_private_key(ec.SECP384R1())
LEAF_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_cert(
    subject: str,
    issuer: str,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    names: list[str | x509.GeneralName] | None = None,
    not_before: datetime = NOW - timedelta(hours=1),
    not_after: datetime = NOW + timedelta(days=90),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [n if isinstance(n, x509.GeneralName) else x509.DNSName(n) for n in names]
            ),
            critical=False,
        )
    return builder.sign(signing_key, hashes.SHA256())


@dataclass
class Pki:
    root: x509.Certificate
    intermediate: x509.Certificate

    def leaf(
        self,
        names: list[str | x509.GeneralName],
        key: ec.EllipticCurvePrivateKey = LEAF_KEY,
        **kw: object,
    ):
        return make_cert(
            "leaf", "intermediate", key.public_key(), INTERMEDIATE_KEY, ca=False, names=names, **kw
        )


def make_pki() -> Pki:
    root = make_cert(
        "root",
        "root",
        ROOT_KEY.public_key(),
        ROOT_KEY,
        ca=True,
        not_after=NOW + timedelta(days=3650),
    )
    intermediate = make_cert(
        "intermediate",
        "root",
        INTERMEDIATE_KEY.public_key(),
        ROOT_KEY,
        ca=True,
        not_after=NOW + timedelta(days=1000),
    )
    return Pki(root, intermediate)


def pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
