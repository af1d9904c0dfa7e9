"""Quality of the shipped fast-style models against `stylize` for the same style.

On the first --count images of ../shared/data/bsds500/test at --size px (long side), each
shipped model's output and the default `stylize` output for the same style image are
scored with the same objective: `stylize`'s default content (relu4_2) and style
(relu1_1..relu5_1) losses, relative to their targets, fp32, style image at the output size.
Reported: the mean content and style loss of each method and its time per image.

    python bench/fast_quality.py [--count 20] [--size 256] [--styles great_wave,starry_night] [--start 0]

``--start N`` skips the first N photos, so a long run can be split (equal-sized parts
average to the mean of the whole); per-photo scores are recorded too.
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
from styleforge.device import runtime  # noqa: E402
from styleforge.fast.apply import apply_to_tensor  # noqa: E402
from styleforge.fast.data import list_images  # noqa: E402
from styleforge.fast.model import available_models, load_model  # noqa: E402
from styleforge.io import open_rgb, pil_to_tensor, resize_long_side  # noqa: E402
from styleforge.perceptual import PerceptualLoss  # noqa: E402
from styleforge.transfer import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--start", type=int, default=0, help="skip the first N photos (default: %(default)s)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--styles", help="comma-separated subset of the shipped models (default: all)")
    args = ap.parse_args()
    shared = require_shared()
    files = list_images(shared / "data" / "bsds500" / "test")[0][args.start: args.start + args.count]
    fp32 = runtime("cpu", "fp32")
    rt = runtime("cpu", "auto")
    extractor = VGGFeatures(list(DEFAULT_CONTENT_LAYERS) + list(DEFAULT_STYLE_LAYERS))
    rows, per_photo = [], {}
    wanted = set(args.styles.split(",")) if args.styles else None
    for name, path in available_models().items():
        if wanted is not None and name not in wanted:
            continue
        net, record_ = load_model(path)
        net = rt.to(net)
        style_path = shared / "data" / "styles" / f"{name}.jpg"
        style = pil_to_tensor(resize_long_side(open_rgb(style_path), args.size))
        scores = {"fast": [], "stylize": []}
        secs = {"fast": [], "stylize": []}
        for i, f in enumerate(files):
            content = pil_to_tensor(resize_long_side(open_rgb(f), args.size))
            objective = PerceptualLoss(extractor, style, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS,
                                       content=content, content_weight=1.0, style_weight=1.0, tv_weight=0.0,
                                       rt=fp32)
            t = time.perf_counter()
            fast_out = apply_to_tensor(net, content, rt)
            secs["fast"].append(time.perf_counter() - t)
            t = time.perf_counter()
            slow_out = stylize(content, style, StylizeConfig(size=args.size, seed=0), extractor=extractor).image
            secs["stylize"].append(time.perf_counter() - t)
            for key, out in (("fast", fast_out), ("stylize", slow_out)):
                with torch.no_grad():
                    parts = objective(out)
                scores[key].append((float(parts["content"]), float(parts["style"])))
            print(f"{name} {i + 1}/{len(files)} fast {scores['fast'][-1]} stylize {scores['stylize'][-1]}",
                  flush=True)
        per_photo[name] = {"photos": [f.name for f in files], **scores}
        for key in ("fast", "stylize"):
            rows.append({"style": name, "method": f"fast ({record_['arch']})" if key == "fast" else "stylize default",
                         "content loss": f"{statistics.mean(c for c, _ in scores[key]):.4f}",
                         "style loss": f"{statistics.mean(s for _, s in scores[key]):.5f}",
                         "s/image": f"{statistics.mean(secs[key]):.3f}"})
    print(table(rows, ["style", "method", "content loss", "style loss", "s/image"]))
    data = {'start': args.start, 'count': len(files), 'size': args.size, 'rows': rows, 'per_photo': per_photo}
    print(f"recorded {record('fast_quality', data)}")


if __name__ == "__main__":
    main()
