"""fileproc: the only writer of the certificate directory.

Holds: write access to the certificate directory, nothing else.
Network: none.  Serves: Files on the `file` edge (from certproc only).
File names are fixed; every write goes through a descriptor of the directory
with O_NOFOLLOW, and a new set of cert.pem, chain.pem and fullchain.pem
replaces the old one in a single rename (see filestore), so a crash leaves
either the whole old set or the whole new set.
The run's operation comes from its own settings: Install only in an issue
run, Remove only in a revoke run, whatever its caller asks.

One run at a time per certificate: before it serves, fileproc takes the
lock on the certificate directory (filestore.CertDir.lock), waiting a few
seconds for another run to finish and then refusing; it holds the lock
until it exits.  certproc serves only once fileproc does, and netproc makes
its first request only once certproc serves, so in native and in container
mode no request of this run reaches the CA unless the lock is held.
An issue run makes `.sets` before it serves, so that a set can be kept even
if the directory turns read-only, and removes it on the way out if it
stayed empty (see filestore).
"""

import os
from collections.abc import Callable

import grpc

from letskencrypt import process, rpc
from letskencrypt.context import Logger, RoleConfig
from letskencrypt.errors import NotThisRun
from letskencrypt.filestore import CertDir
from letskencrypt.settings import FileprocSettings
from letskencrypt.spec import Fs, Grant, RoleSpec
from letskencrypt.v1 import files_pb2, files_pb2_grpc


def cert_dir_grants(settings: FileprocSettings) -> list[Grant]:
    """Write, but not read, in the certificate directory (what it writes it
    has been handed; no key lives there, see options.check_key_places).  The only
    files it reads are certificates an older tool left at the stable names."""
    writer = (
        Fs.READ_DIR
        | Fs.WRITE_FILE
        | Fs.MAKE_REG
        | Fs.MAKE_DIR
        | Fs.MAKE_SYM
        | Fs.REMOVE_FILE
        | Fs.REMOVE_DIR
        | Fs.REFER
    )
    grants = [Grant(settings.cert_dir, writer, what="certificate directory", created=True)]
    for name in ("cert.pem", "chain.pem", "fullchain.pem"):
        path = os.path.join(settings.cert_dir, name)
        if os.path.isfile(path) and not os.path.islink(path):
            grants.append(Grant(path, Fs.READ_FILE))
    return grants


SPEC = RoleSpec(
    name="fileproc",
    summary="the only writer of the certificate directory (atomic sets)",
    settings=FileprocSettings,
    serves=("file",),
    paths=cert_dir_grants,
    keeps_root="the certificate directory is often writable by root only",
)


class FilesService(rpc.Servicer, files_pb2_grpc.FilesServicer):
    def __init__(self, directory: CertDir, backup: bool, operation: str, log: Logger) -> None:
        super().__init__(log)
        self.directory = directory
        self.backup = backup
        self.operation = operation

    @rpc.guarded
    def Install(
        self, request: files_pb2.InstallRequest, context: grpc.ServicerContext
    ) -> files_pb2.InstallReply:
        if self.operation != "issue":
            raise NotThisRun(f"this is a {self.operation} run: no certificate is installed")
        # CertDir.install checks both are PEM certificates, or refuses them.
        self.directory.install(request.certificate_pem, request.chain_pem, backup=self.backup)
        self.log.info(f"wrote cert.pem, chain.pem and fullchain.pem in {self.directory.path}")
        return files_pb2.InstallReply()

    @rpc.guarded
    def Remove(
        self, request: files_pb2.RemoveRequest, context: grpc.ServicerContext
    ) -> files_pb2.RemoveReply:
        if self.operation != "revoke":
            raise NotThisRun(f"this is an {self.operation} run: no certificate is removed")
        self.directory.remove_set(backup=self.backup)
        self.log.info(f"removed the certificate files in {self.directory.path}")
        return files_pb2.RemoveReply()


def prepare(config: RoleConfig[FileprocSettings], log: Logger) -> Callable[[], rpc.Serving]:
    """Open and lock the certificate directory and finish whatever an
    earlier crash left half done; what it serves, and the lock let go at
    the end."""
    settings = config.settings
    directory = CertDir(settings.cert_dir, create=True)
    try:
        directory.lock()
        directory.tidy(settings.backup)
        if settings.operation == "issue":
            directory.prepare_install()
    except BaseException:
        directory.close()
        raise
    service = FilesService(directory, settings.backup, settings.operation, log)
    return lambda: rpc.Serving(
        {"file": [(files_pb2_grpc.add_FilesServicer_to_server, service)]},
        finish=lambda _failed: directory.close(),
    )


def run(config: RoleConfig[FileprocSettings], log: Logger) -> int:
    serving = prepare(config, log)
    process.confine(config)
    return process.serve(config, serving())

