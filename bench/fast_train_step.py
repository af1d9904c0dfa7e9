"""Fast-style training step: today's loss arithmetic against an earlier session's, in the same run.

Each row runs `fast train` through its library function (128 px crops of BSDS train, the main
process decoding, `--precision auto`) for --warmup + --steps steps and reports images/s over the
timed steps, twice: as the library is, and with an earlier session's arithmetic put back for the
run (the baseline, --baseline):

- session28: sorts by torch.sort (today ``losses.sort_rows`` takes NumPy's argsort on a
  CPU and gathers the values by it);
- session27: that, and Gaussian blurs by a depthwise convolution with reflected padding
  (``losses.blur_by_convolution``, today ``losses.gaussian_blur``'s path for large pictures only; at
  crop sizes it takes two matrix products) and mid-ranks by two binary searches of every value in its
  sorted row (written here; today ``losses.mid_ranks`` takes one sort and two running extrema).

Both give the same losses to float rounding (the tests check the sorts, blurs and ranks agree), so
the last column compares the two runs' mean total loss over the timed steps.
The painting's spread, which the palette and chroma losses take once per run since session 28, is
left as it is in both rows (about 50 ms of a step before).

Recipes: `defaults` (every default, starry_night) and `udnie` (the shipped udnie's recipe: strength
0.6, hatching 20, detail 60, gradient 60, Laplacian 0, chroma 30, lr 1e-2, warm-up 100).

    python bench/fast_train_step.py [--baseline session28] [--steps 12] [--warmup 2] [--threads 1]
                                    [--recipes defaults,udnie]
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


def torch_sort(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Session 28's sort (and every earlier session's): torch.sort on every device."""
    return x.sort(dim=-1)


# What each baseline puts back: library attribute -> earlier function.
BASELINES = {
    "session28": {"sort_rows": torch_sort},
    "session27": {"sort_rows": torch_sort, "gaussian_blur": losses.blur_by_convolution, "mid_ranks": searched_ranks},
}


@contextlib.contextmanager
def earlier_arithmetic(baseline: str):
    """The baseline: the library's functions swapped for an earlier session's for the duration."""
    saved = {name: getattr(losses, name) for name in BASELINES[baseline]}
    for name, earlier in BASELINES[baseline].items():
        setattr(losses, name, earlier)
    try:
        yield
    finally:
        for name, mine in saved.items():
            setattr(losses, name, mine)


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
    ap.add_argument("--baseline", default="session28", choices=sorted(BASELINES))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    ap.add_argument("--recipes", default="defaults,udnie", help="comma-separated: " + ", ".join(RECIPES))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, ratios = [], {}
    for recipe in args.recipes.split(","):
        with earlier_arithmetic(args.baseline):
            base_ips, base_loss = timed_run(recipe, args.steps, args.warmup)
        ips, loss = timed_run(recipe, args.steps, args.warmup)
        ratios[recipe] = round(ips / base_ips, 2)
        rows += [{"recipe": recipe, "arithmetic": f"{args.baseline} (baseline)", "img/s": f"{base_ips:.3f}",
                  "ratio": "1.00x", "mean total loss": f"{base_loss:.3f}"},
                 {"recipe": recipe, "arithmetic": "today", "img/s": f"{ips:.3f}",
                  "ratio": f"{ratios[recipe]:.2f}x", "mean total loss": f"{loss:.3f}"}]
        print(f"{recipe}: {base_ips:.3f} -> {ips:.3f} img/s", flush=True)
    print(table(rows, ["recipe", "arithmetic", "img/s", "ratio", "mean total loss"]))
    path = record("fast_train_step", {"torch": torch.__version__, "baseline": args.baseline,
                                      "steps_timed": args.steps, "warmup": args.warmup,
                                      "threads": torch.get_num_threads(), "rows": rows, "ratios": ratios})
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
