"""Work that talks to the farm on a background thread, so Blender's UI never
waits on the network: an Activity runs one function, which publishes
reports (lines for the operator to show) and keeps a snapshot (what the
status bar draws). The main thread only reads them.

No bpy here.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

# Reports kept while nobody reads them; past this, the oldest are dropped
# (the snapshot always has the latest state).
MAX_PENDING_REPORTS = 500


@dataclass(frozen=True)
class Report:
    level: str  # "INFO", "WARNING" or "ERROR", as Blender's reports
    text: str


@dataclass(frozen=True)
class Snapshot:
    text: str
    fraction: float | None
    job_id: str
    running: bool
    failed: bool


class Activity:
    """One background job (a submission or a download) and what it says."""

    def __init__(self, title: str, work: Callable[["Activity"], None]) -> None:
        self.title = title
        self._work = work
        self._reports: queue.Queue[Report] = queue.Queue(MAX_PENDING_REPORTS)
        self._lock = threading.Lock()
        self._text = f"{title}: starting"
        self._fraction: float | None = None
        self._job_id = ""
        self._running = True
        self._failed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kiln-{title}", daemon=True)

    def start(self) -> "Activity":
        self._thread.start()
        return self

    # -- called by the work, on its thread -------------------------------------

    def report(self, text: str, level: str = "INFO", fraction: float | None = None) -> None:
        """A line for the user, which also becomes the status bar's text."""
        self.status(text, fraction)
        report = Report(level, f"Kiln: {text}")
        while True:
            try:
                self._reports.put_nowait(report)
                return
            except queue.Full:
                try:
                    self._reports.get_nowait()
                except queue.Empty:
                    pass

    def status(self, text: str, fraction: float | None = None) -> None:
        """Updates the status bar only (frequent progress ticks)."""
        with self._lock:
            self._text = f"{self.title}: {text}"
            self._fraction = fraction

    def set_job(self, job_id: str) -> None:
        with self._lock:
            self._job_id = job_id

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- read by the main thread -----------------------------------------------

    def reports(self) -> list[Report]:
        drained = []
        while True:
            try:
                drained.append(self._reports.get_nowait())
            except queue.Empty:
                return drained

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._text, self._fraction, self._job_id, self._running, self._failed)

    @property
    def running(self) -> bool:
        return self.snapshot().running

    @property
    def failed(self) -> bool:
        return self.snapshot().failed

    def stop(self) -> None:
        """Asks the work to stop following (it checks between steps)."""
        self._stop.set()

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._work(self)
        except Exception as err:  # the thread's edge: every failure becomes a report
            with self._lock:
                self._failed = True
            self.report(str(err) or type(err).__name__, "ERROR")
        finally:
            with self._lock:
                self._running = False
