"""Drives the add-on in a real Blender for Kiln's end-to-end tests: installs
the zipped add-on the way a user does (Preferences > Add-ons > Install),
enables it, sets its preferences, runs the submit operator on the open
scene and, with --download, the download operator.

Run: blender -b -Y SCENE.blend --python submit_driver.py -- --addon ZIP --farm URL
     [--frames 1-2] [--chunk 1] [--download]
The token comes from the environment (KILN_TEST_TOKEN), never the command line.
Prints `KILN_SUBMIT_RESULT <result> <job id>` and `KILN_DOWNLOAD_RESULT <result> <folder>`.
"""

import argparse
import os
import sys

import addon_utils
import bpy

parser = argparse.ArgumentParser()
parser.add_argument("--addon", required=True)
parser.add_argument("--farm", required=True)
parser.add_argument("--frames", default="1-2")
parser.add_argument("--chunk", type=int, default=1)
parser.add_argument("--download", action="store_true")
args = parser.parse_args(sys.argv[sys.argv.index("--") + 1 :])

bpy.ops.preferences.addon_install(filepath=args.addon, overwrite=True)
addon_utils.enable("kiln_blender", default_set=True, handle_error=None)
if "kiln_blender" not in bpy.context.preferences.addons:
    sys.exit("KILN_DRIVER_ERROR the add-on did not enable")
prefs = bpy.context.preferences.addons["kiln_blender"].preferences
prefs.farm_url = args.farm
prefs.token = os.environ["KILN_TEST_TOKEN"]

settings = bpy.context.scene.kiln
settings.use_scene_range = False
settings.frames = args.frames
settings.chunk_size = args.chunk
try:
    result = bpy.ops.kiln.submit()
except RuntimeError as err:  # an operator that reports an error raises here
    print("KILN_SUBMIT_ERROR", err, flush=True)
    result = {"CANCELLED"}
print("KILN_SUBMIT_RESULT", sorted(result)[0], settings.last_job_id or "-", flush=True)
if args.download and result == {"FINISHED"}:
    result = bpy.ops.kiln.download_outputs()
    folder = os.path.join(bpy.path.abspath(settings.download_dir), settings.last_job_id)
    print("KILN_DOWNLOAD_RESULT", sorted(result)[0], os.path.normpath(folder), flush=True)
