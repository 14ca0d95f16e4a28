"""The Containerfiles: the base's, as committed, and one template each for
the runtimes and the roles (Dockerfiles/*/Containerfile.in), rendered at
build time with what differs between them: the role's (or runtime's) name,
the image it builds on, its description and the version."""

import re
from pathlib import Path

from letskencrypt.roles import spec_of

from .common import ROOT
from .wheels import OPTIONAL_WHEELS, ROLES, RUNTIMES, package_version, project, requirement_name

DOCKERFILES = ROOT / "Dockerfiles"
BASE_CONTAINERFILE = DOCKERFILES / "base" / "Containerfile"
RUNTIME_TEMPLATE = DOCKERFILES / "runtime" / "Containerfile.in"
ROLE_TEMPLATE = DOCKERFILES / "role" / "Containerfile.in"

_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")
# What a value may hold: nothing that could end a quoted label, a JSON
# string or a line, nor another placeholder.
_SAFE_VALUE = re.compile(r"[^\"\\\n@]*")


def render(template: Path, values: dict[str, str]) -> str:
    """`template` with each @NAME@ replaced by values[NAME]; every
    placeholder must have a value and every value a placeholder."""
    text = template.read_text()
    used = set(_PLACEHOLDER.findall(text))
    if used != set(values):
        raise SystemExit(
            f"{template.relative_to(ROOT)}: placeholders {sorted(used)}, values {sorted(values)}"
        )
    for name, value in values.items():
        if not _SAFE_VALUE.fullmatch(value):
            raise SystemExit(f"{template.relative_to(ROOT)}: unsafe value for {name}: {value!r}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def runtime_description(name: str) -> str:
    adds = RUNTIMES[name].adds
    if adds:
        return f"letskencrypt's wheels for every role, and {', '.join(adds)}"
    common = [
        requirement_name(requirement)
        for requirement in project()["dependencies"]
        if requirement_name(requirement) not in OPTIONAL_WHEELS
    ]
    return f"letskencrypt's wheels for every role: {', '.join(common)}"


def runtime_containerfile(name: str, parent_image: str) -> str:
    return render(
        RUNTIME_TEMPLATE,
        {"NAME": name, "DESCRIPTION": runtime_description(name), "PARENT_IMAGE": parent_image},
    )


def role_containerfile(role: str, runtime: str, runtime_image: str) -> str:
    if role not in ROLES:
        raise SystemExit(f"unknown role {role!r}")
    return render(
        ROLE_TEMPLATE,
        {
            "ROLE": role,
            "DESCRIPTION": spec_of(role).summary,
            "RUNTIME": f"runtime-{runtime}",
            "RUNTIME_IMAGE": runtime_image,
            "VERSION": package_version(),
        },
    )
