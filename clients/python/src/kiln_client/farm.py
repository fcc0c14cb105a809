"""The entry point: a connection to one Kiln farm."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from .assets import Assets
from .connection import open_channel
from .errors import KilnError
from .jobs import Jobs
from .tokens import Tokens

DEFAULT_TIMEOUT_SECONDS = 60.0


class Farm:
    """A Kiln farm's gateway (gRPC), reached with a bearer token.

    >>> with Farm("http://127.0.0.1:7070", token) as farm:
    ...     job = farm.jobs.submit(builtin="blender", inputs={"scene.blend": "shot.blend"},
    ...                            parameters={"Frames": "1-24", "ChunkSize": 6})
    ...     farm.jobs.wait(job.id)
    """

    def __init__(
        self, address: str, token: str, *, ca: Path | None = None, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        self._channel = open_channel(address, token, ca)
        self.assets = Assets(self._channel, timeout)
        self.jobs = Jobs(self._channel, self.assets, timeout)
        self.tokens = Tokens(self._channel, timeout)

    @classmethod
    def from_env(cls) -> "Farm":
        """KILN_FARM (default http://127.0.0.1:7070), KILN_TOKEN and, for TLS, KILN_CA."""
        token = os.environ.get("KILN_TOKEN", "")
        if not token:
            raise KilnError("KILN_TOKEN is not set")
        ca = os.environ.get("KILN_CA")
        return cls(os.environ.get("KILN_FARM", "http://127.0.0.1:7070"), token, ca=Path(ca) if ca else None)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Farm":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
