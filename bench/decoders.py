"""Reconstruction quality of the any-style decoders: encode -> decode on BSDS test photos, per level.

    python bench/decoders.py --decoders weights --count 20 [--sheet /tmp/recon.png]

For each level with a decoder, and for the hourglass decoder at ``--details`` (its skip
weight; the content error is at relu4_1): PSNR (dB, the [0, 1] image clamped) of the decoded
photo against the photo, and the relative feature (content) error at that level, averaged over
the first ``--count`` photos of ``bsds500/test`` (sorted by name) at their own size.
``--sheet`` also writes the first photo and its reconstructions side by side, to look at.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch
from common import record, require_shared, table

from styleforge.backbone import VGGFeatures
from styleforge.runtime.errors import StyleforgeError
from styleforge.runtime.io import load_image, save_image
from styleforge.style.fast.decoders import HourglassDecoder, find_decoders, find_hourglass, load_decoder
from styleforge.style.losses import image_content_loss


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.clamp(0, 1) - b).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decoders", help="folder of decoder-reluK_1.pth (default: the weights folders)")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sheet", type=Path)
    ap.add_argument("--details", default="1,0.5,0", help="the hourglass decoder's skip weights to measure")
    args = ap.parse_args()
    shared = require_shared()
    torch.set_num_threads(args.threads)
    hourglass_file = find_hourglass(args.decoders)
    try:
        files = {lv: str(p) for lv, p in find_decoders(args.decoders).items()}
    except StyleforgeError:
        if hourglass_file is None:
            raise
        files = {}  # a folder with the hourglass decoder alone
    decoders = {lv: load_decoder(p) for lv, p in files.items()}
    # name -> (level of the content error, decoder, fn(features by level) -> image)
    runs: dict[str, tuple[str, torch.nn.Module, Callable]] = {
        lv: (lv, dec, lambda f, dec=dec, lv=lv: dec(f[lv])) for lv, dec in decoders.items()}
    if hourglass_file is not None:
        files["hourglass"] = str(hourglass_file)
        hourglass = load_decoder(hourglass_file)
        assert isinstance(hourglass, HourglassDecoder)
        for d in (float(v) for v in args.details.split(",")):
            runs[f"hourglass, detail {d:g}"] = ("relu4_1", hourglass, lambda f, d=d: hourglass(f, d))
    encoder = VGGFeatures(sorted({*decoders, "relu2_1", "relu3_1", "relu4_1"}))
    photos = sorted((shared / "data" / "bsds500" / "test").glob("*.jpg"))[: args.count]
    sums = {name: [0.0, 0.0] for name in runs}
    start = time.perf_counter()
    first: list[torch.Tensor] = []
    with torch.inference_mode():
        for i, path in enumerate(photos):
            x = load_image(path)
            h, w = x.shape[-2:]
            x = x[..., : h // 16 * 16, : w // 16 * 16]  # whole strides: the decoded image has the photo's size
            feats = encoder(x)
            for name, (lv, _, fn) in runs.items():
                y = fn(feats)
                sums[name][0] += psnr(y, x)
                sums[name][1] += image_content_loss(encoder(y.clamp(0, 1), [lv])[lv], feats[lv]).item()
                if i == 0:
                    first.append(y.clamp(0, 1))
            if i == 0:
                first.insert(0, x)
    rows = [{"level": name, "psnr_db": round(s[0] / len(photos), 2), "content_loss": round(s[1] / len(photos), 4),
             "parameters": sum(p.numel() for p in runs[name][1].parameters())} for name, s in sums.items()]
    print(table(rows, ["level", "psnr_db", "content_loss", "parameters"]))
    if args.sheet:
        save_image(torch.cat(first, dim=-1), args.sheet)
    print(record("decoders", {"photos": len(photos), "seconds": round(time.perf_counter() - start, 1),
                              "decoders": files,
                              "rows": rows}))


if __name__ == "__main__":
    main()
