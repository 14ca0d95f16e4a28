"""A role process for every certificate of a run (`letskencrypt --config`, fleet.py).

Every role but keyproc runs once per run, not once per certificate: set up
once (its namespaces, its Landlock rules for the paths of every
certificate's settings, seccomp, its servers), it serves each certificate
while that certificate's run lasts.  keyproc stays one process per
certificate (fleet.py), so that no process ever holds two domain keys.

What a shared role is told comes on its stdin, one JSON document per line:
first the run (`run_document`: where, as whom, and every certificate's
settings), then, as each certificate's turn comes, that certificate's edge
tokens (`certificate_document`), and end of file when no certificate is
left.  So the role opens what each certificate needs before it confines
itself (`prepare` of the role's module, in file order; one that fails is
that certificate's refusal), confines itself once, binds one socket per
edge (rpc.SharedServers), and then, for each certificate whose tokens come,
builds what it serves in a thread of its own (the role's `prepare` closure)
and serves it to callers with that certificate's tokens only, until netproc
stops that certificate (Lifecycle.Stop with its token); then the role's own
end of it (chngproc withdraws its files, fileproc lets the directory's lock
go, certproc stops that certificate's fileproc service).

A certificate's servicer holds that certificate's settings and policy
alone: acctproc signs a finalize only for the CSR of that certificate's own
keyproc, fileproc writes that certificate's directory, and so on.  What an
attacker who runs code in a shared role gains over one certificate's role
is the other certificates of the same run (their tokens, paths and
policies), never a domain key: those stay in the keyprocs.

netproc is the run's driver, not a server: for each certificate it runs the
one-certificate flow in a thread (netproc.drive_certificate) and writes one
result line per certificate.
"""

import dataclasses
import json
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from letskencrypt import process, rpc
from letskencrypt.constants import EXIT_FAILED
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import InputError
from letskencrypt.roles import module_of, spec_of
from letskencrypt.settings import RoleSettings, decode, encode

# Each certificate's settings take well under 4 KiB.
MAX_RUN_DOCUMENT = 64 * 1024 * 1024
MAX_CERTIFICATE_DOCUMENT = 64 * 1024
MAX_CERTIFICATES = 10_000


def run_document(
    role: str,
    run_dir: str,
    certificates: list[RoleSettings | None],
    shared_edges: frozenset[str],
    *,
    verbosity: int,
    run_user: tuple[int, int] | None,
    supervisor_pid: int,
    part: int | None = None,
) -> dict[str, Any]:
    """The first line a shared role reads: the run, and the settings of each
    certificate it serves (None for one another process of the role serves:
    `part` numbers this one); no token: those come with each certificate's turn."""
    spec = spec_of(role)
    document: dict[str, Any] = {
        "run_dir": run_dir,
        "verbosity": verbosity,
        "supervisor_pid": supervisor_pid,
        "shared_edges": sorted(shared_edges),
        "certificates": [
            None if settings is None else encode(settings) for settings in certificates
        ],
        "part": part,
    }
    if run_user is not None and spec.keeps_root is None:
        document["uid"], document["gid"] = run_user
    return document


def certificate_document(
    role: str,
    instance: int,
    edge_tokens: Mapping[str, str],
    server_tokens: Mapping[str, str],
    parts: Mapping[str, int],
) -> dict[str, Any]:
    """A certificate's turn: its number, the tokens of the role's own edges,
    and which server serves it on the edges whose certificates are split
    among several (rpc.Certificate.parts)."""

    def own(tokens: Mapping[str, str]) -> dict[str, str]:
        return {
            name: token
            for name, token in tokens.items()
            if role in (rpc.EDGES[name].client, rpc.EDGES[name].server)
        }

    return {
        "certificate": instance,
        "edge_tokens": own(edge_tokens),
        "server_tokens": own(server_tokens),
        "parts": {name: part for name, part in parts.items() if role == rpc.EDGES[name].client},
    }


class Lines:
    """JSON documents, one per line, from a descriptor (our stdin), bounded."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def next(self, limit: int) -> dict[str, Any] | None:
        """The next document, or None at the end of the input."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > limit:
                raise InputError(f"a document of more than {limit} bytes on stdin")
            while not select.select([self.fd], [], [], process.SIGNAL_CHECK)[0]:
                pass
            chunk = os.read(self.fd, 64 * 1024)
            if not chunk:
                if self.buffer:
                    raise InputError("stdin ended inside a document")
                return None
            self.buffer += chunk
        end = self.buffer.index(b"\n")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        if len(line) > limit:
            raise InputError(f"a document of more than {limit} bytes on stdin")
        document = json.loads(line)
        if not isinstance(document, dict):
            raise InputError("a document on stdin is not an object")
        return document


@dataclass(frozen=True)
class Run:
    """What a shared role is told first (run_document)."""

    # The configuration (without tokens) of each certificate it serves, by
    # the certificate's number in the run.
    configs: dict[int, RoleConfig]
    shared: frozenset[str]
    # Which of the role's processes this is, when there are several.
    part: int | None


def read_run(role: str, lines: Lines) -> Run:
    """The run, from the first line."""
    document = lines.next(MAX_RUN_DOCUMENT)
    if document is None:
        raise InputError("no run document on stdin")
    certificates = document.get("certificates")
    if not isinstance(certificates, list) or not 0 < len(certificates) <= MAX_CERTIFICATES:
        raise InputError("the run document names no certificates")
    spec = spec_of(role)
    configs = {
        instance: RoleConfig(
            role=role,
            run_dir=str(document["run_dir"]),
            settings=decode(spec.settings, settings),
            verbosity=int(document.get("verbosity", 0)),
            uid=document.get("uid"),
            gid=document.get("gid"),
            supervisor_pid=document.get("supervisor_pid"),
            instance=instance,
        )
        for instance, settings in enumerate(certificates)
        if settings is not None
    }
    if not configs:
        raise InputError("the run document gives this process no certificate")
    shared = frozenset(str(edge) for edge in document.get("shared_edges", ()))
    if not shared <= set(rpc.EDGES):
        raise InputError("the run document names an unknown edge")
    part = document.get("part")
    if part is not None and not isinstance(part, int):
        raise InputError("the run document's part is not a number")
    return Run(configs, shared, part)


def read_certificate(
    document: dict[str, Any], served: Container[int], shared: frozenset[str]
) -> rpc.Certificate:
    instance = document.get("certificate")
    if not isinstance(instance, int) or instance not in served:
        raise InputError("a certificate document names no certificate this process serves")

    def tokens(name: str) -> dict[str, str]:
        value = document.get(name, {})
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise InputError(f"{name} of certificate {instance} are not strings")
        return value

    parts = document.get("parts", {})
    if not isinstance(parts, dict) or not all(
        edge in shared and isinstance(part, int) for edge, part in parts.items()
    ):
        raise InputError(f"the parts of certificate {instance} are not shared edges' numbers")
    return rpc.Certificate(
        instance, tokens("edge_tokens"), tokens("server_tokens"), shared, parts
    )


def union(configs: Mapping[int, RoleConfig], part: int | None = None) -> RoleConfig:
    """One configuration whose sandbox takes in every certificate's paths
    (and, for one of a role's processes, its part's socket directory)."""
    first, *others = configs.values()
    more = tuple(config.settings for config in others)
    return dataclasses.replace(first, instance=None, part=part, more_settings=more)


class Stopped(Exception):
    """SIGTERM while waiting for the next certificate."""


# What a role's module gives a certificate before the role confines itself.
Prepared = Callable[[], rpc.Serving]


class Host:
    """A serving role (every role but netproc and keyproc) for many certificates."""

    def __init__(self, role: str, run: Run) -> None:
        self.role = role
        self.run = run
        self.logs = {
            instance: Logger(role, config.verbosity, instance)
            for instance, config in run.configs.items()
        }
        # Each certificate's prepare, or why it failed.
        self.prepared: dict[int, Prepared | str] = {}
        self.stoppers: dict[int, rpc.Stopper] = {}
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.stopping = False
        self.servers: rpc.SharedServers | None = None

    def prepare(self) -> None:
        prepare = module_of(self.role).prepare
        for instance, config in self.run.configs.items():
            try:
                self.prepared[instance] = prepare(config, self.logs[instance])
            except Exception as error:
                message = process.failure_message(error)
                self.logs[instance].error(message)
                self.prepared[instance] = message

    def serve(self, lines: Lines) -> None:
        """Bind the sockets, then serve each certificate whose turn comes."""
        config = next(iter(self.run.configs.values()))
        self.servers = rpc.SharedServers(config.run_dir, spec_of(self.role).serves, self.run.part)
        rpc.served()
        reading = True

        def on_sigterm(_signum: int, _frame: object) -> None:
            self.stop_all()
            if reading:
                raise Stopped

        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            while (document := lines.next(MAX_CERTIFICATE_DOCUMENT)) is not None:
                certificate = read_certificate(document, self.run.configs, self.run.shared)
                self.servers.expect(certificate)
                thread = threading.Thread(
                    target=self.serve_certificate, args=(certificate,), daemon=True
                )
                self.threads.append(thread)
                thread.start()
            reading = False
        except Stopped:
            pass
        process.join_all(self.threads)
        self.servers.stop()

    def serve_certificate(self, certificate: rpc.Certificate) -> None:
        assert self.servers is not None
        instance = certificate.instance
        stopper = rpc.Stopper()
        with self.lock:
            if self.stopping:
                return
            self.stoppers[instance] = stopper
        prepared = self.prepared[instance]
        serving = None
        with rpc.for_certificate(certificate):
            if isinstance(prepared, str):
                self.servers.add(instance, stopper, refusal=prepared)
            else:
                try:
                    serving = prepared()
                except Exception as error:
                    message = process.failure_message(error)
                    if not rpc.STOPPING.is_set():  # else the supervisor says it was cut short
                        self.logs[instance].error(message)
                    self.servers.add(instance, stopper, refusal=message)
                else:
                    self.servers.add(instance, stopper, serving.services)
            while not stopper.wait(0.5):
                pass
            self.servers.remove(instance)
            if serving is not None:
                try:
                    serving.finish(stopper.failed)
                except Exception as error:
                    self.logs[instance].error(process.failure_message(error))

    def stop_all(self) -> None:
        """SIGTERM: every certificate's run is over, failed."""
        rpc.STOPPING.set()
        with self.lock:
            self.stopping = True
            stoppers = list(self.stoppers.values())
        for stopper in stoppers:
            stopper.stop(failed=True)


def run_host(role: str) -> NoReturn:
    """A forked role process serving every certificate of the run (fleet.py)."""
    code = EXIT_FAILED
    try:
        code = host_body(role)
    except Exception as error:  # one line, never a traceback
        sys.stderr.write(f"letskencrypt: {role}: {process.failure_message(error)}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def host_body(role: str) -> int:
    process.begin(role)
    lines = Lines(0)
    return serve_run(role, read_run(role, lines), lines)


def serve_run(role: str, run: Run, lines: Lines) -> int:
    """The role's part in the run it was told of (read_run)."""
    process.settle()
    if spec_of(role).drives:
        from letskencrypt.roles import netproc

        return netproc.drive_many(run.configs, run.shared, lines)
    host = Host(role, run)
    host.prepare()
    process.confine(union(run.configs, run.part))
    host.serve(lines)
    return 0
