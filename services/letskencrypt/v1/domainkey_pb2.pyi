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
