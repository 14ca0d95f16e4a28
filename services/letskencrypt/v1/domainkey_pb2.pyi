from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CsrRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CsrReply(_message.Message):
    __slots__ = ("der",)
    DER_FIELD_NUMBER: _ClassVar[int]
    der: bytes
    def __init__(self, der: _Optional[bytes] = ...) -> None: ...

class SignRevocationRequest(_message.Message):
    __slots__ = ("url", "nonce", "certificate_der", "reason")
    URL_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    url: str
    nonce: str
    certificate_der: bytes
    reason: int
    def __init__(self, url: _Optional[str] = ..., nonce: _Optional[str] = ..., certificate_der: _Optional[bytes] = ..., reason: _Optional[int] = ...) -> None: ...

class SignRevocationReply(_message.Message):
    __slots__ = ("protected", "payload", "signature")
    PROTECTED_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    protected: str
    payload: str
    signature: str
    def __init__(self, protected: _Optional[str] = ..., payload: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...
