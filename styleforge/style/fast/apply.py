"""Stylizing images, folders and videos with a trained style network (one forward pass each)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import torch

from ...runtime import guard
from ...runtime.device import Runtime
from ...runtime.device import runtime as make_runtime
from ...runtime.errors import StyleforgeError, first_line
from ...runtime.guard import check_not_inputs
from ...runtime.io import (
    IMAGE_SUFFIXES,
    atomic_path,
    check_output_folder,
    check_writable,
    header_size,
    image_format,
    make_folder,
    no_empty_folder_left,
    open_rgb,
    pil_to_tensor,
    resize_long_side,
    save_image,
)
from ..color import original_colors as keep_colors
from .model import ARCHS, TransformerNet, load_model, resolve_model
from .universal import DEFAULT_WORK_SIZE, AnyStyle, UniversalStyler, WorkSized, build_styler, check_work_size

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


@dataclass
class ApplyProgress:
    """Reported with ``done=0`` when a stage starts, then as outputs are written."""

    done: int          # images (all image inputs together; skipped ones too) or frames (one video) done so far
    total: int | None  # None for videos whose frame count is unknown
    source: Path       # the input written last (the first one at done=0)
    stage: str         # "images" for the image inputs, the file name for a video


def apply_to_tensor(model: TransformerNet | UniversalStyler | WorkSized, images: torch.Tensor, rt: Runtime,
                    original_colors: bool = False) -> torch.Tensor:
    """Stylize a (B, 3, H, W) batch in [0, 1]; returns float32 [0, 1] on the CPU.

    ``model``: on the device; a trained network as :meth:`Runtime.for_inference` makes it.
    """
    with torch.inference_mode(), rt.inference(model):
        out = model(rt.to(images, non_blocking=True)).float().clamp_(0, 1).cpu()
    if original_colors:
        out = keep_colors(out, images.float())
    return out


@dataclass
class _Job:
    source: Path
    target: Path
    video: bool


def plan(inputs: Iterable[str | os.PathLike], output: str | os.PathLike,
         others: Mapping[str, str | os.PathLike] | None = None) -> list[_Job]:
    """Map inputs to output paths; folders are mirrored into ``output``.

    One image (or video) input and an ``output`` with an image (video) suffix: that file.
    Otherwise ``output`` is a folder (created if its parent exists; the mirrored folders inside it
    are made as their first picture is written). ``others``: the run's other input files (label ->
    path: style images, weights), which no output may be either.
    """
    others = dict(others or {})
    sources = [Path(p) for p in inputs]
    if not sources:
        raise StyleforgeError("give at least one input image, folder or video")
    for p in sources:
        if not p.exists():
            raise StyleforgeError(f"input {str(p)!r} does not exist")
    out = Path(output)
    single = len(sources) == 1 and sources[0].is_file()
    if single and out.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES and not out.is_dir():
        src = sources[0]
        is_video = src.suffix.lower() in VIDEO_SUFFIXES
        # Videos are written as MP4 whatever the suffix, so a video output must be named .mp4.
        if is_video != (out.suffix.lower() in VIDEO_SUFFIXES) or (is_video and out.suffix.lower() != ".mp4"):
            raise StyleforgeError(f"-o {out}: {'a video' if is_video else 'an image'} input needs "
                                  f"{'a video (.mp4)' if is_video else 'an image (.png, .jpg)'} output")
        if not is_video:
            image_format(out)
        check_writable(out)
        check_not_inputs({"-o": out}, {"the input": src, **others})
        return [_Job(src, out, is_video)]
    if single and out.suffix and not out.exists():  # e.g. a typo (.pgn): not taken for a new folder's name
        raise StyleforgeError(f"-o {out}: {out.suffix} is not an image or video format styleforge writes (.png, "
                              ".jpg, .mp4, ...): give one of those, or a folder that exists")
    check_not_inputs({"-o": out}, {**{f"the input {p}": p for p in sources}, **others})  # e.g. the model file
    if out.exists() and not out.is_dir():
        raise StyleforgeError(f"-o {out} is a file but the inputs need an output folder")
    for src in (p for p in sources if p.is_dir()):
        if out.resolve().is_relative_to(src.resolve()):  # the pictures would join the photos a later run reads
            raise StyleforgeError(f"-o {out} is inside the input folder {src}: choose an output folder outside it")
    if not out.exists() and out.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        what = "a folder input needs" if len(sources) == 1 else f"{len(sources)} inputs need"
        raise StyleforgeError(f"-o {out} names a file, but {what} an output folder: give a folder, "
                              f"e.g. -o {out.with_suffix('')}")
    jobs: list[_Job] = []
    for src in sources:
        if src.is_dir():
            files = sorted(f for f in src.rglob("*") if f.is_file()
                           and f.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
            if not files:
                raise StyleforgeError(f"input folder {str(src)!r} holds no images or videos")
            jobs += [_Job(f, out / src.name / f.relative_to(src), f.suffix.lower() in VIDEO_SUFFIXES)
                     for f in files]
        else:
            jobs.append(_Job(src, out / src.name, src.suffix.lower() in VIDEO_SUFFIXES))
    for job in jobs:
        if not job.video and job.target.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif",
                                                                 ".tiff"):
            job.target = job.target.with_suffix(".png")  # e.g. .gif/.ppm inputs
        if job.video:
            job.target = job.target.with_suffix(".mp4")
    # Never over an input (``-o photos/`` with ``photos/``'s own files among the inputs), and
    # never two inputs to one output (``a.gif`` and ``a.png`` both become ``a.png``).
    check_not_inputs({f"the output of {j.source}": j.target for j in jobs},
                     {**{f"the input {j.source}": j.source for j in jobs}, **others})
    if not out.parent.exists():
        raise StyleforgeError(f"output folder {out.parent} does not exist: create it first")
    make_folder(out)
    for folder in sorted({j.target.parent for j in jobs}):
        check_output_folder(folder)  # made when their first picture is written; a clash is refused now
    return jobs


def stylize_files(model: str | os.PathLike | None, inputs: Iterable[str | os.PathLike], output: str | os.PathLike,
                  size: int | None = None, original_colors: bool = False, batch_size: int = 4,
                  device: str = "auto", precision: str = "auto",
                  callback: Callable[[ApplyProgress], None] | None = None,
                  any_style: AnyStyle | None = None, work_size: int | None = DEFAULT_WORK_SIZE) -> list[Path]:
    """Stylize image files, folders (mirrored into ``output``) and videos; returns written paths.

    The style comes from ``model`` (a trained network) or ``any_style`` (style images
    through the universal decoders), exactly one of them.
    ``size``: long side of the outputs (default: the input's own size).
    ``work_size``: long side to stylize at; larger pictures get the result scaled up.
    An image that cannot be read is skipped and the others written; then a StyleforgeError says how many
    were skipped and names the first.
    """
    if (model is None) == (any_style is None):
        raise StyleforgeError("give a MODEL or --style-image, not both" if model is not None
                              else "give a MODEL (a trained style) or --style-image PAINTING")
    if size is not None and size < 4:
        raise StyleforgeError(f"--size must be at least 4, got {size}")
    if batch_size < 1:
        raise StyleforgeError(f"--batch-size must be positive, got {batch_size}")
    check_work_size(work_size)  # before plan() creates an output folder
    with no_empty_folder_left(output):
        jobs = plan(inputs, output, _other_inputs(model, any_style))
        return _stylize_jobs(jobs, model, size, original_colors, batch_size, device, precision, callback,
                             any_style, work_size)


def _other_inputs(model: str | os.PathLike | None, any_style: AnyStyle | None) -> dict[str, str | os.PathLike]:
    """The files a run reads besides its photos: the model file, or the style images and weights."""
    if any_style is None:
        return {"the model file": model} if model is not None and Path(model).is_file() else {}
    weights = {"the --weights file": any_style.weights} if any_style.weights else {}
    return {**{f"the style image {p}": p for p in any_style.style_images}, **weights}


def _stylize_jobs(jobs: list[_Job], model: str | os.PathLike | None, size: int | None, original_colors: bool,
                  batch_size: int, device: str, precision: str, callback: Callable[[ApplyProgress], None] | None,
                  any_style: AnyStyle | None, work_size: int | None) -> list[Path]:
    """:func:`stylize_files` after its checks and plan. An image that cannot be read is skipped and the
    others are written; then one error says how many were skipped and names the first."""
    if any(j.video for j in jobs):
        _require_av()
    rt = make_runtime(device, precision)
    net: TransformerNet | UniversalStyler | WorkSized
    if any_style is None:
        assert model is not None  # exactly one of model and any_style (checked above)
        trained = load_model(resolve_model(model))[0]
        per_pixel = guard.transformer_bytes_per_pixel(ARCHS[trained.arch].channels[0])
        trained = rt.for_inference(trained)
        net = WorkSized(trained, work_size) if work_size else trained
    else:
        net, per_pixel = build_styler(any_style, work_size), guard.VGG_BYTES_PER_PIXEL
    _check_memory(jobs, size, batch_size, per_pixel, rt, work_size)
    net = rt.to(net)
    written: list[Path] = []
    skipped: list[str] = []
    images = [j for j in jobs if not j.video]
    for group in _same_size_groups(images, size, batch_size, skipped):
        if callback and not written:  # the stage starts once its first images have been read
            callback(ApplyProgress(0, len(images), images[0].source, "images"))
        batch = torch.cat([x for _, x in group])
        out = apply_to_tensor(net, batch, rt, original_colors)
        for (job, _), y in zip(group, out):
            make_folder(job.target.parent)
            save_image(y.unsqueeze(0), job.target)
            written.append(job.target)
            if callback:  # skipped images count as done, so the bar ends at N of N
                callback(ApplyProgress(len(written) + len(skipped), len(images), job.source, "images"))
    if callback and written and skipped:  # the last images were skipped: the bar still ends at N of N
        callback(ApplyProgress(len(images), len(images), images[-1].source, "images"))
    for job in (j for j in jobs if j.video):
        make_folder(job.target.parent)
        stylize_video(net, job.source, job.target, rt, size, original_colors, batch_size, callback)
        written.append(job.target)
    if skipped:
        if len(images) == 1:
            raise StyleforgeError(skipped[0])
        done = f"{len(written)} output{'' if len(written) == 1 else 's'} written"
        first = "" if len(skipped) == 1 else "the first: "
        raise StyleforgeError(f"skipped {len(skipped)} of {len(images)} images that could not be read ({done}); "
                              f"{first}{skipped[0]}")
    return written


def _check_memory(jobs: list[_Job], size: int | None, batch_size: int, per_pixel: int, rt: Runtime,
                  work_size: int | None = None) -> None:
    """Refuse before decoding anything when the largest image cannot be stylized in memory.

    ``per_pixel`` is the network's cost per pixel it works on: the output's, or with
    ``work_size`` the working size's, plus the cost of scaling up to the output.
    """
    sizes = [s for s in (header_size(j.source) for j in jobs if not j.video) if s is not None]
    if not sizes:
        return

    def need(s: tuple[int, int]) -> int:
        out = guard.scaled_pixels(s, size)
        if work_size is None or (size or max(s)) <= work_size:  # no scaling up
            return out * per_pixel
        return guard.scaled_pixels(s, work_size) * per_pixel + out * guard.UPSCALE_BYTES_PER_PIXEL

    largest = max(sizes, key=need)
    hint = "use a smaller --size (or --batch-size)" + (", or --work-size" if work_size is None else "")
    guard.check_memory(need(largest) * min(batch_size, len(sizes)),
                       f"stylizing a {guard.scaled_pixels(largest, size) / 1e6:.0f}-megapixel image", hint, rt.device)


def _same_size_groups(jobs: list[_Job], size: int | None, batch_size: int, skipped: list[str]) -> Iterator[list]:
    """Consecutive images of equal size, decoded, in batches of at most ``batch_size``; the one-line error of
    each image that cannot be read goes to ``skipped``."""
    group: list = []
    for job in jobs:
        try:
            img = open_rgb(job.source)
        except StyleforgeError as exc:
            skipped.append(str(exc))
            continue
        x = pil_to_tensor(resize_long_side(img, size) if size else img)
        if group and (group[0][1].shape != x.shape or len(group) == batch_size):
            yield group
            group = []
        group.append((job, x))
    if group:
        yield group


def _require_av():
    try:
        import av  # noqa: F401
    except ImportError:
        raise StyleforgeError("video needs PyAV: pip install 'styleforge[video]' (or pip install av)") from None
    return av


def stylize_video(net: TransformerNet | UniversalStyler | WorkSized, source: Path, target: Path, rt: Runtime,
                  size: int | None = None, original_colors: bool = False, batch_size: int = 4,
                  callback: Callable[[ApplyProgress], None] | None = None) -> Path:
    """Stylize every frame of a video and encode H.264 (yuv420p) at the same frame rate.

    The audio track is not carried over. The file appears only when complete.
    """
    av = _require_av()
    try:
        src = av.open(str(source))
        stream = src.streams.video[0]
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        # PyAV's message carries FFmpeg's error number and the path: keep its reason alone.
        reason = getattr(exc, "strerror", None) or ("it holds no video stream" if isinstance(exc, IndexError)
                                                    else first_line(exc))
        raise StyleforgeError(f"cannot read video {source} ({str(reason).rstrip('.').lower()}): give a video file "
                              "FFmpeg can decode (mp4, mov, mkv, webm)") from None
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    total = stream.frames or None
    done = 0
    if callback:
        callback(ApplyProgress(done, total, source, source.name))
    try:
        with atomic_path(target) as tmp, av.open(str(tmp), mode="w", format="mp4") as dst:
            out_stream = None
            frames: list[torch.Tensor] = []

            def flush() -> None:
                nonlocal out_stream, done
                batch = torch.cat(frames)
                frames.clear()
                ys = apply_to_tensor(net, batch, rt, original_colors)
                if out_stream is None:
                    out_stream = dst.add_stream(_codec(av), rate=rate)
                    # yuv420p needs even sides.
                    out_stream.width, out_stream.height = ys.shape[-1] // 2 * 2, ys.shape[-2] // 2 * 2
                    out_stream.pix_fmt = "yuv420p"
                for y in ys:
                    arr = (y[:, :out_stream.height, :out_stream.width].permute(1, 2, 0) * 255 + 0.5) \
                        .to(torch.uint8).numpy()
                    for packet in out_stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                        dst.mux(packet)
                    done += 1
                if callback:
                    callback(ApplyProgress(done, total, source, source.name))

            for frame in src.decode(stream):
                img = frame.to_image()
                x = pil_to_tensor(resize_long_side(img, size) if size else img)
                if frames and frames[0].shape != x.shape:
                    flush()
                frames.append(x)
                if len(frames) == batch_size:
                    flush()
            if frames:
                flush()
            if out_stream is None:
                raise StyleforgeError(f"video {source} has no frames")
            for packet in out_stream.encode():
                dst.mux(packet)
    except av.error.FFmpegError as exc:
        raise StyleforgeError(f"cannot decode video {source} ({first_line(exc)}): give a video file "
                              "FFmpeg can decode (mp4, mov, mkv, webm)") from None
    finally:
        src.close()
    return target


def _codec(av) -> str:
    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001  (codec missing from this FFmpeg build)
            continue
    raise StyleforgeError("this FFmpeg build has no H.264 or MPEG-4 encoder")

