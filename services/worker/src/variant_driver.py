"""Kiln's personalised-template driver: applies one row of a variant table
to the scene Blender has loaded, before Blender renders it as usual.

Run by the worker as
    blender -b -Y scene.blend --python variant_driver.py -o ... -f ... -- TABLE.json ROW_ID [--cycles-device D]
It is shipped with the worker; `-Y` keeps scripts inside the .blend from
running, and the table is data only: text bodies and image file paths.
A placeholder the row names but the scene lacks stops Blender with an error
naming it, before anything renders.
"""
import json
import os
import sys

import bpy

# A variant table is small: ids, texts and paths.
MAX_TABLE_BYTES = 16 * 1024 * 1024


def fail(message):
    print(f"kiln: {message}", flush=True)
    sys.exit(3)


def load_row(table_path, row_id):
    if os.path.getsize(table_path) > MAX_TABLE_BYTES:
        fail(f"variant table {table_path} is larger than {MAX_TABLE_BYTES} bytes")
    with open(table_path, encoding="utf-8") as table_file:
        table = json.load(table_file)
    for row in table.get("rows", []):
        if row.get("id") == row_id:
            return row
    fail(f"variant row {row_id!r} is not in the table")


def inside_working_directory(path):
    """Image paths are relative to the task's working directory (the cwd)."""
    if os.path.isabs(path) or ".." in path.replace("\\", "/").split("/"):
        fail(f"image path {path!r} must be relative, without '..'")
    return os.path.abspath(path)


def apply(row):
    missing = []
    for name, body in sorted(row.get("texts", {}).items()):
        obj = bpy.data.objects.get(name)
        if obj is None or obj.type != "FONT":
            missing.append(f"text object {name!r}")
            continue
        obj.data.body = str(body)
    for name, path in sorted(row.get("images", {}).items()):
        image = bpy.data.images.get(name)
        if image is None:
            missing.append(f"image {name!r}")
            continue
        image.filepath = inside_working_directory(str(path))
        image.reload()
    if missing:
        fail("placeholder not found in the scene: " + ", ".join(missing))
    print(f"kiln: variant {row['id']} applied", flush=True)


def main():
    args = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    # Cycles' own options (--cycles-device) may follow.
    if len(args) < 2:
        fail("the variant driver needs: -- TABLE.json ROW_ID")
    try:
        row = load_row(args[0], args[1])
    except (OSError, ValueError) as error:
        fail(f"cannot read the variant table: {error}")
    apply(row)


main()
