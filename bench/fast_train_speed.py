"""Fast-style training throughput: styleforge's training step against the published recipe.

Rows (same run, same machine, 256 px crops, batch 4; the recipe rows train the published
`johnson` transformer):
  recipe-vgg16   the published recipe as pytorch/examples fast_neural_style runs it: fp32,
                 VGG16 to relu4_3 (content relu2_2, style relu1_2/2_2/3_3/4_3), the content
                 batch through the whole loss network, autograd Gram, torchvision
                 ImageFolder-style pipeline (PIL resize + center crop in the main process).
                 VGG16 ImageNet weights are not available offline, so its weights are random:
                 its speed is the recipe's (same multiply-adds); its loss is not comparable.
  recipe-vgg19   the same recipe mechanics on styleforge's loss (VGG19 weights from
                 ../shared, relu2_2 content, relu1_1..relu4_1 style, relative losses), so
                 its loss after N steps compares with styleforge's.
  fast train defaults   what `styleforge fast train STYLE --data DIR` runs, through its library
                 function: its default crops (128 px), network, precision, loss terms and
                 penalties, its own data pipeline (--workers 0 here); images/s after warm-up.
  styleforge 256 px    the training step alone at the recipe's size: the `light` transformer
                 (what the shipped styles use), `--precision auto` (bf16 autocast + channels_last
                 where the CPU runs bf16 natively, AVX512-BF16 or AMX; fp32 elsewhere), content
                 targets only up to relu2_2, one-product Gram backward, no penalties; fed the
                 recipe rows' batches (same data, same order); and the same step with the
                 published `johnson` transformer, to show what the architecture contributes.
  styleforge --precision fp32   both again in fp32, where the default is bf16.
Quality check: after the same number of steps, each 256 px net's fp32 loss on 8 held-out BSDS
val crops (the loss of recipe-vgg19 and styleforge is the same function).

--device cuda runs every row on the GPU: the recipe rows in plain fp32 with PyTorch's own CUDA
settings (no cudnn.benchmark, no TF32 matmul; styleforge's runtime() turns both on globally, so they
are set back for these rows), styleforge's rows through runtime("cuda", ...) (auto: bf16 autocast +
channels_last), with the fp32 row always; the data pipelines stay on the CPU, in the main process.
Held-out scoring runs in strict fp32 (no TF32). Timings synchronize the GPU before reading the clock.

    python bench/fast_train_speed.py [--steps 20] [--warmup 3] [--device cpu|cuda] [--out-json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, record, require_shared, table  # noqa: E402

from styleforge.backbone import VGGFeatures, build_vgg_features  # noqa: E402
from styleforge.runtime.device import cpu_has_fast_bf16, resolve_device, runtime  # noqa: E402
from styleforge.runtime.io import open_rgb, pil_to_tensor, resize_long_side  # noqa: E402
from styleforge.style.fast.data import list_images  # noqa: E402
from styleforge.style.fast.model import TransformerNet  # noqa: E402
from styleforge.style.fast.train import FastTrainConfig, train_style  # noqa: E402
from styleforge.style.perceptual import STYLE_GAIN, PerceptualLoss  # noqa: E402

SIZE, BATCH = 256, 4
CONTENT_W, STYLE_W, TV_W = 0.5, 0.5 * STYLE_GAIN, 1.0


def clock(dev: torch.device) -> float:
    """time.perf_counter() once the device has finished its queued work (CUDA runs asynchronously)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter()


@contextlib.contextmanager
def cuda_flags(dev: torch.device, benchmark: bool, conv_tf32: bool, matmul_tf32: bool):
    """Set cudnn.benchmark and the TF32 switches for a block on CUDA, restoring them after;
    nothing on other devices."""
    if dev.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = benchmark, conv_tf32, matmul_tf32
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


def torch_defaults(dev: torch.device):
    """PyTorch's own CUDA settings, as the published recipe runs (cudnn convolutions TF32, matmul fp32)."""
    return cuda_flags(dev, benchmark=False, conv_tf32=True, matmul_tf32=False)


def strict_fp32(dev: torch.device):
    """No TF32 anywhere: the held-out losses are fp32 figures on every device."""
    return cuda_flags(dev, benchmark=False, conv_tf32=False, matmul_tf32=False)


def plain_gram(f: torch.Tensor) -> torch.Tensor:
    b, c, h, w = f.shape
    f = f.reshape(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (h * w)


def recipe_batches(files, steps):
    """ImageFolder + Resize(256) + CenterCrop(256) + ToTensor, shuffled, in the main process."""
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize(SIZE), transforms.CenterCrop(SIZE), transforms.ToTensor()])
    g = torch.Generator().manual_seed(0)
    order = itertools.cycle(torch.randperm(len(files), generator=g).tolist())
    for _ in range(steps):
        yield torch.stack([tf(Image.open(files[next(order)]).convert("RGB")) for _ in range(BATCH)])


class RecipeVGG16Loss:
    def __init__(self, style, dev):
        vgg = build_vgg_features("vgg16")[:23].eval().requires_grad_(False).to(dev)  # to relu4_3
        self.vgg, self.names = vgg, {3: "relu1_2", 8: "relu2_2", 15: "relu3_3", 22: "relu4_3"}
        self.mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
        with torch.no_grad():
            self.targets = {k: plain_gram(v) for k, v in self.feats(style.to(dev)).items()}

    def feats(self, x):
        out, x = {}, (x - self.mean) / self.std
        for i, m in enumerate(self.vgg):
            x = m(x)
            if i in self.names:
                out[self.names[i]] = x
        return out

    def __call__(self, y, x):
        fy = self.feats(y)
        with torch.no_grad():
            fx = self.feats(x)  # the whole network, as the recipe does
        content = F.mse_loss(fy["relu2_2"], fx["relu2_2"])
        style = sum(F.mse_loss(plain_gram(fy[n]), self.targets[n].expand(len(y), -1, -1)) for n in self.targets)
        return 1e5 * content + 1e10 * style


class RecipeVGG19Loss:
    """styleforge's objective, computed the plain way (fp32, full forward, autograd Gram)."""

    def __init__(self, style, dev):
        self.vgg = VGGFeatures(["relu2_2", "relu1_1", "relu2_1", "relu3_1", "relu4_1"]).to(dev)
        with torch.no_grad():
            f = self.vgg(style.to(dev))
            self.targets = {n: plain_gram(f[n]) for n in ("relu1_1", "relu2_1", "relu3_1", "relu4_1")}

    def __call__(self, y, x):
        fy = self.vgg(y)
        with torch.no_grad():
            fx = self.vgg(x)
        content = (fy["relu2_2"] - fx["relu2_2"]).pow(2).mean() / fx["relu2_2"].pow(2).mean()
        style = sum((plain_gram(fy[n]) - t).pow(2).mean() / t.pow(2).mean() for n, t in self.targets.items()) / 4
        tv = (y[..., :, 1:] - y[..., :, :-1]).pow(2).mean() + (y[..., 1:, :] - y[..., :-1, :]).pow(2).mean()
        return CONTENT_W * content + STYLE_W * style + TV_W * tv


def train(name, loss_fn, batches, steps, warmup, dev, rt=None, arch="johnson"):
    """Train a fresh ``arch`` net on ``dev``: plain fp32 (``rt`` None, the recipe) or through ``rt``
    (whose device is ``dev``); images/s over the steps after ``warmup``."""
    torch.manual_seed(0)
    net = TransformerNet(arch)
    net = rt.to(net) if rt is not None else net.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    t0 = None
    for i, x in enumerate(batches):
        if i == warmup:
            t0 = clock(dev)
        if rt is not None:
            x = rt.to(x)
            with rt.autocast():
                y = net(x)
            loss = loss_fn(y, x)["total"]
        else:
            x = x.to(dev)
            loss = loss_fn(net(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = clock(dev) - t0
    ips = (steps - warmup) * BATCH / seconds
    print(f"{name}: {ips:.3f} img/s", flush=True)
    return net.float().eval(), ips, seconds


def fast_train_defaults(shared: Path, steps: int, warmup: int, device: str) -> tuple[float, float]:
    """(images/s, seconds) of `fast train` with every default, timed after ``warmup`` steps.
    (Its history's seconds are read after each step's losses come back to the host as floats, so
    on CUDA they count the GPU's work.)"""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = FastTrainConfig(style=str(shared / "data" / "styles" / "starry_night.jpg"),
                              data=[str(shared / "data" / "bsds500" / "train")], output=str(Path(tmp) / "m.pth"),
                              steps=steps, workers=0, device=device)
        history = train_style(cfg).history
    seconds = history[-1]["seconds"] - history[warmup - 1]["seconds"]
    ips = (steps - warmup) * cfg.batch_size / seconds
    print(f"fast train defaults: {ips:.3f} img/s", flush=True)
    return ips, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch/onnxruntime threads (default: all cores)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--out-json", type=Path, help="also write a copy of the JSON record here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else machine()["cpu"]
    print(f"device: {dev} ({device_name}), torch {torch.__version__}", flush=True)
    shared = require_shared()
    files, _ = list_images(shared / "data" / "bsds500" / "train")
    style = pil_to_tensor(resize_long_side(open_rgb(shared / "data" / "styles" / "starry_night.jpg"), 512))
    steps = args.steps + args.warmup

    # Held-out scoring batch: 8 center crops of BSDS val, fp32 styleforge loss.
    val, _ = list_images(shared / "data" / "bsds500" / "val")
    held = torch.cat([next(recipe_batches([f], 1))[:1] for f in val[:8]]).to(dev)
    fp32 = runtime(dev, "fp32")
    with strict_fp32(dev):  # the style Gram targets too
        scorer = PerceptualLoss(fp32.to(VGGFeatures(["relu2_2", "relu1_1", "relu2_1", "relu3_1", "relu4_1"])),
                                style, {"relu2_2": 1.0}, {f"relu{i}_1": 1.0 for i in range(1, 5)},
                                content_weight=CONTENT_W, style_weight=STYLE_W, tv_weight=TV_W, rt=fp32)

    def score(net):
        with torch.no_grad(), strict_fp32(dev):
            return float(scorer(net(held), content=held)["total"])

    rows = []
    with torch_defaults(dev):
        _, ips16, s16 = train("recipe-vgg16", RecipeVGG16Loss(style, dev), recipe_batches(files, steps), steps,
                              args.warmup, dev)
    rows.append({"run": "recipe-vgg16 (fp32, random VGG16 weights: speed only)", "img/s": f"{ips16:.3f}",
                 "s": f"{s16:.1f}", "held-out loss": "n/a"})
    with torch_defaults(dev):
        net19, ips19, s19 = train("recipe-vgg19", RecipeVGG19Loss(style, dev), recipe_batches(files, steps), steps,
                                  args.warmup, dev)
    rows.append({"run": "recipe-vgg19 (fp32, same loss as styleforge)", "img/s": f"{ips19:.3f}",
                 "s": f"{s19:.1f}", "held-out loss": f"{score(net19):.4f}"})

    ipsd, sd = fast_train_defaults(shared, steps, args.warmup, args.device)
    rows.append({"run": f"fast train defaults ({FastTrainConfig.image_size} px crops, {FastTrainConfig.arch}, "
                        "penalties on)", "img/s": f"{ipsd:.3f}", "s": f"{sd:.1f}", "held-out loss": "n/a"})

    # The runtime `fast train` takes by default (--precision auto: bf16 + channels_last on CUDA and
    # where the CPU runs bf16 natively, fp32 elsewhere), and fp32 as a row of its own where that is
    # bf16 (always on CUDA). runtime() on CUDA turns on cudnn.benchmark and TF32, as `fast train` runs.
    runtimes = {"default": runtime(dev, "auto")}
    if dev.type == "cuda" or cpu_has_fast_bf16():
        runtimes["--precision fp32"] = runtime(dev, "fp32")
    default_arch = FastTrainConfig.arch
    fast = {}
    for label, rt in runtimes.items():
        extractor = rt.to(VGGFeatures(["relu2_2", "relu1_1", "relu2_1", "relu3_1", "relu4_1"]))
        loss_fn = PerceptualLoss(extractor, style, {"relu2_2": 1.0}, {f"relu{i}_1": 1.0 for i in range(1, 5)},
                                 content_weight=CONTENT_W, style_weight=STYLE_W, tv_weight=TV_W, rt=rt)
        # The same batches as the recipe rows (decoded in the main process, which only slows
        # styleforge down), so the held-out losses differ by the training step alone.
        for arch in (default_arch, "johnson"):
            net, ips, secs = train(f"styleforge {label} {arch}", loss_fn, recipe_batches(files, steps), steps,
                                   args.warmup, rt.device, rt, arch=arch)
            fast[label, arch] = ips
            rows.append({"run": f"styleforge 256 px {label} (--network {arch}, {rt.precision}, "
                                f"channels_last={rt.channels_last})",
                         "img/s": f"{ips:.3f}", "s": f"{secs:.1f}", "held-out loss": f"{score(net):.4f}"})
    fast["fast train", "defaults"] = ipsd
    named = {(k if k[0] == "fast train" else (f"styleforge 256 px {k[0]}", k[1])): v for k, v in fast.items()}
    ratios = {f"{label} {arch} / {base}": round(ips / base_ips, 2)
              for (label, arch), ips in named.items() for base, base_ips in (("recipe-vgg16", ips16),
                                                                           ("recipe-vgg19", ips19))}
    print(table(rows, ["run", "img/s", "s", "held-out loss"]))
    print(ratios)
    path = record("fast_train_speed", {"device": str(dev), "device_name": device_name, "torch": torch.__version__,
                                       "steps_timed": args.steps, "warmup": args.warmup, "size": SIZE,
                                       "batch": BATCH, "rows": rows, "ratios": ratios})
    print(f"recorded {path}")
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, args.out_json)
        print(f"copied to {args.out_json}")


if __name__ == "__main__":
    main()
