"""The render settings Kiln adds to each scene (Properties > Render > Kiln).

These are scene data and travel with the .blend; nothing secret is here.
"""

import bpy

from .job_request import RenderSettings, frame_range


class KilnSceneSettings(bpy.types.PropertyGroup):
    job_name: bpy.props.StringProperty(
        name="Job name", description="Shown on the farm; empty means the file's name"
    )
    use_scene_range: bpy.props.BoolProperty(
        name="Scene frame range", description="Render the scene's start to end frame", default=True
    )
    frames: bpy.props.StringProperty(
        name="Frames", description="Frames to render, e.g. 1-250 or 1-10,20", default="1-250"
    )
    chunk_size: bpy.props.IntProperty(
        name="Chunk size", description="Frames each farm task renders", default=10, min=1, max=10000
    )
    priority: bpy.props.IntProperty(
        name="Priority", description="0 (lowest) to 100; normal is 50", default=50, min=0, max=100
    )
    codec: bpy.props.EnumProperty(
        name="Video",
        description="The video the farm encodes from the frames",
        items=(
            ("h264", "H.264 (mp4)", "H.264 in video.mp4"),
            ("h265", "H.265 (mp4)", "H.265 in video.mp4"),
            ("prores", "ProRes (mov)", "ProRes in video.mov"),
        ),
        default="h264",
    )
    quality: bpy.props.StringProperty(
        name="Quality",
        description="CRF for H.264/H.265 (0-51, lower is better) or ProRes profile (0-5); empty for the default",
        maxlen=2,
    )
    quality_check: bpy.props.BoolProperty(
        name="Check frames", description="Fail the job if a frame is missing, unreadable or blank", default=True
    )
    device: bpy.props.EnumProperty(
        name="Device",
        items=(("cpu", "CPU", "Render on the workers' CPUs"), ("gpu", "GPU", "Use a worker's GPU when it has one")),
        default="cpu",
    )
    allow_missing: bpy.props.BoolProperty(
        name="Submit with missing files",
        description="Submit even when files the scene uses cannot be found (they render as missing on the farm)",
        default=False,
    )
    download_dir: bpy.props.StringProperty(
        name="Download to", description="Frames and video go into a folder named after the job here",
        subtype="DIR_PATH", default="//kiln-out/",
    )
    last_job_id: bpy.props.StringProperty(name="Last job", description="The job this scene last submitted")


def render_settings(scene: bpy.types.Scene, default_name: str) -> RenderSettings:
    settings = scene.kiln
    render = scene.render
    frames = frame_range(scene.frame_start, scene.frame_end) if settings.use_scene_range else settings.frames
    cropped = render.use_border and render.use_crop_to_border
    scale = render.resolution_percentage / 100
    return RenderSettings(
        name=settings.job_name.strip() or default_name,
        frames=frames,
        chunk_size=settings.chunk_size,
        priority=settings.priority,
        fps=render.fps / render.fps_base,
        codec=settings.codec,
        quality=settings.quality,
        quality_check=settings.quality_check,
        device=settings.device,
        width=0 if cropped else int(render.resolution_x * scale),
        height=0 if cropped else int(render.resolution_y * scale),
    )


def register() -> None:
    bpy.utils.register_class(KilnSceneSettings)
    bpy.types.Scene.kiln = bpy.props.PointerProperty(type=KilnSceneSettings)


def unregister() -> None:
    del bpy.types.Scene.kiln
    bpy.utils.unregister_class(KilnSceneSettings)
