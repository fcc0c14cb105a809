"""Files on the farm, by SHA-256: upload only what it lacks, download
verified."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from .errors import FarmError, IntegrityError
from .v1 import assets_pb2, assets_pb2_grpc

CHUNK_BYTES = 1 << 20
# The farm answers FindMissing for at most this many digests a call.
FIND_MISSING_BATCH = 10_000


@dataclass(frozen=True)
class Asset:
    digest: str
    size: int


@dataclass(frozen=True)
class UploadReport:
    """What `upload_missing` did: every file's asset, and how much was sent."""

    assets: dict[Path, Asset]
    uploaded_files: int
    uploaded_bytes: int


def sha256_file(path: Path) -> Asset:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return Asset(digest.hexdigest(), size)


class Assets:
    def __init__(self, channel: grpc.Channel, timeout: float) -> None:
        self._stub = assets_pb2_grpc.AssetServiceStub(channel)
        self._timeout = timeout

    def find_missing(self, digests: Iterable[str]) -> list[str]:
        """The digests the farm does not hold, in order, without repeats."""
        unique = list(dict.fromkeys(digests))
        missing: list[str] = []
        for start in range(0, len(unique), FIND_MISSING_BATCH):
            batch = unique[start : start + FIND_MISSING_BATCH]
            try:
                answer = self._stub.FindMissing(assets_pb2.FindMissingRequest(digests=batch), timeout=self._timeout)
            except grpc.RpcError as err:
                raise FarmError.from_rpc(err, "FindMissing") from None
            missing.extend(answer.missing)
        return missing

    def upload(self, path: Path, expected: Asset | None = None) -> Asset:
        """Streams a file to the farm; the farm refuses it if the bytes do not
        hash to `expected` (computed first when not given)."""
        expected = expected or sha256_file(path)

        def chunks() -> Iterator[assets_pb2.UploadChunk]:
            first = True
            with path.open("rb") as file:
                while True:
                    data = file.read(CHUNK_BYTES)
                    if not data and not first:
                        return
                    yield assets_pb2.UploadChunk(expected_digest=expected.digest if first else "", data=data)
                    first = False
                    if not data:
                        return

        try:
            info = self._stub.Upload(chunks())
        except grpc.RpcError as err:
            raise FarmError.from_rpc(err, f"Upload {path}") from None
        if info.digest != expected.digest:
            raise IntegrityError(f"{path} changed while it was uploaded")
        return Asset(info.digest, info.size)

    def upload_missing(self, paths: Iterable[Path]) -> UploadReport:
        """Hashes the files, asks the farm once which it lacks, sends only those."""
        assets = {Path(p): sha256_file(Path(p)) for p in paths}
        missing = set(self.find_missing(a.digest for a in assets.values()))
        sent: set[str] = set()
        sent_bytes = 0
        for path, asset in assets.items():
            if asset.digest in missing and asset.digest not in sent:
                self.upload(path, asset)
                sent.add(asset.digest)
                sent_bytes += asset.size
        return UploadReport(assets, len(sent), sent_bytes)

    def download(self, digest: str, dest: Path) -> Path:
        """Writes the file to `dest` once it is whole and matches `digest`."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".part")
        hasher = hashlib.sha256()
        try:
            with partial.open("wb") as file:
                for chunk in self._stub.Download(assets_pb2.DownloadRequest(digest=digest)):
                    hasher.update(chunk.data)
                    file.write(chunk.data)
        except grpc.RpcError as err:
            partial.unlink(missing_ok=True)
            raise FarmError.from_rpc(err, f"Download {digest}") from None
        if hasher.hexdigest() != digest:
            partial.unlink(missing_ok=True)
            raise IntegrityError(f"download of {digest} does not match its digest")
        os.replace(partial, dest)
        return dest
