"""The configuration file parser: OpenBSD's acme-client.conf(5) and our additions."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from letskencrypt import conf
from letskencrypt.conf import Config, ConfigError, Location, load, parse, select
from letskencrypt.errors import InputError
from letskencrypt.validate import KEY_TYPES, validate_names

from tests.conftest import ROOT

SAMPLE = ROOT / "tests" / "data" / "openbsd-acme-client.conf"

AUTHORITY = """\
authority ca {
\tapi url "https://ca.example/directory"
\taccount key "/etc/acme/ca.pem"
}
"""


def with_domain(*lines: str, handle: str = "example.com", before: str = AUTHORITY) -> str:
    body = "".join(f"\t{line}\n" for line in lines)
    return f'{before}domain {handle} {{\n\tdomain key "/etc/ssl/private/{handle}.key"\n{body}}}\n'


def one_domain(*lines: str, **kwargs: str) -> conf.Domain:
    (domain,) = parse(with_domain(*lines, **kwargs)).domains.values()
    return domain


def error_of(text: str, path: str = "<config>") -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text, path)
    return str(caught.value)


# The OpenBSD example file, unchanged


def test_openbsd_example_parses_as_is() -> None:
    config = load(str(SAMPLE))
    assert config.path == str(SAMPLE)
    assert list(config.authorities) == [
        "letsencrypt", "letsencrypt-staging", "buypass", "buypass-test"]
    letsencrypt = config.authorities["letsencrypt"]
    assert letsencrypt.api_url == "https://acme-v02.api.letsencrypt.org/directory"
    assert letsencrypt.account_key == "/etc/acme/letsencrypt-privkey.pem"
    assert letsencrypt.account_key_type is None
    assert letsencrypt.contact == ()
    assert letsencrypt.location == Location(str(SAMPLE), 5, 1)
    assert config.authorities["buypass"].contact == ("mailto:me@example.com",)
    assert config.authorities["buypass-test"].api_url == (
        "https://api.test4.buypass.no/acme/directory")
    (domain,) = config.domains.values()
    assert domain == conf.Domain(
        handle="example.com",
        names=("example.com", "secure.example.com"),
        domain_key="/etc/ssl/private/example.com.key",
        domain_key_type=None,
        certificate=None,
        chain_certificate=None,
        full_chain_certificate="/etc/ssl/example.com.fullchain.pem",
        sign_with="letsencrypt",
        challenge_dir=None,
        challenge="http-01",
        certificate_directory=None,
        rotate_key=False,
        profile=None,
        preferred_chain=None,
        deploy_hook=None,
        location=Location(str(SAMPLE), 27, 1),
    )
    assert config.state_directory is None


# Authorities


def test_an_authority_with_everything() -> None:
    config = parse("""\
authority ca {
\tapi url https://ca.example/dir
\taccount key /etc/acme/ca.pem rsa
\tcontact "mailto:ops@example.com"
\ttrust anchors /etc/acme/roots.pem
\tca bundle /etc/ssl/cert.pem
\texternal account binding kid-1 "/etc/acme/ca.eab"
}
""")
    assert config.authorities["ca"] == conf.Authority(
        name="ca",
        api_url="https://ca.example/dir",
        account_key="/etc/acme/ca.pem",
        account_key_type="rsa4096",
        contact=("mailto:ops@example.com",),
        trust_anchors="/etc/acme/roots.pem",
        ca_bundle="/etc/ssl/cert.pem",
        eab_kid="kid-1",
        eab_hmac_key="/etc/acme/ca.eab",
        location=Location("<config>", 1, 1),
    )


def test_an_authority_without_external_account_binding() -> None:
    config = parse("authority a {\n api url u\n account key /a.pem\n}\n")
    assert (config.authorities["a"].eab_kid, config.authorities["a"].eab_hmac_key) == (
        None, None)


@pytest.mark.parametrize(("written", "kid"), [
    ('external account binding kid-1 "/etc/acme/eab.key"', "kid-1"),
    ("external account binding \"key id\" /etc/acme/eab.key", "key id"),
    ("external account binding $kid $eab", "abc_DEF-123"),
    ("external account binding 0123 /etc/acme/eab.key", "0123"),
])
def test_external_account_binding(written: str, kid: str) -> None:
    config = parse('kid = "abc_DEF-123"\neab = "/etc/acme/eab.key"\n'
                   f"authority a {{\n api url u\n account key /a.pem\n {written}\n}}\n")
    authority = config.authorities["a"]
    assert (authority.eab_kid, authority.eab_hmac_key) == (kid, "/etc/acme/eab.key")


def test_external_account_binding_after_an_account_key_is_no_key_type() -> None:
    config = parse("authority a { api url u account key /a.pem "
                   "external account binding k /e.key\n}\n")
    authority = config.authorities["a"]
    assert (authority.account_key_type, authority.eab_kid) == (None, "k")


def test_external_is_a_word_outside_an_authority_block() -> None:
    config = parse(with_domain("alternative names { external }"))
    assert "external" in config.domains["example.com"].names


@pytest.mark.parametrize(("written", "key_type"), [
    ("", None),
    (" rsa", "rsa4096"),
    (" ecdsa", "ecdsa384"),
    *[(f" {name}", name) for name in KEY_TYPES],
])
def test_key_types(written: str, key_type: str | None) -> None:
    config = parse(with_domain(
        before=f"authority ca {{\n api url u\n account key /a.pem{written}\n}}\n",
        handle="x").replace('x.key"', f'x.key"{written}'))
    assert config.authorities["ca"].account_key_type == key_type
    assert config.domains["x"].domain_key_type == key_type


def test_an_unknown_key_type_is_refused() -> None:
    assert error_of("authority a {\n api url u\n account key /a.pem dsa\n}\n") == (
        "<config>:3:21: unknown key type 'dsa' (expected one of rsa, ecdsa, rsa2048, rsa3072,"
        " rsa4096, ecdsa256, ecdsa384)")


def test_key_types_are_those_of_validate_and_conf_stays_light() -> None:
    assert conf.KEY_TYPES == ("rsa2048", "rsa3072", "rsa4096", "ecdsa256", "ecdsa384")
    assert set(conf.OPENBSD_KEY_TYPES.values()) <= set(KEY_TYPES)
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, letskencrypt.conf; print(sorted(sys.modules))"],
        capture_output=True, text=True, check=True).stdout
    assert "cryptography" not in loaded
    assert "grpc" not in loaded


def test_options_may_share_a_line_and_blank_lines() -> None:
    config = parse("authority a { api url u account key /a.pem\n\n}\n")
    assert config.authorities["a"].account_key == "/a.pem"


# Domains


def test_a_domain_with_every_openbsd_directive() -> None:
    domain = one_domain(
        "domain name www.example.com",
        "alternative names { example.com, secure.example.com }",
        "domain certificate /etc/ssl/x.crt",
        "domain chain certificate /etc/ssl/x.chain.pem",
        "domain full chain certificate /etc/ssl/x.fullchain.pem",
        "sign with ca",
        'challengedir "/var/www/acme"',
    )
    assert domain.handle == "example.com"
    assert domain.names == ("www.example.com", "example.com", "secure.example.com")
    assert domain.domain_key == "/etc/ssl/private/example.com.key"
    assert domain.certificate == "/etc/ssl/x.crt"
    assert domain.chain_certificate == "/etc/ssl/x.chain.pem"
    assert domain.full_chain_certificate == "/etc/ssl/x.fullchain.pem"
    assert domain.sign_with == "ca"
    assert domain.challenge_dir == "/var/www/acme"


@pytest.mark.parametrize(("line", "field", "value"), [
    ("certificate directory /var/db/certs/x", "certificate_directory", "/var/db/certs/x"),
    ("challenge http-01", "challenge", "http-01"),
    ('challenge "http-01"', "challenge", "http-01"),
    ("rotate key", "rotate_key", True),
    ("profile shortlived", "profile", "shortlived"),
    ('preferred chain "ISRG Root X1"', "preferred_chain", "ISRG Root X1"),
    ("preferred chain Pebble", "preferred_chain", "Pebble"),
    ('deploy hook "rcctl reload httpd"', "deploy_hook", "rcctl reload httpd"),
])
def test_our_domain_directives(line: str, field: str, value: object) -> None:
    assert getattr(one_domain(line), field) == value


def test_challenge_per_authority_and_per_domain() -> None:
    persist = AUTHORITY.replace("\taccount key", "\tchallenge dns-persist-01\n\taccount key")
    other = AUTHORITY.replace("authority ca", "authority other")
    domains = "".join(
        f'domain {handle} {{\n\tdomain key "/k/{handle}"\n\tsign with {authority}\n{extra}}}\n'
        for handle, authority, extra in [
            ("a.example", "ca", ""),
            ("b.example", "ca", "\tchallenge http-01\n"),
            ("c.example", "other", ""),
        ]
    )
    config = parse(persist + other + domains)
    assert config.authorities["ca"].challenge == "dns-persist-01"
    assert config.authorities["other"].challenge is None
    assert [config.domains[h].challenge for h in ("a.example", "b.example", "c.example")] == [
        "dns-persist-01", "http-01", "http-01"]
    assert one_domain("challenge dns-persist-01").challenge == "dns-persist-01"
    with pytest.raises(ConfigError, match="unsupported challenge type 'dns-02'"):
        parse(AUTHORITY.replace("\taccount key", "\tchallenge dns-02\n\taccount key"))


def test_domain_defaults() -> None:
    domain = one_domain()
    assert (domain.challenge, domain.rotate_key, domain.profile, domain.deploy_hook) == (
        "http-01", False, None, None)
    assert domain.names == ("example.com",)
    assert domain.sign_with == "ca"


def test_alternative_names_commas_newlines_repeats_and_duplicates() -> None:
    domain = one_domain(
        "alternative names { a.example, b.example c.example",
        "  d.example,",
        "  example.com }",
        "alternative names { e.example a.example }",
    )
    assert domain.names == (
        "example.com", "a.example", "b.example", "c.example", "d.example", "e.example")


def test_ip_addresses_are_names_as_any_other() -> None:
    # Unquoted: an address is a word (it may start with a digit or ':').
    config = parse(
        AUTHORITY
        + "domain ::1 {\n domain key /k1.pem\n alternative names { 127.0.0.1, 2001:DB8::1 }\n}\n"
        + "domain web {\n domain key /k2.pem\n domain name 192.0.2.1\n"
        + " alternative names { www.example.org fe80::1%eth0 }\n}\n"
    )
    assert config.domains["::1"].names == ("::1", "127.0.0.1", "2001:DB8::1")
    assert config.domains["web"].names == ("192.0.2.1", "www.example.org", "fe80::1%eth0")
    # The file does not check names (the command line does, for every domain):
    # there, addresses come out canonical, or the one bad name is named.
    assert validate_names(list(config.domains["::1"].names)) == ["::1", "127.0.0.1", "2001:db8::1"]
    with pytest.raises(InputError, match="invalid IP address 'fe80::1%eth0': a zone id"):
        validate_names(list(config.domains["web"].names))


def test_top_level_directives() -> None:
    config = parse(
        'deploy hook "/usr/local/bin/reload-all"\nstate directory /var/db/letskencrypt\n'
        + with_domain("deploy hook /bin/own", handle="own")
        + 'domain other { domain key /k.pem\n}\n')
    assert config.state_directory == "/var/db/letskencrypt"
    assert config.domains["own"].deploy_hook == "/bin/own"
    assert config.domains["other"].deploy_hook == "/usr/local/bin/reload-all"


def test_domains_and_authorities_keep_file_order() -> None:
    text = AUTHORITY + "authority b { api url u\naccount key /b.pem\n}\n"
    for handle in ("z.example", "a.example", "m.example"):
        text += f"domain {handle} {{\n domain key /{handle}.key\n sign with b\n}}\n"
    config = parse(text)
    assert list(config.authorities) == ["ca", "b"]
    assert list(config.domains) == ["z.example", "a.example", "m.example"]


def test_our_words_are_still_names_in_openbsd_positions() -> None:
    config = parse("authority ca { api url u\naccount key /a.pem\n}\n"
                   "domain profile { domain key /k.pem\nsign with ca\n}\n")
    assert config.domains["profile"].sign_with == "ca"


# Lexical matters


def test_comments_anywhere() -> None:
    config = parse("# top\n" + AUTHORITY.replace("{", "{ # after brace")
                   + "domain x { domain key /k.pem # trailing\n}# after\n")
    assert config.domains["x"].domain_key == "/k.pem"


def test_a_comment_continued_by_a_backslash_swallows_the_next_line() -> None:
    domain = one_domain("# commented \\", "profile hidden", "profile shown")
    assert domain.profile == "shown"


def test_backslash_continues_a_line() -> None:
    domain = one_domain("domain full chain \\", "    certificate \\", "  /etc/ssl/f.pem")
    assert domain.full_chain_certificate == "/etc/ssl/f.pem"


def test_positions_after_a_continuation_count_physical_lines() -> None:
    assert error_of("x = \\\n  a\nbogus\n") == "<config>:3:1: unexpected 'bogus'"


@pytest.mark.parametrize(("written", "value"), [
    (r'"a b"', "a b"),
    (r'"say \"hi\""', 'say "hi"'),
    (r"'single \' quote'", "single ' quote"),
    (r'"back\slash"', r"back\slash"),
    (r'"new\nline"', r"new\nline"),
    ('"joined\\\nline"', "joinedline"),
    ('"spans\nlines"', "spanslines"),
    (r'"\ lead"', " lead"),
    ('"$notamacro #nocomment"', "$notamacro #nocomment"),
    ('"domain"', "domain"),
    ("un'quoted\"", "un'quoted\""),
    (r"esc\aped", "escaped"),
])
def test_quoting(written: str, value: str) -> None:
    assert one_domain(f"profile {written}").profile == value


def test_unquoted_words_allow_openbsd_punctuation() -> None:
    word = "a-b.c_d:e/f*g@h%i+j~k;l$m"
    assert one_domain(f"profile {word}").profile == word


# Macros


def test_macros_expand_in_unquoted_arguments() -> None:
    config = parse("""\
api_url="https://acme-v02.api.letsencrypt.org/directory"
le = letsencrypt
keys = /etc/ssl/private
authority $le {
\tapi url $api_url
\taccount key "/etc/acme/$le.pem"
}
domain example.com {
\tdomain key $keys/example.com.key
\tsign with $le
}
""")
    authority = config.authorities["letsencrypt"]
    assert authority.api_url == "https://acme-v02.api.letsencrypt.org/directory"
    assert authority.account_key == "/etc/acme/$le.pem"
    assert config.domains["example.com"].domain_key == "/etc/ssl/private/example.com.key"


def test_a_macro_value_is_lexed_again_and_may_hold_several_words() -> None:
    config = parse('hosts = a.example "b.example"\nkeyfile = "/k.pem ecdsa"\n'
                   + AUTHORITY + "domain a { domain key $keyfile\n}\n"
                   + "domain b { domain key /b.pem\nalternative names { $hosts }\n}\n")
    first = config.domains["a"]
    assert (first.domain_key, first.domain_key_type) == ("/k.pem", "ecdsa384")
    assert config.domains["b"].names == ("b", "a.example", "b.example")


def test_a_dollar_inside_a_word_or_a_macro_is_kept() -> None:
    config = parse('inner = "x"\nouter = "$inner"\np = a$inner\n'
                   + with_domain("profile $p", handle="h"))
    assert config.domains["h"].profile == "a$inner"
    assert error_of("inner = x\nouter = '$inner'\n" + with_domain("profile $outer")) == (
        "<config>:9:10: unexpected '$': quote an argument starting with it")


def test_a_macro_may_be_redefined() -> None:
    assert one_domain("profile $p", before='p = one\np = two\n' + AUTHORITY).profile == "two"


# Includes


def test_includes_are_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "authorities.conf").write_text(AUTHORITY + 'include "more/domains.conf"\n')
    (tmp_path / "sub" / "more").mkdir()
    (tmp_path / "sub" / "more" / "domains.conf").write_text(with_domain(before="", handle="$h"))
    main = tmp_path / "acme-client.conf"
    main.write_text("h = inc.example\ninclude sub/authorities.conf\n")
    config = load(str(main))
    assert config.domains["inc.example"].location == Location(
        str(tmp_path / "sub" / "more" / "domains.conf"), 1, 1)
    assert config.authorities["ca"].location.path == str(tmp_path / "sub" / "authorities.conf")


def test_parse_resolves_includes_against_its_path(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text(AUTHORITY)
    config = parse('include "a.conf"\n', str(tmp_path / "main.conf"))
    assert list(config.authorities) == ["ca"]


def test_an_include_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("\n\ninclude b.conf\n")
    (tmp_path / "b.conf").write_text('include "a.conf"\n')
    with pytest.raises(ConfigError) as caught:
        load(str(tmp_path / "a.conf"))
    assert str(caught.value) == (
        f"{tmp_path}/b.conf:1:9: include cycle: {tmp_path}/a.conf is already being read")


def test_a_file_may_be_included_twice_without_a_cycle(tmp_path: Path) -> None:
    (tmp_path / "macros.conf").write_text("x = 1\n")
    (tmp_path / "main.conf").write_text("include macros.conf\ninclude macros.conf\n")
    assert load(str(tmp_path / "main.conf")).domains == {}


def test_includes_nest_at_most_sixteen_deep(tmp_path: Path) -> None:
    for depth in range(17):
        (tmp_path / f"{depth}.conf").write_text(f"include {depth + 1}.conf\n")
    (tmp_path / "17.conf").write_text("")
    with pytest.raises(ConfigError) as caught:
        load(str(tmp_path / "0.conf"))
    assert str(caught.value) == f"{tmp_path}/16.conf:1:1: includes nested more than 16 deep"
    (tmp_path / "16.conf").write_text("")
    assert load(str(tmp_path / "0.conf")).authorities == {}


def test_a_missing_include(tmp_path: Path) -> None:
    assert error_of("\n  include nothere.conf\n", str(tmp_path / "main.conf")) == (
        f"{tmp_path}/main.conf:2:11: cannot include {tmp_path}/nothere.conf:"
        " No such file or directory")


def test_includes_count_towards_the_size_limit(tmp_path: Path) -> None:
    (tmp_path / "big.conf").write_text("#" * (conf.MAX_BYTES // 2) + "\n")
    text = "include big.conf\n" * 2
    assert error_of(text, str(tmp_path / "m")) == (
        f"{tmp_path}/m:2:9: with {tmp_path}/big.conf, the configuration is larger than"
        f" {conf.MAX_BYTES} bytes")


# Errors, with their exact position


@pytest.mark.parametrize(("text", "message"), [
    (AUTHORITY + "domain x {\n domain key /k.pem\n sign with nobody\n}\n",
     "<config>:7:12: sign with: unknown authority 'nobody'"),
    (AUTHORITY + AUTHORITY, "<config>:5:11: authority 'ca' already defined"),
    (with_domain(handle="d") + with_domain(handle="d", before=""),
     "<config>:8:8: domain 'd' already defined"),
    ("authority a {\n account key /a.pem\n}\n", "<config>:1:1: authority 'a' has no 'api url'"),
    ("authority a {\n api url u\n}\n", "<config>:1:1: authority 'a' has no 'account key'"),
    ("authority a {\n api url u\n api url v\n account key /a.pem\n}\n",
     "<config>:3:2: duplicate 'api url' (first at <config>:2:2)"),
    (AUTHORITY + "authority b { api url u\naccount key /b.pem\n}\n"
     "domain x {\n domain key /k.pem\n}\n",
     "<config>:8:1: domain 'x' has no 'sign with' and there are 2 authorities to choose from"),
    ("domain x {\n domain key /k.pem\n}\n",
     "<config>:1:1: domain 'x' has no 'sign with' and there are 0 authorities to choose from"),
    (AUTHORITY + "domain x {\n sign with ca\n}\n", "<config>:5:1: domain 'x' has no 'domain key'"),
    (with_domain("domain certificate x.crt"),
     "<config>:7:21: domain certificate must be an absolute path, not 'x.crt'"),
    (with_domain("domain chain certificate chain.pem"),
     "<config>:7:27: domain chain certificate must be an absolute path, not 'chain.pem'"),
    (with_domain('domain full chain certificate "../f.pem"'),
     "<config>:7:32: domain full chain certificate must be an absolute path, not '../f.pem'"),
    (with_domain("domain key /other.key"),
     "<config>:7:2: duplicate 'domain key' (first at <config>:6:2)"),
    (with_domain("domain certificate /etc/ssl/private/example.com.key"),
     "<config>:7:21: domain certificate '/etc/ssl/private/example.com.key' is already used"
     " (at <config>:6:13)"),
    (with_domain("profile $undefined"), "<config>:7:10: macro 'undefined' not defined"),
    (with_domain("preferred issuer X"),
     "<config>:7:12: expected 'chain' after 'preferred', got 'issuer'"),
    (with_domain('preferred chain ""'),
     "<config>:7:18: preferred chain: the issuer name is 1 to 64 printable characters"),
    (with_domain("preferred chain " + "x" * 65),
     "<config>:7:18: preferred chain: the issuer name is 1 to 64 printable characters"),
    (with_domain("preferred chain A", "preferred chain B"),
     "<config>:8:2: duplicate 'preferred chain' (first at <config>:7:2)"),
    ('x = "unterminated\n\n', "<config>:1:5: unterminated quoted string"),
    ("authority a {\n api url u\n", "<config>:1:13: unterminated authority a block:"
     " no '}' before end of file"),
    (AUTHORITY + "domain x {\n domain key /k.pem\n alternative names { a b\n",
     "<config>:7:20: unterminated alternative names: no '}' before end of file"),
    ("domain = x\n", "<config>:1:1: reserved word 'domain' cannot be a macro name"),
    ("  rsa=x\n", "<config>:1:3: reserved word 'rsa' cannot be a macro name"),
    ("a.b = x\n", "<config>:1:1: macro name 'a.b' may only have letters, digits and '_'"),
    (with_domain("challenge tls-alpn-01"),
     "<config>:7:12: unsupported challenge type 'tls-alpn-01' "
     "(supported: http-01, dns-01, dns-persist-01)"),
    (with_domain("challenge dns-01"),
     "<config>:5:1: domain 'example.com': challenge dns-01 needs 'dns server' and"
     " 'tsig key' (in it or its authority)"),
    (with_domain("dns server ns1.example.com"),
     "<config>:7:13: dns server 'ns1.example.com': give an IP address (and :PORT), not a name"),
    (with_domain("dns server 192.0.2.1:99999"),
     "<config>:7:13: dns server '192.0.2.1:99999': the port is a number from 1 to 65535"),
    (with_domain('dns check server 192.0.2.1 ::1 "[::1]:53x"'),
     "<config>:7:33: dns check server '[::1]:53x': the port is a number from 1 to 65535"),
    (with_domain("dns resolver 192.0.2.1"),
     "<config>:7:6: expected 'server' or 'check server' after 'dns', got 'resolver'"),
    (with_domain("tsig key relative.key"),
     "<config>:7:11: tsig key must be an absolute path, not 'relative.key'"),
    (with_domain("dns server 192.0.2.1", "dns server 192.0.2.2"),
     "<config>:8:2: duplicate 'dns server' (first at <config>:7:2)"),
    (with_domain("dns check server " + " ".join(f"192.0.2.{n}" for n in range(9))),
     "<config>:7:2: dns check server: at most 8 servers"),
    (with_domain("alternative names { a, }"),
     "<config>:7:25: expected a name in alternative names, got '}'"),
    (with_domain("alternative names { }"),
     "<config>:7:22: expected a name in alternative names, got '}'"),
    (with_domain("rotate"), "<config>:7:8: expected 'key' after 'rotate', got end of line"),
    (with_domain("api url u"), "<config>:7:2: unexpected 'api' in a domain block"),
    (AUTHORITY + "domain x { domain key /k.pem\n} domain y\n",
     "<config>:6:3: expected end of line, got 'domain'"),
    ("authority\n", "<config>:1:10: expected an authority name, got end of line"),
    ("authority a\n{\n", "<config>:1:12: expected '{' after authority a, got end of line"),
    ("domain key {\n", "<config>:1:8: expected a domain handle, got the reserved word 'key'"
     " (quote it)"),
    ("\tfoo bar\n", "<config>:1:2: unexpected 'foo'"),
    ("x = -a\n", "<config>:1:5: unexpected '-': quote an argument starting with it"),
    ("x = é\n", "<config>:1:5: unexpected character 'é'"),
    ("x = 'a\0b'\n", "<config>:1:7: NUL character in quoted string"),
    ("state directory var/db\n",
     "<config>:1:17: state directory must be an absolute path, not 'var/db'"),
    ("authority a { api url u\n account key /a.pem\n trust anchors roots.pem\n}\n",
     "<config>:3:16: trust anchors must be an absolute path, not 'roots.pem'"),
    ("deploy hook a\ndeploy hook b\n", "<config>:2:1: duplicate 'deploy hook' (first at"
     " <config>:1:1)"),
    ("x = 1\r\n", "<config>:1:6: unexpected character '\\r'"),
    ("authority a {\n api url u\n account key /a.pem\n contact a\n contact b\n}\n",
     "<config>:5:2: duplicate 'contact' (first at <config>:4:2)"),
    ("authority a {\n api url u\n account key /a.pem\n external account binding k e.key\n}\n",
     "<config>:4:29: external account binding key must be an absolute path, not 'e.key'"),
    ("authority a {\n api url u\n account key /a.pem\n external account binding k\n}\n",
     "<config>:4:28: expected a file name, got end of line"),
    ("authority a {\n api url u\n account key /a.pem\n external account binding\n}\n",
     "<config>:4:26: expected a key ID, got end of line"),
    ('authority a {\n api url u\n account key /a.pem\n external account binding "" /k\n}\n',
     "<config>:4:27: external account binding: the key ID is empty"),
    ("authority a {\n api url u\n account key /a.pem\n external account k /e\n}\n",
     "<config>:4:19: expected 'binding' after 'account', got 'k'"),
    ("authority a {\n api url u\n account key /a.pem\n external binding k /e\n}\n",
     "<config>:4:11: expected 'account' after 'external', got 'binding'"),
    ("authority a {\n api url u\n account key /a.pem\n external account binding k /e\n"
     " external account binding l /f\n}\n",
     "<config>:5:2: duplicate 'external account binding' (first at <config>:4:2)"),
    (with_domain("external account binding k /e"),
     "<config>:7:2: unexpected 'external' in a domain block"),
    (with_domain("domain name a", "domain name b"),
     "<config>:8:2: duplicate 'domain name' (first at <config>:7:2)"),
    (with_domain("sign with ca", "sign with ca"),
     "<config>:8:2: duplicate 'sign with' (first at <config>:7:2)"),
    (with_domain("profile a", "domain chain certificate /c.pem", "domain chain certificate /c.pem"),
     "<config>:9:2: duplicate 'domain chain certificate' (first at <config>:8:2)"),
    (with_domain("domain chain certificate /c.pem", handle="a")
     + with_domain("domain full chain certificate /c.pem", handle="b", before=""),
     "<config>:11:32: domain full chain certificate '/c.pem' is already used"
     " (at <config>:7:27)"),
])
def test_error_positions(text: str, message: str) -> None:
    assert error_of(text) == message


def test_error_type() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("}", "/etc/acme-client.conf")
    assert isinstance(caught.value, InputError)
    assert caught.value.location == Location("/etc/acme-client.conf", 1, 1)
    assert caught.value.reason == "unexpected '}'"


def test_too_many_domains() -> None:
    text = AUTHORITY + "".join(
        f"domain d{n} {{ domain key /{n}.key\n}}\n" for n in range(conf.MAX_DOMAINS + 1))
    assert error_of(text) == (
        f"<config>:{5 + 2 * conf.MAX_DOMAINS}:1: more than {conf.MAX_DOMAINS} domains")


def test_too_large_a_text() -> None:
    assert error_of("#" * conf.MAX_BYTES + "\n", "big.conf") == (
        f"big.conf: larger than {conf.MAX_BYTES} bytes")


def test_macros_cannot_blow_up() -> None:
    text = 'a = "' + "x " * 4000 + '"\n'
    for n in range(1, 20):
        text += f"m{n} = $m{n - 1} $m{n - 1}\n".replace("$m0", "$a")
    message = error_of(text)
    assert message.endswith(f": macros expand to more than {conf.MAX_EXPANSION} characters")


def test_a_word_too_long() -> None:
    assert error_of("x = " + "a" * (conf.MAX_STRING + 1)) == (
        f"<config>:1:5: word longer than {conf.MAX_STRING} characters")


# load and select


def test_load_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "missing.conf"
    with pytest.raises(ConfigError) as caught:
        load(str(missing))
    assert str(caught.value) == f"{missing}: No such file or directory"
    with pytest.raises(ConfigError) as caught:
        load(str(tmp_path))
    assert str(caught.value) == f"{tmp_path}: Is a directory"


def test_load_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as caught:
        load(str(fifo))
    assert str(caught.value) == f"{fifo}: not a regular file"


def test_load_limits(tmp_path: Path) -> None:
    big = tmp_path / "big.conf"
    big.write_bytes(b"#" * (conf.MAX_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        load(str(big))
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"x = 1\n\xff\n")
    with pytest.raises(ConfigError) as caught:
        load(str(binary))
    assert str(caught.value) == f"{binary}: not UTF-8 text (byte 6)"


def test_select() -> None:
    config = parse(with_domain(handle="a") + with_domain(handle="b", before="")
                   + with_domain(handle="c", before=""), "/etc/acme-client.conf")
    assert [d.handle for d in select(config, [])] == ["a", "b", "c"]
    assert [d.handle for d in select(config, ["c", "a", "c"])] == ["c", "a"]
    with pytest.raises(InputError) as caught:
        select(config, ["a", "zz"])
    assert str(caught.value) == "no domain 'zz' in /etc/acme-client.conf"


# Any text: a Config or a ConfigError, never anything else


def parses_or_refuses(text: str) -> None:
    try:
        result = parse(text, "/nonexistent/acme-client.conf")
    except ConfigError as error:
        assert error.location is None or error.location.line >= 1
    else:
        assert isinstance(result, Config)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text(text: str) -> None:
    parses_or_refuses(text)


GRAMMAR = [
    "authority", "domain", "api", "url", "account", "key", "contact", "alternative", "names",
    "name", "certificate", "chain", "full", "sign", "with", "challengedir", "include", "rsa",
    "ecdsa", "trust", "anchors", "ca", "bundle", "directory", "challenge", "rotate", "profile",
    "preferred", "deploy", "hook", "state", "external", "binding", "http-01", "rsa2048",
    "ecdsa256", "ca", "x.example", "/k.pem",
    "/etc/ssl/x.crt", "https://ca.example/dir", "{", "}", ",", "=", "\n", "\n", "\n", " ", "\t",
    "#", "\\", "\\\n", '"', "'", '"quoted"', "$m", "$ca", "$", "m", "m = ca", "ca=/x", "\0",
    "include nothere.conf", "include /dev/null", "é", "-", "\r",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(GRAMMAR), max_size=80).map(" ".join))
def test_any_mixture_of_grammar_tokens(text: str) -> None:
    parses_or_refuses(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(GRAMMAR), max_size=60).map("".join))
def test_any_glued_mixture_of_grammar_tokens(text: str) -> None:
    parses_or_refuses(text)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_valid_files_with_noise_inserted(data: st.DataObject) -> None:
    text = SAMPLE.read_text()
    position = data.draw(st.integers(0, len(text)))
    noise = data.draw(st.sampled_from(GRAMMAR))
    parses_or_refuses(text[:position] + noise + text[position:])


# dns-01


DNS_AUTHORITY = """\
authority ca {
\tapi url https://ca.example/dir
\taccount key /etc/acme/ca.pem
\tchallenge dns-01
\tdns server 192.0.2.53
\ttsig key /etc/acme/tsig.key
\tdns check server 192.0.2.1 "[2001:db8::1]:5353"
}
"""


def test_dns01_directives_of_an_authority_hold_for_its_domains() -> None:
    config = parse(with_domain(before=DNS_AUTHORITY))
    authority = config.authorities["ca"]
    assert (authority.challenge, authority.dns_server, authority.tsig_key) == (
        "dns-01", "192.0.2.53:53", "/etc/acme/tsig.key")
    (domain,) = config.domains.values()
    assert domain.challenge == "dns-01"
    assert domain.dns_server == "192.0.2.53:53"
    assert domain.tsig_key == "/etc/acme/tsig.key"
    assert domain.dns_check_servers == ("192.0.2.1:53", "[2001:db8::1]:5353")


def test_a_domain_overrides_its_authoritys_dns01_directives() -> None:
    domain = one_domain(
        'dns server "[::1]:5300"', "tsig key /etc/acme/other.key", "dns check server 127.0.0.1",
        before=DNS_AUTHORITY,
    )
    assert (domain.dns_server, domain.tsig_key, domain.dns_check_servers) == (
        "[::1]:5300", "/etc/acme/other.key", ("127.0.0.1:53",))


def test_a_domain_may_keep_http01_under_a_dns01_authority() -> None:
    domain = one_domain("challenge http-01", before=DNS_AUTHORITY)
    assert domain.challenge == "http-01"
    assert (domain.dns_server, domain.tsig_key, domain.dns_check_servers) == (None, None, ())


def test_dns01_in_a_domain_block_alone() -> None:
    domain = one_domain("challenge dns-01", "dns server 127.0.0.1:5353",
                        "tsig key /etc/acme/tsig.key")
    assert (domain.challenge, domain.dns_server, domain.dns_check_servers) == (
        "dns-01", "127.0.0.1:5353", ())


def test_dns_and_tsig_stay_usable_as_names() -> None:
    """Our words are keywords only where a directive starts."""
    domain = one_domain("alternative names { dns tsig }")
    assert domain.names == ("example.com", "dns", "tsig")
