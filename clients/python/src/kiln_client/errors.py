"""What kiln-client raises: one base class, and the farm's gRPC status kept."""

from __future__ import annotations

import grpc


class KilnError(Exception):
    """Anything kiln-client reports."""


class FarmError(KilnError):
    """The farm refused a call or could not answer it."""

    def __init__(self, code: grpc.StatusCode, message: str, call: str = "") -> None:
        where = f"{call}: " if call else ""
        super().__init__(f"{where}{code.name.lower()}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, err: grpc.RpcError, call: str = "") -> "FarmError":
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", call)


class IntegrityError(KilnError):
    """Bytes that do not match their SHA-256: a file changed while it was
    sent, or a download was corrupted."""


class JobNotSucceeded(KilnError):
    """A job ended failed or cancelled."""

    def __init__(self, job_id: str, state: str, message: str) -> None:
        super().__init__(f"job {job_id} {state}: {message}" if message else f"job {job_id} {state}")
        self.job_id = job_id
        self.state = state
