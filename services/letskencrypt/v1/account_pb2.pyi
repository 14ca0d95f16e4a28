from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeReply(_message.Message):
    __slots__ = ("jwk_json", "thumbprint", "algorithm")
    JWK_JSON_FIELD_NUMBER: _ClassVar[int]
    THUMBPRINT_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    jwk_json: str
    thumbprint: str
    algorithm: str
    def __init__(self, jwk_json: _Optional[str] = ..., thumbprint: _Optional[str] = ..., algorithm: _Optional[str] = ...) -> None: ...

class SignRequest(_message.Message):
    __slots__ = ("url", "nonce", "kid", "payload", "post_as_get", "external_account_binding", "key_change", "challenge_type")
    URL_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    KID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    POST_AS_GET_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_ACCOUNT_BINDING_FIELD_NUMBER: _ClassVar[int]
    KEY_CHANGE_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    url: str
    nonce: str
    kid: str
    payload: bytes
    post_as_get: bool
    external_account_binding: bool
    key_change: bool
    challenge_type: str
    def __init__(self, url: _Optional[str] = ..., nonce: _Optional[str] = ..., kid: _Optional[str] = ..., payload: _Optional[bytes] = ..., post_as_get: _Optional[bool] = ..., external_account_binding: _Optional[bool] = ..., key_change: _Optional[bool] = ..., challenge_type: _Optional[str] = ...) -> None: ...

class KeyChangedRequest(_message.Message):
    __slots__ = ("account_url",)
    ACCOUNT_URL_FIELD_NUMBER: _ClassVar[int]
    account_url: str
    def __init__(self, account_url: _Optional[str] = ...) -> None: ...

class SignReply(_message.Message):
    __slots__ = ("protected", "payload", "signature")
    PROTECTED_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    protected: str
    payload: str
    signature: str
    def __init__(self, protected: _Optional[str] = ..., payload: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...
