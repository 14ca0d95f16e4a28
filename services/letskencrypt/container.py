"""Container mode: one role per container, configured from the environment.

Every container of the pod (compose or Kubernetes) runs
`python3 -m letskencrypt.container ROLE`.  The settings are built exactly as
the command line builds them, from these variables:

    DOMAINS          space-separated names, the first is the primary (required)
    ACME_SERVER      ACME directory URL (default: Let's Encrypt production)
    CONTACT          space-separated contact URIs (mailto:...)
    KEY_TYPE         type of the keys (default: ecdsa256 for new keys, any for
                     existing ones); an existing key of another type makes
                     keyproc or acctproc refuse to start
    ACCOUNT_KEY_TYPE type of the account key, when not KEY_TYPE's
    FORCE            1: renew even if the certificate is current
    BACKUP           1: keep the previous certificate set
    DAEMON           1: keep running and renew on a schedule (sidecar)
    RENEW_INTERVAL, RENEW_JITTER, RENEW_BACKOFF   daemon schedule, seconds
    STRICT           1: a sandbox feature the kernel lacks is fatal
    VERBOSE          0, 1 or 2
    NOTHING_TO_DO_EXIT   netproc's status when nothing was due (default 2; a
                     Kubernetes Job wants 0, or every quiet night is a failure)
    READY_TIMEOUT    seconds netproc waits for the other roles, and certproc
                     for fileproc (default 120)
    CHALLENGE        http-01 (default) or dns-01
    DNS_SERVER       dns-01: the DNS server that takes the updates (ADDR[:PORT])
    DNS_CHECK_SERVER dns-01: space-separated servers the propagation check
                     asks instead of the zone's NS servers

dns-01's TSIG key is the file mounted at /etc/letskencrypt/tsig.key, in
chngproc's container only (the other roles are told its path, never read
it); with CONFIG it is the one key of every dns-01 certificate, and the
file's `tsig key` is ignored like its other paths (its `challenge`, `dns
server` and `dns check server` are used).

Paths inside the containers are fixed, and equal to the native defaults:
the sockets under /run/letskencrypt/<edge>/, the account key in /etc/acme,
the domain key in /etc/ssl/private/acme, certificates in /etc/ssl/acme, the
challenge directory /var/www/acme, netproc's CA bundle at
/etc/letskencrypt/ca.pem when mounted (else the image's system bundle), and
the CA's trust anchors for certproc and revokeproc at
/etc/letskencrypt/trust-anchors.pem when a non-empty regular file is
mounted there (else Let's Encrypt's built-in roots, for its two servers only: any other
ACME_SERVER makes those two roles refuse to start).  The other roles are not
given the anchors and do not check them.
Missing keys are created on the first run, as `-n -N` would.

Many certificates: with CONFIG (the path of an acme-client.conf(5) file,
mounted at /etc/letskencrypt/acme-client.conf by compose.yaml and the
Kubernetes manifests) and no DOMAINS, every container reads the file and
takes its `domain` blocks in file order; for the i-th (from 0) each role runs
once, in a child process of its own (a fresh sandbox, and nothing of one
certificate's run left in the next), exactly as a one-certificate container
would, except that every socket is `<edge dir>/<i>/sock` instead of `sock`
(rpc.socket_path): a client for one certificate never reaches a server still
serving the one before.  From the file come each certificate's names and key
type, and its authority's `api url`, contact and account key type (KEY_TYPE
and ACCOUNT_KEY_TYPE, when set, win, as --key-type does with --config);
ACME_SERVER and CONTACT are not used.  Its paths are fixed inside the
containers and the file's own paths for them are ignored:

    certificate directory   /etc/ssl/acme/<handle>
    domain key              /etc/ssl/private/acme/<handle>.pem
    account key             /etc/acme/<authority>.pem (one account per authority)
    challenge directory     /var/www/acme (shared)

and the trust anchors and CA bundle are the mounted files above, as for one
certificate (the file's `trust anchors` and `ca bundle` are ignored, and so
are `certificate`, `chain certificate`, `full chain certificate`, `rotate
key`, `deploy hook` and `state directory`, which are for a native run).
Handles and authority names must be file names here ([A-Za-z0-9._-], not
starting with '.').  netproc's status is 0 when some certificate changed and
none failed, 1 when any failed (one line names each), NOTHING_TO_DO_EXIT
when none was due.  A server role that cannot start for a certificate (a
domain key of the wrong type, say) binds that certificate's sockets all the
same and answers every call with why, so that netproc fails that certificate
at once and goes on with the next.  DAEMON=1 with CONFIG is refused for now:
run the one-certificate sidecar per certificate.
"""

import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence

from letskencrypt import process
from letskencrypt.constants import CHALLENGE_DNS_01, EXIT_FAILED, EXIT_NOTHING_TO_DO
from letskencrypt.context import RoleConfig
from letskencrypt.errors import InputError
from letskencrypt.options import build_parser, role_settings
from letskencrypt.roles import spec_of

RUN_DIR = "/run/letskencrypt"
TSIG_KEY = "/etc/letskencrypt/tsig.key"
CA_BUNDLE = "/etc/letskencrypt/ca.pem"
TRUST_ANCHORS = "/etc/letskencrypt/trust-anchors.pem"
# Where compose.yaml and the Kubernetes CronJob mount the configuration file
# (CONFIG names it), in every role's container.
CONFIG_PATH = "/etc/letskencrypt/acme-client.conf"
# Containers start in any order and images may still be pulled.
READY_TIMEOUT = 120.0
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"", "0", "false", "no", "off"})


def flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise InputError(f"{name} must be 1 or 0, not {value[:20]!r}")


def uses(role: str, setting: str) -> bool:
    return setting in {field.name for field in dataclasses.fields(spec_of(role).settings)}


def command_line(role: str, environ: Mapping[str, str]) -> list[str]:
    """The command line that a native run with this environment would have."""
    domains = environ.get("DOMAINS", "").split()
    if not domains:
        raise InputError(
            "DOMAINS is empty: give the names to certify, space-separated "
            "(or CONFIG, a configuration file; with compose, LETSKENCRYPT_CONFIG)"
        )
    server = environ.get("ACME_SERVER")
    return [*options(role, environ, server, environ.get("CONTACT", "").split()), "--", *domains]


def options(
    role: str, environ: Mapping[str, str], server: str | None, contacts: Sequence[str]
) -> list[str]:
    """The options of the command line, with this server and these contacts."""
    argv = ["-n", "-N"]
    if server is not None:
        argv += ["--server", server]
    if uses(role, "ca_bundle") and os.path.exists(CA_BUNDLE):
        argv += ["--ca-bundle", CA_BUNDLE]
    # A non-empty regular file only: compose mounts /dev/null there when
    # none is given (an empty file would do as well).
    if (
        uses(role, "trust_anchors")
        and os.path.isfile(TRUST_ANCHORS)
        and os.path.getsize(TRUST_ANCHORS)
    ):
        argv += ["--trust-anchors", TRUST_ANCHORS]
    for contact in contacts:
        argv += ["--contact", contact]
    for name, option in (("KEY_TYPE", "--key-type"), ("ACCOUNT_KEY_TYPE", "--account-key-type")):
        if environ.get(name):
            argv += [option, environ[name]]
    for name, option in (("FORCE", "-F"), ("BACKUP", "-b"), ("DAEMON", "--daemon")):
        if flag(environ, name):
            argv.append(option)
    if flag(environ, "STRICT"):
        argv.append("--strict")
    for name, option in (
        ("RENEW_INTERVAL", "--interval"),
        ("RENEW_JITTER", "--jitter"),
        ("RENEW_BACKOFF", "--backoff"),
    ):
        if environ.get(name):
            argv += [option, environ[name]]
    challenge = environ.get("CHALLENGE", "").strip()
    if challenge:
        argv += ["--challenge", challenge]
    if challenge == CHALLENGE_DNS_01:
        argv += ["--tsig-key", TSIG_KEY]
    if environ.get("DNS_SERVER", "").strip():
        argv += ["--dns-server", environ["DNS_SERVER"].strip()]
    for server in environ.get("DNS_CHECK_SERVER", "").split():
        argv += ["--dns-check-server", server]
    argv += ["-v"] * verbosity(environ)
    return argv


def verbosity(environ: Mapping[str, str]) -> int:
    value = environ.get("VERBOSE", "0").strip()
    if value not in ("0", "1", "2"):
        raise InputError(f"VERBOSE must be 0, 1 or 2, not {value[:20]!r}")
    return int(value)


def role_config(
    role: str,
    environ: Mapping[str, str],
    argv: list[str] | None = None,
    instance: int | None = None,
) -> RoleConfig:
    """The role's configuration from the environment (or from `argv`, a
    command line built from it: domain_command_line)."""
    spec_of(role)  # an unknown role is refused here, in one line
    args = build_parser().parse_args(command_line(role, environ) if argv is None else argv)
    # Not the certificate: acctproc's container cannot read it.
    settings = role_settings(
        args,
        trust_anchors=uses(role, "trust_anchors"),
        knows_certificate=False,
        # Mounted into chngproc's container alone.
        tsig_key_readable=uses(role, "tsig_key"),
    )[role]
    if uses(role, "ready_timeout"):
        ready_timeout = seconds(environ, "READY_TIMEOUT", READY_TIMEOUT)
        settings = dataclasses.replace(settings, ready_timeout=ready_timeout)  # type: ignore[call-arg]
    return RoleConfig(
        role=role,
        run_dir=RUN_DIR,
        verbosity=args.verbose,
        settings=settings,
        supervised=False,
        instance=instance,
    )


def seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(environ.get(name, default))
    except ValueError:
        raise InputError(f"{name} must be a number of seconds") from None
    if not 1 <= value <= 3600:
        raise InputError(f"{name} must be between 1 and 3600 seconds")
    return value


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        sys.stderr.write("usage: python3 -m letskencrypt.container ROLE\n")
        sys.exit(EXIT_FAILED)
    role = arguments[0]
    if os.environ.get("CONFIG"):
        sys.stdout.flush()
        sys.stderr.flush()
        # gRPC's threads need no teardown (see process.run_role).
        os._exit(every_certificate(role, os.environ))
    try:
        config = role_config(role, os.environ)
        nothing = nothing_to_do_exit(os.environ)
    except InputError as error:
        sys.stderr.write(f"letskencrypt: {role[:40]}: {error}\n")
        sys.exit(EXIT_FAILED)
    process.run_role(role, config, nothing)


def every_certificate(role: str, environ: Mapping[str, str]) -> int:
    """CONFIG: the role for every certificate of the file (pod.py); its status."""
    from letskencrypt import pod  # only this mode needs it

    try:
        plans = pod.plans(role, environ)
        nothing = nothing_to_do_exit(environ)
        ready_timeout = seconds(environ, "READY_TIMEOUT", READY_TIMEOUT)
        return pod.run(role, plans, nothing, verbosity(environ), ready_timeout)
    except InputError as error:
        sys.stderr.write(f"letskencrypt: {role[:40]}: {error}\n")
        return EXIT_FAILED


def nothing_to_do_exit(environ: Mapping[str, str]) -> int:
    value = environ.get("NOTHING_TO_DO_EXIT", str(EXIT_NOTHING_TO_DO)).strip()
    if value not in ("0", "2"):
        raise InputError(f"NOTHING_TO_DO_EXIT must be 0 or 2, not {value[:20]!r}")
    return int(value)


if __name__ == "__main__":
    main()
