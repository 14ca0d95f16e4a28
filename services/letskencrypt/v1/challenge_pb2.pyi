from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DnsAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DNS_ACTION_UNSPECIFIED: _ClassVar[DnsAction]
    DNS_ACTION_PUBLISH: _ClassVar[DnsAction]
    DNS_ACTION_WITHDRAW: _ClassVar[DnsAction]
    DNS_ACTION_WITHDRAW_NEXT: _ClassVar[DnsAction]
DNS_ACTION_UNSPECIFIED: DnsAction
DNS_ACTION_PUBLISH: DnsAction
DNS_ACTION_WITHDRAW: DnsAction
DNS_ACTION_WITHDRAW_NEXT: DnsAction

class PublishRequest(_message.Message):
    __slots__ = ("token", "key_authorization")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    token: str
    key_authorization: str
    def __init__(self, token: _Optional[str] = ..., key_authorization: _Optional[str] = ...) -> None: ...

class PublishReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WithdrawRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class WithdrawReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DnsUpdateRequest(_message.Message):
    __slots__ = ("action", "name", "token", "key_authorization", "zone")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    action: DnsAction
    name: str
    token: str
    key_authorization: str
    zone: str
    def __init__(self, action: _Optional[_Union[DnsAction, str]] = ..., name: _Optional[str] = ..., token: _Optional[str] = ..., key_authorization: _Optional[str] = ..., zone: _Optional[str] = ...) -> None: ...

class DnsUpdateReply(_message.Message):
    __slots__ = ("message", "txt_value", "owner")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TXT_VALUE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    message: bytes
    txt_value: str
    owner: str
    def __init__(self, message: _Optional[bytes] = ..., txt_value: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class DnsAnswerRequest(_message.Message):
    __slots__ = ("answer",)
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    answer: bytes
    def __init__(self, answer: _Optional[bytes] = ...) -> None: ...

class DnsAnswerReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
