import errno
import ipaddress
import json
import os
import stat

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from letskencrypt import keys
from letskencrypt.errors import InputError, KeyFileError, KeyFileMissing, LetskencryptError

RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPe"
    "bWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY36"
    "8QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4"
    "lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.fixture(scope="module")
def all_keys():
    # RSA 4096 generation is slow: once per module.
    return {key_type: keys.generate_key(key_type) for key_type in keys.KEY_TYPES}


def _pem(key, fmt=serialization.PrivateFormat.PKCS8, encryption=None):
    return key.private_bytes(
        serialization.Encoding.PEM, fmt, encryption or serialization.NoEncryption()
    )


def _write(path, data, mode=0o600):
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


# --- generation ------------------------------------------------------------


def test_generated_key_types(all_keys):
    sizes = {"rsa2048": 2048, "rsa3072": 3072, "rsa4096": 4096}
    for key_type, key in all_keys.items():
        if key_type in sizes:
            assert isinstance(key, rsa.RSAPrivateKey)
            assert key.key_size == sizes[key_type]
            assert key.public_key().public_numbers().e == 65537
        else:
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            assert key.curve.name == {"ecdsa256": "secp256r1", "ecdsa384": "secp384r1"}[key_type]


def test_unknown_key_type():
    with pytest.raises(InputError, match="unknown key type 'dsa1024'"):
        keys.generate_key("dsa1024")


# --- base64url -------------------------------------------------------------


def test_b64url_round_trip():
    for length in range(0, 40):
        data = os.urandom(length)
        encoded = keys.b64url(data)
        assert "=" not in encoded and "+" not in encoded and "/" not in encoded
        assert keys.b64url_decode(encoded) == data


@pytest.mark.parametrize("bad", ["AQAB=", "a+b_", "a/bc", "abcde", "ab cd", "AB\n", "AR"])
def test_b64url_decode_is_strict(bad):
    with pytest.raises(InputError, match="base64url"):
        keys.b64url_decode(bad)


# --- JWK / thumbprint ------------------------------------------------------


def test_thumbprint_rfc7638_example():
    n = int.from_bytes(keys.b64url_decode(RFC7638_N), "big")
    public = rsa.RSAPublicNumbers(65537, n).public_key()
    assert keys.jwk(public) == {"e": "AQAB", "kty": "RSA", "n": RFC7638_N}
    assert keys.thumbprint(public) == RFC7638_THUMBPRINT


def test_ec_jwk_coordinates_are_padded():
    # Find a P-256 key whose x coordinate has a leading zero byte.
    for secret in range(1, 5000):
        key = ec.derive_private_key(secret, ec.SECP256R1())
        if key.public_key().public_numbers().x < 1 << 248:
            break
    else:
        pytest.fail("no short coordinate found")
    member = keys.jwk(key)
    assert member["crv"] == "P-256" and member["kty"] == "EC"
    assert len(keys.b64url_decode(member["x"])) == 32
    assert len(keys.b64url_decode(member["y"])) == 32
    assert keys.b64url_decode(member["x"])[0] == 0


def test_jwk_members(all_keys):
    p384 = keys.jwk(all_keys["ecdsa384"])
    assert list(p384) == ["crv", "kty", "x", "y"] and p384["crv"] == "P-384"
    assert len(keys.b64url_decode(p384["x"])) == 48
    assert list(keys.jwk(all_keys["rsa2048"])) == ["e", "kty", "n"]
    # The private key and its public half give the same JWK.
    assert keys.jwk(all_keys["ecdsa256"]) == keys.jwk(all_keys["ecdsa256"].public_key())


def test_jws_alg(all_keys):
    expected = {
        "rsa2048": "RS256",
        "rsa3072": "RS256",
        "rsa4096": "RS256",
        "ecdsa256": "ES256",
        "ecdsa384": "ES384",
    }
    for key_type, key in all_keys.items():
        assert keys.jws_alg(key) == expected[key_type]
    with pytest.raises(InputError, match="unsupported EC curve"):
        keys.jws_alg(ec.generate_private_key(ec.SECP521R1()))


# --- JWS -------------------------------------------------------------------


def _verify_jws(key, jws):
    signing_input = f"{jws['protected']}.{jws['payload']}".encode()
    signature = keys.b64url_decode(jws["signature"])
    public = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        return
    size = {"secp256r1": 32, "secp384r1": 48}[key.curve.name]
    assert len(signature) == 2 * size
    r = int.from_bytes(signature[:size], "big")
    s = int.from_bytes(signature[size:], "big")
    hash_cls = hashes.SHA256 if size == 32 else hashes.SHA384
    public.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hash_cls()))


@pytest.mark.parametrize("key_type", keys.KEY_TYPES)
def test_sign_jws_verifies(all_keys, key_type):
    key = all_keys[key_type]
    protected = {"alg": "none", "nonce": "abc", "url": "https://ca.example/new-order", "kid": "k"}
    payload = json.dumps({"identifiers": [{"type": "dns", "value": "a.example"}]}).encode()
    jws = keys.sign_jws(key, protected, payload)
    assert set(jws) == {"protected", "payload", "signature"}
    header = json.loads(keys.b64url_decode(jws["protected"]))
    assert header == {**protected, "alg": keys.jws_alg(key)}
    assert protected["alg"] == "none"  # the caller's dict is not modified
    assert keys.b64url_decode(jws["payload"]) == payload
    _verify_jws(key, jws)


def test_sign_jws_post_as_get(all_keys):
    key = all_keys["ecdsa256"]
    jws = keys.sign_jws(key, {"nonce": "n", "url": "https://ca.example/x", "kid": "k"}, None)
    assert jws["payload"] == ""
    _verify_jws(key, jws)


def test_sign_jws_signature_differs_when_tampered(all_keys):
    key = all_keys["ecdsa384"]
    jws = keys.sign_jws(key, {"nonce": "n"}, b"{}")
    jws["payload"] = keys.b64url(b'{"x":1}')
    with pytest.raises(InvalidSignature):
        _verify_jws(key, jws)


# --- CSR -------------------------------------------------------------------


@pytest.mark.parametrize("key_type", keys.KEY_TYPES)
def test_csr(all_keys, key_type):
    key = all_keys[key_type]
    names = ["www.example.com", "Example.com.", "b.example.net"]
    csr = x509.load_der_x509_csr(keys.build_csr(key, names))
    assert csr.is_signature_valid
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == [
        "www.example.com",
        "example.com",
        "b.example.net",
    ]
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["www.example.com"]
    assert csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == keys.public_key_der(key)


def test_csr_long_first_name_has_empty_subject(all_keys):
    long_name = ("a" * 60) + ".example.com"
    csr = x509.load_der_x509_csr(keys.build_csr(all_keys["ecdsa256"], [long_name, "b.example"]))
    assert len(csr.subject) == 0
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == [long_name, "b.example"]


def test_csr_addresses_are_ip_sans_never_the_common_name(all_keys):
    names = ["192.0.2.1", "Www.Example.com", "2001:DB8::1", "example.net"]
    csr = x509.load_der_x509_csr(keys.build_csr(all_keys["ecdsa256"], names))
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [
        x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
        x509.DNSName("www.example.com"),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
        x509.DNSName("example.net"),
    ]
    # The first domain name, not the first name.
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["www.example.com"]


@pytest.mark.parametrize("names", [["127.0.0.1"], ["::1", "192.0.2.7"]])
def test_csr_of_addresses_alone_has_an_empty_subject(all_keys, names):
    csr = x509.load_der_x509_csr(keys.build_csr(all_keys["ecdsa256"], names))
    assert len(csr.subject) == 0
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == names


def test_csr_rejects_bad_addresses(all_keys):
    with pytest.raises(InputError, match="IPv4-mapped"):
        keys.build_csr(all_keys["ecdsa256"], ["ok.example", "::ffff:127.0.0.1"])


def test_csr_rejects_bad_names(all_keys):
    with pytest.raises(InputError, match="invalid domain name"):
        keys.build_csr(all_keys["ecdsa256"], ["ok.example", "bad..example"])


def test_public_key_der(all_keys):
    key = all_keys["rsa2048"]
    assert keys.public_key_der(key) == keys.public_key_der(key.public_key())
    loaded = serialization.load_der_public_key(keys.public_key_der(key))
    assert loaded.public_numbers() == key.public_key().public_numbers()


# --- key files -------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ecdsa256", "ecdsa384", "rsa2048"])
def test_create_key_then_load(tmp_path, key_type):
    path = str(tmp_path / "acct" / "sub" / "key.pem")
    key = keys.create_key(path, key_type)
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o400
    # The key's own directory is private; missing parents above it stay traversable.
    assert stat.S_IMODE(os.stat(tmp_path / "acct").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "acct" / "sub").st_mode) == 0o700
    with open(path, "rb") as file:
        assert file.read().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = keys.load_key(path)
    assert keys.public_key_der(loaded) == keys.public_key_der(key)
    assert sorted(os.listdir(tmp_path / "acct" / "sub")) == ["key.pem"]  # no temp file left


def test_create_key_mode_ignores_umask(tmp_path):
    old = os.umask(0)
    try:
        keys.create_key(str(tmp_path / "k.pem"), "ecdsa256")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "k.pem").st_mode) == 0o400


def test_create_key_refuses_existing_file(tmp_path):
    path = tmp_path / "key.pem"
    path.write_bytes(b"precious")
    with pytest.raises(KeyFileError, match=f"domain key {path}: already exists"):
        keys.create_key(str(path), "ecdsa256", "domain key")
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["key.pem"]


def test_create_key_without_hard_links(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "key.pem"
    key = keys.create_key(str(path), "ecdsa256")
    assert os.listdir(tmp_path) == ["key.pem"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400
    assert keys.public_key_der(keys.load_key(str(path))) == keys.public_key_der(key)
    with pytest.raises(KeyFileError, match="already exists"):
        keys.create_key(str(path), "ecdsa256")


def test_create_key_refuses_symlink(tmp_path):
    target = tmp_path / "elsewhere.pem"
    link = tmp_path / "key.pem"
    link.symlink_to(target)  # dangling: O_CREAT without O_EXCL would follow it
    with pytest.raises(KeyFileError, match="already exists"):
        keys.create_key(str(link), "ecdsa256")
    assert not target.exists()


def test_create_key_unknown_type_creates_nothing(tmp_path):
    with pytest.raises(InputError):
        keys.create_key(str(tmp_path / "d" / "key.pem"), "rsa1024")
    assert not (tmp_path / "d").exists()


def test_load_missing_names_file_and_flag(tmp_path):
    path = tmp_path / "nope.pem"
    with pytest.raises(KeyFileMissing) as info:
        keys.load_key(str(path), "account key", "-n")
    assert str(info.value) == f"account key {path}: no such file (use -n to create it)"
    with pytest.raises(KeyFileMissing, match=r"domain key .*nope.pem: no such file \(use -N"):
        keys.load_key(str(path), "domain key", "-N")


def test_load_refuses_symlink(tmp_path, all_keys):
    real = _write(tmp_path / "real.pem", _pem(all_keys["ecdsa256"]))
    link = tmp_path / "link.pem"
    link.symlink_to(real)
    with pytest.raises(KeyFileError, match=f"account key {link}: is a symbolic link"):
        keys.load_key(str(link))


def test_load_refuses_directory_and_fifo(tmp_path):
    with pytest.raises(KeyFileError, match=f"{tmp_path}: not a regular file"):
        keys.load_key(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(KeyFileError, match=f"{fifo}: not a regular file"):
        keys.load_key(str(fifo))


def test_load_refuses_large_file(tmp_path):
    path = _write(tmp_path / "big.pem", b"x" * (64 * 1024 + 1))
    with pytest.raises(KeyFileError, match=f"{path}: too large"):
        keys.load_key(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not a PEM private key"),
        (b"garbage", "not a PEM private key"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a valid PEM"),
    ],
)
def test_load_refuses_garbage(tmp_path, content, reason):
    path = _write(tmp_path / "k.pem", content)
    with pytest.raises(KeyFileError, match=f"domain key {path}: {reason}"):
        keys.load_key(path, "domain key", "-N")


def test_load_refuses_encrypted(tmp_path, all_keys):
    data = _pem(all_keys["ecdsa256"], encryption=serialization.BestAvailableEncryption(b"pw"))
    path = _write(tmp_path / "k.pem", data)
    with pytest.raises(KeyFileError, match=f"{path}: encrypted keys are not supported"):
        keys.load_key(path)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: ed25519.Ed25519PrivateKey.generate(), "unsupported key type"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "EC curve secp521r1 not supported"),
        (lambda: rsa.generate_private_key(65537, 1024), "RSA key size 1024 not supported"),
    ],
)
def test_load_refuses_unsupported_keys(tmp_path, make, reason):
    path = _write(tmp_path / "k.pem", _pem(make()))
    with pytest.raises(KeyFileError, match=f"{path}: {reason}"):
        keys.load_key(path)


@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa256", "ecdsa384"])
def test_load_traditional_format(tmp_path, all_keys, key_type):
    key = all_keys[key_type]
    data = _pem(key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert b"BEGIN RSA PRIVATE KEY" in data or b"BEGIN EC PRIVATE KEY" in data
    loaded = keys.load_key(_write(tmp_path / "k.pem", data))
    assert keys.public_key_der(loaded) == keys.public_key_der(key)


def test_load_or_create(tmp_path):
    path = str(tmp_path / "keys" / "acct.pem")
    with pytest.raises(KeyFileMissing, match="use -n to create it"):
        keys.load_or_create_key(path, False, "ecdsa256", "account key", "-n")
    key, created = keys.load_or_create_key(path, True, "ecdsa256", "account key", "-n")
    assert created
    again, created = keys.load_or_create_key(path, True, "ecdsa384", "account key", "-n")
    assert not created
    assert keys.public_key_der(again) == keys.public_key_der(key)
    again, created = keys.load_or_create_key(path, False, "ecdsa256", "account key", "-n")
    assert not created


def test_errors_share_a_base():
    assert issubclass(KeyFileMissing, KeyFileError)
    assert issubclass(KeyFileError, LetskencryptError)


# --- what --key-type and the deny list read of a key (issue 8) ----------------


def test_key_type_of(all_keys):
    for key_type, key in all_keys.items():
        assert keys.key_type_of(key) == key_type
        assert keys.key_type_of(key.public_key()) == key_type
    odd = rsa.generate_private_key(public_exponent=65537, key_size=2560)
    assert keys.key_type_of(odd) == "rsa2560"


def test_spki_sha256_is_the_public_keys_fingerprint(all_keys):
    import hashlib

    key = all_keys["ecdsa256"]
    digest = keys.spki_sha256(key)
    assert digest == keys.spki_sha256(key.public_key())
    assert digest == hashlib.sha256(keys.public_key_der(key)).hexdigest()
    assert len(digest) == 64 and digest != keys.spki_sha256(all_keys["ecdsa384"])


def test_require_key_file(tmp_path):
    path = tmp_path / "key.pem"
    with pytest.raises(KeyFileMissing, match=f"domain key {path}: no such file .use -N"):
        keys.require_key_file(str(path), "domain key", "-N")
    path.write_bytes(b"not even a key")
    keys.require_key_file(str(path), "domain key", "-N")  # not parsed
    link = tmp_path / "link.pem"
    link.symlink_to(path)
    with pytest.raises(KeyFileError, match="symbolic link"):
        keys.require_key_file(str(link), "domain key", "-N")
    with pytest.raises(KeyFileError, match="not a regular file"):
        keys.require_key_file(str(tmp_path), "domain key", "-N")


def test_write_key_replaces_atomically(tmp_path):
    path = tmp_path / "keys" / "new.pem"
    first = keys.write_key(str(path), "ecdsa256", "new domain key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    second = keys.write_key(str(path), "rsa2048", "new domain key")
    loaded = keys.load_key(str(path))
    assert keys.public_key_der(loaded) == keys.public_key_der(second)
    assert keys.public_key_der(loaded) != keys.public_key_der(first)
    assert sorted(os.listdir(path.parent)) == ["new.pem"]  # no temporary file left


def test_write_key_replaces_a_symlink_never_its_target(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "new.pem"
    path.symlink_to(victim)
    keys.write_key(str(path), "ecdsa256")
    assert victim.read_bytes() == b"precious"
    assert not path.is_symlink()
    keys.load_key(str(path))
