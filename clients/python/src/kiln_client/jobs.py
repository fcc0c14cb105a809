"""Jobs: submit a template with input files, watch its events to the end,
download its outputs."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath

import grpc

from .assets import Assets
from .errors import FarmError, JobNotSucceeded, KilnError
from .v1 import jobs_pb2, jobs_pb2_grpc

FINAL_STATES = frozenset({jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED})
# A watch cut off by a gateway restart or a scheduler failover resumes from
# its last sequence number; this many failures in a row without an event
# give up. Backoff doubles from RETRY_SECONDS up to MAX_RETRY_SECONDS.
MAX_WATCH_RETRIES = 10
RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 8.0
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


def state_name(state: int) -> str:
    """`succeeded` for JOB_STATE_SUCCEEDED, and so on."""
    return jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()


class Jobs:
    def __init__(self, channel: grpc.Channel, assets: Assets, timeout: float) -> None:
        self._stub = jobs_pb2_grpc.JobServiceStub(channel)
        self._assets = assets
        self._timeout = timeout

    def _call(self, name: str, request: object) -> jobs_pb2.Job:
        try:
            return getattr(self._stub, name)(request, timeout=self._timeout)
        except grpc.RpcError as err:
            raise FarmError.from_rpc(err, name) from None

    def submit(
        self,
        *,
        builtin: str | None = None,
        template: str | Path | None = None,
        parameters: Mapping[str, object] | None = None,
        inputs: Mapping[str, Path | str] | None = None,
        name: str = "",
        priority: int = 0,
        depends_on: Iterable[str] = (),
    ) -> jobs_pb2.Job:
        """Uploads the input files the farm lacks and submits the job.

        `builtin` names a template the farm knows ("blender"); `template` is
        an OpenJD template (its text, or a Path to a YAML/JSON file).
        `inputs` maps paths in the task's working directory ("scene.blend",
        "textures/wood.png") to local files.
        """
        if (builtin is None) == (template is None):
            raise KilnError("give exactly one of builtin= and template=")
        files = {_input_path(key): Path(value) for key, value in (inputs or {}).items()}
        for path, source in files.items():
            if not source.is_file():
                raise KilnError(f"input {path}: {source} is not a file")
        uploaded = self._assets.upload_missing(files.values())
        request = jobs_pb2.SubmitJobRequest(
            parameters={key: str(value) for key, value in (parameters or {}).items()},
            inputs=[jobs_pb2.JobInput(path=path, digest=uploaded.assets[source].digest) for path, source in files.items()],
            name=name,
            priority=priority,
            depends_on_jobs=list(depends_on),
        )
        if builtin is not None:
            request.builtin_template = builtin
        else:
            request.template_document = template.read_text() if isinstance(template, Path) else str(template)
        return self._call("SubmitJob", request)

    def get(self, job_id: str) -> jobs_pb2.Job:
        return self._call("GetJob", jobs_pb2.GetJobRequest(job_id=job_id))

    def list(self, limit: int = 0, owner: str = "") -> list[jobs_pb2.Job]:
        return list(self._call("ListJobs", jobs_pb2.ListJobsRequest(limit=limit, owner=owner)).jobs)

    def cancel(self, job_id: str) -> jobs_pb2.Job:
        return self._call("CancelJob", jobs_pb2.CancelJobRequest(job_id=job_id))

    def tasks(self, job_id: str) -> list[jobs_pb2.Task]:
        """Every task of the job, page after page."""
        tasks: list[jobs_pb2.Task] = []
        token = ""
        while True:
            answer = self._call("ListTasks", jobs_pb2.ListTasksRequest(job_id=job_id, page_token=token))
            tasks.extend(answer.tasks)
            if not answer.next_page_token:
                return tasks
            token = answer.next_page_token

    def outputs(self, job_id: str, kinds: Iterable[str] = ("",)) -> list[jobs_pb2.JobOutput]:
        """The job's outputs of these kinds ("" = frames and videos;
        "thumbnail", "log"), page after page."""
        wanted = set(kinds)
        outputs: list[jobs_pb2.JobOutput] = []
        token = ""
        while True:
            answer = self._call("ListOutputs", jobs_pb2.ListOutputsRequest(job_id=job_id, page_token=token))
            outputs.extend(output for output in answer.outputs if output.kind in wanted)
            if not answer.next_page_token:
                return outputs
            token = answer.next_page_token

    def watch(self, job_id: str, after_seq: int | None = None) -> Iterator[jobs_pb2.JobEvent]:
        """The job's events until it ends: first its current record (unless
        resuming `after_seq`), then each change. A stream cut off by a
        restart or failover resumes after the last event seen, with no gap
        and no repeat."""
        last = after_seq
        failures = 0
        while True:
            request = jobs_pb2.WatchJobRequest(job_id=job_id)
            if last is not None:
                request.after_seq = last
            try:
                for event in self._stub.WatchJob(request):
                    failures = 0
                    if event.seq:
                        last = event.seq
                    yield event
                return  # the farm ends the stream when the job has ended
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE or failures >= MAX_WATCH_RETRIES:
                    raise FarmError.from_rpc(err, "WatchJob") from None
                time.sleep(min(RETRY_SECONDS * 2**failures, MAX_RETRY_SECONDS))
                failures += 1

    def wait(self, job_id: str) -> jobs_pb2.Job:
        """Follows the job to its end; returns it, or raises JobNotSucceeded."""
        for _ in self.watch(job_id):
            pass
        job = self.get(job_id)
        if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
            raise JobNotSucceeded(job_id, state_name(job.state), job.message)
        return job

    def download_outputs(self, job_id: str, dest: Path, kinds: Iterable[str] = ("",)) -> list[Path]:
        """Downloads the job's outputs into `dest`, keeping their relative paths."""
        root = dest.resolve()
        written = []
        for output in self.outputs(job_id, kinds):
            target = (root / _input_path(output.path)).resolve()
            if not target.is_relative_to(root):
                raise KilnError(f"the farm named an output outside {dest}: {output.path!r}")
            written.append(self._assets.download(output.digest, target))
        return written


def _input_path(path: str) -> str:
    """A relative path without `..`, `/`-separated, as the farm wants it."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if not parts or path.startswith("/") or any(p in ("..", ".") for p in parts):
        raise KilnError(f"{path!r} must be a relative path without '..'")
    return "/".join(parts)
