"""Fast-style training step: today's loss arithmetic against session 27's, in the same run.

Each row runs `fast train` through its library function (128 px crops of BSDS train, the main
process decoding, `--precision auto`) for --warmup + --steps steps and reports images/s over the
timed steps, twice: as the library is, and with session 27's arithmetic put back for the run
(the baseline): Gaussian blurs by a depthwise convolution with reflected padding
(``losses.blur_by_convolution``, today ``losses.gaussian_blur``'s path for large pictures only; at
crop sizes it takes two matrix products) and mid-ranks by two binary searches of every value in its
sorted row (written here; today ``losses.mid_ranks`` takes one sort and two running extrema). Both
give the same losses to float rounding (the tests check the two blurs and the ranks agree), so the
last column compares the two runs' mean total loss over the timed steps.
The painting's spread, which the palette and chroma losses now take once per run, is left as it
is in both rows (about 50 ms of a step before).

Recipes: `defaults` (every default, starry_night) and `udnie` (the shipped udnie's recipe: strength
0.6, hatching 20, detail 60, gradient 60, Laplacian 0, chroma 30, lr 1e-2, warm-up 100).

    python bench/fast_train_step.py [--steps 12] [--warmup 2] [--threads 1] [--recipes defaults,udnie]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, require_shared, table  # noqa: E402

from styleforge.style import losses  # noqa: E402
from styleforge.style.fast.train import FastTrainConfig, train_style  # noqa: E402

RECIPES = {
    "defaults": ("starry_night", {}),
    "udnie": ("udnie", dict(style_strength=0.6, hatching_weight=20.0, detail_weight=60.0, gradient_weight=60.0,
                            laplacian_weight=0.0, chroma_weight=30.0, lr=1e-2, warmup_steps=100)),
}


def searched_ranks(rows: torch.Tensor) -> torch.Tensor:
    """Session 27's mid-ranks: each value searched for in its sorted row, from the left and the right."""
    ordered = rows.sort(dim=1).values
    below = torch.searchsorted(ordered, rows, side="left")
    return (below + torch.searchsorted(ordered, rows, side="right")).to(rows.dtype) / 2


@contextlib.contextmanager
def session27_arithmetic():
    """The baseline: the library's blur and ranks swapped for session 27's for the duration."""
    saved = losses.gaussian_blur, losses.mid_ranks
    # session 27's gaussian_blur is today's path for large pictures, losses.blur_by_convolution
    losses.gaussian_blur, losses.mid_ranks = losses.blur_by_convolution, searched_ranks
    try:
        yield
    finally:
        losses.gaussian_blur, losses.mid_ranks = saved


def timed_run(recipe: str, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s over the timed steps, mean total loss over them) of one `fast train` run."""
    shared = require_shared()
    style, options = RECIPES[recipe]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = FastTrainConfig(style=str(shared / "data" / "styles" / f"{style}.jpg"),
                              data=[str(shared / "data" / "bsds500" / "train")], output=str(Path(tmp) / "m.pth"),
                              steps=warmup + steps, workers=0, **options)
        history = train_style(cfg).history
    seconds = history[-1]["seconds"] - history[warmup - 1]["seconds"]
    return steps * cfg.batch_size / seconds, statistics.mean(r["total"] for r in history[warmup:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    ap.add_argument("--recipes", default="defaults,udnie", help="comma-separated: " + ", ".join(RECIPES))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, ratios = [], {}
    for recipe in args.recipes.split(","):
        with session27_arithmetic():
            base_ips, base_loss = timed_run(recipe, args.steps, args.warmup)
        ips, loss = timed_run(recipe, args.steps, args.warmup)
        ratios[recipe] = round(ips / base_ips, 2)
        rows += [{"recipe": recipe, "arithmetic": "session 27 (baseline)", "img/s": f"{base_ips:.3f}",
                  "ratio": "1.00x", "mean total loss": f"{base_loss:.3f}"},
                 {"recipe": recipe, "arithmetic": "today", "img/s": f"{ips:.3f}",
                  "ratio": f"{ratios[recipe]:.2f}x", "mean total loss": f"{loss:.3f}"}]
        print(f"{recipe}: {base_ips:.3f} -> {ips:.3f} img/s", flush=True)
    print(table(rows, ["recipe", "arithmetic", "img/s", "ratio", "mean total loss"]))
    path = record("fast_train_step", {"torch": torch.__version__, "steps_timed": args.steps, "warmup": args.warmup,
                                      "threads": torch.get_num_threads(), "rows": rows, "ratios": ratios})
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
