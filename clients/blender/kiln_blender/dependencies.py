"""The files the open scene depends on, found through Blender's own file-path
API: the datablocks that name files (images, libraries, sounds, movie clips,
fonts, caches, volumes), expanded the way Blender reads them (UDIM tiles,
numbered sequences), and checked for anything else Blender reports
(`bpy.data.file_path_map` where it exists, else `bpy.utils.blend_paths`).

Runs on Blender's main thread only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import bpy

from .bundle_plan import Dependency, expand_sequence, expand_tiles, normalise

# bpy.data collections whose datablocks name one file (or a sequence of them)
# through `filepath`, and how to describe one to a person.
FILE_COLLECTIONS = (
    ("images", "image"),
    ("libraries", "library"),
    ("sounds", "sound"),
    ("movieclips", "movie clip"),
    ("fonts", "font"),
    ("cache_files", "cache file"),
    ("volumes", "volume"),
)
# Files of one directory-valued path (a disk cache) taken at most.
MAX_DIRECTORY_FILES = 500


@dataclass
class SceneFiles:
    dependencies: list[Dependency]
    # Paths Blender reports that no handled datablock explains, under the
    # scene's folder (bundled as they are) ...
    extra_files: list[str] = field(default_factory=list)
    # ... and elsewhere (they cannot be rewritten; the farm will miss them).
    unmapped: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[tuple[str, str]]:
        return [(dep.owner, path) for dep in self.dependencies for path in dep.missing]


def scene_root() -> str | None:
    """The folder of the open .blend, or None for an unsaved file."""
    return os.path.dirname(normalise(bpy.data.filepath)) if bpy.data.filepath else None


def collect() -> SceneFiles:
    deps = [dep for dep in _datablock_dependencies() if dep.files or dep.missing]
    known = {normalise(path) for dep in deps for path in dep.files + dep.missing}
    known |= {normalise(dep.template) for dep in deps}
    found = SceneFiles(deps)
    root = scene_root()
    for path in sorted(_reported_paths() - known):
        inside = root is not None and _is_under(path, root)
        if not inside:
            found.unmapped.append(path)
        elif os.path.isfile(path):
            found.extra_files.append(path)
        elif os.path.isdir(path):
            found.extra_files.extend(_files_under(path))
    return found


def _datablock_dependencies() -> Iterator[Dependency]:
    for collection, noun in FILE_COLLECTIONS:
        for block in getattr(bpy.data, collection, ()):
            dep = _dependency(block, collection, noun)
            if dep is not None:
                yield dep


def _dependency(block: Any, collection: str, noun: str) -> Dependency | None:
    stored = getattr(block, "filepath", "") or ""
    if not stored or stored == "<builtin>" or getattr(block, "packed_file", None) is not None:
        return None
    source = getattr(block, "source", "FILE")
    if collection == "images" and source not in ("FILE", "SEQUENCE", "MOVIE", "TILED"):
        return None
    owner_library = block.parent if collection == "libraries" else block.library
    template = normalise(bpy.path.abspath(stored, library=owner_library))
    files = _expand(block, collection, template)
    existing = [f for f in files if os.path.isfile(f)]
    linked = block.library is not None
    return Dependency(
        owner=f"{noun} {block.name!r}" + (f" (linked from {block.library.filepath})" if linked else ""),
        stored=stored,
        template=template,
        files=existing,
        missing=[f for f in files if f not in existing],
        datablock=None if linked else block,
        path_attribute="filepath_raw" if collection == "images" else "filepath",
        library=normalise(bpy.path.abspath(block.library.filepath, library=block.library.parent)) if linked else None,
    )


def _expand(block: Any, collection: str, template: str) -> list[str]:
    source = getattr(block, "source", "FILE")
    if collection == "images" and source == "TILED":
        return expand_tiles(template, [tile.number for tile in block.tiles])
    sequence = (collection in ("images", "movieclips") and source == "SEQUENCE") or getattr(block, "is_sequence", False)
    return expand_sequence(template) if sequence else [template]


def _reported_paths() -> set[str]:
    """Every absolute path Blender's file-path API reports for the file."""
    path_map = getattr(bpy.data, "file_path_map", None)
    if path_map is not None:  # Blender 4.2+: paths per datablock, libraries' too
        paths: set[str] = set()
        for block, block_paths in path_map(include_libraries=True).items():
            library = getattr(block, "library", None)
            paths |= {normalise(bpy.path.abspath(p, library=library)) for p in block_paths}
        return paths
    return {normalise(p) for p in bpy.utils.blend_paths(absolute=True, packed=False, local=False)}


def _is_under(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([normalise(path), normalise(root)]) == normalise(root)
    except ValueError:
        return False


def _files_under(directory: str) -> list[str]:
    files: list[str] = []
    for folder, _, names in os.walk(directory):
        for name in sorted(names):
            files.append(os.path.join(folder, name))
            if len(files) >= MAX_DIRECTORY_FILES:
                return files
    return files
