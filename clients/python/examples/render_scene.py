"""Renders a .blend on a Kiln farm with kiln-client: uploads the scene (only
if the farm lacks it), submits Kiln's built-in Blender job, prints its
events as they happen, and downloads the frames and the video.

    export KILN_FARM=http://127.0.0.1:7070 KILN_TOKEN=...
    python render_scene.py shot.blend --frames 1-48 --chunk 8 --out renders/shot
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kiln_client import Farm, KilnError, jobs_pb2, state_name


def describe(event: jobs_pb2.JobEvent) -> str:
    kind = event.WhichOneof("event")
    if kind == "job_changed":
        job = event.job_changed
        return f"job {state_name(job.state)}: {job.tasks_succeeded}/{job.tasks_total} tasks"
    if kind == "task_state_changed":
        task = event.task_state_changed
        state = jobs_pb2.TaskState.Name(task.state).removeprefix("TASK_STATE_").lower()
        worker = f" on {task.worker_id}" if task.worker_id else ""
        return f"task {task.step_name}#{task.index} {state}{worker}"
    if kind == "task_progress":
        progress = event.task_progress
        frame = f" frame {progress.frame}" if progress.HasField("frame") else ""
        return f"task {progress.task_id[:8]} {progress.fraction:.0%}{frame}"
    if kind == "output_added":
        return f"output {event.output_added.output.path}"
    return kind or "event"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", type=Path)
    parser.add_argument("--frames", default="1-24")
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--out", type=Path, default=Path("kiln-out"))
    args = parser.parse_args()

    with Farm.from_env() as farm:
        job = farm.jobs.submit(
            builtin="blender",
            parameters={"Frames": args.frames, "ChunkSize": args.chunk, "FrameRate": args.fps},
            inputs={"scene.blend": args.scene},
            name=args.scene.name,
        )
        print(f"submitted job {job.id} ({job.tasks_total} tasks)", flush=True)
        for event in farm.jobs.watch(job.id):
            print(f"[{event.seq}] {describe(event)}", flush=True)
        finished = farm.jobs.wait(job.id)  # raises unless it succeeded
        files = farm.jobs.download_outputs(finished.id, args.out)
        print(f"downloaded {len(files)} files into {args.out}")
        for path in files:
            if path.suffix in (".mp4", ".mov"):
                print(f"video: {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KilnError as err:
        sys.exit(f"error: {err}")
