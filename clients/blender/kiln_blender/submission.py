"""What a submission and a download do once Blender's part (finding the
files, saving the copy) is over: hash, upload only what the farm lacks,
submit, follow the job's events to its end; or fetch its outputs. Runs on
an Activity's thread; no bpy here.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

from .activity import Activity
from .bundle_plan import SCENE_INPUT, BundleEntry
from .farm_rest import FarmClient, FarmError, sha256_file
from .progress import JobProgress

# Reconnections of the event stream in a row before falling back to
# polling the job (a farm whose SSE is cut by a proxy still gets followed).
MAX_STREAM_FAILURES = 5
RECONNECT_SECONDS = 1.0
POLL_SECONDS = 2.0
# Status bar refreshes for byte progress, at most this often.
TICK_SECONDS = 0.25


@dataclass
class Submission:
    client: FarmClient
    scene_copy: str  # the saved copy, uploaded as scene.blend
    entries: list[BundleEntry]  # every other input
    request: dict[str, Any]  # SubmitJob JSON without inputs
    staging_dir: str  # removed once uploaded
    follow: bool = True


def run_submission(activity: Activity, sub: Submission) -> None:
    try:
        inputs = _upload(activity, sub)
    finally:
        shutil.rmtree(sub.staging_dir, ignore_errors=True)
    request = dict(sub.request, inputs=inputs)
    job = sub.client.submit(request)
    job_id = str(job.get("id", ""))
    if not job_id:
        raise FarmError("the farm accepted the job but named no id")
    activity.set_job(job_id)
    activity.report(f"submitted job {job_id} ({job.get('tasksTotal', 0)} tasks)", fraction=0.0)
    if sub.follow:
        follow(activity, sub.client, job_id, job)


def _upload(activity: Activity, sub: Submission) -> list[dict[str, str]]:
    sources = [BundleEntry(SCENE_INPUT, sub.scene_copy), *sub.entries]
    hashed: list[tuple[BundleEntry, str, int]] = []
    for index, entry in enumerate(sources):
        if activity.stopping:
            raise FarmError("submission stopped")
        activity.status(f"hashing {index + 1}/{len(sources)} files", index / len(sources))
        try:
            digest, size = sha256_file(entry.source)
        except OSError as err:
            raise FarmError(f"cannot read {entry.source}: {err.strerror}") from None
        hashed.append((entry, digest, size))
    activity.report(f"asking the farm which of {len(hashed)} files it lacks")
    missing = set(sub.client.find_missing(digest for _, digest, _ in hashed))
    to_send: dict[str, tuple[BundleEntry, int]] = {}
    for entry, digest, size in hashed:
        if digest in missing:
            to_send.setdefault(digest, (entry, size))
    total = sum(size for _, size in to_send.values())
    activity.report(
        f"uploading {len(to_send)} of {len(hashed)} files ({_megabytes(total)}); the farm has the rest",
        fraction=0.0,
    )
    sent = _ByteTicker(activity, total)
    for digest, (entry, _) in to_send.items():
        if activity.stopping:
            raise FarmError("submission stopped")
        sub.client.upload(entry.source, digest, sent.add)
    if to_send:
        activity.report(f"uploaded {len(to_send)} files ({_megabytes(total)})", fraction=1.0)
    return [{"path": entry.path, "digest": digest} for entry, digest, _ in hashed]


def follow(activity: Activity, client: FarmClient, job_id: str, job: dict[str, Any] | None = None) -> JobProgress:
    """Follows a job's events until it ends, reporting each change of its
    counts or state; resumes the stream after a break, and polls if the
    stream keeps failing."""
    progress = JobProgress(job_id)
    if job:
        progress.apply_job(job)
    failures = 0
    while not progress.finished and not activity.stopping:
        heard = False
        try:
            for event in client.events(job_id, progress.last_seq):
                heard = True
                if progress.apply(event.kind, event.data, event.id):
                    activity.report(progress.line(), fraction=progress.fraction)
                else:
                    activity.status(progress.line(), progress.fraction)
                if progress.finished or activity.stopping:
                    break
        except FarmError as err:
            if err.status in (400, 401, 403, 404):
                raise
        # A stream that broke after telling something resumes at once; one
        # that keeps failing before any event counts towards polling.
        failures = 0 if heard else failures + 1
        if progress.finished or activity.stopping:
            break
        if failures >= MAX_STREAM_FAILURES:
            _poll(activity, client, progress)
            break
        time.sleep(RECONNECT_SECONDS)
    if progress.state == "JOB_STATE_FAILED" or progress.state == "JOB_STATE_CANCELLED":
        activity.report(progress.line(), "ERROR", progress.fraction)
    return progress


def _poll(activity: Activity, client: FarmClient, progress: JobProgress) -> None:
    activity.report("the farm's event stream keeps failing; polling the job instead", "WARNING")
    while not progress.finished and not activity.stopping:
        if progress.apply_job(client.job(progress.job_id)):
            activity.report(progress.line(), fraction=progress.fraction)
        if not progress.finished:
            time.sleep(POLL_SECONDS)


def run_download(activity: Activity, client: FarmClient, job_id: str, dest_dir: str) -> None:
    """Downloads a job's frames and video (not thumbnails or logs) into `dest_dir`."""
    activity.set_job(job_id)
    outputs = [o for o in client.outputs(job_id) if not o.get("kind")]
    if not outputs:
        raise FarmError(f"job {job_id} has no outputs yet")
    total = sum(int(o.get("size", 0) or 0) for o in outputs)
    activity.report(f"downloading {len(outputs)} files ({_megabytes(total)}) into {dest_dir}", fraction=0.0)
    got = _ByteTicker(activity, total)
    root = os.path.realpath(dest_dir)
    for output in outputs:
        if activity.stopping:
            raise FarmError("download stopped")
        dest = os.path.realpath(os.path.join(root, str(output.get("path", ""))))
        if os.path.commonpath([dest, root]) != root or dest == root:
            raise FarmError(f"the farm named an output outside the download folder: {output.get('path')!r}")
        client.download_output(job_id, output, dest, got.add)
    activity.report(f"downloaded {len(outputs)} files into {dest_dir}", fraction=1.0)


class _ByteTicker:
    """Byte progress of a transfer, shown at most every TICK_SECONDS."""

    def __init__(self, activity: Activity, total: int) -> None:
        self._activity = activity
        self._total = max(total, 1)
        self._done = 0
        self._last = 0.0

    def add(self, count: int) -> None:
        self._done += count
        now = time.monotonic()
        if now - self._last >= TICK_SECONDS:
            self._last = now
            fraction = min(self._done / self._total, 1.0)
            self._activity.status(f"{_megabytes(self._done)} of {_megabytes(self._total)}", fraction)


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"
