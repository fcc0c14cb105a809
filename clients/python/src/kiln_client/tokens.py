"""Access tokens (admins only): create, list, revoke."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import grpc

from .errors import FarmError, KilnError
from .v1 import auth_pb2, auth_pb2_grpc

RoleName = Literal["viewer", "submitter", "admin"]
ROLES: dict[str, int] = {
    "viewer": auth_pb2.ROLE_VIEWER,
    "submitter": auth_pb2.ROLE_SUBMITTER,
    "admin": auth_pb2.ROLE_ADMIN,
}


@dataclass(frozen=True)
class CreatedToken:
    token: auth_pb2.Token
    # The bearer secret; the farm keeps only its hash, so this is the one
    # chance to read it.
    secret: str


def role_name(role: int) -> str:
    return auth_pb2.Role.Name(role).removeprefix("ROLE_").lower()


class Tokens:
    def __init__(self, channel: grpc.Channel, timeout: float) -> None:
        self._stub = auth_pb2_grpc.TokenServiceStub(channel)
        self._timeout = timeout

    def _call(self, name: str, request: object) -> object:
        try:
            return getattr(self._stub, name)(request, timeout=self._timeout)
        except grpc.RpcError as err:
            raise FarmError.from_rpc(err, name) from None

    def create(self, name: str, role: RoleName) -> CreatedToken:
        if role not in ROLES:
            raise KilnError(f"role {role!r} is not one of {', '.join(ROLES)}")
        answer = self._call("CreateToken", auth_pb2.CreateTokenRequest(name=name, role=ROLES[role]))
        assert isinstance(answer, auth_pb2.CreateTokenResponse)
        return CreatedToken(answer.token, answer.secret)

    def list(self, include_revoked: bool = False) -> list[auth_pb2.Token]:
        answer = self._call("ListTokens", auth_pb2.ListTokensRequest(include_revoked=include_revoked))
        assert isinstance(answer, auth_pb2.ListTokensResponse)
        return list(answer.tokens)

    def revoke(self, token_id: str) -> auth_pb2.Token:
        answer = self._call("RevokeToken", auth_pb2.RevokeTokenRequest(token_id=token_id))
        assert isinstance(answer, auth_pb2.Token)
        return answer
