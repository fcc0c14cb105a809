"""Submit, download, open in the dashboard, cancel.

Submit and download do Blender's part on the main thread (finding files,
saving the copy), then hand the network to an Activity's thread. In
Blender's UI a modal operator turns the activity's lines into reports
while the user keeps working; with `blender -b` (no UI to keep alive) the
operator waits for the activity and reports the same lines as it goes.
"""

import os
import tempfile
import time

import bpy

from . import bundle_plan, dependencies, job_request, preferences, properties, scene_copy, status_bar
from .activity import Activity
from .farm_rest import FarmError
from .submission import Submission, run_download, run_submission

TIMER_SECONDS = 0.25
WAIT_SECONDS = 0.1
# Missing files named in the report itself; the console gets all of them.
MISSING_SHOWN = 10


def file_name() -> str:
    return os.path.basename(bpy.data.filepath) if bpy.data.filepath else "untitled.blend"


class _ActivityOperator:
    """Runs an Activity to its end, modally in the UI, blocking with -b."""

    _activity = None
    _timer = None
    _scene_name = ""

    def start(self, context):  # -> Activity | None; set by subclasses
        raise NotImplementedError

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        activity = self._begin(context)
        if activity is None:
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_SECONDS, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        self._pump()
        if self._activity.running:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return {"CANCELLED"} if self._activity.failed else {"FINISHED"}

    def cancel(self, context):
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)

    def execute(self, context):
        activity = self._begin(context)
        if activity is None:
            return {"CANCELLED"}
        while activity.running:
            self._pump()
            activity.wait(WAIT_SECONDS)
        self._pump()
        return {"CANCELLED"} if activity.failed else {"FINISHED"}

    def _begin(self, context):
        self._scene_name = context.scene.name
        try:
            activity = self.start(context)
        except (FarmError, ValueError, RuntimeError) as err:
            self.report({"ERROR"}, f"Kiln: {err}")
            return None
        if activity is not None:
            self._activity = activity
            status_bar.track(activity)
        return activity

    def _pump(self):
        for report in self._activity.reports():
            self.report({report.level}, report.text)
        job_id = self._activity.snapshot().job_id
        scene = bpy.data.scenes.get(self._scene_name)
        if job_id and scene is not None and scene.kiln.last_job_id != job_id:
            scene.kiln.last_job_id = job_id


class KILN_OT_submit(_ActivityOperator, bpy.types.Operator):
    """Save a copy of this file, upload what the farm lacks, and render it on Kiln"""

    bl_idname = "kiln.submit"
    bl_label = "Submit to Kiln"

    @classmethod
    def poll(cls, context):
        return not status_bar.busy()

    def start(self, context):
        client = preferences.client(context)
        if getattr(bpy.app, "online_access", True) is False:
            raise RuntimeError("Blender's online access is off (Preferences > System > Network); Kiln needs it")
        settings = context.scene.kiln
        request = job_request.build(properties.render_settings(context.scene, file_name()))
        root = dependencies.scene_root()
        found = dependencies.collect()
        if found.missing and not settings.allow_missing:
            self._report_missing(found.missing)
            return None
        plan = bundle_plan.plan(found.dependencies, root)
        extra = [bundle_plan.BundleEntry(bundle_plan.bundle_path(f, root), f) for f in found.extra_files]
        for path in found.unmapped:
            plan.warnings.append(f"{path} is outside the scene's folder and Kiln cannot remap it; the farm will miss it")
        for warning in plan.warnings:
            self.report({"WARNING"}, f"Kiln: {warning}")
        staging = tempfile.mkdtemp(prefix="kiln-submit-")
        copy = os.path.join(staging, bundle_plan.SCENE_INPUT)
        try:
            scene_copy.save_copy(copy, plan.rewrites)
        except Exception:
            _remove_tree(staging)
            raise
        entries = _unique(plan.entries + extra)
        self.report(
            {"INFO"},
            f"Kiln: saved a copy with {len(entries)} files it needs ({len(plan.rewrites)} paths remapped)",
        )
        submission = Submission(client, copy, entries, request, staging)
        return Activity(f"Kiln {request['name']}", lambda a: run_submission(a, submission)).start()

    def _report_missing(self, missing):
        lines = [f"{owner}: {path}" for owner, path in missing]
        for line in lines:
            print(f"Kiln: missing {line}")
        shown = "; ".join(lines[:MISSING_SHOWN])
        more = f" and {len(lines) - MISSING_SHOWN} more" if len(lines) > MISSING_SHOWN else ""
        self.report(
            {"ERROR"},
            f"Kiln: {len(lines)} files the scene needs are missing, nothing was uploaded: {shown}{more}",
        )


class KILN_OT_download_outputs(_ActivityOperator, bpy.types.Operator):
    """Download the last job's frames and video"""

    bl_idname = "kiln.download_outputs"
    bl_label = "Download Frames and Video"

    @classmethod
    def poll(cls, context):
        return bool(context.scene.kiln.last_job_id) and not status_bar.busy()

    def start(self, context):
        client = preferences.client(context)
        settings = context.scene.kiln
        job_id = settings.last_job_id
        base = bpy.path.abspath(settings.download_dir) if bpy.data.filepath else tempfile.gettempdir()
        dest = os.path.join(os.path.normpath(base), job_id)
        return Activity("Kiln download", lambda a: run_download(a, client, job_id, dest)).start()


class KILN_OT_open_dashboard(bpy.types.Operator):
    """Open the last job in the farm's web dashboard"""

    bl_idname = "kiln.open_dashboard"
    bl_label = "Open in Dashboard"

    @classmethod
    def poll(cls, context):
        return bool(context.scene.kiln.last_job_id)

    def execute(self, context):
        bpy.ops.wm.url_open(url=preferences.dashboard_link(context, context.scene.kiln.last_job_id))
        return {"FINISHED"}


class KILN_OT_cancel_job(bpy.types.Operator):
    """Cancel the last job on the farm"""

    bl_idname = "kiln.cancel_job"
    bl_label = "Cancel Job"

    @classmethod
    def poll(cls, context):
        return bool(context.scene.kiln.last_job_id)

    def execute(self, context):
        job_id = context.scene.kiln.last_job_id
        try:
            preferences.client(context).cancel(job_id)
        except FarmError as err:
            self.report({"ERROR"}, f"Kiln: {err}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Kiln: cancelled job {job_id}")
        return {"FINISHED"}


def _unique(entries):
    by_path = {}
    for entry in entries:
        by_path.setdefault(entry.path, entry)
    return sorted(by_path.values(), key=lambda e: e.path)


def _remove_tree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)


CLASSES = (KILN_OT_submit, KILN_OT_download_outputs, KILN_OT_open_dashboard, KILN_OT_cancel_job)
