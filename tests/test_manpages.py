"""The manual pages, man/letskencrypt.1 and man/letskencrypt.conf.5: clean
mdoc(7) by mandoc's lint, in step with the command line (every option of
the parsers, and only those) and with conf.py (every directive), their
examples valid, and installed by the wheel under share/man."""

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from letskencrypt import conf, confrun, deploy, fleet, options

from tests.conftest import ROOT

MAN = ROOT / "man"
COMMAND_PAGE = MAN / "letskencrypt.1"
CONF_PAGE = MAN / "letskencrypt.conf.5"
PAGES = (COMMAND_PAGE, CONF_PAGE)
WHEEL_PATHS = {
    "share/man/man1/letskencrypt.1": COMMAND_PAGE,
    "share/man/man5/letskencrypt.conf.5": CONF_PAGE,
}

# mdoc macros that may follow others on a line: where one starts, the
# arguments of the one before it end.
CALLABLE = frozenset({
    "Ac", "Ao", "Aq", "Ar", "Bc", "Bo", "Bq", "Brc", "Bro", "Brq", "Cm", "Dc",
    "Do", "Dq", "Dv", "Em", "Ev", "Fl", "Ic", "Li", "Lk", "Mt", "Nm", "No",
    "Ns", "Oc", "Oo", "Op", "Pa", "Pc", "Pf", "Po", "Pq", "Qc", "Ql", "Qo",
    "Qq", "Sc", "So", "Sq", "Sx", "Sy", "Va", "Xr",
})
DELIMITERS = frozenset(".,:;()[]|!?")
# An mdoc argument: a word, or a string in double quotes ("" is a quote).
ARGUMENT = re.compile(r'"((?:[^"]|"")*)"|(\S+)')


def page(path: Path) -> list[str]:
    return path.read_text().splitlines()


def macro_arguments(lines: list[str], macro: str) -> list[list[str]]:
    """The arguments of every `macro` on these lines, up to the next macro or
    delimiter, one list per use."""
    found = []
    for line in lines:
        if not line.startswith(".") or line.startswith(".\\\""):
            continue
        words = [quoted or plain for quoted, plain in ARGUMENT.findall(line[1:])]
        for index, word in enumerate(words):
            if word != macro:
                continue
            arguments = []
            for argument in words[index + 1:]:
                if argument in CALLABLE or argument in DELIMITERS:
                    break
                arguments.append(argument)
            found.append(arguments)
    return found


def block(lines: list[str], start: int, opening: str, closing: str) -> list[str]:
    """The lines from the first `opening` at or after `start` to its `closing`."""
    first = next(i for i in range(start, len(lines)) if lines[i].startswith(opening))
    depth = 0
    for index in range(first, len(lines)):
        if lines[index].startswith(opening):
            depth += 1
        elif lines[index].startswith(closing):
            depth -= 1
            if depth == 0:
                return lines[first:index + 1]
    raise AssertionError(f"no {closing} for the {opening} of line {first + 1}")


def list_after(lines: list[str], marker: str) -> list[str]:
    """The .Bl ... .El list that first follows the line `marker`."""
    assert marker in lines, f"{marker!r} is no longer in the page"
    return block(lines, lines.index(marker), ".Bl", ".El")


def section(lines: list[str], heading: str) -> list[str]:
    """The lines of `.Sh heading`, up to the next .Sh."""
    start = lines.index(f".Sh {heading}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(".Sh ")),
               len(lines))
    return lines[start:end]


def flags(lines: list[str]) -> set[str]:
    """The options marked up with .Fl: `Fl n` is -n, `Fl -config` --config."""
    return {f"-{flag}" for arguments in macro_arguments(lines, "Fl") for flag in arguments}


def option_strings(parser: options.Parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def assert_same_options(parser_options: set[str], documented: set[str], what: str) -> None:
    undocumented = sorted(parser_options - documented)
    unknown = sorted(documented - parser_options)
    assert not undocumented, f"{what}: options missing from letskencrypt.1: {undocumented}"
    assert not unknown, f"{what}: letskencrypt.1 documents options it lacks: {unknown}"


# (a) mandoc's lint


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_mandoc_lint_is_clean(path: Path) -> None:
    mandoc = shutil.which("mandoc")
    if mandoc is None:
        pytest.fail("mandoc is not installed (apt-get install mandoc; `make test` does)")
    result = subprocess.run(
        [mandoc, "-T", "lint", "-W", "warning", str(path)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert (result.stdout + result.stderr, result.returncode) == ("", 0)


# (b) letskencrypt(1) and the parsers


def test_every_option_of_the_command_is_documented() -> None:
    documented = flags(list_after(page(COMMAND_PAGE), "The options are as follows:"))
    assert_same_options(option_strings(options.build_parser()), documented, "letskencrypt")


def test_every_option_of_status_is_documented() -> None:
    lines = page(COMMAND_PAGE)
    documented = flags(list_after(lines, ".Ss Status"))
    assert_same_options(option_strings(confrun.status_parser()), documented, "status")


def test_every_option_of_sandbox_check_is_documented() -> None:
    """sandbox_check builds its parser inside main(): its --help says what it has."""
    result = subprocess.run(
        [sys.executable, "-m", "letskencrypt", "sandbox-check", "--help"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    options = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", result.stdout))
    assert {"--strict", "--user", "-v", "--verbose"} <= options
    lines = page(COMMAND_PAGE)
    subsection = lines[lines.index(".Ss Sandbox check"):]
    subsection = subsection[:next(i for i, line in enumerate(subsection[1:], 1)
                                  if line.startswith((".Ss ", ".Sh ")))]
    # -h/--help goes without saying there.
    assert_same_options(options - {"-h", "--help"}, flags(subsection), "sandbox-check")


def test_the_synopsis_names_only_real_options() -> None:
    lines = section(page(COMMAND_PAGE), "SYNOPSIS")
    known = option_strings(options.build_parser()) | option_strings(confrun.status_parser())
    for arguments in macro_arguments(lines, "Fl"):
        for flag in arguments:
            if flag.startswith("-"):
                assert f"-{flag}" in known
            else:  # a group of letters: -bFnNrsv
                assert {f"-{letter}" for letter in flag} <= known, flag


def test_the_deploy_hook_environment_is_documented() -> None:
    job = fleet.Job(handle="example.org", names=("example.org",), settings={},
                    cert_dir="/etc/ssl/acme", authority="", account_key="")  # fmt: skip
    ours = {name for name in deploy.hook_environment(job) if name.startswith("LETSKENCRYPT_")}
    hook = list_after(page(COMMAND_PAGE), ".Ss Deploy hook")
    documented = {arguments[0] for arguments in macro_arguments(hook, "Ev") if arguments}
    assert ours == documented - {"LETSKENCRYPT_"}


def test_the_exit_statuses_are_documented() -> None:
    items = [
        " ".join(line.split()[1:])
        for line in list_after(page(COMMAND_PAGE), ".Sh EXIT STATUS")
        if line.startswith(".It ")
    ]
    assert items == ["0", "1", "2", "129 , 130 , 143"]


# (c) letskencrypt.conf(5) and conf.py


def conf_directives() -> set[str]:
    """The directives conf.py reads, from its own code: the names it gives
    them (`settings.set("api url", ...)`, `directive = "domain key"`)."""
    tree = ast.parse(Path(conf.__file__).read_text())
    found = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "set" and node.args
                and isinstance(node.args[0], ast.Constant)):
            found.add(node.args[0].value)
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and any(isinstance(t, ast.Name) and t.id == "directive" for t in node.targets)):
            found.add(node.value.value)
    # Read by the parser itself rather than stored as settings.
    return found | {"include", "alternative names"}


def test_conf_directives_are_found() -> None:
    directives = conf_directives()
    assert {"api url", "account key", "domain key", "domain full chain certificate",
            "trust anchors", "ca bundle", "certificate directory", "challenge", "rotate key",
            "profile", "preferred chain", "deploy hook", "state directory",
            "sign with"} <= directives
    for directive in directives:
        assert directive.split()[0] in conf.KEYWORDS | conf.OUR_WORDS, directive


def test_every_keyword_is_in_the_conf_page() -> None:
    lines = page(CONF_PAGE)
    marked = {word for macro in ("Ic", "Cm") for arguments in macro_arguments(lines, macro)
              for word in arguments}
    assert sorted((conf.KEYWORDS | conf.OUR_WORDS) - marked) == []
    assert sorted({*conf.OPENBSD_KEY_TYPES, *conf.CHALLENGE_TYPES} - marked) == []


def test_every_directive_is_in_the_conf_page() -> None:
    lines = page(CONF_PAGE)
    described = set()
    for heading in ("GLOBAL DIRECTIVES", "AUTHORITY DIRECTIVES", "DOMAIN DIRECTIVES"):
        for arguments in macro_arguments([line for line in section(lines, heading)
                                          if line.startswith(".It Ic ")], "Ic"):
            described.add(" ".join(arguments))
    directives = conf_directives()
    assert sorted(directives - described) == [], "directives missing from letskencrypt.conf.5"
    assert sorted(described - directives) == [], "letskencrypt.conf.5 describes unknown ones"


def examples(path: Path) -> list[str]:
    lines = section(page(path), "EXAMPLES")
    found = []
    for index, line in enumerate(lines):
        if line.startswith(".Bd -literal"):
            end = lines.index(".Ed", index)
            found.append("\n".join(lines[index + 1:end]).replace("\\e", "\\") + "\n")
    return found


def test_the_conf_examples_parse() -> None:
    found = examples(CONF_PAGE)
    assert len(found) == 2
    for text in found:
        config = conf.parse(text, "/etc/acme-client.conf")
        assert config.domains
    # The first is OpenBSD's own example, as tests/data has it.
    openbsd = (ROOT / "tests" / "data" / "openbsd-acme-client.conf").read_text()
    assert found[0] == "".join(
        line for line in openbsd.splitlines(keepends=True) if not line.startswith("#")
    ).lstrip("\n")


def test_the_command_examples_use_real_options() -> None:
    known = option_strings(options.build_parser()) | option_strings(confrun.status_parser())
    for text in examples(COMMAND_PAGE):
        for word in text.split():
            if re.fullmatch(r"--?[A-Za-z][\w-]*", word):
                assert word in known, word


# (d) the wheel


def test_the_wheel_installs_the_pages(tmp_path: Path) -> None:
    """Built from a copy of the tree (a build writes build/ and *.egg-info
    beside the sources), with the venv's setuptools: no network."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE.md"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("services", "man"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--no-build-isolation", "--wheel-dir", str(wheels), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("letskencrypt-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        data = {
            name.split(".data/data/", 1)[1]: archive.read(name)
            for name in archive.namelist()
            if ".data/data/" in name
        }
    assert data == {name: path.read_bytes() for name, path in WHEEL_PATHS.items()}
