"""A container of the pod with CONFIG: its role for every certificate of an
acme-client.conf(5) file, one after another (see container.py for what the
containers agree on: the file order, the fixed paths, the `<i>/sock` sockets).

Each certificate's run is a child of this process, forked before anything of
that certificate is read: its own sandbox (process.confine), nothing of one
certificate's run left in the next.  This process reads the configuration,
waits for its children and forwards SIGTERM to them; it opens no key, no
certificate and no socket.

A server role whose run for a certificate fails before it serves (its
settings, a key it cannot use, a sandbox it cannot apply) binds that
certificate's sockets all the same and answers every call with the reason
(rpc.refuse_until_stopped), until netproc stops it: netproc fails that
certificate at once, and the next one starts.  netproc stops its peers after
every certificate, whatever happened (roles/netproc.run, stop_peers).
"""

import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from letskencrypt import conf, container, process, rpc
from letskencrypt.constants import EXIT_CHANGED, EXIT_FAILED, EXIT_NOTHING_TO_DO
from letskencrypt.context import RoleConfig
from letskencrypt.errors import InputError, LetskencryptError, plain_words
from letskencrypt.linux import PR_SET_PDEATHSIG, prctl
from letskencrypt.roles import module_of, spec_of

# Where each certificate's files are inside the containers (container.py).
CERT_BASE = "/etc/ssl/acme"
DOMAIN_KEY_BASE = "/etc/ssl/private/acme"
ACCOUNT_KEY_BASE = "/etc/acme"
CHALLENGE_DIR = "/var/www/acme"
# A handle or an authority name becomes a file name.
FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
# How often revokeproc looks for the certificate directory fileproc makes.
DIRECTORY_POLL = 0.1


@dataclass(frozen=True)
class Plan:
    """One certificate for this role: its configuration, or why there is none."""

    handle: str
    config: RoleConfig | None
    error: str | None = None


def file_name(kind: str, name: str) -> str:
    if not FILE_NAME.fullmatch(name):
        raise InputError(
            f"{kind} {name[:64]!r} cannot name a file in the containers: "
            "letters, digits, '.', '_' and '-' only, not starting with '.', at most 64"
        )
    return name


def paths(domain: conf.Domain) -> list[str]:
    """The command line's path options for `domain`, inside the containers."""
    handle = file_name("domain handle", domain.handle)
    authority = file_name("authority", domain.sign_with)
    return [
        "-c", f"{CERT_BASE}/{handle}",
        "-k", f"{DOMAIN_KEY_BASE}/{handle}.pem",
        "-f", f"{ACCOUNT_KEY_BASE}/{authority}.pem",
        "-C", CHALLENGE_DIR,
    ]  # fmt: skip


def domain_command_line(
    role: str, environ: Mapping[str, str], config: conf.Config, domain: conf.Domain
) -> list[str]:
    """The command line of a one-certificate container run for `domain`."""
    authority = config.authorities[domain.sign_with]
    # As --key-type and --account-key-type with --config: given, they win.
    overrides = {
        "KEY_TYPE": environ.get("KEY_TYPE") or domain.domain_key_type or "",
        "ACCOUNT_KEY_TYPE": environ.get("ACCOUNT_KEY_TYPE") or authority.account_key_type or "",
        # The file's, for this certificate (the TSIG key is the mounted one).
        "CHALLENGE": domain.challenge,
        "DNS_SERVER": domain.dns_server or "",
        "DNS_CHECK_SERVER": " ".join(domain.dns_check_servers),
    }
    argv = container.options(
        role, {**environ, **overrides}, authority.api_url, list(authority.contact)
    )
    return [*argv, *paths(domain), "--", *domain.names]


def plans(role: str, environ: Mapping[str, str]) -> list[Plan]:
    """Every certificate of the file, in file order.  What concerns the whole
    file (unreadable, not valid, DAEMON, DOMAINS) fails at once; what
    concerns one certificate fails that certificate alone."""
    module_of(role)  # an unknown role, or code that cannot load, is said now
    path = environ.get("CONFIG", "")
    if not os.path.isabs(path):
        raise InputError(f"CONFIG must be an absolute path, not {path[:80]!r}")
    if environ.get("DOMAINS", "").strip():
        raise InputError("DOMAINS and CONFIG: give one or the other")
    if container.flag(environ, "DAEMON"):
        raise InputError(
            "DAEMON=1 with CONFIG is not supported yet: run a one-certificate "
            "sidecar (DOMAINS) per certificate, or CONFIG from a CronJob"
        )
    container.verbosity(environ)
    config = conf.load(path)
    found = []
    for index, domain in enumerate(conf.select(config, [])):
        try:
            argv = domain_command_line(role, environ, config, domain)
            one = container.role_config(role, environ, argv, instance=index)
            found.append(Plan(domain.handle, one))
        except LetskencryptError as error:
            where = f"{domain.location}: domain {domain.handle}"
            found.append(Plan(domain.handle, None, f"{where}: {error}"))
    if not found:
        raise InputError(f"{path}: no domain to certify")
    return found


def run(
    role: str,
    plans: list[Plan],
    nothing_to_do: int,
    verbosity: int,
    ready_timeout: float = container.READY_TIMEOUT,
) -> int:
    """Run `role` for each plan in turn; this container's exit status."""
    runner = Runner(role, verbosity)
    signal.signal(signal.SIGTERM, runner.forward)
    statuses: dict[str, int] = {}
    for index, plan in enumerate(plans):
        if runner.stopping:
            break
        runner.say(f"certificate {plan.handle} ({index + 1} of {len(plans)})")
        if spec_of(role).drives:
            statuses[plan.handle] = runner.in_child(
                lambda plan=plan, i=index: drive_one(role, plan, i, ready_timeout)
            )
        else:
            if plan.config is not None and reads_certificate_directory(plan.config):
                wait_for_directory(plan.config, ready_timeout)
            statuses[plan.handle] = runner.in_child(
                lambda plan=plan, i=index: serve_one(role, plan, i)
            )
    if runner.stopping:
        runner.tell("stopped by SIGTERM")
        return EXIT_FAILED
    return summary(role, statuses, nothing_to_do, runner)


def summary(role: str, statuses: dict[str, int], nothing_to_do: int, runner: "Runner") -> int:
    """The role that drives (netproc): 0 if any changed and none failed, 1
    if any failed, else `nothing_to_do`; a server role: 0, or 1 if it failed
    for any."""
    done = (EXIT_CHANGED, EXIT_NOTHING_TO_DO)
    failed = [handle for handle, code in statuses.items() if code not in done]
    if not spec_of(role).drives:
        return EXIT_FAILED if failed else EXIT_CHANGED
    for handle in failed:
        runner.tell(f"certificate {handle}: failed")
    if failed:
        runner.tell(f"{len(failed)} of {len(statuses)} certificates failed: {', '.join(failed)}")
        return EXIT_FAILED
    if EXIT_CHANGED in statuses.values():
        return EXIT_CHANGED
    return nothing_to_do


def drive_one(role: str, plan: Plan, instance: int, ready_timeout: float) -> int:
    """The driving role (netproc) for one certificate: its run, or (without
    a configuration) the failure said and the other roles of that
    certificate stopped (its module's stop_peers)."""
    if plan.config is not None:
        return process.role_outcome(role, plan.config, EXIT_NOTHING_TO_DO).code
    sys.stderr.write(f"letskencrypt: {role}: {plan.error}\n")
    module_of(role).stop_peers(container.RUN_DIR, instance, ready_timeout)
    return EXIT_FAILED


def serve_one(role: str, plan: Plan, instance: int) -> int:
    """A server role for one certificate; if it cannot serve, it answers
    every call of that certificate with why, until stopped."""
    if plan.config is not None:
        outcome = process.role_outcome(role, plan.config)
        if outcome.error is None or rpc.has_served():
            return outcome.code
        error = outcome.error
    else:
        error = plan.error or "no configuration"
        sys.stderr.write(f"letskencrypt: {role}: {error}\n")
    edges = [edge.name for edge in rpc.edges_served_by(role)]
    message = f"could not start for certificate {plan.handle}: {error}"
    rpc.refuse_until_stopped(container.RUN_DIR, edges, message, instance)
    return EXIT_FAILED


def reads_certificate_directory(config: RoleConfig) -> bool:
    """Whether the role reads a certificate directory it may not make
    (revokeproc: fileproc makes it)."""
    directory = getattr(config.settings, "cert_dir", None)
    grants = spec_of(config.role).grants(config.settings)
    return directory is not None and not any(
        grant.writable for grant in grants if grant.path == directory
    )


def wait_for_directory(config: RoleConfig, ready_timeout: float) -> None:
    """revokeproc reads the certificate directory that fileproc makes (it
    mounts it read-only): wait for it a while; if it does not come, the run
    says so (the directory is missing).  Half of netproc's READY_TIMEOUT, so
    that netproc still finds revokeproc (refusing) and stops it."""
    directory = getattr(config.settings, "cert_dir", "")
    deadline = time.monotonic() + ready_timeout / 2
    while directory and not os.path.isdir(directory) and time.monotonic() < deadline:
        time.sleep(DIRECTORY_POLL)


class Runner:
    """Forks one child per certificate and passes SIGTERM on to it."""

    def __init__(self, role: str, verbosity: int) -> None:
        self.role = role
        self.verbosity = verbosity
        self.child: int | None = None
        self.stopping = False

    def forward(self, signum: int, _frame: object) -> None:
        self.stopping = True
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signum)

    def in_child(self, body: Callable[[], int]) -> int:
        """`body` in a child process; its exit status."""
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os._exit(child(body, parent))
        self.child = pid
        _, status = os.waitpid(pid, 0)
        self.child = None
        return os.waitstatus_to_exitcode(status)

    def say(self, message: str) -> None:
        if self.verbosity >= 1:
            self.tell(message)

    def tell(self, message: str) -> None:
        sys.stderr.write(f"letskencrypt: {self.role}: {message}\n")
        sys.stderr.flush()


def child(body: Callable[[], int], parent: int) -> int:
    """In the child: die with the parent, run `body`, one line for anything
    unexpected."""
    code = EXIT_FAILED
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            return EXIT_FAILED
        code = body()
    except BaseException as error:  # one line, never a traceback
        sys.stderr.write(f"letskencrypt: internal error (a bug): {plain_words(error)}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    return code
