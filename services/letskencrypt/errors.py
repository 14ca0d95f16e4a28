"""Exception hierarchy: every error letskencrypt raises on purpose derives
from LetskencryptError and carries a one-line message naming the culprit."""


class LetskencryptError(Exception):
    """Base class for all deliberate letskencrypt errors."""


class InputError(LetskencryptError):
    """A value given by the user or received from the network is malformed."""


class KeyFileError(LetskencryptError):
    """A private key file could not be read, parsed, or created."""


class KeyFileMissing(KeyFileError):
    """The private key file does not exist."""


class CertificateRejected(LetskencryptError):
    """What the CA sent is not an acceptable certificate chain."""


class CertificateFileError(LetskencryptError):
    """A certificate file on disk could not be read or parsed."""


class FileStoreError(LetskencryptError):
    """The certificate directory could not be updated or read safely."""


class NotThisRun(LetskencryptError):
    """A role was asked for what its run's operation (issue or revoke) does not do."""


def plain_words(error: BaseException) -> str:
    """One line for an exception that is not one of ours, with no Python
    type in it: `path: reason` for a failed file operation (a local problem,
    not a bug), the message of anything else."""
    if isinstance(error, OSError) and error.strerror:
        paths = [str(name) for name in (error.filename, error.filename2) if name is not None]
        return ": ".join([" -> ".join(paths), error.strerror] if paths else [error.strerror])
    # The name of the type only when there is nothing else to go by.
    return str(error) or type(error).__name__
