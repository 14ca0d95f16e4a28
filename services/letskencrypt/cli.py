"""letskencrypt: the command line.  Validates everything it is given, then hands
each role only its own settings and starts the eight of them (native mode).
`letskencrypt persist-record NAME...` runs them to learn the account and the
CA's issuer domain name, and prints the dns-persist-01 records to provision.

Exit status: 0 a certificate was issued, renewed or revoked; 1 failure;
2 nothing to do (no request reached the CA).  Interrupted by SIGINT, SIGTERM
or SIGHUP, a run stops every role, says in one line whether a certificate
was installed, and ends by that signal (a shell shows 130, 143 or 129); a
daemon that is up and running exits 0 instead.
"""

import argparse
import contextlib
import errno
import os
import pwd
import stat
import sys
import tempfile
import time
import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import NoReturn

from letskencrypt import (
    fsutil,
    interrupts,
    keyfiles,
    namespace,
    persist,
    runstate,
    sandbox,
)
from letskencrypt.constants import (
    EXIT_CHANGED,
    EXIT_FAILED,
    EXIT_NOTHING_TO_DO,
)
from letskencrypt.errors import (
    FileStoreError,
    InputError,
    KeyFileError,
    KeyFileMissing,
    LetskencryptError,
    plain_words,
)
from letskencrypt.filestore import installed_set
from letskencrypt.fsutil import (
    KEY_DIR_MODE,
    KEY_FILE_MODE,
    MAX_KEY_FILE_SIZE,
    fsync_directory,
    make_directories,
)
from letskencrypt.options import (
    DEFAULT_DOMAIN_KEY,
    build_parser,
    role_settings,
)
from letskencrypt.relay import STYLE, Relay, tell
from letskencrypt.roles import spec_of, specs
from letskencrypt.settings import (
    AcctprocSettings,
    KeyprocSettings,
    NetprocSettings,
    RoleSettings,
)
from letskencrypt.supervisor import RunUser, Supervisor
from letskencrypt.urls import origin
from letskencrypt.validate import (
    safe_text,
)

# The default until keys had to live outside the certificate directory;
# main() moves a key found there to DEFAULT_DOMAIN_KEY.
FORMER_DEFAULT_DOMAIN_KEY = "/etc/ssl/acme/private/privkey.pem"
# What preflight wants free where a role writes: a certificate set is a few
# KiB and a handful of files (and its temporary copy, the links, the backups).
MIN_FREE_BYTES = 1024 * 1024
MIN_FREE_INODES = 64


def check_writable_directory(path: str, what: str, role: str, uid: int, gids: set[int]) -> None:
    """Whether `role`, running as `uid` with `gids` and no capabilities, can
    create files in `path`: refused now rather than after the CA has issued.
    (Root without capabilities has the owner's bits only, so os.access,
    which answers for root with its capabilities, is not asked.)"""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such directory") from None
    if not stat.S_ISDIR(status.st_mode):
        raise InputError(f"{what} {path}: not a directory")
    if not permits(status, uid, gids, stat.S_IWUSR | stat.S_IXUSR):
        raise InputError(
            f"{what} {path}: {role} could not write there (it runs as uid {uid} without "
            f"capabilities; the directory is uid {status.st_uid}, mode "
            f"{stat.S_IMODE(status.st_mode):o})"
        )


def permits(status: os.stat_result, uid: int, gids: set[int], owner_bits: int) -> bool:
    """Whether the mode bits alone give `uid` (in `gids`) what `owner_bits`
    (S_IRUSR, S_IWUSR, S_IXUSR) name, through the owner's, the group's or
    the others' bits, whichever apply."""
    if uid == status.st_uid:
        wanted = owner_bits
    elif status.st_gid in gids:
        wanted = owner_bits >> 3
    else:
        wanted = owner_bits >> 6
    return status.st_mode & wanted == wanted


def check_room(path: str, what: str) -> None:
    """Room for what a role writes in `path` (a certificate set, with its
    temporary copy, or challenge files) on the file system that holds it,
    or will (a directory the role creates)."""
    existing = path
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    info = os.statvfs(existing)
    if info.f_flag & os.ST_RDONLY:
        raise InputError(f"{what} {path}: on a read-only file system")
    free = info.f_bavail * info.f_frsize
    if free < MIN_FREE_BYTES:
        raise InputError(
            f"{what} {path}: only {free // 1024} KiB free on its file system, less than the "
            f"{MIN_FREE_BYTES // 1024} KiB a run may write there: free some space"
        )
    # A file system that does not count inodes (btrfs) says it has none.
    if info.f_files and info.f_favail < MIN_FREE_INODES:
        raise InputError(
            f"{what} {path}: only {info.f_favail} free inodes on its file system, fewer than "
            f"the {MIN_FREE_INODES} a run may need there: remove some files"
        )


def user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def below(path: str, top: str) -> list[str]:
    """The directories from `top` down to `path`, both included."""
    chain = [path]
    while path not in (top, os.path.dirname(path)):
        path = os.path.dirname(path)
        chain.append(path)
    return chain[::-1]


def check_code_readable(user: RunUser, mirrored: bool) -> None:
    """Started as root, most roles drop to `user` and then import the rest
    of their code as it, lazily: the modules loaded here (every role's, for
    the specs) must be readable by it, and their directories listable.  In
    namespaces of their own (namespace.py) a role sees the interpreter's
    and the package's trees mirrored under a fresh root, so a 0700 home
    above them does not matter; without namespaces every directory from /
    down must let the user through."""
    roots = sorted({os.path.normpath(p) for p in sandbox.python_paths()}, key=len)
    checked: set[tuple[str, int]] = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not os.path.isfile(path):
            continue
        path = os.path.normpath(os.path.abspath(path))
        root = next((r for r in roots if r == "/" or path.startswith(r + "/")), None)
        if root is None:
            continue  # outside every tree a role may read: no role loads it
        for place in below(path, root if mirrored else "/"):
            if place == path:
                wanted = stat.S_IRUSR
            elif place == os.path.dirname(path):
                wanted = stat.S_IRUSR | stat.S_IXUSR  # the import system lists it
            else:
                wanted = stat.S_IXUSR
            if (place, wanted) in checked:
                continue
            checked.add((place, wanted))
            status = os.stat(place)
            if permits(status, user.uid, {user.gid}, wanted):
                continue
            inside = root == "/" or place == root or place.startswith(root + "/")
            fix = f"chmod -R a+rX {root}" if inside else f"chmod a+x {place}"
            raise InputError(
                f"{place}: the roles run as {user_name(user.uid)}, which cannot read "
                f"letskencrypt's Python code through it (mode {stat.S_IMODE(status.st_mode):o}): "
                f"{fix}, or give --user a user who can"
            )


def check_run_dir_reachable(user: RunUser, why: str) -> None:
    """Without namespaces (`why` says why) the roles that drop to `user`
    reach their sockets in the run directory through TMPDIR's own path."""
    directory = os.path.normpath(tempfile.gettempdir())
    for place in below(directory, "/"):
        status = os.stat(place)
        if not permits(status, user.uid, {user.gid}, stat.S_IXUSR):
            raise InputError(
                f"TMPDIR {directory}: the roles run as {user_name(user.uid)}, which cannot "
                f"reach it ({place} is mode {stat.S_IMODE(status.st_mode):o}) and, without "
                f"namespaces ({why}), must: set TMPDIR to a directory it can reach, like /tmp"
            )


def preflight(
    settings: dict[str, RoleSettings], user: RunUser | None, *, user_checked: bool = False
) -> None:
    """What a native run can know before any role starts, and so before it
    spends a request: every directory a role's spec lets it write is there
    (or made by the role), writable by the user the role runs as, and has
    room; and, started as root, the roles' user can load their code and
    reach the run directory (check_roles_user; `user_checked`: done once
    already for every certificate of a --config run)."""
    for role, its_settings in settings.items():
        spec = spec_of(role)
        if user is not None and spec.keeps_root is None:
            uid, gids = user.uid, {user.gid}
        else:
            uid, gids = os.geteuid(), {os.getegid(), *os.getgroups()}
        for grant in spec.grants(its_settings):
            if not grant.writable:
                continue
            if not grant.created or os.path.lexists(grant.path):
                check_writable_directory(grant.path, grant.what, role, uid, gids)
            check_room(grant.path, grant.what)
    if user is not None and not user_checked:
        check_roles_user(user)


def check_roles_user(user: RunUser) -> None:
    """Started as root: the roles' user can load their code and reach the
    run directory.  The same for every certificate of a run, and not cheap
    (a fork, a stat of every directory above every loaded module)."""
    specs()  # every role's code loaded first: the check covers all of it
    unavailable = namespace.available()
    check_code_readable(user, mirrored=unavailable is None)
    if unavailable is not None:
        check_run_dir_reachable(user, unavailable)


def check_keys(settings: dict[str, RoleSettings], cert_dir: str) -> list[str]:
    """What the key files say, before any role starts (native mode): a
    rotation that a crash interrupted is finished, or its unused new key
    removed; a key of another type than --key-type, or a domain key revoked
    for keyCompromise, is refused, in the words keyproc or acctproc would
    use after it.  Keys are read in a child process (keyfiles.probe): the
    supervisor never holds one.  Returns the lines to tell the operator."""
    domain = typing.cast(KeyprocSettings, settings["keyproc"])
    account = typing.cast(AcctprocSettings, settings["acctproc"])
    notes = []
    rotation = keyfiles.finish_rotation(domain.key_path, cert_dir)
    if rotation is not None:
        notes.append(rotation_note(domain.key_path, rotation, interrupted=True))
    # A rotation does not use the key there, whatever it is.
    if not domain.rotate:
        listed = frozenset[str]()
        if domain.operation == "issue":
            listed = keyfiles.read_compromised(domain.key_path)
        facts = None
        if domain.require_key_type or listed:
            facts = existing_key(domain.key_path, "domain key", "-N")
        if facts is not None and domain.require_key_type:
            keyfiles.check_key_type("domain key", domain.key_path, facts.key_type,
                                    domain.key_type)  # fmt: skip
        if facts is not None and facts.spki_sha256 in listed:
            raise KeyFileError(keyfiles.compromised_message(domain.key_path))
    if account.require_key_type:
        facts = existing_key(account.key_path, "account key", "-n")
        if facts is not None:
            keyfiles.check_key_type("account key", account.key_path, facts.key_type,
                                    account.key_type)  # fmt: skip
    if account.new_key_path is not None:
        check_rollover_keys(account.key_path, account.new_key_path, domain.key_path)
    return notes


def check_rollover_keys(account_key: str, new_key: str, domain_key: str) -> None:
    """A rollover's new key is one we support, and neither the account key
    (which must exist: its account is the one changed) nor the domain key."""
    new = keyfiles.probe(new_key, "new account key", "--rollover-account-key")
    try:
        current = keyfiles.probe(account_key, "account key", "-n")
    except KeyFileMissing:
        raise KeyFileError(f"account key {account_key}: no such file; a key rollover changes "
                           "the key of an account that exists") from None
    if new.spki_sha256 == current.spki_sha256:
        raise KeyFileError(f"new account key {new_key} is the account key {account_key}: "
                           "give a new key")  # fmt: skip
    domain = existing_key(domain_key, "domain key", "-N")
    if domain is not None and new.spki_sha256 == domain.spki_sha256:
        raise KeyFileError(f"new account key {new_key} is the domain key {domain_key}: "
                           "give a key of its own")  # fmt: skip


def existing_key(path: str, what: str, create_flag: str) -> "keyfiles.KeyFacts | None":
    """The key's type and digest; None if there is none (the role that
    holds it creates it, or says to give the flag that does)."""
    try:
        return keyfiles.probe(path, what, create_flag)
    except KeyFileMissing:
        return None


def rotation_note(path: str, rotation: keyfiles.Rotation, interrupted: bool) -> str:
    if not rotation.promoted:
        return (
            f"removed {keyfiles.pending_key(path)}: the new key of an unfinished "
            "--rotate-domain-key, with no certificate for it installed"
        )
    kept = f" (the old one is kept as {rotation.old})" if rotation.old else ""
    if interrupted:
        return (
            f"finished replacing the domain key {path} with its new {rotation.key_type} "
            f"key, whose certificate is installed{kept}"
        )
    return f"replaced the domain key {path} with a new {rotation.key_type} key{kept}"


def finish_run(settings: dict[str, RoleSettings], cert_dir: str, status: int) -> int:
    """After a --rotate-domain-key run: the new key goes in place if the
    installed certificate is for it, else it is removed (the run failed
    before, and said why; the old key and certificate still belong together)."""
    domain = typing.cast(KeyprocSettings, settings["keyproc"])
    if not domain.rotate:
        return status
    try:
        rotation = keyfiles.finish_rotation(domain.key_path, cert_dir)
    except KeyFileError as error:
        tell(f"letskencrypt: {error}")
        return EXIT_FAILED
    if rotation is not None and rotation.promoted:
        tell(f"letskencrypt: {rotation_note(domain.key_path, rotation, False)}")
    elif status == EXIT_CHANGED:
        tell(
            f"letskencrypt: domain key {domain.key_path}: the installed certificate is not "
            "for the new key; the key is unchanged"
        )
        return EXIT_FAILED
    return status


def confirm_deactivation(account: AcctprocSettings) -> None:
    """--deactivate-account without -F: a typed "yes" on the terminal, or
    nothing is sent.  Asked here, before any role starts (roles have no
    terminal)."""
    refused = "--deactivate-account: not confirmed; nothing was sent"
    if not sys.stdin.isatty():
        raise InputError("--deactivate-account: no terminal to confirm on; give -F (--force) "
                         "to deactivate without asking; nothing was sent")  # fmt: skip
    sys.stderr.write(
        f"letskencrypt: deactivate the account of {account.key_path} at "
        f"{safe_text(account.directory_url, 200)}? Its key can no longer be used with that CA, "
        "and that cannot be undone. Type yes to go on: "
    )
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline(64)
    except (OSError, UnicodeDecodeError):
        raise InputError(refused) from None
    if answer.strip() != "yes":
        raise InputError(refused)


def finish_account(
    settings: dict[str, RoleSettings], report: dict[str, object], status: int
) -> int:
    """After an account operation: the line that a deactivation is final;
    after a rollover the CA accepted (acctproc's `report`, see
    roles/acctproc.py), the new key put at the account key's path."""
    account = typing.cast(AcctprocSettings, settings["acctproc"])
    if account.operation == "deactivate" and status == EXIT_CHANGED:
        tell(f"letskencrypt: account key {account.key_path} can no longer be used with "
             f"{account.directory_url}: its account is deactivated")  # fmt: skip
    changed = report.get("account_key_changed")
    if account.new_key_path is None or not isinstance(changed, str):
        return status
    try:
        old = keyfiles.replace_account_key(account.key_path, account.new_key_path, changed)
    except KeyFileError as error:
        tell(f"letskencrypt: {error}; the CA changed the account's key to the key in "
             f"{account.new_key_path}: copy it to {account.key_path}")  # fmt: skip
        return EXIT_FAILED
    kept = f" (the old one is kept as {old})" if old else ""
    tell(f"letskencrypt: account key {account.key_path} replaced with the key of "
         f"{account.new_key_path}, to which the CA changed the account{kept}")  # fmt: skip
    return status


def move_former_default_domain_key(args: argparse.Namespace) -> str | None:
    """A domain key at the former default place moves to the new default;
    returns a line to tell the operator, or None."""
    if args.domain_key != DEFAULT_DOMAIN_KEY or os.path.lexists(DEFAULT_DOMAIN_KEY):
        return None
    if not os.path.isfile(FORMER_DEFAULT_DOMAIN_KEY):
        return None
    make_directories(os.path.dirname(DEFAULT_DOMAIN_KEY), KEY_DIR_MODE)
    try:
        os.link(FORMER_DEFAULT_DOMAIN_KEY, DEFAULT_DOMAIN_KEY)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        copy_key(FORMER_DEFAULT_DOMAIN_KEY, DEFAULT_DOMAIN_KEY)
    fsync_directory(os.path.dirname(DEFAULT_DOMAIN_KEY))
    # Only once the new one is durable.
    os.unlink(FORMER_DEFAULT_DOMAIN_KEY)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(FORMER_DEFAULT_DOMAIN_KEY))
    return (
        f"moved the domain key from {FORMER_DEFAULT_DOMAIN_KEY} to {DEFAULT_DOMAIN_KEY}: "
        "keys no longer live in the certificate directory"
    )


def copy_key(source: str, target: str) -> None:
    try:
        data = fsutil.read_file(source, MAX_KEY_FILE_SIZE, follow_symlinks=True)
    except fsutil.FileTooLarge:
        raise InputError(f"{source}: larger than a key") from None
    except fsutil.NotRegularFile:
        raise InputError(f"{source}: not a regular file") from None
    fsutil.write_new(target, data, KEY_FILE_MODE, create_mode=KEY_FILE_MODE)


def run_user(name: str) -> RunUser | None:
    """Roles drop to this user only when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise InputError(f"no such user {name!r} (--user)") from None
    if entry.pw_uid == 0:
        raise InputError(f"--user {name} is root; give an unprivileged user")
    return RunUser(entry.pw_uid, entry.pw_gid)


def main(argv: list[str] | None = None) -> None:
    interrupts.catch()
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["persist-record"]:
        persist_record_main(arguments[1:])
    args = build_parser().parse_args(arguments)
    STYLE.log_format = args.log_format
    if args.config:
        if args.rollover_account_key is not None or args.deactivate_account:
            raise_usage("--rollover-account-key and --deactivate-account do not go with "
                        "--config: give the authority's account key with -f")
        run_config(args)
    if not args.domains:
        build_parser().error("the following arguments are required: domain")
    if args.jobs is not None:
        raise_usage("-j/--jobs goes with --config")
    cert_dir = os.path.abspath(args.cert_dir)
    with failing_in_one_line():
        settings = role_settings(args)
        user = run_user(args.user)
        preflight(settings, user)
        moved = move_former_default_domain_key(args)
        if moved:
            tell(f"letskencrypt: {moved}")
        for note in check_keys(settings, cert_dir):
            tell(f"letskencrypt: {note}")
        if args.deactivate_account and not args.force:
            confirm_deactivation(typing.cast(AcctprocSettings, settings["acctproc"]))
    # A daemon's lines carry the time; its refusals above are plain one-liners.
    STYLE.timestamps = args.daemon
    supervisor = Supervisor(
        settings=settings,
        cert_dir=cert_dir,
        verbosity=args.verbose,
        run_user=user,
        relay=Relay(certificate=args.domains[0]),
    )
    started = time.time()
    before = installed_set(cert_dir)
    try:
        status = supervisor.run()
    except (InputError, FileStoreError) as error:
        tell(f"letskencrypt: {error}")
        sys.exit(EXIT_FAILED)
    except OSError as error:
        tell(f"letskencrypt: {plain_words(error)}")
        sys.exit(EXIT_FAILED)
    status = finish_run(settings, cert_dir, status)
    status = finish_account(settings, supervisor.relay.reports.get("acctproc", {}), status)
    account_run = args.rollover_account_key is not None or args.deactivate_account
    if args.deploy_hook and not args.revoke and not account_run:
        status = run_deploy_hook(args, settings, cert_dir, before, status)
    if args.metrics_file:
        run = runstate.RunRecord(
            started=started, duration=time.time() - started,
            orders=supervisor.relay.counts["orders"], requests=supervisor.relay.counts["requests"],
        )  # fmt: skip
        write_metrics(args, settings, cert_dir, status, run)
    interrupts.exit_with(status)


def raise_usage(message: str) -> NoReturn:
    build_parser().error(message)


@contextlib.contextmanager
def failing_in_one_line() -> Iterator[None]:
    """Our refusals, and the host's (a missing file, a full disk), end the
    command with one plain line and status 1."""
    try:
        yield
    except OSError as error:
        tell(f"letskencrypt: {plain_words(error)}")
        sys.exit(EXIT_FAILED)
    except LetskencryptError as error:
        tell(f"letskencrypt: {error}")
        sys.exit(EXIT_FAILED)


def run_config(args: argparse.Namespace) -> NoReturn:
    from letskencrypt import confrun

    with failing_in_one_line():
        status = confrun.run(args)
    interrupts.exit_with(status)


def run_deploy_hook(
    args: argparse.Namespace,
    settings: dict[str, RoleSettings],
    cert_dir: str,
    before: str | None,
    status: int,
) -> int:
    """The deploy hook after a single-certificate run that installed a new
    certificate, or that an earlier run owes (deploy.py); the run's status."""
    from letskencrypt import deploy, fleet

    job = fleet.Job(handle=args.domains[0], names=tuple(args.domains), settings=settings,
                    cert_dir=cert_dir, authority="", account_key="",
                    deploy_hook=args.deploy_hook)  # fmt: skip
    deployed = deploy.deploy(job, before, stopped=interrupts.received() is not None)
    if deployed is None:
        return status
    if deployed.result == "deferred":
        tell(f"letskencrypt: {deploy.deferred_line(deployed)}")
        return status
    if deployed.result == "failed":
        tell(f"letskencrypt: {deploy.failure_line(deployed)}")
        return EXIT_FAILED
    if deployed.earlier:
        tell(f"letskencrypt: {deploy.EARLIER_LINE}")
        return EXIT_CHANGED if status == EXIT_NOTHING_TO_DO else status
    return status


def write_metrics(
    args: argparse.Namespace,
    settings: dict[str, RoleSettings],
    cert_dir: str,
    status: int,
    run: "runstate.RunRecord",
) -> None:
    """--metrics-file after a single-certificate run: its certificate and this run."""
    from letskencrypt import metrics
    from letskencrypt import status as certificate_status

    netproc = typing.cast(NetprocSettings, settings["netproc"])
    handle = args.domains[0]
    result = {EXIT_CHANGED: "changed", EXIT_NOTHING_TO_DO: "not-due"}.get(status, "failed")
    state = runstate.record(runstate.State(), handle, result, "", time.time())
    state = runstate.record_run(state, run)
    entry = certificate_status.Entry(
        handle=handle, names=tuple(netproc.names), cert_dir=cert_dir, key_type=args.key_type,
        authority=origin(netproc.directory_url), directory_url=netproc.directory_url,
    )  # fmt: skip
    facts = certificate_status.gather([entry], state, datetime.now(UTC))
    try:
        metrics.write(os.path.abspath(args.metrics_file), metrics.render(facts, state))
    except OSError as error:
        tell(f"letskencrypt: --metrics-file: {plain_words(error)}")


def persist_record_main(arguments: list[str]) -> NoReturn:
    """`letskencrypt persist-record [options] NAME...`: find the account of
    the account key (acctproc signs, netproc asks the CA; -n registers it),
    then print one dns-persist-01 record per name on stdout, in zone-file
    syntax.  A name and its wildcard share one record, with policy=wildcard."""
    args = build_parser().parse_args(arguments)
    args.persist_record = True
    STYLE.log_format = args.log_format
    if args.config:
        raise_usage("persist-record does not go with --config: give the names")
    if not args.domains:
        build_parser().error("the following arguments are required: domain")
    with failing_in_one_line():
        settings = role_settings(args)
        until = persist.parse_persist_until(args.persist_until) if args.persist_until else None
        user = run_user(args.user)
        preflight(settings, user)
        for note in check_keys(settings, os.path.abspath(args.cert_dir)):
            tell(f"letskencrypt: {note}")
        supervisor = Supervisor(settings=settings, cert_dir=os.path.abspath(args.cert_dir),
                                verbosity=args.verbose, run_user=user,
                                relay=Relay(certificate=args.domains[0]))  # fmt: skip
        status = supervisor.run()
        if status == EXIT_CHANGED:
            report = supervisor.relay.reports.get("netproc", {}).get("persist_record")
            names = typing.cast(NetprocSettings, settings["netproc"]).names
            for line in persist_records(report, names, args.wildcard, until):
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
    interrupts.exit_with(status)


def persist_records(
    report: object, names: tuple[str, ...], wildcard: bool, until: int | None
) -> list[str]:
    """The records for `names` from netproc's report (the account URL and the
    CA's issuer domain names, its word: checked for form here)."""
    if not isinstance(report, dict):
        raise InputError("netproc reported no account and issuer domain name")
    issuers = persist.check_issuer_names(report.get("issuers"), "the CA's caaIdentities")
    account = report.get("account")
    if not isinstance(account, str):
        raise InputError("netproc reported no account URL")
    persist.check_account_uri(account)
    bases: dict[str, bool] = {}
    for name in names:
        base = persist.base_name(name)
        bases[base] = bases.get(base, False) or wildcard or name != base
    return [
        persist.zone_line(base, persist.issue_value(
            issuers[0], account, wildcard=covers, persist_until=until))
        for base, covers in bases.items()
    ]  # fmt: skip


if __name__ == "__main__":
    main()
