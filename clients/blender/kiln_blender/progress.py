"""A job's progress folded from its events (the REST API's Server-Sent
Events, proto3 JSON): counts, the running tasks' fractions, a line for
people. No bpy here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FINAL_STATES = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"})
DONE_TASK_STATES = frozenset({"TASK_STATE_SUCCEEDED", "TASK_STATE_FAILED", "TASK_STATE_CANCELLED"})
STATE_WORDS = {
    "JOB_STATE_PENDING": "waiting for a worker",
    "JOB_STATE_RUNNING": "rendering",
    "JOB_STATE_SUCCEEDED": "succeeded",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_PAUSED": "paused",
}


@dataclass
class JobProgress:
    job_id: str
    name: str = ""
    state: str = "JOB_STATE_PENDING"
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    message: str = ""
    frame: int | None = None
    last_seq: str | None = None
    _running: dict[str, float] = field(default_factory=dict)
    # Tasks seen to succeed or fail: the job's record is sent at most every
    # half second while only counts move, task events come at once.
    _succeeded: set[str] = field(default_factory=set)
    _failed: set[str] = field(default_factory=set)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def fraction(self) -> float:
        if self.state == "JOB_STATE_SUCCEEDED":
            return 1.0
        if self.total <= 0:
            return 0.0
        done = self.succeeded + sum(self._running.values())
        return max(0.0, min(1.0, done / self.total))

    def apply(self, kind: str, event: dict[str, Any], event_id: str | None = None) -> bool:
        """Folds one event in; True when the counts or the state changed
        (worth a line), False for a mere progress tick."""
        if event_id:
            self.last_seq = event_id
        if kind == "job_changed" or "jobChanged" in event:
            return self.apply_job(event.get("jobChanged", {}))
        if kind == "task_progress" or "taskProgress" in event:
            tick = event.get("taskProgress", {})
            task = str(tick.get("taskId", ""))
            if task:
                self._running[task] = float(tick.get("fraction", 0.0) or 0.0)
            if tick.get("frame") is not None:
                self.frame = int(tick["frame"])
            return False
        if kind == "task_state_changed" or "taskStateChanged" in event:
            return self._apply_task(event.get("taskStateChanged", {}))
        return False

    def _apply_task(self, change: dict[str, Any]) -> bool:
        task, state = str(change.get("taskId", "")), change.get("state")
        if state in DONE_TASK_STATES or state == "TASK_STATE_PENDING":
            self._running.pop(task, None)
        elif state == "TASK_STATE_RUNNING":
            self._running.setdefault(task, 0.0)
        if state == "TASK_STATE_PENDING":  # reopened by a retry
            self._succeeded.discard(task)
            self._failed.discard(task)
        before = (self.succeeded, self.failed)
        if state == "TASK_STATE_SUCCEEDED":
            self._succeeded.add(task)
        elif state == "TASK_STATE_FAILED":
            self._failed.add(task)
        self.succeeded = max(self.succeeded, len(self._succeeded))
        self.failed = max(self.failed, len(self._failed))
        return (self.succeeded, self.failed) != before

    def apply_job(self, job: dict[str, Any]) -> bool:
        before = (self.state, self.succeeded, self.failed, self.total)
        self.name = str(job.get("name", self.name))
        self.state = str(job.get("state", self.state))
        self.total = int(job.get("tasksTotal", 0) or 0)
        # A record may trail the task events already folded in.
        self.succeeded = max(int(job.get("tasksSucceeded", 0) or 0), len(self._succeeded))
        self.failed = max(int(job.get("tasksFailed", 0) or 0), len(self._failed))
        self.message = str(job.get("message", "") or "")
        if self.finished:
            self._running.clear()
        return (self.state, self.succeeded, self.failed, self.total) != before

    def line(self) -> str:
        word = STATE_WORDS.get(self.state, self.state.lower())
        text = f"job {self.name or self.job_id} {word}: {self.succeeded}/{self.total} tasks, {self.fraction:.0%}"
        if self.failed:
            text += f", {self.failed} failed"
        if self.frame is not None and not self.finished:
            text += f" (frame {self.frame})"
        if self.message and self.state in ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
            text += f": {self.message}"
        return text
