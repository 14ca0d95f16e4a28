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
