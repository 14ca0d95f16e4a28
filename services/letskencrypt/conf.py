"""The configuration file: OpenBSD's acme-client.conf(5) grammar, plus our own
directives in the same style.

The lexer follows OpenBSD's parse.y (acme-client, parse.y 1.43) character by
character: macros expand at the start of an unquoted token only and are lexed
again with the text that follows them, a backslash escapes the next character
outside quotes and continues the line before a newline (also inside a comment),
a newline inside a quoted string is dropped, and `\\"` `\\ ` `\\<tab>` are the
only escapes inside quotes (any other backslash is kept).

Where this parser differs from OpenBSD's, it is on purpose:

* Unquoted words may start with '/', as the manual says (OpenBSD's lexer
  wants such paths quoted); a word of digits is a word, not a number.
* Inside a block, options are separated by any number of newlines, and the
  names of `alternative names { ... }` may be spread over several lines.
* Every file path (account key, domain key, the three certificate files, and
  our trust anchors, CA bundle, external account binding key, certificate
  and state directories) must be absolute; OpenBSD only insists for the
  domain key and certificate.
* `sign with` names an authority declared above it.  Without it, a domain is
  signed by the only authority; with several, OpenBSD would take the first
  one, we refuse to guess.
* A key type of `rsa` is "rsa4096" and `ecdsa` is "ecdsa384" (OpenBSD makes
  4096-bit RSA keys and P-384 keys); no type at all is None, the caller's
  default (OpenBSD's is RSA).  Our own KEY_TYPES names are accepted as well.
* A domain needs no certificate file: without any, the caller decides where
  its certificates go.  Names (domain names and IP addresses) are not
  checked here: the command line checks them, for every domain.
* Include paths are relative to the directory of the including file.
* The first error ends the parse; its message is `file:line:column: message`.

Our DNS challenge directives, in an authority block (for all its domains)
or a domain block (for that one, over its authority's): `challenge TYPE`
(http-01, dns-01, dns-persist-01), for dns-01 `dns server ADDR[:PORT]` and
`tsig key FILE`, for both DNS challenges `dns check server ADDR[:PORT] ...`
(one or more on the line).  Addresses are IP addresses, checked here.
"""

import os
import stat
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from letskencrypt.constants import CHALLENGE_DNS_01, CHALLENGE_DNS_PERSIST_01, CHALLENGE_HTTP_01
from letskencrypt.errors import InputError
from letskencrypt.validate import KEY_TYPES, dns_server_text, parse_dns_server

MAX_BYTES = 1 << 20  # per file, and for a file and all it includes together
MAX_DOMAINS = 10000
MAX_INCLUDE_DEPTH = 16
MAX_STRING = 8094  # OpenBSD's token buffer
MAX_EXPANSION = 1 << 20  # characters produced by macro expansion, all told

# The first is the default.  dns-01 needs a DNS server and a TSIG key;
# dns-persist-01 a record that `letskencrypt persist-record` prints, and no
# DNS credentials.
CHALLENGE_TYPES = (CHALLENGE_HTTP_01, CHALLENGE_DNS_01, CHALLENGE_DNS_PERSIST_01)
MAX_CHECK_SERVERS = 8
OPENBSD_KEY_TYPES = {"rsa": "rsa4096", "ecdsa": "ecdsa384"}

# OpenBSD's reserved words: never a plain argument, never a macro name.
KEYWORDS = frozenset({
    "account", "alternative", "api", "authority", "certificate", "chain",
    "challengedir", "contact", "domain", "ecdsa", "full", "include", "key",
    "name", "names", "rsa", "sign", "url", "with",
})
# The first words of our own directives.  They are keywords only where a
# directive starts, so an OpenBSD file may still use them as names.
OUR_WORDS = frozenset({
    "trust", "ca", "challenge", "rotate", "profile", "deploy", "state", "external",
    "preferred", "dns", "tsig",
})

_EOF = ""
_START_EXPANSION = "start of expansion"
_END_EXPANSION = "end of expansion"
_WORD_START = frozenset(string.ascii_letters + string.digits + ":_/")
_WORD_CHARS = frozenset(string.ascii_letters + string.digits + string.punctuation) - set("(){}!=#,")
_MACRO_CHARS = frozenset(string.ascii_letters + string.digits + "_")
_PUNCTUATION = frozenset("{}=,")


@dataclass(frozen=True)
class Location:
    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


class ConfigError(InputError):
    """A configuration that cannot be read or is not valid; with a location,
    the message is `file:line:column: reason`."""

    def __init__(self, reason: str, location: Location | None = None) -> None:
        super().__init__(f"{location}: {reason}" if location else reason)
        self.reason = reason
        self.location = location


@dataclass(frozen=True)
class Authority:
    name: str
    api_url: str
    account_key: str
    account_key_type: str | None
    contact: tuple[str, ...]
    trust_anchors: str | None
    ca_bundle: str | None
    # `external account binding KID FILE`: the key ID, and the file of the
    # base64url HMAC key (read by acctproc alone).
    eab_kid: str | None
    eab_hmac_key: str | None
    location: Location
    # dns-01 for its domains (each may say otherwise): `challenge`, `dns
    # server`, `tsig key`, `dns check server`.
    challenge: str | None = None
    dns_server: str | None = None
    tsig_key: str | None = None
    dns_check_servers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Domain:
    handle: str
    names: tuple[str, ...]
    domain_key: str
    domain_key_type: str | None
    certificate: str | None
    chain_certificate: str | None
    full_chain_certificate: str | None
    sign_with: str
    challenge_dir: str | None
    challenge: str
    certificate_directory: str | None
    rotate_key: bool
    profile: str | None
    preferred_chain: str | None
    deploy_hook: str | None
    location: Location
    # dns-01: its own, or its authority's.
    dns_server: str | None = None
    tsig_key: str | None = None
    dns_check_servers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    path: str
    authorities: dict[str, Authority]
    domains: dict[str, Domain]
    state_directory: str | None
    # The file and every file it includes, as read.
    files: tuple[str, ...] = ()


def parse(text: str, path: str = "<config>") -> Config:
    """The configuration in text, read from path (includes are found
    relative to its directory)."""
    size = _size(text)
    if size > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES} bytes")
    return _Parser(path, size).config(text)


def load(path: str) -> Config:
    """The configuration in the file at path."""
    try:
        text = _read(path)
    except _Unreadable as error:
        raise ConfigError(f"{path}: {error}") from None
    return parse(text, path)


def select(config: Config, handles: Sequence[str]) -> list[Domain]:
    """The domains named by handles, in that order; all of them if none is named."""
    if not handles:
        return list(config.domains.values())
    chosen: dict[str, Domain] = {}
    for handle in handles:
        if handle not in config.domains:
            raise ConfigError(f"no domain {handle!r} in {config.path}")
        chosen.setdefault(handle, config.domains[handle])
    return list(chosen.values())


class _Unreadable(Exception):
    """A file that cannot be a configuration file, and why."""


def _size(text: str) -> int:
    if len(text) > MAX_BYTES:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _read(path: str) -> str:
    """A regular file's text, refusing what is too large (or would block, as a
    FIFO could)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                raise _Unreadable("not a regular file")
            data = stream.read(MAX_BYTES + 1)
    except OSError as error:
        raise _Unreadable(error.strerror or type(error).__name__) from None
    except ValueError as error:  # a path with a NUL in it
        raise _Unreadable(str(error)) from None
    if len(data) > MAX_BYTES:
        raise _Unreadable(f"larger than {MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Unreadable(f"not UTF-8 text (byte {error.start})") from None


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "string" (quoted), "keyword", "nl", "eof", or one of "{}=,"
    text: str
    location: Location

    def is_word(self, text: str) -> bool:
        return self.kind == "word" and self.text == text

    def is_keyword(self, text: str) -> bool:
        return self.kind == "keyword" and self.text == text

    def describe(self) -> str:
        if self.kind == "nl":
            return "end of line"
        if self.kind == "eof":
            return "end of file"
        if self.kind == "string":
            return f'"{self.text}"'
        return repr(self.text)


_Char = tuple[str, int, int]  # a character with its line and column


@dataclass
class _Budget:
    """What macro expansion may still produce, in characters, for a whole configuration."""

    left: int = MAX_EXPANSION

    def spend(self, characters: int, location: Location) -> None:
        self.left -= characters
        if self.left < 0:
            raise ConfigError(f"macros expand to more than {MAX_EXPANSION} characters", location)


class _Lexer:
    """OpenBSD's yylex over one file's text."""

    def __init__(self, text: str, path: str, macros: dict[str, str], budget: _Budget) -> None:
        self.text = text
        self.path = path
        self.macros = macros
        self.budget = budget
        self.position = 0
        self.line = 1
        self.column = 1
        self.pushed: list[_Char] = []
        self.expanding = False
        self.eof_reached = False

    def token(self) -> _Token:
        while True:
            char = self._lgetc()
            while char[0] in (" ", "\t"):
                char = self._lgetc()
            if char[0] == "#":
                while char[0] not in ("\n", _EOF):
                    char = self._lgetc()
            location = self._at(char)
            if char[0] == "$" and not self.expanding:
                self._expand(location)
                continue
            if char[0] in ('"', "'"):
                return self._quoted(char[0], location)
            if char[0] in _WORD_START:
                return self._word(char)
            if char[0] == "\n":
                return _Token("nl", "\n", location)
            if char[0] == _EOF:
                return _Token("eof", "", location)
            if char[0] in _PUNCTUATION:
                return _Token(char[0], char[0], location)
            if char[0] in _WORD_CHARS:
                raise ConfigError(f"unexpected {char[0]!r}: quote an argument starting with it",
                                  location)
            raise ConfigError(f"unexpected character {char[0]!r}", location)

    def _at(self, char: _Char) -> Location:
        return Location(self.path, char[1], char[2])

    def _igetc(self) -> _Char:
        while True:
            if self.pushed:
                char = self.pushed.pop()
            elif self.position < len(self.text):
                char = (self.text[self.position], self.line, self.column)
                self.position += 1
                if char[0] == "\n":
                    self.line += 1
                    self.column = 1
                else:
                    self.column += 1
            else:
                return (_EOF, self.line, self.column)
            if char[0] == _START_EXPANSION:
                self.expanding = True
            elif char[0] == _END_EXPANSION:
                self.expanding = False
            else:
                return char

    def _lgetc(self) -> _Char:
        """The next character outside quotes: a backslash escapes the next
        one, or joins the next line; the end of the text is first a newline."""
        char = self._igetc()
        while char[0] == "\\":
            following = self._igetc()
            if following[0] != "\n":
                char = following
                break
            char = self._igetc()
        if char[0] == _EOF and not self.eof_reached:
            self.eof_reached = True
            return ("\n", char[1], char[2])
        return char

    def _unget(self, char: _Char) -> None:
        if char[0] != _EOF:
            self.pushed.append(char)

    def _expand(self, location: Location) -> None:
        name: list[str] = []
        while True:
            char = self._lgetc()
            if char[0] not in _MACRO_CHARS:
                self._unget(char)
                break
            name.append(char[0])
        if not name:
            raise ConfigError("'$' is not followed by a macro name", location)
        value = self.macros.get("".join(name))
        if value is None:
            raise ConfigError(f"macro {''.join(name)!r} not defined", location)
        self.budget.spend(len(value), location)
        self.pushed.append((_END_EXPANSION, location.line, location.column))
        self.pushed.extend((char, location.line, location.column) for char in reversed(value))
        self.pushed.append((_START_EXPANSION, location.line, location.column))

    def _quoted(self, quote: str, location: Location) -> _Token:
        chars: list[str] = []
        while True:
            char = self._igetc()
            if char[0] == _EOF:
                raise ConfigError("unterminated quoted string", location)
            if char[0] == "\n":
                continue
            if char[0] == "\\":
                following = self._igetc()
                if following[0] == _EOF:
                    raise ConfigError("unterminated quoted string", location)
                if following[0] in (quote, " ", "\t"):
                    char = following
                elif following[0] == "\n":
                    continue
                else:
                    self._unget(following)
            elif char[0] == quote:
                return _Token("string", "".join(chars), location)
            elif char[0] == "\0":
                raise ConfigError("NUL character in quoted string", self._at(char))
            if len(chars) >= MAX_STRING:
                raise ConfigError(f"string longer than {MAX_STRING} characters", location)
            chars.append(char[0])

    def _word(self, first: _Char) -> _Token:
        chars = [first[0]]
        while True:
            char = self._lgetc()
            if char[0] not in _WORD_CHARS:
                self._unget(char)
                break
            if len(chars) >= MAX_STRING:
                raise ConfigError(f"word longer than {MAX_STRING} characters", self._at(first))
            chars.append(char[0])
        text = "".join(chars)
        return _Token("keyword" if text in KEYWORDS else "word", text, self._at(first))


class _Tokens:
    """A lexer's tokens, with lookahead."""

    def __init__(self, lexer: _Lexer) -> None:
        self.lexer = lexer
        self.ahead: list[_Token] = []

    def peek(self, offset: int = 0) -> _Token:
        while len(self.ahead) <= offset:
            self.ahead.append(self.lexer.token())
        return self.ahead[offset]

    def take(self) -> _Token:
        token = self.peek()
        del self.ahead[0]
        return token

    def expect(self, kind: str, text: str, after: str) -> _Token:
        token = self.take()
        if token.kind != kind or token.text != text:
            raise ConfigError(f"expected {text!r} after {after!r}, got {token.describe()}",
                              token.location)
        return token

    def argument(self, what: str) -> _Token:
        token = self.take()
        if token.kind not in ("word", "string"):
            if token.kind == "keyword":
                raise ConfigError(f"expected {what}, got the reserved word {token.text!r}"
                                  " (quote it)", token.location)
            raise ConfigError(f"expected {what}, got {token.describe()}", token.location)
        return token


class _Settings:
    """A block's directives so far, each given at most once."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.values: dict[str, str] = {}
        self.where: dict[str, Location] = {}

    def set(self, directive: str, value: str, location: Location) -> None:
        if directive in self.where:
            raise ConfigError(f"duplicate {directive!r} (first at {self.where[directive]})",
                              location)
        self.values[directive] = value
        self.where[directive] = location

    def get(self, directive: str, default: str | None = None) -> str | None:
        return self.values.get(directive, default)


@dataclass
class _DomainDraft:
    handle: str
    settings: _Settings
    names: list[str]
    key_type: str | None = None


class _Parser:
    """One configuration: a file and those it includes."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self.macros: dict[str, str] = {}
        self.budget = _Budget()
        self.authorities: dict[str, Authority] = {}
        self.domains: dict[str, _DomainDraft] = {}
        self.used_files: dict[str, Location] = {}
        self.top = _Settings(Location(path, 1, 1))
        self.reading: list[str] = []
        self.files: list[str] = [path]

    def config(self, text: str) -> Config:
        self.reading.append(_real(self.path))
        self._file(text, self.path, 0)
        hook = self.top.get("deploy hook")
        domains = {handle: self._domain_from(draft, hook) for handle, draft in self.domains.items()}
        return Config(
            self.path, self.authorities, domains, self.top.get("state directory"),
            tuple(self.files),
        )  # fmt: skip

    def _file(self, text: str, path: str, depth: int) -> None:
        tokens = _Tokens(_Lexer(text, path, self.macros, self.budget))
        while True:
            token = tokens.take()
            if token.kind == "eof":
                return
            if token.kind == "nl":
                continue
            self._statement(token, tokens, path, depth)
            end = tokens.take()
            if end.kind not in ("nl", "eof"):
                raise ConfigError(f"expected end of line, got {end.describe()}", end.location)

    def _statement(self, token: _Token, tokens: _Tokens, path: str, depth: int) -> None:
        following = tokens.peek()
        if token.kind == "keyword" and following.kind == "=":
            raise ConfigError(f"reserved word {token.text!r} cannot be a macro name",
                              token.location)
        if token.is_keyword("include"):
            self._include(token, tokens, path, depth)
        elif token.is_keyword("authority"):
            self._authority(token, tokens)
        elif token.is_keyword("domain"):
            self._domain(token, tokens)
        elif token.kind in ("word", "string") and following.kind == "=":
            self._macro(token, tokens)
        elif token.is_word("deploy"):
            tokens.expect("word", "hook", "deploy")
            self.top.set("deploy hook", tokens.argument("a command").text, token.location)
        elif token.is_word("state"):
            tokens.expect("word", "directory", "state")
            directory = _absolute(tokens.argument("a directory"), "state directory")
            self.top.set("state directory", directory, token.location)
        else:
            raise ConfigError(f"unexpected {token.describe()}", token.location)

    def _macro(self, name: _Token, tokens: _Tokens) -> None:
        tokens.take()
        words = [tokens.argument("a macro value").text]
        while tokens.peek().kind in ("word", "string"):
            words.append(tokens.take().text)
        if not name.text or not set(name.text) <= _MACRO_CHARS:
            raise ConfigError(f"macro name {name.text!r} may only have letters, digits and '_'",
                              name.location)
        self.macros[name.text] = " ".join(words)

    def _include(self, keyword: _Token, tokens: _Tokens, path: str, depth: int) -> None:
        target = tokens.argument("a file name")
        if tokens.peek().kind not in ("nl", "eof"):
            raise ConfigError(f"expected end of line, got {tokens.peek().describe()}",
                              tokens.peek().location)
        if depth >= MAX_INCLUDE_DEPTH:
            raise ConfigError(f"includes nested more than {MAX_INCLUDE_DEPTH} deep",
                              keyword.location)
        included = os.path.join(os.path.dirname(path), target.text)
        real = _real(included)
        if real in self.reading:
            raise ConfigError(f"include cycle: {included} is already being read", target.location)
        try:
            text = _read(included)
        except _Unreadable as error:
            raise ConfigError(f"cannot include {included}: {error}", target.location) from None
        self.size += _size(text)
        if self.size > MAX_BYTES:
            raise ConfigError(f"with {included}, the configuration is larger than"
                              f" {MAX_BYTES} bytes", target.location)
        self.files.append(included)
        self.reading.append(real)
        self._file(text, included, depth + 1)
        self.reading.pop()

    def _block(self, tokens: _Tokens, what: str) -> Iterator[_Token]:
        """The first token of each option in a `{ ... }` block."""
        brace = tokens.take()
        if brace.kind != "{":
            raise ConfigError(f"expected '{{' after {what}, got {brace.describe()}",
                              brace.location)
        while True:
            token = tokens.take()
            if token.kind == "}":
                return
            if token.kind == "eof":
                raise ConfigError(f"unterminated {what} block: no '}}' before end of file",
                                  brace.location)
            if token.kind != "nl":
                yield token

    def _authority(self, keyword: _Token, tokens: _Tokens) -> None:
        name = tokens.argument("an authority name")
        if name.text in self.authorities:
            raise ConfigError(f"authority {name.text!r} already defined", name.location)
        settings = _Settings(keyword.location)
        contact: tuple[str, ...] = ()
        key_type = None
        eab_key = None
        for token in self._block(tokens, f"authority {name.text}"):
            if token.is_keyword("api"):
                tokens.expect("keyword", "url", "api")
                settings.set("api url", tokens.argument("a URL").text, token.location)
            elif token.is_keyword("account"):
                tokens.expect("keyword", "key", "account")
                path = _absolute(tokens.argument("a file name"), "account key")
                settings.set("account key", path, token.location)
                key_type = _key_type(tokens)
            elif token.is_keyword("contact"):
                settings.set("contact", tokens.argument("a contact URL").text, token.location)
                contact = (settings.values["contact"],)
            elif token.is_word("trust"):
                tokens.expect("word", "anchors", "trust")
                path = _absolute(tokens.argument("a file name"), "trust anchors")
                settings.set("trust anchors", path, token.location)
            elif token.is_word("ca"):
                tokens.expect("word", "bundle", "ca")
                path = _absolute(tokens.argument("a file name"), "ca bundle")
                settings.set("ca bundle", path, token.location)
            elif token.is_word("external"):
                tokens.expect("keyword", "account", "external")
                tokens.expect("word", "binding", "account")
                kid = tokens.argument("a key ID")
                if not kid.text:
                    raise ConfigError("external account binding: the key ID is empty",
                                      kid.location)
                eab_key = _absolute(tokens.argument("a file name"),
                                    "external account binding key")
                settings.set("external account binding", kid.text, token.location)
            elif not _dns_option(settings, token, tokens):
                raise ConfigError(f"unexpected {token.describe()} in an authority block",
                                  token.location)
        for required in ("api url", "account key"):
            if settings.get(required) is None:
                raise ConfigError(f"authority {name.text!r} has no {required!r}", keyword.location)
        self.authorities[name.text] = Authority(
            name=name.text,
            api_url=settings.values["api url"],
            account_key=settings.values["account key"],
            account_key_type=key_type,
            contact=contact,
            trust_anchors=settings.get("trust anchors"),
            ca_bundle=settings.get("ca bundle"),
            eab_kid=settings.get("external account binding"),
            eab_hmac_key=eab_key,
            location=keyword.location,
            challenge=settings.get("challenge"),
            dns_server=settings.get("dns server"),
            tsig_key=settings.get("tsig key"),
            dns_check_servers=tuple(settings.get("dns check server", "").split()),
        )

    def _domain(self, keyword: _Token, tokens: _Tokens) -> None:
        handle = tokens.argument("a domain handle")
        if handle.text in self.domains:
            raise ConfigError(f"domain {handle.text!r} already defined", handle.location)
        if len(self.domains) >= MAX_DOMAINS:
            raise ConfigError(f"more than {MAX_DOMAINS} domains", keyword.location)
        draft = _DomainDraft(handle.text, _Settings(keyword.location), [])
        for token in self._block(tokens, f"domain {handle.text}"):
            self._domain_option(draft, token, tokens)
        if draft.settings.get("domain key") is None:
            raise ConfigError(f"domain {handle.text!r} has no 'domain key'", keyword.location)
        self.domains[handle.text] = draft

    def _domain_option(self, draft: _DomainDraft, token: _Token, tokens: _Tokens) -> None:
        settings = draft.settings
        if token.is_keyword("alternative"):
            tokens.expect("keyword", "names", "alternative")
            draft.names.extend(_names(tokens))
        elif token.is_keyword("domain"):
            self._domain_file(draft, token, tokens)
        elif token.is_keyword("sign"):
            tokens.expect("keyword", "with", "sign")
            authority = tokens.argument("an authority name")
            if authority.text not in self.authorities:
                raise ConfigError(f"sign with: unknown authority {authority.text!r}",
                                  authority.location)
            settings.set("sign with", authority.text, token.location)
        elif token.is_keyword("challengedir"):
            settings.set("challengedir", tokens.argument("a directory").text, token.location)
        elif token.is_keyword("certificate"):
            tokens.expect("word", "directory", "certificate")
            directory = _absolute(tokens.argument("a directory"), "certificate directory")
            settings.set("certificate directory", directory, token.location)
        elif _dns_option(settings, token, tokens):
            pass
        elif token.is_word("rotate"):
            tokens.expect("keyword", "key", "rotate")
            settings.set("rotate key", "yes", token.location)
        elif token.is_word("profile"):
            settings.set("profile", tokens.argument("a profile name").text, token.location)
        elif token.is_word("preferred"):
            tokens.expect("keyword", "chain", "preferred")
            name = tokens.argument("an issuer name")
            if not 0 < len(name.text) <= 64 or not name.text.isprintable():
                raise ConfigError("preferred chain: the issuer name is 1 to 64 printable"
                                  " characters", name.location)
            settings.set("preferred chain", name.text, token.location)
        elif token.is_word("deploy"):
            tokens.expect("word", "hook", "deploy")
            settings.set("deploy hook", tokens.argument("a command").text, token.location)
        else:
            raise ConfigError(f"unexpected {token.describe()} in a domain block", token.location)

    def _domain_file(self, draft: _DomainDraft, token: _Token, tokens: _Tokens) -> None:
        """`domain name`, `domain key` and the `domain ... certificate` files."""
        which = tokens.take()
        if which.is_keyword("name"):
            draft.settings.set("domain name", tokens.argument("a name").text, token.location)
            return
        if which.is_keyword("key"):
            directive = "domain key"
        elif which.is_keyword("certificate"):
            directive = "domain certificate"
        elif which.is_keyword("chain"):
            tokens.expect("keyword", "certificate", "chain")
            directive = "domain chain certificate"
        elif which.is_keyword("full"):
            tokens.expect("keyword", "chain", "full")
            tokens.expect("keyword", "certificate", "chain")
            directive = "domain full chain certificate"
        else:
            raise ConfigError(f"expected 'name', 'key', 'certificate', 'chain' or 'full'"
                              f" after 'domain', got {which.describe()}", which.location)
        argument = tokens.argument("a file name")
        path = _absolute(argument, directive)
        draft.settings.set(directive, path, token.location)
        if path in self.used_files:
            raise ConfigError(f"{directive} {path!r} is already used"
                              f" (at {self.used_files[path]})", argument.location)
        self.used_files[path] = argument.location
        if directive == "domain key":
            draft.key_type = _key_type(tokens)

    def _domain_from(self, draft: _DomainDraft, default_hook: str | None) -> Domain:
        settings = draft.settings
        sign_with = settings.get("sign with")
        if sign_with is None:
            if len(self.authorities) != 1:
                raise ConfigError(
                    f"domain {draft.handle!r} has no 'sign with' and there are"
                    f" {len(self.authorities)} authorities to choose from", settings.location)
            sign_with = next(iter(self.authorities))
        primary = settings.get("domain name") or draft.handle
        hook = settings.get("deploy hook")
        authority = self.authorities[sign_with]
        challenge = settings.get("challenge") or authority.challenge or CHALLENGE_TYPES[0]
        checks = settings.get("dns check server")
        dns = {
            "dns_server": settings.get("dns server") or authority.dns_server,
            "tsig_key": settings.get("tsig key") or authority.tsig_key,
            "dns_check_servers": authority.dns_check_servers if checks is None
            else tuple(checks.split()),
        }
        if challenge == CHALLENGE_DNS_01 and not (dns["dns_server"] and dns["tsig_key"]):
            raise ConfigError(f"domain {draft.handle!r}: challenge {CHALLENGE_DNS_01} needs "
                              "'dns server' and 'tsig key' (in it or its authority)",
                              settings.location)
        if challenge != CHALLENGE_DNS_01:
            dns.update(dns_server=None, tsig_key=None)
        if challenge == CHALLENGE_HTTP_01:
            dns["dns_check_servers"] = ()
        return Domain(
            handle=draft.handle,
            names=tuple(dict.fromkeys([primary, *draft.names])),
            domain_key=settings.values["domain key"],
            domain_key_type=draft.key_type,
            certificate=settings.get("domain certificate"),
            chain_certificate=settings.get("domain chain certificate"),
            full_chain_certificate=settings.get("domain full chain certificate"),
            sign_with=sign_with,
            challenge_dir=settings.get("challengedir"),
            challenge=challenge,
            certificate_directory=settings.get("certificate directory"),
            rotate_key=settings.get("rotate key") is not None,
            profile=settings.get("profile"),
            preferred_chain=settings.get("preferred chain"),
            deploy_hook=default_hook if hook is None else hook,
            location=settings.location,
            dns_server=dns["dns_server"],
            tsig_key=dns["tsig_key"],
            dns_check_servers=dns["dns_check_servers"],
        )


def _dns_option(settings: _Settings, token: _Token, tokens: _Tokens) -> bool:
    """`challenge TYPE`, `dns server ADDR`, `dns check server ADDR ...` or
    `tsig key FILE` (False: the token starts none of them)."""
    if token.is_word("challenge"):
        challenge = tokens.argument("a challenge type")
        if challenge.text not in CHALLENGE_TYPES:
            raise ConfigError(f"unsupported challenge type {challenge.text!r}"
                              f" (supported: {', '.join(CHALLENGE_TYPES)})", challenge.location)
        settings.set("challenge", challenge.text, token.location)
    elif token.is_word("tsig"):
        tokens.expect("keyword", "key", "tsig")
        settings.set("tsig key", _absolute(tokens.argument("a file name"), "tsig key"),
                     token.location)
    elif token.is_word("dns"):
        which = tokens.take()
        if which.is_word("server"):
            settings.set("dns server", _server(tokens.argument("an address"), "dns server"),
                         token.location)
        elif which.is_word("check"):
            tokens.expect("word", "server", "check")
            servers = [_server(tokens.argument("an address"), "dns check server")]
            while tokens.peek().kind in ("word", "string"):
                servers.append(_server(tokens.take(), "dns check server"))
            if len(servers) > MAX_CHECK_SERVERS:
                raise ConfigError(f"dns check server: at most {MAX_CHECK_SERVERS} servers",
                                  token.location)
            settings.set("dns check server", " ".join(servers), token.location)
        else:
            raise ConfigError(f"expected 'server' or 'check server' after 'dns', got "
                              f"{which.describe()}", which.location)
    else:
        return False
    return True


def _server(token: _Token, directive: str) -> str:
    try:
        return dns_server_text(*parse_dns_server(token.text, directive))
    except InputError as error:
        raise ConfigError(str(error), token.location) from None


def _names(tokens: _Tokens) -> list[str]:
    """The names in `{ a b, c }`: commas optional, newlines allowed."""
    brace = tokens.expect("{", "{", "alternative names")
    names: list[str] = []
    after_comma = False
    while True:
        token = tokens.take()
        if token.kind in ("word", "string"):
            names.append(token.text)
            after_comma = False
        elif token.kind == "," and names and not after_comma:
            after_comma = True
        elif token.kind == "}" and names and not after_comma:
            return names
        elif token.kind == "eof":
            raise ConfigError("unterminated alternative names: no '}' before end of file",
                              brace.location)
        elif token.kind != "nl":
            raise ConfigError(f"expected a name in alternative names, got {token.describe()}",
                              token.location)


def _key_type(tokens: _Tokens) -> str | None:
    """The optional key type after a key file: OpenBSD's or one of ours."""
    token = tokens.peek()
    if token.kind == "keyword" and token.text in OPENBSD_KEY_TYPES:
        tokens.take()
        return OPENBSD_KEY_TYPES[token.text]
    if token.kind == "word" and token.text not in OUR_WORDS:
        tokens.take()
        if token.text not in KEY_TYPES:
            raise ConfigError(f"unknown key type {token.text!r} (expected one of"
                              f" {', '.join([*OPENBSD_KEY_TYPES, *KEY_TYPES])})", token.location)
        return token.text
    return None


def _absolute(token: _Token, directive: str) -> str:
    if not token.text.startswith("/"):
        raise ConfigError(f"{directive} must be an absolute path, not {token.text!r}",
                          token.location)
    return token.text


def _real(path: str) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return path
