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

import grpc

from letskencrypt import process, rpc
from letskencrypt.errors import InputError, NotThisRun
from letskencrypt.filestore import CertDir
from letskencrypt.process import Logger, RoleConfig
from letskencrypt.v1 import files_pb2, files_pb2_grpc

OPERATIONS = ("issue", "revoke")


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


def run(config: RoleConfig, log: Logger) -> int:
    settings = config.settings
    operation = settings.get("operation")
    if operation not in OPERATIONS:
        raise InputError(f"operation must be one of {', '.join(OPERATIONS)}")
    directory = CertDir(settings["cert_dir"], create=True)
    try:
        directory.lock()
        # Whatever an earlier crash left half done is finished before we serve.
        directory.tidy(settings["backup"])
        if operation == "issue":
            directory.prepare_install()
        process.confine(config)
        rpc.serve_until_stopped(
            config.run_dir,
            {
                "file": [
                    (
                        files_pb2_grpc.add_FilesServicer_to_server,
                        FilesService(directory, settings["backup"], operation, log),
                    )
                ]
            },
        )
    finally:
        directory.close()
    return 0


def main() -> None:
    process.run_role("fileproc", run)


if __name__ == "__main__":
    main()
