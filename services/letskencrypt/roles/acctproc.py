"""acctproc: holds the account key and signs ACME requests for netproc.

Holds: the account private key (read, or created with mode 0400 under -n).
Network: none.  Serves: Account on the `acct` edge.
A netproc under an attacker's control can obtain signatures, but only for
URLs on the CA directory's origin, and never the key itself.
"""

import json

import grpc

from letskencrypt import keys, process, rpc
from letskencrypt.errors import InputError
from letskencrypt.process import Logger, RoleConfig
from letskencrypt.urls import require_same_origin
from letskencrypt.v1 import account_pb2, account_pb2_grpc

MAX_PAYLOAD = 32 * 1024
MAX_NONCE = 128
BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class AccountService(account_pb2_grpc.AccountServicer):
    def __init__(self, key: keys.PrivateKey, directory_url: str, log: Logger) -> None:
        self.key = key
        self.directory_url = directory_url
        self.log = log.error
        self.jwk = keys.jwk(key.public_key())
        self.thumbprint = keys.thumbprint(key.public_key())

    @rpc.guarded
    def Describe(
        self, request: account_pb2.DescribeRequest, context: grpc.ServicerContext
    ) -> account_pb2.DescribeReply:
        return account_pb2.DescribeReply(
            jwk_json=json.dumps(self.jwk, sort_keys=True),
            thumbprint=self.thumbprint,
            algorithm=keys.jws_alg(self.key),
        )

    @rpc.guarded
    def Sign(
        self, request: account_pb2.SignRequest, context: grpc.ServicerContext
    ) -> account_pb2.SignReply:
        require_same_origin(request.url, self.directory_url, "request")
        if request.kid:
            require_same_origin(request.kid, self.directory_url, "account")
        if not 0 < len(request.nonce) <= MAX_NONCE or not set(request.nonce) <= BASE64URL:
            raise InputError("nonce is not base64url of at most 128 characters")
        payload: bytes | None = None
        if not request.post_as_get:
            payload = check_payload(request.payload)
        protected: dict[str, object] = {"nonce": request.nonce, "url": request.url}
        if request.kid:
            protected["kid"] = request.kid
        else:
            protected["jwk"] = self.jwk
        jws = keys.sign_jws(self.key, protected, payload)
        return account_pb2.SignReply(
            protected=jws["protected"], payload=jws["payload"], signature=jws["signature"]
        )


def check_payload(payload: bytes) -> bytes:
    """Sign only what an ACME request can be: one JSON object of bounded size."""
    if len(payload) > MAX_PAYLOAD:
        raise InputError(f"payload larger than {MAX_PAYLOAD} bytes")
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise InputError("payload is not JSON") from None
    if not isinstance(document, dict):
        raise InputError("payload is not a JSON object")
    return payload


def run(config: RoleConfig, log: Logger) -> int:
    settings = config.settings
    key, created = keys.load_or_create_key(
        settings["key_path"], settings["create"], settings["key_type"], "account key", "-n"
    )
    if created:
        log.info(f"created account key {settings['key_path']}")
    process.confine(config)
    service = AccountService(key, settings["directory_url"], log)
    rpc.serve_until_stopped(
        config.run_dir, {"acct": [(account_pb2_grpc.add_AccountServicer_to_server, service)]}
    )
    return 0


def main() -> None:
    process.run_role("acctproc", run)


if __name__ == "__main__":
    main()
