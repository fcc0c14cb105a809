"""The SubmitJob request (proto3 JSON) for Kiln's built-in `blender`
template, from the panel's settings. No bpy here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CODECS = ("h264", "h265", "prores")
DEVICES = ("cpu", "gpu")


@dataclass(frozen=True)
class RenderSettings:
    name: str
    frames: str  # "1-250" or "1-10,20"
    chunk_size: int
    priority: int  # 0-100
    fps: float
    codec: str = "h264"
    quality: str = ""  # CRF or ProRes profile; empty for the codec's default
    quality_check: bool = True
    device: str = "cpu"
    width: int = 0  # expected frame size for the quality check; 0 = any
    height: int = 0


def frame_range(start: int, end: int) -> str:
    return f"{start}-{end}" if end != start else str(start)


def build(settings: RenderSettings) -> dict[str, Any]:
    """The request without its inputs (added once they are uploaded)."""
    if settings.codec not in CODECS:
        raise ValueError(f"codec {settings.codec!r} is not one of {', '.join(CODECS)}")
    if settings.device not in DEVICES:
        raise ValueError(f"device {settings.device!r} is not one of {', '.join(DEVICES)}")
    if not settings.frames.strip():
        raise ValueError("no frames to render")
    if not (settings.fps > 0):
        raise ValueError(f"frame rate {settings.fps} must be above 0")
    parameters = {
        "Frames": settings.frames.strip(),
        "ChunkSize": str(max(settings.chunk_size, 1)),
        "FrameRate": f"{settings.fps:.6g}",
        "Codec": settings.codec,
        "Quality": settings.quality.strip(),
        "QualityCheck": "on" if settings.quality_check else "off",
        "Device": settings.device,
        "Width": str(max(settings.width, 0)),
        "Height": str(max(settings.height, 0)),
    }
    return {
        "builtinTemplate": "blender",
        "name": settings.name,
        "priority": min(max(settings.priority, 0), 100),
        "parameters": parameters,
    }
