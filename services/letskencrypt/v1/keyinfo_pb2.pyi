from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class KeyInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KeyInfoReply(_message.Message):
    __slots__ = ("public_key_der", "names")
    PUBLIC_KEY_DER_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    public_key_der: bytes
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, public_key_der: _Optional[bytes] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...
