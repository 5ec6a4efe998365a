"""Evenly spaced frames from a video file, through PyAV (FFmpeg's libraries, no ffmpeg binary needed).

``ns-process-data video`` shells out to the ``ffmpeg`` program, which is often missing; PyAV ships the
decoders in its wheel. Frames are decoded in order (seeking is unreliable on many phone videos) and
only the wanted ones are converted and saved, upright (the container's display rotation applied).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from PIL import Image

from da3_nerfstudio.errors import InputError


def frame_indices(total: int, target: int) -> list[int]:
    """``target`` frame indices spread evenly over ``total`` frames, first and last included."""
    if total <= 0 or target <= 0:
        return []
    if target >= total:
        return list(range(total))
    return sorted({int(i) for i in np.linspace(0, total - 1, target).round()})


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise InputError(f"{path}: no such video file")
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable video ({' '.join(str(err).split())})") from None


def _count_frames(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """Frames in the stream: the header's count, else the number of demuxed packets (no decoding)."""
    if stream.frames > 0:
        return int(stream.frames)
    count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    container.seek(0)
    return count


def probe_video(video: str | Path) -> tuple[int, int, int]:
    """(width, height, frame count) of the first video stream from its headers (and packets where the header
    has no count), without decoding a frame, so options can be checked before any long computation.
    Width and height are as stored (before the display rotation)."""
    video = Path(video)
    with _open(video) as container:
        if not container.streams.video:
            raise InputError(f"{video}: no video stream")
        stream = container.streams.video[0]
        try:
            count = _count_frames(container, stream)
        except av.FFmpegError as err:
            raise InputError(f"{video}: cannot read video ({' '.join(str(err).split())})") from None
        width, height = stream.codec_context.width, stream.codec_context.height
    if count <= 0 or width <= 0 or height <= 0:
        raise InputError(f"{video}: the video has no frames")
    return width, height, count


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """RGB pixels with the display matrix's rotation (counter-clockwise degrees) applied."""
    rgb = frame.to_ndarray(format="rgb24")
    quarter_turns = round(getattr(frame, "rotation", 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb


def extract_frames(
    video: str | Path,
    output_dir: str | Path,
    num_frames_target: int,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Save about ``num_frames_target`` evenly spaced frames as ``frame_00001.png``... in ``output_dir``.

    Returns the written paths in time order. Every failure to read the video is a one-line
    :class:`InputError`; ``progress(done, total)`` is called per saved frame.
    """
    video, output_dir = Path(video), Path(output_dir)
    if num_frames_target < 2:
        raise InputError(f"num_frames_target must be at least 2, got {num_frames_target}")
    container = _open(video)
    with container:
        if not container.streams.video:
            raise InputError(f"{video}: no video stream")
        stream = container.streams.video[0]
        try:
            wanted = frame_indices(_count_frames(container, stream), num_frames_target)
            if not wanted:
                raise InputError(f"{video}: the video has no frames")
            stream.thread_type = "AUTO"
            output_dir.mkdir(parents=True, exist_ok=True)
            todo, written = set(wanted), []

            def save(frame: av.VideoFrame) -> None:
                path = output_dir / f"frame_{len(written) + 1:05d}.png"
                try:
                    Image.fromarray(_upright(frame)).save(path, compress_level=1)
                except OSError as err:  # disk full, quota: one line naming where
                    raise InputError(f"{path}: cannot write the frame ({err.strerror or err})") from None
                written.append(path)
                if progress is not None:
                    progress(len(written), len(wanted))

            last = None
            for index, frame in enumerate(container.decode(stream)):
                last = None if index in todo else frame
                if index in todo:
                    save(frame)
                    if len(written) == len(wanted):
                        break
            # Headers may count a frame or two the decoder never yields (edit lists): end on the real last one.
            if last is not None and len(written) < len(wanted):
                save(last)
        except av.FFmpegError as err:
            raise InputError(f"{video}: cannot decode video ({' '.join(str(err).split())})") from None
    if len(written) < 2:
        raise InputError(f"{video}: only {len(written)} decodable frame(s); need at least 2")
    return written
