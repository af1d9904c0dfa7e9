"""Reconstruction quality of the any-style decoders: encode -> decode on BSDS test photos, per level.

    python bench/decoders.py --decoders weights --count 20 [--sheet /tmp/recon.png]

For each level with a decoder: PSNR (dB, the [0, 1] image clamped) of the decoded photo
against the photo, and the relative feature (content) error at that level, averaged over
the first ``--count`` photos of ``bsds500/test`` (sorted by name) at their own size.
``--sheet`` also writes the first photo and its reconstructions side by side, to look at.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import record, require_shared, table

from styleforge.backbone import VGGFeatures
from styleforge.runtime.io import load_image, save_image
from styleforge.style.fast.decoders import find_decoders, load_decoder
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
    args = ap.parse_args()
    shared = require_shared()
    torch.set_num_threads(args.threads)
    decoders = {lv: load_decoder(p) for lv, p in find_decoders(args.decoders).items()}
    encoder = VGGFeatures(list(decoders))
    photos = sorted((shared / "data" / "bsds500" / "test").glob("*.jpg"))[: args.count]
    sums = {lv: [0.0, 0.0] for lv in decoders}
    start = time.perf_counter()
    first: list[torch.Tensor] = []
    with torch.inference_mode():
        for i, path in enumerate(photos):
            x = load_image(path)
            h, w = x.shape[-2:]
            x = x[..., : h // 16 * 16, : w // 16 * 16]  # whole strides: the decoded image has the photo's size
            feats = encoder(x)
            for lv, dec in decoders.items():
                y = dec(feats[lv])
                sums[lv][0] += psnr(y, x)
                sums[lv][1] += image_content_loss(encoder(y.clamp(0, 1), [lv])[lv], feats[lv]).item()
                if i == 0:
                    first.append(y.clamp(0, 1))
            if i == 0:
                first.insert(0, x)
    rows = [{"level": lv, "psnr_db": round(s[0] / len(photos), 2), "content_loss": round(s[1] / len(photos), 4),
             "parameters": sum(p.numel() for p in decoders[lv].parameters())} for lv, s in sums.items()]
    print(table(rows, ["level", "psnr_db", "content_loss", "parameters"]))
    if args.sheet:
        save_image(torch.cat(first, dim=-1), args.sheet)
    print(record("decoders", {"photos": len(photos), "seconds": round(time.perf_counter() - start, 1),
                              "decoders": {lv: str(p) for lv, p in find_decoders(args.decoders).items()},
                              "rows": rows}))


if __name__ == "__main__":
    main()
