"""The eight roles, one module each; each declares its `SPEC` (spec.RoleSpec)
at the top and runs with `run(config, log)`.  A native role process is
`python -m letskencrypt.roles ROLE` (see launch.py), a container's
`python3 -m letskencrypt.container ROLE`.

`spec_of` imports only the role asked for: a role's container image carries
only that role's wheels, so the other modules may not import there.
"""

import importlib
from functools import cache
from types import ModuleType

from letskencrypt.errors import InputError
from letskencrypt.spec import RoleSpec

ROLES = (
    "netproc",
    "acctproc",
    "keyproc",
    "dnsproc",
    "chngproc",
    "certproc",
    "fileproc",
    "revokeproc",
)


def module_of(role: str) -> ModuleType:
    if role not in ROLES:
        raise InputError(f"unknown role {role[:40]!r}; one of {', '.join(ROLES)}")
    return importlib.import_module(f"letskencrypt.roles.{role}")


@cache
def spec_of(role: str) -> RoleSpec:
    spec = getattr(module_of(role), "SPEC", None)
    if not isinstance(spec, RoleSpec) or spec.name != role:
        raise InputError(f"letskencrypt.roles.{role} declares no spec of its own")
    return spec


def specs() -> dict[str, RoleSpec]:
    """Every role's spec (imports every role: not inside a role's container)."""
    return {role: spec_of(role) for role in ROLES}
