"""Speed at equal quality: default ``stylize`` against the classic Gatys recipe, same run.

Baseline (written here, not styleforge's loop): single scale, fp32, L-BFGS for 300
iterations from the content image, VGG19 content relu4_2 / style relu1_1..relu5_1, the
same weights, images and loss definition (styleforge's PerceptualLoss with the default
weights). Both outputs are scored by the same fp32 loss at the final resolution.

    python bench/stylize_speed.py                       # the figure for the issue (~15 min)
    python bench/stylize_speed.py --size 256 --baseline-steps 100   # quick look

``--set key=value`` overrides a StylizeConfig field of the candidate (for tuning);
``--baseline-json FILE`` reuses a saved baseline run (tuning only: the reported ratio
must come from one run).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import record, require_shared, table

from styleforge.backbone import VGGFeatures
from styleforge.runtime.device import Runtime
from styleforge.runtime.io import load_image
from styleforge.style.gatys import StylizeConfig, stylize
from styleforge.style.perceptual import PerceptualLoss


def objective_at(extractor, content_path, style_path, size, cfg: StylizeConfig, rt: Runtime) -> PerceptualLoss:
    content = load_image(content_path, size)
    style = load_image(style_path, size)
    cw, sw = cfg.weights_pair()
    return PerceptualLoss(extractor, style, cfg.content_layers, cfg.style_layers, content=content,
                          content_weight=cw, style_weight=sw, tv_weight=cfg.tv_weight, rt=rt)


def score(objective: PerceptualLoss, image: torch.Tensor) -> dict:
    with torch.no_grad():
        parts = objective(image.clamp(0, 1))
    return {k: float(v) for k, v in parts.items()}


def plain_gram(f: torch.Tensor) -> torch.Tensor:
    b, c, h, w = f.shape
    f = f.reshape(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (h * w)


class ClassicObjective:
    """The same loss as styleforge's, written the plain way (fp32, autograd Gram)."""

    def __init__(self, extractor, content: torch.Tensor, style: torch.Tensor, cfg: StylizeConfig) -> None:
        self.extractor = extractor
        self.cw, self.sw = cfg.weights_pair()
        self.tvw = cfg.tv_weight
        norm = lambda d: {k: v / sum(d.values()) for k, v in d.items()}
        self.cl, self.sl = norm(dict(cfg.content_layers)), norm(dict(cfg.style_layers))
        with torch.no_grad():
            fc, fs = extractor(content), extractor(style)
            self.ct = {n: fc[n] for n in self.cl}
            self.st = {n: plain_gram(fs[n]) for n in self.sl}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        f = self.extractor(x)
        content = sum(w * (f[n] - self.ct[n]).pow(2).mean() / self.ct[n].pow(2).mean() for n, w in self.cl.items())
        style = sum(w * (plain_gram(f[n]) - self.st[n]).pow(2).mean() / self.st[n].pow(2).mean()
                    for n, w in self.sl.items())
        tv = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean() + (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean()
        return self.cw * content + self.sw * style + self.tvw * tv


def classic_baseline(objective: ClassicObjective, content: torch.Tensor, steps: int) -> tuple[torch.Tensor, list]:
    """The classic recipe: one L-BFGS run of ``steps`` iterations on the pixels, fp32, with the
    pixels clamped to [0, 1] before each evaluation (as in the PyTorch tutorial, so the final
    clamp costs nothing)."""
    x = content.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=steps, max_eval=steps, history_size=100,
                            tolerance_grad=0.0, tolerance_change=0.0)
    curve, start = [], time.perf_counter()

    def closure():
        with torch.no_grad():
            x.clamp_(0, 1)
        opt.zero_grad()
        total = objective(x)
        total.backward()
        curve.append((time.perf_counter() - start, total.item()))
        return total

    opt.step(closure)
    return x.detach(), curve


def main() -> None:
    shared = require_shared()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--content", default=str(shared / "data/content/tubingen.jpg"))
    ap.add_argument("--style", default=str(shared / "data/styles/starry_night.jpg"))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--baseline-steps", type=int, default=300)
    ap.add_argument("--baseline-json", help="reuse a saved baseline (tuning only)")
    ap.add_argument("--save-baseline", help="write the baseline run to this JSON file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a StylizeConfig field of the candidate (Python literal)")
    ap.add_argument("--baseline-only", action="store_true", help="stop after the baseline")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            overrides[key] = eval(value, {}, {})  # benchmark-only convenience for literals
        except Exception:
            overrides[key] = value
    cfg = StylizeConfig(size=args.size, device="cpu", **overrides)
    extractor = VGGFeatures(list(cfg.content_layers) + list(cfg.style_layers), pooling=cfg.pooling)
    fp32 = Runtime(torch.device("cpu"))
    judge = objective_at(extractor, args.content, args.style, args.size, cfg, fp32)
    content = load_image(args.content, args.size)

    if args.baseline_json:
        base = json.load(open(args.baseline_json))
    else:
        classic = ClassicObjective(extractor, content, load_image(args.style, args.size), cfg)
        t0 = time.perf_counter()
        base_img, curve = classic_baseline(classic, content, args.baseline_steps)
        base = {"seconds": time.perf_counter() - t0, "loss": score(judge, base_img), "curve": curve}
        if args.save_baseline:
            json.dump(base, open(args.save_baseline, "w"))
    print(f"baseline: {base['seconds']:.1f} s, loss {base['loss']['total']:.4f}", flush=True)
    if args.baseline_only:
        return

    t0 = time.perf_counter()
    result = stylize(args.content, args.style, cfg, extractor=extractor)
    cand_seconds = time.perf_counter() - t0
    cand_loss = score(judge, result.image)
    target = base["loss"]["total"]
    # First moment the candidate's final-scale loss (as logged during its run) reached the target.
    final = [h for h in result.history if h["scale"] == len(result.config["resolved"]["scales"]) - 1]
    reach = next((h["seconds"] for h in final if h["total"] <= target), None)

    rows = [
        {"run": f"classic: 1 scale, fp32, L-BFGS {args.baseline_steps}", "seconds": f"{base['seconds']:.1f}",
         "final loss": f"{target:.4f}", "content": f"{base['loss']['content']:.4f}",
         "style": f"{base['loss']['style']:.4f}"},
        {"run": "styleforge default " + " ".join(f"{k}={v}" for k, v in overrides.items()),
         "seconds": f"{cand_seconds:.1f}", "final loss": f"{cand_loss['total']:.4f}",
         "content": f"{cand_loss['content']:.4f}", "style": f"{cand_loss['style']:.4f}"},
    ]
    print(table(rows, ["run", "seconds", "final loss", "content", "style"]))
    ratio = base["seconds"] / cand_seconds
    ok = cand_loss["total"] <= target
    print(f"time ratio baseline/default = {ratio:.2f}x; default loss {'<=' if ok else '>'} baseline loss; "
          f"default's logged loss first reached the baseline's at "
          f"{'%.1f s' % reach if reach is not None else 'never'}; "
          f"scales {result.config['resolved']['scales']}, steps {result.config['resolved']['steps']}, "
          f"precision {result.config['resolved']['precision']}")
    if not args.no_record and not args.baseline_json:
        path = record("stylize_speed", {
            "size": args.size, "content": args.content, "style": args.style,
            "baseline": {k: base[k] for k in ("seconds", "loss")},
            "default": {"seconds": cand_seconds, "loss": cand_loss, "reached_baseline_at": reach,
                        "resolved": result.config["resolved"], "overrides": overrides},
            "ratio": ratio, "default_loss_not_worse": ok})
        print(f"recorded {path}")


if __name__ == "__main__":
    main()
