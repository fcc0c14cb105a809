"""Kiln's REST API through the standard library (Blender ships no HTTP or
gRPC packages): upload, find what the farm lacks, submit, follow a job's
Server-Sent Events, download outputs.

No bpy here: this module runs on the submission's worker thread.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

Json = dict[str, Any]

# Seconds without a byte from the farm before a call gives up; event streams
# carry a keep-alive comment every 15 s, so a silent minute means a dead link.
TIMEOUT_SECONDS = 60.0
# Retries of a call the farm refused for a while (429, 503), and the longest
# Retry-After honoured: a busy farm slows a submission down, never fails it
# at once, but a broken one does not hang it forever either.
MAX_RETRIES = 8
MAX_RETRY_AFTER_SECONDS = 30.0
CHUNK_BYTES = 1 << 20
FINAL_STATES = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"})


class FarmError(Exception):
    """A call the farm refused or could not answer, with its JSON error code."""

    def __init__(self, message: str, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class SseEvent:
    """One Server-Sent Event: `id` is the job's sequence number, if any."""

    kind: str
    data: Json
    id: str | None


def sha256_file(path: str) -> tuple[str, int]:
    """SHA-256 (lowercase hex) and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class FarmClient:
    """A Kiln gateway's REST API (`http(s)://host:port`), with a bearer token."""

    def __init__(self, url: str, token: str, timeout: float = TIMEOUT_SECONDS) -> None:
        url = url.strip().rstrip("/")
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise FarmError(f"farm URL {url!r} must look like http://host:port or https://host:port")
        if not token.strip():
            raise FarmError("no access token: set one in the Kiln add-on's preferences")
        self.url = url
        self._token = token.strip()
        self._timeout = timeout

    # -- plumbing -------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | BinaryIO | None = None,
        headers: dict[str, str] | None = None,
        length: int | None = None,
    ) -> urllib.request.Request:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("User-Agent", "kiln-blender")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        if length is not None:
            request.add_header("Content-Length", str(length))
        return request

    def _open(self, make: Callable[[], urllib.request.Request]) -> Any:
        """Opens a request, retrying 429/503 after their Retry-After."""
        for attempt in range(MAX_RETRIES + 1):
            try:
                return urllib.request.urlopen(make(), timeout=self._timeout)
            except urllib.error.HTTPError as err:
                wait = _retry_after(err)
                if err.code in (429, 503) and attempt < MAX_RETRIES and wait is not None:
                    err.close()
                    time.sleep(wait)
                    continue
                raise _farm_error(err) from None
            except (urllib.error.URLError, socket.timeout, ConnectionError) as err:
                reason = getattr(err, "reason", err)
                raise FarmError(f"cannot reach the farm at {self.url}: {reason}", "unreachable") from None
        raise FarmError("the farm stayed busy; try again later", "resource_exhausted")

    def _json(self, method: str, path: str, body: Json | None = None) -> Json:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        with self._open(lambda: self._request(method, path, data, headers)) as response:
            raw = response.read()
        try:
            answer = json.loads(raw or b"{}")
        except ValueError:
            raise FarmError(f"{method} {path}: the farm answered something other than JSON") from None
        if not isinstance(answer, dict):
            raise FarmError(f"{method} {path}: expected a JSON object")
        return answer

    # -- assets ---------------------------------------------------------------

    def stored(self, digest: str) -> bool:
        """Whether the farm already holds the file with this SHA-256."""
        answer = self._json("GET", f"/v1/assets/{digest}/stat")
        return bool(answer.get("exists", False))

    def find_missing(self, digests: Iterable[str]) -> list[str]:
        """The digests the farm lacks, in order, without repeats.

        REST has no batched FindMissing yet, so this asks Stat per distinct
        digest; a scene's few dozen dependencies cost as many small calls.
        """
        missing: list[str] = []
        seen: set[str] = set()
        for digest in digests:
            if digest in seen:
                continue
            seen.add(digest)
            if not self.stored(digest):
                missing.append(digest)
        return missing

    def upload(self, path: str, digest: str, progress: Callable[[int], None] | None = None) -> None:
        """Streams a file to the farm and checks it was stored under `digest`."""
        size = os.path.getsize(path)

        def make() -> urllib.request.Request:
            reader = _CountingReader(open(path, "rb"), progress)
            return self._request(
                "POST",
                "/v1/assets",
                reader,  # type: ignore[arg-type]
                {"Content-Type": "application/octet-stream"},
                length=size,
            )

        with self._open(make) as response:
            answer = json.loads(response.read() or b"{}")
        if answer.get("digest") != digest:
            raise FarmError(
                f"{path} changed while it was uploaded (farm stored {answer.get('digest')}, expected {digest})",
                "data_loss",
            )

    # -- jobs -----------------------------------------------------------------

    def submit(self, request: Json) -> Json:
        return self._json("POST", "/v1/jobs", request)

    def job(self, job_id: str) -> Json:
        return self._json("GET", f"/v1/jobs/{_segment(job_id)}")

    def cancel(self, job_id: str) -> Json:
        return self._json("POST", f"/v1/jobs/{_segment(job_id)}/cancel")

    def outputs(self, job_id: str) -> list[Json]:
        """Every output of the job, page after page (AIP-158)."""
        outputs: list[Json] = []
        token = ""
        while True:
            query = f"?pageToken={urllib.parse.quote(token)}" if token else ""
            answer = self._json("GET", f"/v1/jobs/{_segment(job_id)}/outputs{query}")
            outputs.extend(o for o in answer.get("outputs", []) if isinstance(o, dict))
            token = answer.get("nextPageToken") or ""
            if not isinstance(token, str) or not token:
                return outputs

    def download_output(
        self,
        job_id: str,
        output: Json,
        dest: str,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Downloads one output to `dest`, verified against its digest; the
        file appears only once complete and correct."""
        path = str(output.get("path", ""))
        quoted = urllib.parse.quote(path, safe="/")
        partial = dest + ".part"
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        digest = hashlib.sha256()
        with self._open(lambda: self._request("GET", f"/v1/jobs/{_segment(job_id)}/outputs/{quoted}")) as response:
            with open(partial, "wb") as file:
                while chunk := response.read(CHUNK_BYTES):
                    file.write(chunk)
                    digest.update(chunk)
                    if progress:
                        progress(len(chunk))
        if digest.hexdigest() != output.get("digest"):
            os.remove(partial)
            raise FarmError(f"download of {path} does not match its digest", "data_loss")
        os.replace(partial, dest)

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[SseEvent]:
        """A job's events as Server-Sent Events, from after `last_event_id`
        (or the job's current record first) until the farm ends the stream."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        response = self._open(lambda: self._request("GET", f"/v1/jobs/{_segment(job_id)}/events", None, headers))
        with response:
            try:
                yield from parse_sse(response)
            except (OSError, http.client.HTTPException) as err:
                raise FarmError(f"the event stream broke: {err}", "unavailable") from None

    def dashboard_url(self, job_id: str) -> str:
        return f"{self.url}/jobs/{urllib.parse.quote(job_id, safe='')}"


def parse_sse(lines: Iterable[bytes]) -> Iterator[SseEvent]:
    """Server-Sent Events from a byte stream of lines (comments skipped)."""
    kind, data, event_id = "message", [], None
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError:
                    payload = {}
                yield SseEvent(kind, payload if isinstance(payload, dict) else {}, event_id)
            kind, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


class _CountingReader:
    """A file object for urllib's request body that reports bytes sent."""

    def __init__(self, file: BinaryIO, progress: Callable[[int], None] | None) -> None:
        self._file = file
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(CHUNK_BYTES if size is None or size < 0 else size)
        if self._progress and chunk:
            self._progress(len(chunk))
        if not chunk:
            self._file.close()
        return chunk


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    value = err.headers.get("Retry-After") if err.headers else None
    if value is None:
        return 1.0 if err.code == 503 else None
    try:
        return min(max(float(value), 0.1), MAX_RETRY_AFTER_SECONDS)
    except ValueError:
        return None


def _farm_error(err: urllib.error.HTTPError) -> FarmError:
    """The farm's `{"error": {"code", "message"}}` (or a problem+json body) as a FarmError."""
    try:
        body = json.loads(err.read() or b"{}")
    except (ValueError, OSError):
        body = {}
    finally:
        err.close()
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, message = str(error.get("code", "")), str(error.get("message", ""))
    elif isinstance(body, dict):
        code, message = str(body.get("code", "")), str(body.get("detail") or body.get("title") or "")
    else:
        code, message = "", ""
    hint = {401: " (check the token in the Kiln add-on's preferences)", 403: " (the token's role may be too low)"}
    text = f"farm refused the request ({err.code} {code or err.reason}): {message}{hint.get(err.code, '')}"
    return FarmError(text, code, err.code)
