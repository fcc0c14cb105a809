"""A gRPC channel to a Kiln gateway that carries the bearer token on every
call (unary and streaming alike)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc

from .errors import KilnError

# The farm's messages (job lists, task logs) stay far below this.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Notice a dead gateway on a quiet watch (the farm's own clients ping too).
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        metadata = list(details.metadata or [])
        metadata.append(self._metadata)
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def open_channel(address: str, token: str, ca: Path | None = None) -> grpc.Channel:
    """`http://host:port` (or `host:port`) for plaintext, `https://host:port`
    for TLS, trusting `ca` (PEM) or the system's roots."""
    if not token.strip():
        raise KilnError("no access token (pass one, or set KILN_TOKEN)")
    parsed = urlparse(address if "://" in address else f"http://{address}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise KilnError(f"farm address {address!r} must look like http://host:port or https://host:port")
    target = f"{parsed.hostname}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"
    if parsed.scheme == "https":
        roots = ca.read_bytes() if ca else None
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots), options=OPTIONS)
    else:
        channel = grpc.insecure_channel(target, options=OPTIONS)
    return grpc.intercept_channel(channel, _BearerToken(token.strip()))
