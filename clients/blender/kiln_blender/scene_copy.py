"""Saves a copy of the open file for the farm, with the rewritten paths of
a bundle plan, and leaves the open file exactly as it was.

Why rewrite in this session rather than in a second Blender: opening a
production file twice doubles the time and memory a submission costs. The
datablocks' paths are changed only for the length of the save and restored
in a `finally`; images change through `filepath_raw`, which never reloads
pixels (so unsaved paint is not lost).
"""

from __future__ import annotations

from typing import Any

import bpy


def save_copy(dest: str, rewrites: list[tuple[Any, str, str]]) -> None:
    """Writes the open file to `dest` with each (datablock, attribute, path) set."""
    originals: list[tuple[Any, str, str]] = []
    try:
        for block, attribute, path in rewrites:
            originals.append((block, attribute, getattr(block, attribute)))
            setattr(block, attribute, path)
        # relative_remap=False: the rewritten `//` paths are relative to the
        # working directory the copy lands in on the farm, not to `dest`.
        result = bpy.ops.wm.save_as_mainfile(
            filepath=dest, check_existing=False, copy=True, relative_remap=False, compress=False
        )
        if "FINISHED" not in result:
            raise RuntimeError(f"Blender could not save a copy of the scene to {dest}")
    finally:
        for block, attribute, path in reversed(originals):
            setattr(block, attribute, path)
