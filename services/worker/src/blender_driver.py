"""Kiln's warm-session driver: keeps one scene loaded in Blender and renders
the frames the worker asks for, one JSON request per line on stdin:

    {"frame": 12, "output": "/work/t-1/outputs/frames/frame_####"}

Blender prints its usual `Fra:` and `Saved:` lines while rendering; after
each request the driver prints `KILN_FRAME_DONE <frame>` or
`KILN_FRAME_FAILED <frame> <message>`. It is shipped with the worker and run
with `blender -b -Y scene.blend --python driver.py`: `-Y` keeps scripts
inside the .blend from running, and nothing here runs code from a request.
"""
import ctypes
import json
import sys

import bpy

# A request is a frame number and a path: anything longer is not one.
MAX_REQUEST_BYTES = 64 * 1024
LIBC = ctypes.CDLL(None)


def render(scene, request):
    frame = int(request["frame"])
    output = str(request["output"])
    scene.frame_set(frame)
    # Same path a command-line `-o` pattern gives: #### filled in, extension added.
    scene.render.filepath = output
    scene.render.filepath = scene.render.frame_path(frame=frame)
    bpy.ops.render.render(write_still=True)
    return frame


def serve():
    scene = bpy.context.scene
    print("KILN_DRIVER_READY", flush=True)
    while True:
        line = sys.stdin.readline(MAX_REQUEST_BYTES)
        if not line:
            return
        frame = "?"
        try:
            request = json.loads(line)
            frame = request.get("frame", "?")
            done = render(scene, request)
        except Exception as error:  # noqa: BLE001 - reported to the worker, which fails the task
            message = " ".join(str(error).split())
            print(f"KILN_FRAME_FAILED {frame} {type(error).__name__}: {message}", flush=True)
            continue
        # Blender prints `Saved:` through C stdio, buffered on a pipe: it
        # must reach the worker before the completion line does.
        LIBC.fflush(None)
        print(f"KILN_FRAME_DONE {done}", flush=True)


serve()
