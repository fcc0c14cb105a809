"""Where each file a scene depends on goes in the job's inputs, so that the
paths Blender reads on the farm resolve in the task's working directory.

The saved copy becomes `scene.blend` at the top of the working directory
(as Kiln's blender template expects). A file under the scene's own folder
keeps its relative place (`//textures/wood.png` stays `textures/wood.png`);
a file anywhere else is mirrored under `_kiln_external/` by its absolute
path (`/lib/hero/skin.png` becomes `_kiln_external/lib/hero/skin.png`), so
files that refer to each other relatively (a linked library and its own
textures) still find each other. The copy's own paths are rewritten to
point there.

No bpy here: this is plain path arithmetic, unit-tested outside Blender.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SCENE_INPUT = "scene.blend"
EXTERNAL_DIR = "_kiln_external"
# The worker collects a task's results from `outputs/`: an input there would
# be taken for a result.
RESERVED_TOP = ("outputs",)
# The scheduler refuses a job with more inputs than this.
MAX_FILES = 1000


@dataclass
class Dependency:
    """A datablock's file(s), as Blender's file-path API names them."""

    owner: str  # for people: "image 'Wood'"
    stored: str  # the path as stored in the datablock
    template: str  # absolute form of `stored` (may hold <UDIM>)
    files: list[str] = field(default_factory=list)  # absolute files it needs
    missing: list[str] = field(default_factory=list)
    # The datablock, when its path can be rewritten in the saved copy (a local
    # one); None for linked data, whose paths live in their library.
    datablock: Any = None
    path_attribute: str = "filepath"
    # For linked data: the absolute path of the library file it comes from.
    library: str | None = None


@dataclass(frozen=True)
class BundleEntry:
    """One input of the job: its path in the working directory and its source."""

    path: str
    source: str


@dataclass
class BundlePlan:
    entries: list[BundleEntry]
    # (datablock, attribute, new stored path) to set in the saved copy.
    rewrites: list[tuple[Any, str, str]]
    warnings: list[str]


def normalise(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def bundle_path(source: str, root: str | None) -> str:
    """The path in the task's working directory for the file at `source`."""
    source = normalise(source)
    if root:
        root = normalise(root)
        try:
            inside = os.path.commonpath([source, root]) == root
        except ValueError:  # another drive on Windows
            inside = False
        if inside and source != root:
            relative = os.path.relpath(source, root).replace(os.sep, "/")
            top = relative.split("/", 1)[0]
            if relative != SCENE_INPUT and top not in RESERVED_TOP:
                return relative
    return external_path(source)


def external_path(source: str) -> str:
    """`_kiln_external/` plus the absolute path's parts (a drive letter without its colon)."""
    drive, rest = os.path.splitdrive(normalise(source))
    parts = [drive.replace(":", "").strip("\\/")] if drive else []
    parts += [p for p in re.split(r"[\\/]+", rest) if p and p not in (".", "..")]
    return "/".join([EXTERNAL_DIR, *[p for p in parts if p]])


def stored_path(bundle: str) -> str:
    """Blender's relative form of a bundle path, as the copy stores it."""
    return "//" + bundle


def plan(dependencies: Iterable[Dependency], root: str | None) -> BundlePlan:
    """The job's inputs (besides the scene) and the copy's path rewrites."""
    entries: dict[str, BundleEntry] = {}
    rewrites: list[tuple[Any, str, str]] = []
    warnings: list[str] = []
    for dep in dependencies:
        for source in dep.files:
            path = bundle_path(source, root)
            entries.setdefault(path, BundleEntry(path, normalise(source)))
        target = stored_path(bundle_path(dep.template, root))
        if dep.datablock is not None:
            if dep.stored != target:
                rewrites.append((dep.datablock, dep.path_attribute, target))
        elif dep.files and not _resolves_unchanged(dep, root):
            warnings.append(
                f"{dep.owner}, linked from {dep.library}, is named there as {dep.stored!r}, "
                "which will not resolve on the farm (make the library's paths relative to it)"
            )
    ordered = sorted(entries.values(), key=lambda e: e.path)
    if len(ordered) + 1 > MAX_FILES:
        raise ValueError(f"the scene depends on {len(ordered)} files; a job takes at most {MAX_FILES - 1} besides the scene")
    return BundlePlan(ordered, rewrites, warnings)


def _resolves_unchanged(dep: Dependency, root: str | None) -> bool:
    """Whether a linked datablock's path, which its library stores and the
    copy cannot change, still leads to its file once both are bundled."""
    if not dep.stored.startswith("//") or not dep.library:
        return False
    library_dir = os.path.dirname(bundle_path(dep.library, root))
    on_farm = os.path.normpath(os.path.join(library_dir, dep.stored[2:].replace("\\", "/"))).replace(os.sep, "/")
    return on_farm == bundle_path(dep.template, root)


def expand_tiles(template: str, numbers: Iterable[int]) -> list[str]:
    """A tiled image's files: `<UDIM>` (1001, 1002, ...) or `<UVTILE>` (u1_v1, ...)."""
    files = []
    for number in numbers:
        index = number - 1001
        uvtile = f"u{index % 10 + 1}_v{index // 10 + 1}"
        files.append(template.replace("<UDIM>", str(number)).replace("<UVTILE>", uvtile))
    return files


def expand_sequence(first: str) -> list[str]:
    """The files of a numbered sequence that `first` belongs to: same folder,
    same text around the last run of digits in the name (Blender's rule)."""
    folder, name = os.path.split(first)
    match = re.match(r"^(.*?)(\d+)(\D*)$", name)
    if not match:
        return [first]
    head, _, tail = match.groups()
    pattern = re.compile(re.escape(head) + r"\d+" + re.escape(tail) + "$")
    try:
        names = sorted(n for n in os.listdir(folder or ".") if pattern.match(n))
    except OSError:
        return [first]
    return [os.path.join(folder, n) for n in names] or [first]
