"""Kiln's item in Blender's status bar: what the current submission or
download is doing, redrawn by a timer while it runs. The work itself runs
on its Activity's thread; this only reads snapshots."""

from __future__ import annotations

import bpy

from .activity import Activity

REDRAW_SECONDS = 0.5
_current: Activity | None = None


def current() -> Activity | None:
    return _current


def busy() -> bool:
    return _current is not None and _current.running


def track(activity: Activity) -> None:
    global _current
    _current = activity
    if not bpy.app.timers.is_registered(_redraw):
        bpy.app.timers.register(_redraw, first_interval=REDRAW_SECONDS, persistent=True)


def draw(self: bpy.types.Header, context: bpy.types.Context) -> None:
    if _current is None:
        return
    snap = _current.snapshot()
    icon = "ERROR" if snap.failed else ("RENDER_ANIMATION" if snap.running else "CHECKMARK")
    layout = self.layout
    if snap.fraction is not None and hasattr(layout, "progress"):  # Blender 4.0+
        layout.progress(factor=snap.fraction, type="BAR", text=snap.text)
    else:
        percent = f" [{snap.fraction:.0%}]" if snap.fraction is not None else ""
        layout.label(text=snap.text + percent, icon=icon)


def _redraw() -> float | None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in ("STATUSBAR", "PROPERTIES"):
                area.tag_redraw()
    return REDRAW_SECONDS if busy() else None


def register() -> None:
    bpy.types.STATUSBAR_HT_header.append(draw)


def unregister() -> None:
    global _current
    if _current is not None:
        _current.stop()
        _current = None
    bpy.types.STATUSBAR_HT_header.remove(draw)
    if bpy.app.timers.is_registered(_redraw):
        bpy.app.timers.unregister(_redraw)
