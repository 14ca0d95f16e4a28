from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ResolveRequest(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: str
    def __init__(self, host: _Optional[str] = ...) -> None: ...

class ResolveReply(_message.Message):
    __slots__ = ("addresses",)
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class TxtRequest(_message.Message):
    __slots__ = ("name", "server", "port")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    server: str
    port: int
    def __init__(self, name: _Optional[str] = ..., server: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class TxtReply(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class AuthoritativeRequest(_message.Message):
    __slots__ = ("name", "server", "port")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    server: str
    port: int
    def __init__(self, name: _Optional[str] = ..., server: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class AuthoritativeReply(_message.Message):
    __slots__ = ("zone", "servers")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    zone: str
    servers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, zone: _Optional[str] = ..., servers: _Optional[_Iterable[str]] = ...) -> None: ...

class ExchangeRequest(_message.Message):
    __slots__ = ("message", "server", "port")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    message: bytes
    server: str
    port: int
    def __init__(self, message: _Optional[bytes] = ..., server: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class ExchangeReply(_message.Message):
    __slots__ = ("answer",)
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    answer: bytes
    def __init__(self, answer: _Optional[bytes] = ...) -> None: ...
