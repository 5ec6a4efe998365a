"""``da3-process-data``: photos, a video or saved predictions -> a dataset for nerfstudio, COLMAP, Blender.

The command line of :mod:`da3_nerfstudio.process` (the library entry point), plus ``batch`` on Ray.

Pose-free: Depth Anything 3 predicts the cameras and depth, so no COLMAP run is needed. The output
folder holds ``transforms.json`` (nerfstudio-data), ``colmap/sparse/0``, ``sparse_pc.ply``,
``splat_init.ply``, depth and confidence maps and ``da3/`` (predictions, previews, manifest); see
:mod:`da3_nerfstudio.dataset`. Depth files are float32 in the units of the poses: nerfstudio's own
``nerfstudio-data`` parser needs ``--depth-unit-scale-factor 1.0`` (``ns-train da3-splat`` sets it).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from typing import Annotated

import tyro
from rich.logging import RichHandler

from da3_nerfstudio.errors import DA3Error
from da3_nerfstudio.process import ImagesCommand, PredictionsCommand, VideoCommand, console

DESCRIPTION = (
    "Pose-free dataset preprocessing with Depth Anything 3: cameras, depth, points and initial Gaussians for "
    "nerfstudio (transforms.json), COLMAP tools (colmap/sparse/0) and Blender. Depth files are float32 in the "
    "units of the poses: nerfstudio's own parser needs `nerfstudio-data --depth-unit-scale-factor 1.0` "
    "(ns-train da3-splat sets it)."
)


Command = (
    Annotated[ImagesCommand, tyro.conf.subcommand("images")]
    | Annotated[VideoCommand, tyro.conf.subcommand("video")]
    | Annotated[PredictionsCommand, tyro.conf.subcommand("predictions")]
)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run, and return the exit code."""
    from da3_nerfstudio.cli.batch import BatchCommand  # batch.py builds on the commands above

    commands = Command | Annotated[BatchCommand, tyro.conf.subcommand("batch")]
    command = tyro.cli(commands, args=argv, prog="da3-process-data", description=DESCRIPTION)
    # Rich shows the level itself: the record is formatted as its message only (the default format repeated
    # "WARNING:da3_nerfstudio.preprocess:" after Rich's own "WARNING").
    handler = RichHandler(console=console, show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("da3_nerfstudio").setLevel(logging.INFO)
    # SIGTERM (a Blender cancel, `kill`, a batch scheduler) unwinds like Ctrl-C, so the staging folders are removed.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        command.main()
    except DA3Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # the file system refused (disk full, permissions) outside the dataset writer
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the output folder was left as it was", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def entrypoint() -> None:
    """Console script ``da3-process-data``."""
    sys.exit(main())
