"""The container images of `make images`: one per role, on a distroless-style base.

Each image runs as uid 65532, has no shell and no package manager, works on
a read-only root with no capabilities and no network, and holds only the
wheels its role imports (tools/build_images.py, ROLE_WHEELS).  The wheels
come in shared layers (the runtime images of RUNTIMES there), so each set is
stored once, and a role's own layer is its code only.  The first test
needs no podman: it proves on the host that every role's code imports without
the wheels its image lacks.  The others use real podman; the session fixture
runs `make images`, which installs podman and builds what is missing or out
of date.  With IMAGE_PREFIX set (say localhost/lke-test-) the images built
and checked are PREFIX<name>:latest, not localhost/letskencrypt-<name>:latest.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
SIZES_FILE = ROOT / "build" / "image-sizes.txt"
RUN_TIMEOUT = 120
# What `podman run` gets in compose.yaml and Kubernetes, more or less.
HARDENED = (
    "--rm",
    "--read-only",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    "--network=none",
    "--user",
    "65532",
)
MISSING_DOMAINS = "DOMAINS is empty"
# What no image may have: a shell, a package manager, an installer.
FORBIDDEN_PROGRAMS = ("sh", "bash", "dash", "busybox", "apt", "apt-get", "dpkg", "pip", "pip3")


def _load_build_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_images", ROOT / "tools/build_images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_images"] = module
    spec.loader.exec_module(module)
    return module


build_images = _load_build_tool()
containerfile = build_images.containerfile
ROLES: tuple[str, ...] = build_images.ROLES
ROLE_WHEELS: dict[str, tuple[str, ...]] = build_images.ROLE_WHEELS
OPTIONAL_MODULES: dict[str, frozenset[str]] = build_images.OPTIONAL_MODULES
RUNTIMES: dict = build_images.RUNTIMES
# Every distinct layer of the eight role images, stored once: the base
# (~55 MB), grpcio+protobuf (~22 MB), cryptography (~18 MB), requests (~3 MB)
# and eight code layers (~2 MB each).  Before the wheels were shared: ~313 MB.
MAX_UNIQUE_LAYERS = 150e6
# A role's own layer: the letskencrypt package, compiled, and no wheel
# (2.07 MB with ARI, account lifecycle, IP identifiers and dns-persist-01;
# a wheel in it would add several MB).
MAX_ROLE_LAYER = 3e6


# A wheel whose top-level module has another name.
IMPORT_NAMES = {"dnspython": "dns"}


def absent_wheels(role: str) -> list[str]:
    return sorted(set(OPTIONAL_MODULES) - set(ROLE_WHEELS[role]))


# --- on the host: the import graph matches the images ------------------------

IMPORT_PROBE = textwrap.dedent(
    """
    import importlib, importlib.abc, json, os, sys

    role, blocked = sys.argv[1], frozenset(filter(None, sys.argv[2].split(",")))

    class NotInTheImage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r} in this image", name=name)
            return None

    sys.meta_path.insert(0, NotInTheImage())
    importlib.import_module(f"letskencrypt.roles.{role}")
    from letskencrypt import container

    os.environ.pop("DOMAINS", None)
    try:
        container.main([role])
        code = None
    except SystemExit as exit:
        code = exit.code
    eager = sorted({name.partition(".")[0] for name in sys.modules})
    for module in sys.argv[3:]:
        importlib.import_module(module)
    loaded = sorted({name.partition(".")[0] for name in sys.modules})
    print(json.dumps({"code": code, "eager": eager, "loaded": loaded}))
    """
)
# What a role loads only when a run needs it: dnspython, for dns-01 (about
# 0.1 s that every other run, and the supervisor, do not spend).
LAZY_MODULES: dict[str, tuple[str, ...]] = {
    "chngproc": ("letskencrypt.dnsupdate",),
    "dnsproc": ("letskencrypt.dnsquery",),
}


@pytest.mark.parametrize("role", ROLES)
def test_role_imports_without_unneeded_wheels(role):
    """The role module and the container entry point import with the wheels
    its image lacks made unimportable, and they do use each wheel it has."""
    # A module two wheels bring (idna: requests and dnspython) is there if one is.
    present = set().union(*(OPTIONAL_MODULES[w] for w in ROLE_WHEELS[role]))
    blocked = sorted(set().union(*(OPTIONAL_MODULES[w] for w in absent_wheels(role))) - present)
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, role, ",".join(blocked), *LAZY_MODULES.get(role, ())],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env={k: v for k, v in os.environ.items() if k != "DOMAINS"},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["code"] == 1
    assert result.stderr.startswith(f"letskencrypt: {role}: {MISSING_DOMAINS}")
    assert "dns" not in report["eager"], f"{role} loads dnspython in every run"
    for wheel in ROLE_WHEELS[role]:
        module = IMPORT_NAMES.get(wheel, wheel)
        assert module in report["loaded"], f"{role} gets {wheel} but does not import it"


def test_every_role_has_an_image_definition():
    """Each role is built on the runtime that holds exactly its wheels, and
    the runtimes on each other, the first on the base (which may be an
    upstream one): the templates, rendered as a build renders them."""
    for role in ROLES:
        runtime = build_images.role_runtime(role)
        assert build_images.runtime_wheels(runtime) == frozenset(ROLE_WHEELS[role])
        text = containerfile.role_containerfile(role, runtime, build_images.runtime_image(runtime))
        assert f"\nFROM {build_images.runtime_image(runtime)}\n" in text
        entrypoint = json.dumps(["python3", "-m", "letskencrypt.container", role])
        assert f"\nENTRYPOINT {entrypoint}\n" in text
        assert "\nUSER 65532:65532\n" in text
        assert f'io.letskencrypt.role="{role}"' in text
    for name, runtime in RUNTIMES.items():
        parent = (
            build_images.runtime_image(runtime.parent)
            if runtime.parent
            else build_images.BASE_IMAGE
        )
        text = containerfile.runtime_containerfile(name, parent)
        assert f"\nFROM {parent}\n" in text
        assert "\nCOPY --chown=0:0 site/ /usr/local/lib/python3.11/dist-packages/\n" in text
        assert "\nUSER 65532:65532\n" in text


def test_containerfiles_are_rendered_from_one_template(tmp_path):
    """No role or runtime has a Containerfile of its own to drift from the
    template; --containerfiles writes what a build would use, every
    placeholder filled, and a value that could escape its quotes is refused."""
    definitions = sorted(p.parent.name for p in (ROOT / "Dockerfiles").glob("*/Containerfile*"))
    assert definitions == ["base", "role", "runtime"]
    build_images.main(["--containerfiles", str(tmp_path), "--image-prefix", "localhost/x-"])
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(["base", *ROLES, *(f"runtime-{n}" for n in RUNTIMES)])
    for path in tmp_path.glob("*/Containerfile"):
        text = path.read_text()
        assert "@" not in text, path
        if path.parent.name != "base":
            assert "\nFROM localhost/x-" in text, path
    with pytest.raises(SystemExit, match="unsafe value"):
        values = {"DESCRIPTION": "d", "RUNTIME": "r", "RUNTIME_IMAGE": "i", "VERSION": "1"}
        containerfile.render(containerfile.ROLE_TEMPLATE, {**values, "ROLE": 'x" \\'})
    with pytest.raises(SystemExit, match="placeholders"):
        containerfile.render(containerfile.ROLE_TEMPLATE, {"ROLE": "x"})


# --- the images, under real podman ----------------------------------------------


def podman(*args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF))}
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def python_in(image: str, script: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Run `python3 -c script` in the image, hardened as in production."""
    return podman("run", *HARDENED, *options, "--entrypoint", "python3", image, "-c", script)


@pytest.fixture(scope="session")
def images(built_images: None) -> dict[str, dict]:
    """Every image's config, once `make images` has run (see conftest)."""
    names = build_images.all_images(build_images.BASE_IMAGE)
    result = podman("image", "inspect", *names)
    assert result.returncode == 0, result.stderr
    return dict(zip(names, json.loads(result.stdout), strict=True))


def image(role: str) -> str:
    return build_images.image_name(role)


@pytest.mark.parametrize("role", ROLES)
def test_image_config(images, role):
    config = images[image(role)]["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["python3", "-m", "letskencrypt.container", role]
    assert not config.get("Cmd")
    assert config["WorkingDir"] == "/"
    assert config["Labels"]["io.letskencrypt.role"] == role
    assert config["Labels"]["org.opencontainers.image.title"] == f"letskencrypt-{role}"
    # The layers of its runtime (the base's, then one per wheel set), then
    # the role's own, nothing else.
    runtime = build_images.role_runtime(role)
    parent_layers = images[build_images.BASE_IMAGE]["RootFS"]["Layers"]
    for name in build_images.runtime_chain(runtime):
        layers = images[build_images.runtime_image(name)]["RootFS"]["Layers"]
        assert layers[:-1] == parent_layers, name
        parent_layers = layers
    layers = images[image(role)]["RootFS"]["Layers"]
    assert layers[:-1] == parent_layers


@pytest.mark.parametrize("role", ROLES)
def test_no_shell(images, role):
    result = podman("run", "--rm", "--network=none", "--entrypoint", "/bin/sh", image(role))
    assert result.returncode != 0
    assert "no such file or directory" in result.stderr.lower()


@pytest.mark.parametrize("role", ROLES)
def test_missing_domains_fails_in_one_line(images, role):
    """The entry point runs on a read-only root as 65532, no capabilities, no
    network: Python, the role's imports and the configuration check work."""
    result = podman("run", *HARDENED, image(role))
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"letskencrypt: {role}: {MISSING_DOMAINS}")


IMAGE_PROBE = textwrap.dedent(
    """
    import importlib.metadata, importlib.util, json, os, shutil, sys
    import letskencrypt.roles.{role}

    def installed(distribution):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def uncompiled(top):
        for directory, _subdirs, files in os.walk(top):
            for name in files:
                path = os.path.join(directory, name)
                if name.endswith(".py") and not os.path.exists(
                    importlib.util.cache_from_source(path)
                ):
                    yield path

    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    print(json.dumps({{
        "ids": [os.getuid(), os.getgid(), os.geteuid()],
        "modules": {{m: importlib.util.find_spec(m) is not None for m in {modules}}},
        "missing": [d for d in {distributions} if installed(d) is None],
        "programs": [p for p in {programs} if shutil.which(p, path=path)],
        "uncompiled": [p for top in sys.path if top.startswith("/usr/")
                       for p in uncompiled(top)][:20],
    }}))
    """
)


@pytest.mark.parametrize("role", ROLES)
def test_role_imports_in_its_image(images, role):
    """The role module imports inside its image, which has its wheels and no
    other optional one, every module compiled (nothing is ever written), and
    nothing to run."""
    modules = sorted(set().union(*OPTIONAL_MODULES.values()) - {"_cffi_backend", "pycparser"})
    distributions = [
        build_images.requirement_name(r) for r in build_images.role_requirements(role)
    ]
    script = IMAGE_PROBE.format(
        role=role,
        modules=modules,
        distributions=[*distributions, "letskencrypt"],
        programs=list(FORBIDDEN_PROGRAMS),
    )
    # No --user: the image's own user.
    result = python_in(image(role), script)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ids"] == [65532, 65532, 65532]
    expected = {m: False for m in modules}
    for wheel in ROLE_WHEELS[role]:
        expected.update({m: True for m in OPTIONAL_MODULES[wheel] if m in expected})
    assert report["modules"] == expected
    # Every dependency of pyproject.toml that this role gets (grpcio, protobuf,
    # the sandbox's, ...) is installed.
    assert report["missing"] == []
    assert report["programs"] == []
    assert report["uncompiled"] == []


@pytest.mark.parametrize("role", [r for r in ROLES if "cryptography" not in ROLE_WHEELS[r]])
def test_cryptography_is_not_in_the_image(images, role):
    result = python_in(image(role), "import cryptography")
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'cryptography'" in result.stderr


def test_base_image(images):
    base = images[build_images.BASE_IMAGE]["Config"]
    assert base["User"] == "65532:65532"
    assert base["Entrypoint"] == ["python3"]
    script = textwrap.dedent(
        """
        import ctypes, os, pwd, socket, ssl, stat, zoneinfo
        assert pwd.getpwuid(65532).pw_name == "nonroot"
        assert stat.S_IMODE(os.stat("/tmp").st_mode) == 0o1777
        context = ssl.create_default_context()
        assert context.cert_store_stats()["x509_ca"] > 100
        assert socket.getservbyname("https") == 443
        zoneinfo.ZoneInfo("Europe/Paris")
        ctypes.CDLL("libstdc++.so.6")
        ctypes.CDLL("libseccomp.so.2")
        assert not os.path.exists("/usr/bin/openssl")
        print("ok")
        """
    )
    result = python_in(build_images.BASE_IMAGE, script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_grpc_and_crypto_work_read_only(images):
    """gRPC (libstdc++) serves on a unix socket in /tmp; keys and signatures
    work in a key holder's image; netproc's TLS has the system's anchors."""
    grpc_script = textwrap.dedent(
        """
        from concurrent import futures
        import grpc
        server = grpc.server(futures.ThreadPoolExecutor(1))
        server.add_insecure_port("unix:/tmp/probe.sock")
        server.start()
        channel = grpc.insecure_channel("unix:/tmp/probe.sock")
        grpc.channel_ready_future(channel).result(timeout=10)
        server.stop(0)
        print("ok")
        """
    )
    result = python_in(image("fileproc"), grpc_script)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
    key_script = textwrap.dedent(
        """
        from letskencrypt import keys
        key = keys.generate_key("ecdsa256")
        jws = keys.sign_jws(key, {"nonce": "n", "url": "https://ca.test/x"}, b"{}")
        assert keys.build_csr(key, ["a.example"])
        print("ok")
        """
    )
    result = python_in(image("acctproc"), key_script)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
    tls_script = textwrap.dedent(
        """
        import ssl, requests
        from letskencrypt.roles import netproc
        context = ssl.create_default_context()
        context.load_verify_locations(cadata=netproc.load_trust_anchors(None).decode())
        assert context.cert_store_stats()["x509_ca"] > 100
        requests.Session()
        print("ok")
        """
    )
    result = python_in(image("netproc"), tls_script)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_layers_are_shared(images):
    """Each wheel set is one layer, shared by the role images that need it;
    a role's own layer is small (its code only; equal code may give equal
    layers); all eight role images together take well under what eight
    separate stacks of wheels did."""
    roles = [image(role) for role in ROLES]
    layers = build_images.image_layers(roles)
    for name in roles:
        # `podman history` sizes the same layers that `podman image inspect`
        # counts (its Size adds a few kB of metadata).
        assert [layer for layer, _size in layers[name]] == images[name]["RootFS"]["Layers"]
        metadata = images[name]["Size"] - sum(size for _layer, size in layers[name])
        assert 0 <= metadata < 100e3, (name, metadata)
    total = build_images.unique_layers_size(layers)
    assert total < MAX_UNIQUE_LAYERS, f"{total / 1e6:.1f} MB of distinct layers"
    for role in ROLES:
        _layer, size = layers[image(role)][-1]
        assert size < MAX_ROLE_LAYER, f"{role}'s own layer: {size / 1e6:.1f} MB"
    # Each runtime's own layer is in exactly the roles that have its wheels.
    for name in RUNTIMES:
        layer = images[build_images.runtime_image(name)]["RootFS"]["Layers"][-1]
        users = {r for r in ROLES if layer in images[image(r)]["RootFS"]["Layers"]}
        wanted = {r for r in ROLES if build_images.runtime_wheels(name) <= set(ROLE_WHEELS[r])}
        assert users == wanted, name


def test_image_sizes(images):
    """Record each image's layers and the total of distinct layers; fail on a
    gross regression (the base is ~55 MB)."""
    report = build_images.sizes_report(build_images.all_images(build_images.BASE_IMAGE))
    SIZES_FILE.parent.mkdir(exist_ok=True)
    SIZES_FILE.write_text(report)
    print(report)
    size = {name: config["Size"] for name, config in images.items()}
    assert size[build_images.BASE_IMAGE] < 80e6
    lean = [size[image(role)] for role in ROLES if not ROLE_WHEELS[role]]
    with_crypto = [size[image(role)] for role in ROLES if "cryptography" in ROLE_WHEELS[role]]
    assert max(lean) < min(with_crypto)
