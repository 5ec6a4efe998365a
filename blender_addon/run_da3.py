"""The Run DA3 operators and the timer that polls their jobs: the Blender side of :mod:`process_job`."""

from __future__ import annotations

import shlex
from pathlib import Path

import bpy

from . import importers
from .errors import InputError
from .process_job import ProcessJob, process_command, resolve_python

# Running jobs by scene name: subprocess handles cannot live in Blender properties.
JOBS: dict[str, ProcessJob] = {}
POLL_SECONDS = 0.5


def _preferences(context: bpy.types.Context) -> bpy.types.AddonPreferences | None:
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def _redraw() -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def poll_jobs() -> float | None:
    """Timer callback: refresh progress, import finished results, report failures in the panel."""
    for scene_name, job in list(JOBS.items()):
        scene = bpy.data.scenes.get(scene_name)
        code = job.poll()
        if scene is None:
            job.cancel()
            del JOBS[scene_name]
            continue
        state = scene.da3
        if code is None:
            state.progress = job.progress or 0.0
            state.status = job.last_line[-200:]
            continue
        del JOBS[scene_name]
        state.running = False
        if job.cancelled:
            state.status, state.failed = "Cancelled", False
        elif code != 0:
            state.status, state.failed = f"da3-process-data failed: {job.error_summary()}"[:400], True
        else:
            try:
                result = importers.import_dataset(scene, job.output_dir)
                state.status, state.failed, state.progress = f"Imported {result.root.name}", False, 1.0
            except InputError as exc:
                state.status, state.failed = f"Finished, but the result could not be imported: {exc}", True
    _redraw()
    return POLL_SECONDS if JOBS else None


def _extra_args(text: str) -> list[str]:
    """The preference's extra arguments, split like a shell would; a syntax error names the preference."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise InputError(f"Extra Arguments (add-on preferences): {exc} in {text!r}") from exc


class DA3_OT_run_process(bpy.types.Operator):
    """Run da3-process-data on the chosen images folder or video in the DA3 environment, then import it"""

    bl_idname = "da3.run_process"
    bl_label = "Run DA3"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if context.scene.name in JOBS:
            cls.poll_message_set("DA3 is already running for this scene")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        state = context.scene.da3
        prefs = _preferences(context)
        try:
            python = resolve_python(prefs.python_path if prefs is not None else "")
            if not state.output_dir.strip():
                raise InputError("choose an output folder for DA3")
            output = Path(bpy.path.abspath(state.output_dir))
            extra = _extra_args(prefs.extra_args if prefs is not None else "")
            argv = process_command(python, bpy.path.abspath(state.input_path), output, extra)
            JOBS[context.scene.name] = ProcessJob(argv, output)
        except (InputError, OSError, ValueError) as exc:
            state.status, state.failed = str(exc), True
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        state.running, state.failed, state.progress, state.status = True, False, 0.0, "Starting DA3..."
        if not bpy.app.timers.is_registered(poll_jobs):
            bpy.app.timers.register(poll_jobs, first_interval=POLL_SECONDS)
        return {"FINISHED"}


class DA3_OT_cancel_process(bpy.types.Operator):
    """Stop the running DA3 process"""

    bl_idname = "da3.cancel_process"
    bl_label = "Cancel DA3"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene.name in JOBS

    def execute(self, context: bpy.types.Context) -> set[str]:
        JOBS[context.scene.name].cancel()
        poll_jobs()
        return {"FINISHED"}


CLASSES = (DA3_OT_run_process, DA3_OT_cancel_process)


def stop_all_jobs() -> None:
    """Unregister must not leave processes or timers behind."""
    for job in JOBS.values():
        job.cancel()
    JOBS.clear()
    if bpy.app.timers.is_registered(poll_jobs):
        bpy.app.timers.unregister(poll_jobs)
