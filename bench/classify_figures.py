"""The classifier figures of issue 4, each measured with wall time (the test sets decide nothing).

    python bench/classify_figures.py --figure mnist-best     # MNIST, best model (target >= 99 %)
    python bench/classify_figures.py --figure mnist-few      # fc-only, gray1conv on digits 0,1,7 x 16 per class
    python bench/classify_figures.py --figure cifar-simple   # CIFAR-10 simple-cnn (target >= 70 %)
    python bench/classify_figures.py --figure cifar-best10   # best CNN within 10 epochs (target >= 80 %)
    python bench/classify_figures.py --figure cifar-minute   # best within 1 minute of training (target >= 60 %)
    python bench/classify_figures.py --figure vgg19          # VGG19 transfer, fp32/int8 features (>= 85 % in 20 min)
    python bench/classify_figures.py --figure few-shot       # 5/16/100 per class, VGG19 vs scratch; food-mini
    python bench/classify_figures.py --figure resnet-gpu     # ResNet18 at 224/112 px (needs a GPU)
    python bench/classify_figures.py --figure all

Every run uses the library (``styleforge.classify.train.fit``) and writes its run
directory under ``--work`` (default: a folder in the temp dir) with curves, confusion
matrix and report; the numbers go to ``bench/results/classify_<figure>-DATE.json``
with machine, command and date. ``--set KEY=VALUE`` overrides a TrainConfig (or DataSpec)
field in every run of the chosen figure (e.g. ``--set epochs=3``), for quick looks.

Data: ``../shared/data`` (MNIST idx files; CIFAR-10 as JPEG folders, decoded once and
cached in ``$STYLEFORGE_CACHE``/``~/.cache/styleforge``; the first CIFAR run pays about
35 s for the decode, reported as data time, not training time).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from common import record, require_shared, table  # noqa: E402

from styleforge.classify.data import DataSpec  # noqa: E402
from styleforge.classify.train import TrainConfig, TrainEvent, fit  # noqa: E402
from styleforge.runtime.device import resolve_device  # noqa: E402

# The transfer recipe (chosen with linear/MLP probes on 3,000/10,000-image subsets; see the
# README for how it was checked): 64 px input, VGG19 features up to relu4_4 (8x8x512 at
# 64 px) averaged to a 2x2 grid (2048 values), batch norm, an MLP head. Fixed here, not
# tuned on this script's results.
VGG_RECIPE = dict(model="vgg19", image_size=64, freeze="all-but-head",
                  model_options={"layer": "relu4_4", "pool": "grid2", "hidden": 1024, "dropout": 0.5},
                  optimizer="adamw", lr=1e-3, weight_decay=0.05, batch_size=256, schedule="onecycle")
# The from-scratch model used against it in the few-shot table.
SCRATCH_RECIPE = dict(model="res-cnn", model_options={"width": 32}, augment=["crop", "flip"], optimizer="sgd",
                      lr=0.05, weight_decay=5e-4, label_smoothing=0.1)


class Run:
    """Shared settings: data root, work folder, overrides; prints one line per epoch."""

    def __init__(self, args: argparse.Namespace, shared: Path) -> None:
        self.data = shared / "data"
        self.work = Path(args.work)
        self.overrides = parse_sets(args.set)
        self.device, self.precision = args.device, args.precision

    def cfg(self, name: str, **kw) -> TrainConfig:
        base = TrainConfig(DataSpec("cifar10", str(self.data)), output=str(self.work / name), overwrite=True,
                           device=self.device, precision=self.precision)
        return base.with_settings(**kw).with_settings(**self.overrides)

    def fit(self, name: str, **kw) -> dict:
        cfg = self.cfg(name, **kw)
        print(f"--- {name}: {cfg.model} on {cfg.data.dataset}", flush=True)
        summary = fit(cfg, callback=_print_epochs).summary
        print(f"    test acc {summary['test_acc']}, wall {summary['wall_seconds']:.1f} s "
              f"(train {summary['train_seconds']:.1f} s, features {summary['feature_seconds']:.1f} s, "
              f"data {summary['data_seconds']:.1f} s)", flush=True)
        summary.pop("confusion_test", None)
        summary["run_dir"] = cfg.output
        return summary


def _print_epochs(e: TrainEvent) -> None:
    if e.kind == "epoch_end":
        m = e.metrics
        val = f" val {m['val_acc']:.4f}" if m.get("val_acc") is not None else ""
        print(f"    epoch {e.epoch}/{e.epochs}: train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f}{val} "
              f"({m['seconds']:.1f} s)", flush=True)
    elif e.kind == "phase" and not e.steps:
        print(f"    {e.message}", flush=True)


def parse_sets(items: list[str]) -> dict:
    names = ({f.name for f in fields(TrainConfig)} | {f.name for f in fields(DataSpec)}) - {"data"}
    out = {}
    for item in items:
        key, _, text = item.partition("=")
        if key not in names:
            sys.exit(f"--set {item}: no TrainConfig or DataSpec field {key!r}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def row(label: str, s: dict, **extra) -> dict:
    return {"run": label, "model": s["model"], "train acc": pct(s.get("train_acc")), "val acc": pct(s.get("val_acc")),
            "test acc": pct(s.get("test_acc")), "epochs": s["epochs_run"],
            "train s": f"{s['train_seconds']:.0f}", "wall s": f"{s['wall_seconds']:.0f}", **extra}


# --------------------------------------------------------------------------- figures

def mnist_best(r: Run) -> dict:
    s = r.fit("mnist-best", dataset="mnist", model="res-cnn", model_options={"width": 32}, augment=["crop"],
              epochs=6, batch_size=128, lr=0.05, label_smoothing=0.1)
    return {"rows": [row("MNIST best (res-cnn width 32, crop)", s)], "runs": {"mnist-best": s}}


def mnist_few(r: Run) -> dict:
    rows, runs = [], {}
    for model in ("fc-only", "gray1conv"):
        s = r.fit(f"mnist-few-{model}", dataset="mnist", model=model, classes=["0", "1", "7"], per_class=16,
                  val_split=0.0, epochs=60, batch_size=16, optimizer="adam", lr=1e-3, weight_decay=0.0)
        rows.append(row(f"{model}, digits 0/1/7 x 16", s))
        runs[model] = s
    return {"rows": rows, "runs": runs}


def cifar_simple(r: Run) -> dict:
    s = r.fit("cifar-simple", model="simple-cnn", augment=["crop", "flip"], epochs=15, batch_size=128, lr=0.05)
    return {"rows": [row("simple-cnn, 15 epochs, crop+flip", s)], "runs": {"cifar-simple": s}}


def cifar_best10(r: Run) -> dict:
    # width 32: 380 training images/s on 2 cores, about 2 minutes an epoch (width 64: 83/s).
    s = r.fit("cifar-best10", model="res-cnn", model_options={"width": 32}, augment=["crop", "flip"], epochs=10,
              batch_size=256, lr=0.2, label_smoothing=0.1)
    return {"rows": [row("res-cnn width 32, 10 epochs", s)], "runs": {"cifar-best10": s}}


def cifar_minute(r: Run) -> dict:
    # A 60 s training budget (per-epoch validation included); the LR schedule follows
    # elapsed time so the run anneals to zero exactly when the budget ends.
    # width 16: 1,700 training images/s on 2 cores (width 32: 700/s, about one epoch a minute).
    s = r.fit("cifar-minute", model="fast-cnn", model_options={"width": 16}, augment=["flip"], epochs=20,
              max_seconds=60, batch_size=256, lr=0.2, label_smoothing=0.1)
    return {"rows": [row("fast-cnn width 16, 60 s budget", s, images=f"{s['images_per_second']:.0f}/s")],
            "runs": {"cifar-minute": s}}


def _uncached_epoch_seconds(run_dir: str, n_train: int, batch_size: int, batches: int, device: str,
                            precision: str) -> float:
    """Seconds an epoch would take running the frozen trunk every step (timed on ``batches``
    batches of the training set, extrapolated to ``n_train`` images)."""
    from styleforge.classify.checkpoint import load_checkpoint, model_from_checkpoint
    from styleforge.classify.data import load_splits
    from styleforge.classify.train import _train_mode, make_optimizer, prepare_batch
    from styleforge.runtime.device import runtime

    ckpt = load_checkpoint(run_dir)
    splits = load_splits(TrainConfig.from_dict(ckpt["config"]).data)  # the data as the run loaded them
    rt = runtime(device, precision)
    model = rt.to(model_from_checkpoint(ckpt))
    model.trunk.requires_grad_(False)
    opt = make_optimizer(TrainConfig(DataSpec("x"), "x", optimizer="adamw", lr=1e-4).validate(), model)
    _train_mode(model)
    size = tuple(ckpt["input_shape"][1:])
    times = []
    for b in range(batches + 1):
        idx = torch.randint(0, len(splits.train), (batch_size,))
        t = time.perf_counter()
        x = prepare_batch(splits.train.images[idx], rt, size)
        with rt.autocast():
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), splits.train.labels[idx].to(rt.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        if b:  # the first batch warms up
            times.append(time.perf_counter() - t)
    return sum(times) / len(times) / batch_size * n_train


def vgg19(r: Run, uncached_batches: int) -> dict:
    """The transfer recipe twice in one run: fp32 feature extraction (channels_last on the
    CPU), then the same with --int8-features (CPU only); plus the cache's speed-up over an
    uncached epoch, estimated from timed uncached batches of the fp32 run."""
    rows, runs = [], {}
    on_cpu = resolve_device(r.device).type == "cpu"  # int8 features are a CPU path
    variants = [("fp32", False)] + ([("int8", True)] if on_cpu else [])
    for label, int8 in variants:
        t0 = time.perf_counter()
        s = r.fit(f"vgg19-{label}", epochs=15, int8_features=int8, **VGG_RECIPE)
        s["bench_total_seconds"] = time.perf_counter() - t0
        cached_epoch = _mean_epoch_seconds(s["run_dir"])
        extra = {"features": label, "feature s": f"{s['feature_seconds']:.0f}",
                 "epoch cached s": f"{cached_epoch:.2f}"}
        s["cached_epoch_seconds"] = cached_epoch
        if not int8:
            uncached = _uncached_epoch_seconds(s["run_dir"], s["num_train"], VGG_RECIPE["batch_size"],
                                               uncached_batches, r.device, r.precision)
            extra.update({"epoch uncached s (est.)": f"{uncached:.0f}",
                          "cache speed-up": f"{uncached / cached_epoch:.0f}x"})
            s.update({"uncached_epoch_seconds_estimate": uncached, "uncached_timed_batches": uncached_batches,
                      "cache_speedup": uncached / cached_epoch})
        rows.append(row(f"VGG19 relu4_4 @64px, 2x2 pool, MLP head, {label} features", s, **extra))
        runs[f"vgg19-{label}"] = s
    if "vgg19-int8" in runs:
        ratio = runs["vgg19-fp32"]["feature_seconds"] / runs["vgg19-int8"]["feature_seconds"]
        print(f"int8 feature extraction: {ratio:.2f}x the fp32 channels_last speed", flush=True)
        runs["int8_feature_speedup"] = ratio
    return {"rows": rows, "runs": runs}


def _mean_epoch_seconds(run_dir: str) -> float:
    from styleforge.classify.report import read_metrics

    rows = read_metrics(Path(run_dir) / "metrics.csv")
    return sum(m["seconds"] for m in rows) / len(rows)


def _few_shot_schedule(n_images: int, steps: int = 300) -> tuple[int, int]:
    """(batch size, epochs) for about ``steps`` optimizer steps on ``n_images``."""
    bs = min(128, max(8, n_images // 2))
    return bs, max(10, math.ceil(steps / math.ceil(n_images / bs)))


def few_shot(r: Run, seeds: int) -> dict:
    rows, runs = [], {}
    for n in (5, 16, 100):
        bs, epochs = _few_shot_schedule(10 * n)
        for label, recipe in (("vgg19", VGG_RECIPE), ("scratch", SCRATCH_RECIPE)):
            kw = {**recipe, "batch_size": bs, "epochs": epochs, "per_class": n, "val_split": 0.0}
            s = r.fit(f"few-{label}-{n}", **kw)
            rows.append(row(f"CIFAR-10, {n}/class, {label}", s))
            runs[f"cifar-{n}-{label}"] = s
    # food-mini: 5 photos per class; 2 held out as test, 3 train. Averaged over split seeds.
    food = str(r.data / "food-mini")
    for label, recipe, size in (("vgg19", VGG_RECIPE, 128), ("scratch", SCRATCH_RECIPE, 64)):
        accs, walls = [], []
        for seed in range(seeds):
            kw = {**recipe, "dataset": food, "image_size": size, "test_split": 0.4, "split_seed": seed,
                  "per_class": 3, "val_split": 0.0, "batch_size": 12, "epochs": 100}
            s = r.fit(f"food-{label}-{seed}", **kw)
            accs.append(s["test_acc"])
            walls.append(s["wall_seconds"])
            runs[f"food-{label}-{seed}"] = s
        rows.append({"run": f"food-mini, 3/class, {label} ({size} px)", "model": recipe["model"],
                     "test acc": f"{100 * sum(accs) / len(accs):.1f}% (mean of {seeds} splits: "
                                 + ", ".join(f"{a:.2f}" for a in accs) + ")",
                     "wall s": f"{sum(walls) / len(walls):.0f} per run"})
    return {"rows": rows, "runs": runs}


def resnet_gpu(r: Run) -> dict:
    if not torch.cuda.is_available():
        print("no CUDA device: figure 5 needs a GPU; nothing measured")
        return {"rows": [], "skipped": "no CUDA device"}
    from styleforge import backbone

    rows, runs = [], {}
    inits = [("random", {})]
    if backbone.locate("resnet18") is not None:
        inits.append(("pretrained", {"pretrained": True, "freeze": "none"}))
    for size in (224, 112):
        for label, init in inits:
            s = r.fit(f"resnet-{label}-{size}", model="resnet18", image_size=size, augment=["crop", "flip"],
                      epochs=3, batch_size=256, lr=0.2 if label == "random" else 0.02, label_smoothing=0.1, **init)
            rows.append(row(f"ResNet18 {label}, {size} px", s,
                            **{"epoch s": f"{_mean_epoch_seconds(s['run_dir']):.1f}",
                               "images/s": f"{s['images_per_second']:.0f}"}))
            runs[f"{label}-{size}"] = s
    return {"rows": rows, "runs": runs}


FIGURES = ("mnist-best", "mnist-few", "cifar-simple", "cifar-best10", "cifar-minute", "vgg19", "few-shot",
           "resnet-gpu")


def main() -> None:
    shared = require_shared()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--figure", required=True, choices=FIGURES + ("all",))
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "styleforge-bench" / "classify"),
                    help="folder for the run directories (default: %(default)s)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig field in every run (JSON values), e.g. --set epochs=3")
    ap.add_argument("--uncached-batches", type=int, default=20,
                    help="vgg19: batches timed to estimate an uncached epoch (default: %(default)s)")
    ap.add_argument("--seeds", type=int, default=5, help="few-shot: food-mini split seeds (default: %(default)s)")
    args = ap.parse_args()
    r = Run(args, shared)
    r.work.mkdir(parents=True, exist_ok=True)
    chosen = FIGURES if args.figure == "all" else (args.figure,)
    for figure in chosen:
        t0 = time.perf_counter()
        fn = {"mnist-best": mnist_best, "mnist-few": mnist_few, "cifar-simple": cifar_simple,
              "cifar-best10": cifar_best10, "cifar-minute": cifar_minute,
              "vgg19": lambda run: vgg19(run, args.uncached_batches),
              "few-shot": lambda run: few_shot(run, args.seeds), "resnet-gpu": resnet_gpu}[figure]
        result = fn(r)
        result["figure_seconds"] = time.perf_counter() - t0
        result["overrides"] = r.overrides
        if result["rows"]:
            columns = list(dict.fromkeys(k for row_ in result["rows"] for k in row_))
            print(table(result["rows"], columns))
        path = record(f"classify_{figure}", result)
        print(f"recorded {path}")


if __name__ == "__main__":
    main()
