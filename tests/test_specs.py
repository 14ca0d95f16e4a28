"""The role specs are the one place that says what a role is and may do:
the edge graph, the sandbox, the container images, compose.yaml and the
Kubernetes manifests must agree with them.  Each test names what is out of
date when a spec changes and the rest does not follow.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from letskencrypt import container, rpc, sandbox
from letskencrypt.context import RoleConfig
from letskencrypt.errors import LetskencryptError
from letskencrypt.roles import ROLES, spec_of, specs
from letskencrypt.spec import Grant, Network

from tests.conftest import ROOT
from tests.test_kubernetes import pod_specs

SERVICES = ROOT / "services" / "letskencrypt"
RUN_DIR = "/run/letskencrypt"
# What the design says; a spec that drifts from it is a decision to review.
DESIGN = {
    "keeps_root": {"chngproc", "fileproc"},
    "network": {"netproc": Network.ANY, "dnsproc": Network.DNS},
    "drives": {"netproc"},
}
# An environment any container could have: Let's Encrypt, so that the roles
# that hold trust anchors have them built in.
ENVIRONMENT = {"DOMAINS": "example.org www.example.org"}


def test_every_role_has_a_spec_of_its_own() -> None:
    assert set(specs()) == set(ROLES)
    for role, spec in specs().items():
        assert spec.name == role
        assert Path(SERVICES, "roles", f"{role}.py").is_file()


def test_the_specs_say_what_the_design_says() -> None:
    assert {r for r, s in specs().items() if s.keeps_root is not None} == DESIGN["keeps_root"]
    assert {r: s.network for r, s in specs().items() if s.network is not Network.NONE} == (
        DESIGN["network"]
    )
    assert {r for r, s in specs().items() if s.drives} == DESIGN["drives"]


def test_the_edge_graph_agrees_with_the_specs() -> None:
    for role, spec in specs().items():
        serves = {edge.name for edge in rpc.edges_served_by(role)}
        calls = {edge.name for edge in rpc.edges_called_by(role)}
        assert set(spec.serves) == serves, f"{role}: spec serves {spec.serves}, rpc.EDGES {serves}"
        assert set(spec.calls) == calls, f"{role}: spec calls {spec.calls}, rpc.EDGES {calls}"
    for edge in rpc.EDGES.values():
        assert {edge.client, edge.server} <= set(ROLES), edge


def config_for(role: str) -> RoleConfig:
    return container.role_config(role, ENVIRONMENT)


def test_the_sandbox_profile_is_the_spec(tmp_path: Path) -> None:
    """Beyond what every role reads, a role's Landlock rules are exactly its
    spec's grants and its servers' sockets; its mount namespace shows its
    called edges too, and it is writable exactly where the spec writes."""
    common = {rule.path for rule in sandbox.profile(config_for("certproc")).rules} - {
        f"{RUN_DIR}/cert"
    }
    for role in ROLES:
        config = config_for(role)
        spec = spec_of(role)
        profile = sandbox.profile(config)
        own = {(r.path, r.access) for r in profile.rules if r.path not in common}
        wanted = {(g.path, g.access) for g in spec.grants(config.settings)}
        wanted |= {(f"{RUN_DIR}/{edge}", sandbox.Fs.MAKE_SOCK | sandbox.Fs.REMOVE_FILE)
                   for edge in spec.serves}  # fmt: skip
        assert own == wanted, role
        assert profile.network == (spec.network is not Network.NONE), role
        assert profile.tcp_ports == spec.network.tcp_ports, role
        shown = {m.path: m.writable for m in sandbox.mirrors(config) if m.path not in common}
        assert {f"{RUN_DIR}/{edge}" for edge in spec.calls} <= set(shown), role
        assert {path for path, writable in shown.items() if writable} == {
            *(g.path for g in spec.grants(config.settings) if g.writable),
            *(f"{RUN_DIR}/{edge}" for edge in spec.serves),
        }, role


def needed_mounts(role: str, configuration: bool = True, dns01: bool = True) -> dict[str, bool]:
    """Path -> whether it must be writable, of what a role's container must
    mount beyond its edges: its settings' paths that its spec grants or
    opens, and the files the container entry point reads for it (with
    `configuration`, the CONFIG file: every role reads it)."""
    config = config_for(role)
    spec = spec_of(role)
    own_paths = {
        value for value in vars(config.settings).values() if isinstance(value, str)
    } | {os.path.dirname(v) for v in vars(config.settings).values() if isinstance(v, str)}
    needed: dict[str, bool] = {}
    grants: list[Grant] = [*spec.grants(config.settings), *spec.opens(config.settings)]
    for grant in grants:
        if grant.path in own_paths:
            needed[grant.path] = needed.get(grant.path, False) or grant.writable
    if container.uses(role, "ca_bundle"):
        needed[container.CA_BUNDLE] = False
    if container.uses(role, "trust_anchors"):
        needed[container.TRUST_ANCHORS] = False
    if configuration:
        needed[container.CONFIG_PATH] = False
    if dns01 and container.uses(role, "tsig_key"):
        # What the role opens in a dns-01 run (CHALLENGE=dns-01).
        needed[container.TSIG_KEY] = False
    return needed


def check_mounts(
    where: str,
    role: str,
    edges: set[str],
    mounts: dict[str, bool],
    configuration: bool = True,
    dns01: bool = True,
) -> None:
    """`mounts`: target -> writable, of the role's container in `where`
    (`configuration`: where CONFIG may be used; `dns01`: where dns-01 may
    be; see needed_mounts)."""
    spec = spec_of(role)
    edge_targets = {f"{RUN_DIR}/{edge}" for edge in (*spec.serves, *spec.calls)}
    assert edges == {*spec.serves, *spec.calls}, f"{where}: {role}'s edge volumes"
    for target in edge_targets:
        assert mounts.pop(target, None) is True, f"{where}: {role} must mount {target} rw"
    needed = needed_mounts(role, configuration, dns01)
    used = set()
    for path, writable in needed.items():
        covering = [t for t in mounts if path == t or path.startswith(t.rstrip("/") + "/")]
        assert covering, f"{where}: {role} needs {path} mounted"
        target = max(covering, key=len)
        used.add(target)
        if writable:
            assert mounts[target], f"{where}: {role} writes {path}: {target} must be rw"
    for target, writable in mounts.items():
        assert target in used, f"{where}: {role} mounts {target}, which its spec does not use"
        if writable:
            assert any(needed[p] for p in needed if p == target or p.startswith(target + "/")), (
                f"{where}: {role} mounts {target} rw, but its spec only reads there"
            )


def compose_mounts(service: dict[str, Any]) -> tuple[set[str], dict[str, bool]]:
    edges, mounts = set(), {}
    for volume in service.get("volumes", []):
        source, target, *options = volume.rsplit(":", 2) if volume.endswith(":ro") else (
            *volume.rsplit(":", 1),
        )
        if source in rpc.EDGES:
            edges.add(source)
        mounts[target] = "ro" not in options
    return edges, mounts


def test_compose_agrees_with_the_specs() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert set(compose["services"]) == set(ROLES)
    assert set(compose["volumes"]) == set(rpc.EDGES)
    for role, service in compose["services"].items():
        edges, mounts = compose_mounts(service)
        check_mounts("compose.yaml", role, edges, mounts)
        network = spec_of(role).network
        mode = service.get("network_mode")
        if network is Network.NONE:
            assert mode == "none", f"compose.yaml: {role} has no network in its spec"
        elif network is Network.DNS:
            # In the network namespace of the role that reaches the CA.
            assert mode == f"service:{next(r for r in ROLES if spec_of(r).drives)}", role
        else:
            assert mode != "none", f"compose.yaml: {role} needs a network"


# A value other than the default for each variable compose.yaml passes, with
# what it needs besides to be valid.
ENVIRONMENT_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "ACME_SERVER": ("https://acme.test/dir", {}),
    "CONTACT": ("mailto:admin@example.org", {}),
    "KEY_TYPE": ("rsa2048", {}),
    "ACCOUNT_KEY_TYPE": ("ecdsa384", {}),
    "FORCE": ("1", {}),
    "BACKUP": ("1", {}),
    "DAEMON": ("1", {}),
    "RENEW_INTERVAL": ("3600", {"DAEMON": "1"}),
    "RENEW_JITTER": ("60", {"DAEMON": "1"}),
    "RENEW_BACKOFF": ("600", {"DAEMON": "1"}),
    "STRICT": ("1", {}),
    "VERBOSE": ("2", {}),
    "CHALLENGE": ("dns-01", {"DNS_SERVER": "127.0.0.1:53"}),
    "DNS_SERVER": ("127.0.0.2:53", {"CHALLENGE": "dns-01"}),
    "DNS_CHECK_SERVER": ("127.0.0.3", {"CHALLENGE": "dns-01", "DNS_SERVER": "127.0.0.1:53"}),
}
# Every role: the names, and what decides how they are validated (wildcards
# only with dns-01, which needs its server); STRICT, VERBOSE; the file.
EVERY_ROLE = {"DOMAINS", "CONFIG", "CHALLENGE", "DNS_SERVER", "STRICT", "VERBOSE"}


def settings_depend_on(
    role: str, tsig_key: Path, monkeypatch: pytest.MonkeyPatch
) -> set[str]:
    """The variables whose value changes `role`'s configuration in its container."""
    monkeypatch.setattr(container, "TSIG_KEY", str(tsig_key))

    def configured(environ: dict[str, str]) -> object:
        try:
            config = container.role_config(role, environ)
        except LetskencryptError as error:  # an invalid mix is a value too
            return ("refused", type(error).__name__)
        return config.verbosity, config.settings

    depends = set()
    for name, (value, needs) in ENVIRONMENT_VARIANTS.items():
        environ = {"DOMAINS": "a.example.org", **needs}
        if configured(environ) != configured({**environ, name: value}):
            depends.add(name)
    return depends


def test_compose_gives_each_role_the_variables_its_settings_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tsig_key = tmp_path / "tsig.key"
    tsig_key.write_text('key "k" {\n\talgorithm hmac-sha256;\n\tsecret "c2VjcmV0";\n};\n')
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for role, service in compose["services"].items():
        given = set(service["environment"])
        # dnsproc, in netproc's network namespace, must be recreated with it
        # (podman-compose recreates what changed): it gets netproc's variables.
        wanted = settings_depend_on("netproc" if role == "dnsproc" else role, tsig_key,
                                    monkeypatch) | EVERY_ROLE  # fmt: skip
        assert given == wanted, f"compose.yaml: {role} gets {sorted(given - wanted)} " \
            f"it does not use, lacks {sorted(wanted - given)}"
        # A wildcard name is refused without dns-01: every role must know the challenge.
        environ = {"DOMAINS": "*.example.org", "CHALLENGE": "http-01"}
        with pytest.raises(LetskencryptError, match="wildcard"):
            container.role_config(role, environ)


@pytest.mark.parametrize("workload", ["cronjob", "deployment"])
def test_kubernetes_agrees_with_the_specs(workload: str) -> None:
    spec = pod_specs()[workload]
    containers = {c["name"]: c for c in spec["containers"] if c["name"] in ROLES}
    assert set(containers) == set(ROLES), workload
    for role, role_container in containers.items():
        edges, mounts = set(), {}
        for mount in role_container.get("volumeMounts", []):
            if mount["name"].startswith("sock-"):
                edges.add(mount["name"].removeprefix("sock-"))
            mounts[mount["mountPath"]] = not mount.get("readOnly", False)
        # The sidecar (DAEMON=1) does not take CONFIG yet: no configuration.
        # The manifests carry no TSIG key yet (README: DNS validation).
        check_mounts(f"kubernetes {workload}", role, edges, mounts, workload == "cronjob",
                     dns01=False)


def test_each_role_imports_only_the_wheels_its_spec_names() -> None:
    """Its image carries only those: a role module that imports another
    optional wheel would fail in its container."""
    optional = {"cryptography": "cryptography", "requests": "requests"}
    for role, spec in specs().items():
        forbidden = [module for wheel, module in optional.items() if wheel not in spec.wheels]
        code = (
            "import sys\n"
            f"for name in {forbidden!r}: sys.modules[name] = None\n"
            f"import letskencrypt.roles.{role}\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{role} imports beyond {spec.wheels}: {result.stderr}"


# The modules that read the specs instead of naming roles.
READERS = ("sandbox.py", "supervisor.py", "process.py", "container.py", "pod.py", "launch.py",
           "sandbox_check.py", "namespace.py")  # fmt: skip


def role_names_in_code(path: Path) -> list[str]:
    """String constants that are a role's name (not docstrings or comments)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        f"{path.name}:{node.lineno}: {node.value}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and node.value in ROLES
        and id(node) not in docstrings
    ]


def test_no_reader_of_the_specs_names_a_role() -> None:
    named = [hit for name in READERS for hit in role_names_in_code(SERVICES / name)]
    named += [hit for path in (ROOT / "tools" / "images").glob("*.py")
              for hit in role_names_in_code(path)]  # fmt: skip
    assert named == []
