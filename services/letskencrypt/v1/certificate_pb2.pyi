from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitRequest(_message.Message):
    __slots__ = ("pem_chain", "kept", "alternate_pem_chains")
    PEM_CHAIN_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    ALTERNATE_PEM_CHAINS_FIELD_NUMBER: _ClassVar[int]
    pem_chain: bytes
    kept: bool
    alternate_pem_chains: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, pem_chain: _Optional[bytes] = ..., kept: _Optional[bool] = ..., alternate_pem_chains: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("serial_hex", "not_after", "unfit")
    SERIAL_HEX_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    UNFIT_FIELD_NUMBER: _ClassVar[int]
    serial_hex: str
    not_after: str
    unfit: str
    def __init__(self, serial_hex: _Optional[str] = ..., not_after: _Optional[str] = ..., unfit: _Optional[str] = ...) -> None: ...

class RetireRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RetireReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
