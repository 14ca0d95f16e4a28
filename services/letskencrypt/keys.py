"""Private keys on disk, JWK/JWS (RFC 7515/7517/7518/7638) and CSRs."""

import errno
import hashlib
import ipaddress
import json
import os
import secrets

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from letskencrypt import fsutil
from letskencrypt.b64 import b64url
from letskencrypt.b64 import b64url_decode as b64url_decode
from letskencrypt.errors import InputError, KeyFileError, KeyFileMissing
from letskencrypt.fsutil import KEY_DIR_MODE, KEY_FILE_MODE, MAX_KEY_FILE_SIZE, make_directories
from letskencrypt.validate import IP, KEY_TYPES, identifier_type, validate_names

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192

_RSA_BITS = {"rsa2048": 2048, "rsa3072": 3072, "rsa4096": 4096}
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ecdsa256": ec.SECP256R1,
    "ecdsa384": ec.SECP384R1,
}
# curve name -> (JWK "crv", JWS "alg", coordinate size in bytes, hash)
_CURVE_PARAMS: dict[str, tuple[str, str, int, type[hashes.HashAlgorithm]]] = {
    "secp256r1": ("P-256", "ES256", 32, hashes.SHA256),
    "secp384r1": ("P-384", "ES384", 48, hashes.SHA384),
}


# --- key generation and files ----------------------------------------------


def generate_key(key_type: str) -> PrivateKey:
    """Generate a new private key of one of KEY_TYPES."""
    if key_type in _RSA_BITS:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])
    if key_type in _EC_CURVES:
        return ec.generate_private_key(_EC_CURVES[key_type]())
    raise InputError(f"unknown key type {key_type!r} (choose from {', '.join(KEY_TYPES)})")


def _check_key(key: object, label: str) -> PrivateKey:
    """Accept only the key types and sizes ACME CAs and we support."""
    if isinstance(key, rsa.RSAPrivateKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise KeyFileError(
                f"{label}: RSA key size {key.key_size} not supported "
                f"(must be {MIN_RSA_BITS}..{MAX_RSA_BITS} bits)"
            )
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in _CURVE_PARAMS:
            raise KeyFileError(
                f"{label}: EC curve {key.curve.name} not supported (use P-256 or P-384)"
            )
        return key
    raise KeyFileError(f"{label}: unsupported key type {type(key).__name__} (use RSA or EC)")


def _open_key_file(path: str, label: str, create_flag: str) -> int:
    try:
        return os.open(path, fsutil.NOFOLLOW_READ_FLAGS)
    except FileNotFoundError:
        raise KeyFileMissing(f"{label}: no such file (use {create_flag} to create it)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyFileError(f"{label}: is a symbolic link, refusing to follow it") from None
        raise KeyFileError(f"{label}: cannot open: {exc.strerror}") from None


def _read_key_file(fd: int, label: str) -> bytes:
    try:
        st = fsutil.check_regular(fd)
    except fsutil.NotRegularFile:
        raise KeyFileError(f"{label}: not a regular file") from None
    if st.st_size > MAX_KEY_FILE_SIZE:
        raise KeyFileError(f"{label}: too large ({st.st_size} bytes, at most {MAX_KEY_FILE_SIZE})")
    try:
        # Bounded again: the file may have grown since fstat.
        return fsutil.read_bounded(fd, MAX_KEY_FILE_SIZE)
    except fsutil.FileTooLarge:
        raise KeyFileError(f"{label}: too large (more than {MAX_KEY_FILE_SIZE} bytes)") from None


def _parse_key(data: bytes, label: str) -> PrivateKey:
    if b"-----BEGIN" not in data:
        raise KeyFileError(f"{label}: not a PEM private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{label}: encrypted keys are not supported") from None
    except UnsupportedAlgorithm:
        raise KeyFileError(f"{label}: unsupported key algorithm") from None
    except ValueError:
        raise KeyFileError(f"{label}: not a valid PEM private key") from None
    return _check_key(key, label)


def load_key(path: str, what: str = "account key", create_flag: str = "-n") -> PrivateKey:
    """Load an unencrypted PEM RSA or EC private key; never follows a symlink.

    `what` and `create_flag` only shape error messages, e.g.
    "account key /x/y: no such file (use -n to create it)".
    """
    label = f"{what} {path}"
    fd = _open_key_file(path, label, create_flag)
    try:
        data = _read_key_file(fd, label)
    finally:
        os.close(fd)
    return _parse_key(data, label)


def _write_exclusive(dir_fd: int, name: str, pem: bytes, label: str) -> None:
    """Write `pem` to a new mode-0400 file `name` in `dir_fd`, fsynced."""
    try:
        fd = fsutil.open_new(name, KEY_FILE_MODE, dir_fd=dir_fd)
    except FileExistsError:
        raise KeyFileError(f"{label}: already exists, refusing to overwrite it") from None
    except OSError as exc:
        raise KeyFileError(f"{label}: cannot create: {exc.strerror}") from None
    fsutil.complete_new(fd, name, pem, KEY_FILE_MODE, dir_fd=dir_fd)


def _link_exclusive(dir_fd: int, temp_name: str, name: str, label: str) -> bool:
    """Give the complete temp file its final name, failing if that name exists.

    Returns False if the file system cannot make hard links.
    """
    try:
        os.link(temp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise KeyFileError(f"{label}: already exists, refusing to overwrite it") from None
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EOPNOTSUPP):
            return False
        raise KeyFileError(f"{label}: cannot create: {exc.strerror}") from None
    return True


def _store_key(dir_fd: int, name: str, pem: bytes, label: str) -> None:
    temp_name = f".key-{secrets.token_hex(8)}.tmp"
    _write_exclusive(dir_fd, temp_name, pem, label)
    try:
        linked = _link_exclusive(dir_fd, temp_name, name, label)
    finally:
        os.unlink(temp_name, dir_fd=dir_fd)
    if not linked:
        # No hard links here: exclusive create of the final name instead,
        # which a crash in mid-write could leave incomplete.
        _write_exclusive(dir_fd, name, pem, label)
    os.fsync(dir_fd)


def _new_key_for(path: str, key_type: str, label: str) -> tuple[PrivateKey, bytes, int, str]:
    """A new key, its PKCS#8 PEM, and a descriptor of the directory of `path`
    (made, mode 0700, if missing) with the file name to write there."""
    key = generate_key(key_type)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    directory, name = os.path.split(os.path.abspath(path))
    try:
        make_directories(directory, KEY_DIR_MODE)
        dir_fd = fsutil.open_directory(directory)
    except OSError as exc:
        raise KeyFileError(
            f"{label}: cannot create directory {directory}: {exc.strerror}"
        ) from None
    return key, pem, dir_fd, name


def create_key(path: str, key_type: str, what: str = "key") -> PrivateKey:
    """Generate a key and store it as PKCS#8 PEM in a new mode-0400 file.

    Missing parent directories are created with mode 0700.  The key is written
    to an exclusive (O_EXCL|O_NOFOLLOW) temporary file, fsynced and then
    hard-linked to `path`, so that `path` never exists with partial content,
    even after a crash; the link fails if `path` already exists, even as a
    dangling symlink.
    """
    label = f"{what} {path}"
    key, pem, dir_fd, name = _new_key_for(path, key_type, label)
    try:
        _store_key(dir_fd, name, pem, label)
    finally:
        os.close(dir_fd)
    return key


def load_or_create_key(
    path: str, create: bool, key_type: str, what: str, create_flag: str
) -> tuple[PrivateKey, bool]:
    """Load the key at `path`; if missing and `create`, create it.

    Returns (key, created).
    """
    try:
        return load_key(path, what, create_flag), False
    except KeyFileMissing:
        if not create:
            raise
    try:
        return create_key(path, key_type, what), True
    except KeyFileError:
        # Lost a creation race: another process made it in the meantime.
        if os.path.lexists(path):
            return load_key(path, what, create_flag), False
        raise


def key_type_of(key: "PrivateKey | PublicKey") -> str:
    """The --key-type name of a key: rsa2048, ..., ecdsa384 (rsaN for RSA of
    another size, which load_key accepts)."""
    pub = _public(key)
    if isinstance(pub, rsa.RSAPublicKey):
        return f"rsa{pub.key_size}"
    for name, curve in _EC_CURVES.items():
        if pub.curve.name == curve.name:
            return name
    raise InputError(f"unsupported EC curve {pub.curve.name} (use P-256 or P-384)")


def spki_sha256(key: "PrivateKey | PublicKey") -> str:
    """SHA-256 of the key's SubjectPublicKeyInfo (DER), hex: its public fingerprint."""
    return hashlib.sha256(public_key_der(key)).hexdigest()


def require_key_file(path: str, what: str, create_flag: str) -> None:
    """That a key file is at `path`, a regular file and no symlink, without
    reading it (a key about to be replaced need not parse).
    KeyFileMissing if there is none."""
    label = f"{what} {path}"
    fd = _open_key_file(path, label, create_flag)
    try:
        fsutil.check_regular(fd)
    except fsutil.NotRegularFile:
        raise KeyFileError(f"{label}: not a regular file") from None
    finally:
        os.close(fd)


def write_key(path: str, key_type: str, what: str = "key") -> PrivateKey:
    """Generate a key and put it at `path`, replacing what is there: a
    complete mode-0400 file, fsynced, renamed over `path`, the directory
    fsynced (a reader, or a crash, sees the old file or the whole new one).
    Missing parent directories are created with mode 0700."""
    label = f"{what} {path}"
    key, pem, dir_fd, name = _new_key_for(path, key_type, label)
    try:
        fsutil.replace(
            name, pem, KEY_FILE_MODE, dir_fd=dir_fd, temp_name=f".key-{secrets.token_hex(8)}.tmp"
        )
    except OSError as exc:
        raise KeyFileError(f"{label}: cannot write: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    return key


# --- JWK / JWS --------------------------------------------------------------


def _public(key: PrivateKey | PublicKey) -> PublicKey:
    if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        return key.public_key()
    if isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        return key
    raise InputError(f"unsupported key type {type(key).__name__} (use RSA or EC)")


def _curve_params(curve: ec.EllipticCurve) -> tuple[str, str, int, type[hashes.HashAlgorithm]]:
    try:
        return _CURVE_PARAMS[curve.name]
    except KeyError:
        raise InputError(f"unsupported EC curve {curve.name} (use P-256 or P-384)") from None


def _int_bytes(value: int, size: int | None = None) -> bytes:
    """Big-endian bytes: minimal length, or left-padded to `size`."""
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(length, "big")


def jwk(public_key: PrivateKey | PublicKey) -> dict[str, str]:
    """Return the public JWK (RFC 7517/7518) with only the required members."""
    pub = _public(public_key)
    if isinstance(pub, rsa.RSAPublicKey):
        numbers = pub.public_numbers()
        return {
            "e": b64url(_int_bytes(numbers.e)),
            "kty": "RSA",
            "n": b64url(_int_bytes(numbers.n)),
        }
    crv, _alg, size, _hash = _curve_params(pub.curve)
    point = pub.public_numbers()
    return {
        "crv": crv,
        "kty": "EC",
        "x": b64url(_int_bytes(point.x, size)),
        "y": b64url(_int_bytes(point.y, size)),
    }


def thumbprint(public_key: PrivateKey | PublicKey) -> str:
    """RFC 7638 JWK thumbprint: SHA-256 of the canonical JWK JSON, base64url."""
    canonical = json.dumps(jwk(public_key), sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def jws_alg(key: PrivateKey | PublicKey) -> str:
    """The JWS "alg" for a key: RS256, ES256 or ES384."""
    pub = _public(key)
    if isinstance(pub, rsa.RSAPublicKey):
        return "RS256"
    return _curve_params(pub.curve)[1]


def _sign(key: PrivateKey, signing_input: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _crv, _alg, size, hash_cls = _curve_params(key.curve)
        der = key.sign(signing_input, ec.ECDSA(hash_cls()))
        r, s = decode_dss_signature(der)
        # JWS wants fixed-width r || s (RFC 7518 §3.4), not DER.
        return _int_bytes(r, size) + _int_bytes(s, size)
    raise InputError(f"cannot sign with key type {type(key).__name__} (use RSA or EC)")


def sign_jws(
    key: PrivateKey, protected: dict[str, object], payload: bytes | None
) -> dict[str, str]:
    """Sign as flattened JWS JSON; payload None means POST-as-GET (empty payload).

    The "alg" header is always derived from the key, overriding any given one.
    """
    header = dict(protected)
    header["alg"] = jws_alg(key)
    protected_b64 = b64url(json.dumps(header, separators=(",", ":")).encode("utf-8"))
    payload_b64 = "" if payload is None else b64url(payload)
    signature = _sign(key, f"{protected_b64}.{payload_b64}".encode("ascii"))
    return {"protected": protected_b64, "payload": payload_b64, "signature": b64url(signature)}


# --- CSR --------------------------------------------------------------------


def san_entry(name: str) -> x509.GeneralName:
    """A validated name as a subjectAltName entry: iPAddress for an address,
    dNSName for a domain name (RFC 8738 section 7)."""
    if identifier_type(name) == IP:
        return x509.IPAddress(ipaddress.ip_address(name))
    return x509.DNSName(name)


def build_csr(key: PrivateKey, names: list[str]) -> bytes:
    """DER CSR for `names` (domain names, wildcards among them, and IP
    addresses, all in subjectAltName).  CN: the first domain name, if it has
    at most 64 characters; never an address, which belongs in an iPAddress
    entry (RFC 8738 section 7) and in a CN, read by clients as a host name,
    would only repeat it as text: a CSR of addresses alone has an empty
    subject."""
    names = validate_names(names, wildcards=True)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise InputError(f"cannot sign a CSR with key type {type(key).__name__} (use RSA or EC)")
    subject: list[x509.NameAttribute] = []
    domains = [name for name in names if identifier_type(name) != IP]
    if domains and len(domains[0]) <= 64:  # ub-common-name (RFC 5280)
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, domains[0]))
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .add_extension(
            x509.SubjectAlternativeName([san_entry(n) for n in names]), critical=False
        )
    )
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def public_key_der(key_or_public: PrivateKey | PublicKey) -> bytes:
    """SubjectPublicKeyInfo DER of a key (private keys are reduced to public)."""
    return _public(key_or_public).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
