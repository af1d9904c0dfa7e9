"""Classifier training on 1 process against 2 processes under torchrun (gloo, one thread each).

    python bench/ddp_speed.py                      # CIFAR-10, simple-cnn, one epoch
    python bench/ddp_speed.py --epochs 1 --global-batch 128 --threads 1

Both runs train the same model on the same global batch (1 x 128 against 2 x 64 per
process) through the real command line (``styleforge classify train``, under
``torch.distributed.run`` for 2 processes), with ``OMP_NUM_THREADS`` set to ``--threads``
per process, so the 2-process run uses twice the cores. Images/s is the training
throughput from each run's summary.json (training time only: data decoding, evaluation
and start-up excluded); wall time is the whole command. The decoded CIFAR-10 cache is
warmed first so neither run pays for decoding. Results go to
``bench/results/ddp_speed-DATE.json`` with machine, command and date.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, record, require_shared, table  # noqa: E402


def train(nproc: int, batch: int, args: argparse.Namespace, data: Path, out: Path) -> dict:
    cmd = ["-m", "styleforge", "classify", "train", "--dataset", "cifar10", "--data-root", str(data),
           "--model", args.model, "--epochs", str(args.epochs), "--batch-size", str(batch), "--lr", str(args.lr),
           "--device", "cpu", "--precision", args.precision, "--no-plots", "-q", "--overwrite", "-o", str(out)]
    if nproc > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t = time.perf_counter()
    subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, check=True)
    wall = time.perf_counter() - t
    s = json.loads((out / "summary.json").read_text())
    return {"processes": nproc, "batch per process": batch, "global batch": s["effective_batch_size"],
            "images/s": round(s["images_per_second"], 1), "train s": round(s["train_seconds"], 1),
            "wall s": round(wall, 1), "val acc": round(s["val_acc"], 4), "test acc": round(s["test_acc"], 4)}


def main() -> None:
    shared = require_shared()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="simple-cnn")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--global-batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per process (default: %(default)s)")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "styleforge-bench" / "ddp"))
    args = ap.parse_args()
    data, work = shared / "data", Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # Warm the decoded-dataset cache (the first CIFAR-10 load decodes 60,000 JPEGs).
    from styleforge.classify.data import DataSpec, load_splits
    load_splits(DataSpec("cifar10", str(data)))
    rows = [train(1, args.global_batch, args, data, work / "one"),
            train(2, args.global_batch // 2, args, data, work / "two")]
    ratio = rows[1]["images/s"] / rows[0]["images/s"]
    for r in rows:
        r["speed-up"] = f"{r['images/s'] / rows[0]['images/s']:.2f}x"
    print(table(rows, list(rows[0])))
    print(f"2 processes / 1 process: {ratio:.2f}x images/s (ideal 2.00x on 2 cores)")
    path = record("ddp_speed", {"rows": rows, "ratio": ratio, "threads_per_process": args.threads})
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
