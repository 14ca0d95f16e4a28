from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ISSUE: _ClassVar[Decision]
    DECISION_RENEW: _ClassVar[Decision]
    DECISION_UP_TO_DATE: _ClassVar[Decision]
DECISION_UNSPECIFIED: Decision
DECISION_ISSUE: Decision
DECISION_RENEW: Decision
DECISION_UP_TO_DATE: Decision

class CheckRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckReply(_message.Message):
    __slots__ = ("decision", "reason", "kept_chain_pem", "ari_cert_id", "due_at")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KEPT_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    ARI_CERT_ID_FIELD_NUMBER: _ClassVar[int]
    DUE_AT_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    reason: str
    kept_chain_pem: bytes
    ari_cert_id: str
    due_at: int
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., reason: _Optional[str] = ..., kept_chain_pem: _Optional[bytes] = ..., ari_cert_id: _Optional[str] = ..., due_at: _Optional[int] = ...) -> None: ...

class CurrentRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CurrentReply(_message.Message):
    __slots__ = ("certificate_der",)
    CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    certificate_der: bytes
    def __init__(self, certificate_der: _Optional[bytes] = ...) -> None: ...
