"""Properties > Render > Kiln: the job's settings, Submit, and the last job."""

import bpy

from . import status_bar


class RENDER_PT_kiln(bpy.types.Panel):
    bl_label = "Kiln Render Farm"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = context.scene.kiln
        layout.prop(settings, "job_name")
        layout.prop(settings, "use_scene_range")
        row = layout.row()
        row.enabled = not settings.use_scene_range
        row.prop(settings, "frames")
        layout.prop(settings, "chunk_size")
        layout.prop(settings, "priority")
        layout.prop(settings, "device")
        layout.prop(settings, "codec")
        layout.prop(settings, "quality")
        layout.prop(settings, "quality_check")
        layout.prop(settings, "allow_missing")
        layout.operator("kiln.submit", icon="RENDER_ANIMATION")

        activity = status_bar.current()
        if activity is not None:
            layout.label(text=activity.snapshot().text)
        if settings.last_job_id:
            box = layout.box()
            box.label(text=f"Last job: {settings.last_job_id}")
            box.operator("kiln.open_dashboard", icon="URL")
            box.prop(settings, "download_dir")
            box.operator("kiln.download_outputs", icon="IMPORT")
            box.operator("kiln.cancel_job", icon="CANCEL")
