"""`letskencrypt --config FILE [handle ...]`: every certificate of an
acme-client.conf(5) file (conf.py) in one run (fleet.py), and
`letskencrypt status`.

Each `domain` block becomes the command line a single-certificate run would
have (its names, keys, directories, its authority's URL, account key, roots
and CA bundle), with the options that are not per certificate (-n, -N, -F,
-b, -v, --ca-bundle, --user, --strict, ...) taken from the command line for
every one of them; the per-certificate options are refused with --config.
Everything is checked before any role starts: a mistake in any block stops
the run, naming the file, line and column of the block.
"""

import argparse
import contextlib
import copy
import os
import random
import stat
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from letskencrypt import cli, conf, fleet, interrupts, metrics, options, runstate, status
from letskencrypt.constants import CHALLENGE_HTTP_01, EXIT_FAILED
from letskencrypt.errors import InputError, LetskencryptError, plain_words
from letskencrypt.relay import STYLE, Relay, tell
from letskencrypt.settings import KeyprocSettings, NetprocSettings, RoleSettings, Schedule
from letskencrypt.supervisor import RunUser, stop_signals_caught

DEFAULT_STATE_DIRECTORY = "/var/lib/letskencrypt"
MAX_JOBS = 256
# The daemon wakes for a certificate falling due no sooner than this.
MIN_DAEMON_WAIT = 60.0
STOP_CHECK = 0.2
STATE_FILE = "state.json"
# With --config these come from the file; the command line may not give them.
PER_CERTIFICATE = {
    "cert_dir": ("-c/--cert-dir", "certificate directory", options.DEFAULT_CERT_DIR),
    "domain_key": ("-k/--domain-key", "domain key", options.DEFAULT_DOMAIN_KEY),
    "challenge_dir": ("-C/--challenge-dir", "challengedir", options.DEFAULT_CHALLENGE_DIR),
    "account_key": ("-f/--account-key", "account key", options.DEFAULT_ACCOUNT_KEY),
    "server": ("--server", "api url", None),
    "staging": ("-s/--staging", "api url", False),
    "trust_anchors": ("--trust-anchors", "trust anchors", None),
    "contact": ("--contact", "contact", []),
    "eab_kid": ("--eab-kid", "external account binding", None),
    "eab_hmac_key": ("--eab-hmac-key", "external account binding", None),
    "profile": ("--profile", "profile", None),
    "preferred_chain": ("--preferred-chain", "preferred chain", None),
    "challenge": ("--challenge", "challenge", CHALLENGE_HTTP_01),
    "dns_server": ("--dns-server", "dns server", None),
    "tsig_key": ("--tsig-key", "tsig key", None),
}


def refuse_per_certificate_options(args: argparse.Namespace) -> None:
    for attribute, (option, directive, default) in PER_CERTIFICATE.items():
        if getattr(args, attribute) != default:
            raise InputError(f"{option} goes in the configuration file ({directive}) with --config")


def refuse_files_others_may_change(config: conf.Config) -> None:
    """The file and its includes name commands (deploy hooks) that run as
    this process, and paths it writes: a file that another user (or a group)
    may change is refused, as sshd and sudo refuse theirs."""
    for path in config.files:
        status = os.stat(path)
        if status.st_uid not in (0, os.geteuid()):
            raise InputError(
                f"{path}: owned by uid {status.st_uid}; the configuration must belong "
                f"to root or to uid {os.geteuid()}, which runs its deploy hooks"
            )
        if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise InputError(
                f"{path}: writable by its group or others (mode "
                f"{stat.S_IMODE(status.st_mode):o}), and it names commands this run "
                f"executes: chmod go-w {path}"
            )


def state_directory(config: conf.Config) -> str:
    return config.state_directory or DEFAULT_STATE_DIRECTORY


def domain_arguments(
    args: argparse.Namespace, config: conf.Config, domain: conf.Domain
) -> argparse.Namespace:
    """The command line of a single-certificate run for `domain`."""
    authority = config.authorities[domain.sign_with]
    one = copy.copy(args)
    one.domains = list(domain.names)
    one.server = authority.api_url
    one.staging = False
    one.ca_bundle = args.ca_bundle or authority.ca_bundle
    one.trust_anchors = authority.trust_anchors
    one.account_key = authority.account_key
    one.account_key_type = args.account_key_type or authority.account_key_type
    one.contact = list(authority.contact)
    one.eab_kid = authority.eab_kid
    one.eab_hmac_key = authority.eab_hmac_key
    one.profile = domain.profile
    one.preferred_chain = domain.preferred_chain
    one.challenge = domain.challenge
    one.domain_key = domain.domain_key
    one.key_type = args.key_type or domain.domain_key_type
    one.cert_dir = domain.certificate_directory or os.path.join(
        state_directory(config), "certs", domain.handle
    )
    one.challenge_dir = domain.challenge_dir or options.DEFAULT_CHALLENGE_DIR
    one.challenge = domain.challenge
    one.dns_server = domain.dns_server
    one.tsig_key = domain.tsig_key
    # The file's, else the command line's (for every certificate; `status`
    # has no such option).
    given = getattr(args, "dns_check_server", None) or []
    one.dns_check_server = list(domain.dns_check_servers) or list(given)
    one.rotate_domain_key = args.rotate_domain_key or domain.rotate_key
    # A --config daemon is confrun's loop; each run of a certificate is one-shot.
    one.daemon = False
    return one


def publish_paths(domain: conf.Domain) -> dict[str, str]:
    wanted = {
        "cert.pem": domain.certificate,
        "chain.pem": domain.chain_certificate,
        "fullchain.pem": domain.full_chain_certificate,
    }
    return {name: path for name, path in wanted.items() if path}


def build_jobs(
    args: argparse.Namespace, config: conf.Config, user: RunUser | None
) -> list[fleet.Job]:
    """A job per selected domain, each checked as a single run would be (and
    against the others: no two share a key or a certificate directory)."""
    jobs: list[fleet.Job] = []
    claimed: dict[str, str] = {}
    # What the roles' user lacks fails every certificate alike: checked once.
    user_refused = None
    if user is not None:
        try:
            cli.check_roles_user(user)
        except LetskencryptError as error:
            user_refused = str(error)
        except OSError as error:
            user_refused = plain_words(error)
    for domain in conf.select(config, args.domains):
        where = f"{domain.location}: domain {domain.handle}"
        one = domain_arguments(args, config, domain)
        try:
            settings = options.role_settings(one, account_type_follows=False)
        except LetskencryptError as error:
            raise InputError(f"{where}: {error}") from None
        cert_dir = os.path.abspath(one.cert_dir)
        # What this host lacks for one certificate fails that one alone.
        refused = user_refused
        try:
            cli.preflight(settings, user, user_checked=True)
            for note in cli.check_keys(settings, cert_dir):
                tell(f"letskencrypt: {note}", certificate=domain.handle)
        except LetskencryptError as error:
            refused = str(error)
        except OSError as error:
            refused = plain_words(error)
        keyproc = settings["keyproc"]
        netproc = settings["netproc"]
        assert isinstance(keyproc, KeyprocSettings) and isinstance(netproc, NetprocSettings)
        for what, path in (
            ("certificate directory", cert_dir),
            ("domain key", os.path.realpath(keyproc.key_path)),
            *((f"{name} path", path) for name, path in publish_paths(domain).items()),
        ):
            other = claimed.get(path)
            if other is not None:
                raise InputError(f"{where}: its {what} {path} is also {other}'s")
            claimed[path] = f"domain {domain.handle}"
        account_key = os.path.abspath(one.account_key)
        jobs.append(
            fleet.Job(
                handle=domain.handle,
                names=tuple(netproc.names),
                settings=settings,
                cert_dir=cert_dir,
                authority=domain.sign_with,
                account_key=account_key,
                publish=publish_paths(domain),
                # A revocation deploys nothing.
                deploy_hook=None if args.revoke else args.deploy_hook or domain.deploy_hook,
                # `rotate key` in the file: a new key whenever the certificate
                # is renewed; --rotate-domain-key: now.
                always=bool(args.force or args.revoke or args.rotate_domain_key),
                refused=refused,
                finish=finisher(settings, cert_dir),
            )
        )
    for job in jobs:
        if os.path.realpath(job.account_key) in claimed:
            raise InputError(f"the account key {job.account_key} is also a domain key")
    return jobs


def finisher(settings: dict[str, RoleSettings], cert_dir: str) -> Callable[[int], int]:
    """What the command line does after the lane's run (a key rotation's end)."""
    return lambda status: cli.finish_run(settings, cert_dir, status)


def status_entries(config: conf.Config, args: argparse.Namespace) -> list[status.Entry]:
    entries = []
    for domain in conf.select(config, args.domains):
        one = domain_arguments(args, config, domain)
        entries.append(
            status.Entry(
                handle=domain.handle,
                names=tuple(domain.names),
                cert_dir=os.path.abspath(one.cert_dir),
                key_type=one.key_type,
                authority=domain.sign_with,
                directory_url=config.authorities[domain.sign_with].api_url,
            )
        )
    return entries


def run(args: argparse.Namespace) -> int:
    """A --config run; its exit status."""
    refuse_per_certificate_options(args)
    if args.jobs is not None and not 1 <= args.jobs <= MAX_JOBS:
        raise InputError(f"-j/--jobs must be between 1 and {MAX_JOBS}")
    schedule = options.check_schedule(args) if args.daemon else None
    config = conf.load(os.path.abspath(args.config))
    refuse_files_others_may_change(config)
    user = cli.run_user(args.user)
    jobs = build_jobs(args, config, user)
    STYLE.timestamps = schedule is not None
    if schedule is None:
        return run_once(args, config, jobs, user)
    return keep_renewing(args, config, jobs, user, schedule)


def run_once(
    args: argparse.Namespace, config: conf.Config, jobs: list[fleet.Job], user: RunUser | None
) -> int:
    started = time.time()
    state = runstate.load(os.path.join(state_directory(config), STATE_FILE))
    runner = fleet.Fleet(
        jobs=jobs,
        concurrency=args.jobs or fleet.default_concurrency(),
        verbosity=args.verbose,
        run_user=user,
        relay=Relay(),
        notes={handle: entry.ari for handle, entry in state.certificates.items() if entry.ari},
    )
    exit_status = runner.run()
    record(config, args, runner, started)
    return exit_status


def keep_renewing(
    args: argparse.Namespace,
    config: conf.Config,
    jobs: list[fleet.Job],
    user: RunUser | None,
    schedule: Schedule,
) -> int:
    """--daemon: run every due certificate, then wait - the interval plus
    jitter, or less when a certificate falls due sooner, or the backoff
    (doubling) after a run with a failure - until a stop signal; exit 0."""
    failures = 0
    while True:
        status = run_once(args, config, jobs, user)
        if interrupts.received() is not None:
            return 0
        # -F forces one renewal, not one per cycle.
        for job in jobs:
            job.always = False
        if status == EXIT_FAILED:
            failures += 1
            delay = min(schedule.backoff * 2 ** min(failures - 1, 30), schedule.interval)
        else:
            failures = 0
            delay = schedule.interval + random.uniform(0, schedule.jitter)  # noqa: S311
        delay = min(delay, seconds_to_next_renewal(config, args))
        say(args, f"next check in {delay:.0f} s")
        if wait_for_stop(delay):
            return 0


def seconds_to_next_renewal(config: conf.Config, args: argparse.Namespace) -> float:
    """Until the first configured certificate falls due, by its lifetime or
    the time picked in the CA's renewal window (at least a minute)."""
    state = runstate.load(os.path.join(state_directory(config), STATE_FILE))
    facts = status.gather(status_entries(config, args), state, datetime.now(UTC))
    times = [f.next_renewal for f in facts if f.next_renewal is not None and not f.due]
    if not times:
        return float("inf")
    return max((min(times) - datetime.now(UTC)).total_seconds(), MIN_DAEMON_WAIT)


def wait_for_stop(seconds: float) -> bool:
    """Sleep `seconds`; True as soon as a stop signal comes."""
    deadline = time.monotonic() + seconds
    with stop_signals_caught():
        while time.monotonic() < deadline:
            if interrupts.received() is not None:
                return True
            time.sleep(min(STOP_CHECK, max(deadline - time.monotonic(), 0)))
    return interrupts.received() is not None


def say(args: argparse.Namespace, message: str) -> None:
    if args.verbose:
        tell(f"letskencrypt: {message}")


def record(
    config: conf.Config, args: argparse.Namespace, runner: fleet.Fleet, started: float
) -> None:
    """The run's results in the state file, and the metrics file if asked."""
    path = os.path.join(state_directory(config), STATE_FILE)
    state = runstate.load(path)
    now = time.time()
    for outcome in runner.outcomes.values():
        result = {"changed": "changed", "not due": "not-due"}.get(outcome.result, "failed")
        if args.revoke and result == "changed":
            result = "revoked"
        note = runner.relay.ari.get(outcome.handle)
        state = runstate.record(state, outcome.handle, result, outcome.reason, now, note)
    state = record_accounts(state, runner, now)
    counts = runner.relay.counts
    state = runstate.record_run(
        state,
        runstate.RunRecord(started=started, duration=now - started,
                           orders=counts["orders"], requests=counts["requests"]),
    )  # fmt: skip
    try:
        runstate.save(path, state)
    except OSError as error:
        tell(f"letskencrypt: state file {path}: {plain_words(error)}")
    if args.metrics_file:
        facts = status.gather(status_entries(config, args), state, datetime.now(UTC))
        try:
            metrics.write(os.path.abspath(args.metrics_file), metrics.render(facts, state))
        except OSError as error:
            tell(f"letskencrypt: --metrics-file: {plain_words(error)}")


def record_accounts(state: runstate.State, runner: fleet.Fleet, now: float) -> runstate.State:
    """Each authority's account as a lane's netproc last reported it (the
    relay bounded it; the CA's word through netproc: shown, never acted on)."""
    for job in runner.jobs:
        account = runner.relay.accounts.get(job.handle)
        if account is None:
            continue
        contact = account["contact"]
        record = runstate.AccountRecord(
            url=str(account["url"]),
            contact=tuple(map(str, contact)) if isinstance(contact, list) else (),
            status=str(account["status"]),
            seen=now,
        )
        with contextlib.suppress(ValueError):
            state = runstate.record_account(state, job.authority, record)
    return state


def status_parser() -> options.Parser:
    """The command line of `letskencrypt status`."""
    parser = options.Parser(
        prog="letskencrypt status",
        description="What is installed for each configured certificate, when it is due "
        "for renewal and why, and how its last run went. Reads files only: no request "
        "to the CA, no role started.",
    )
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="the configuration file (acme-client.conf syntax)")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    parser.add_argument("domains", nargs="*", metavar="handle",
                        help="only these domain blocks (default: all)")
    return parser


def status_main(argv: Sequence[str]) -> None:
    """`letskencrypt status [--json] --config FILE [handle ...]`."""
    args = status_parser().parse_args(list(argv))
    args.key_type = None
    args.account_key_type = None
    args.ca_bundle = None
    args.rotate_domain_key = False
    try:
        config = conf.load(os.path.abspath(args.config))
        entries = status_entries(config, args)
        state = runstate.load(os.path.join(state_directory(config), STATE_FILE))
    except LetskencryptError as error:
        sys.stderr.write(f"letskencrypt: {error}\n")
        sys.exit(EXIT_FAILED)
    facts = status.gather(entries, state, datetime.now(UTC))
    accounts = status.gather_accounts([entry.authority for entry in entries], state)
    sys.stdout.write(
        status.render_json(facts, accounts)
        if args.json
        else status.render_text(facts) + status.render_accounts_text(accounts)
    )
    sys.stdout.flush()
    sys.exit(0)
