"""Hostile input through every command: one ``error:`` line, no traceback, nothing lost.

Each refusal goes through Click's runner (a subprocess where signals matter) and checks the
exit status, that stderr is exactly one ``error: ...`` line, that no exception escaped, and
that every file that existed before the command is byte-identical afterwards.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import ROOT, default_sigint, striped_image, synthetic_image
from PIL import Image

from styleforge.classify.data import DataSpec
from styleforge.classify.train import TrainConfig
from styleforge.cli import main_group
from styleforge.runtime import lock
from styleforge.runtime.errors import StyleforgeError
from styleforge.runtime.io import save_image
from styleforge.style.fast import TransformerNet, save_model

FAST_STYLIZE = ["--size", "32", "--steps", "2", "--no-multiscale", "--precision", "fp32", "--device", "cpu", "-q"]
FAST_TRAIN = ["--crop-size", "32", "--style-size", "48", "--batch-size", "2", "--steps", "2", "--workers", "0",
              "--device", "cpu", "--precision", "fp32", "-q"]
CLASSIFY = ["--model", "simple-cnn", "--epochs", "1", "--batch-size", "16", "--precision", "fp32", "-q"]


# --------------------------------------------------------------------------- helpers

def snapshot(*roots: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in Path(root).rglob("*") if p.is_file()}


def run(*args):
    return CliRunner().invoke(main_group, [str(a) for a in args])


def refused(roots, *args, expect: str = "") -> str:
    """Run a command that must fail cleanly; return its error line."""
    before = snapshot(*roots)
    r = run(*args)
    assert r.exit_code not in (0, None), r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    after = snapshot(*roots)
    assert [p for p, h in before.items() if after.get(p) != h] == [], "a pre-existing file changed"
    assert expect in lines[0], lines[0]
    return lines[0]


def ok(*args):
    r = run(*args)
    assert r.exit_code == 0, (r.output, r.exception)
    return r


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A 68-byte PNG whose header declares side x side pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Inputs shared by the tests (never changed by them: the snapshots include them)."""
    root = tmp_path_factory.mktemp("hostile")
    save_image(synthetic_image(40, 48), root / "content.png")
    save_image(striped_image(48, 48), root / "style.png")
    bomb_png(root / "bomb.png")
    (root / "photos").mkdir()
    for i in range(3):
        save_image(synthetic_image(40, 44, phase=i), root / "photos" / f"p{i}.png")
    torch.manual_seed(0)
    net = TransformerNet("light")
    save_model(net, root / "model.pth", "test", {}, half=False)
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        bad = TransformerNet("light")
        with torch.no_grad():
            next(bad.parameters()).fill_(value)
        save_model(bad, root / f"{name}-model.pth", "test", {}, half=False)
    record = torch.load(root / "model.pth", weights_only=True)
    record["state_dict"] = {k: "not a tensor" for k in record["state_dict"]}
    torch.save(record, root / "broken-model.pth")
    colours = root / "colours"
    rng = np.random.default_rng(0)
    for c, name in enumerate(["red", "green", "blue"]):
        (colours / name).mkdir(parents=True)
        for i in range(12):
            img = np.zeros((16, 16, 3), np.uint8)
            img[..., c] = 180
            Image.fromarray(img + rng.integers(0, 70, img.shape, dtype=np.uint8)).save(colours / name / f"{i}.png")
    r = run("classify", "train", "--dataset", colours, *CLASSIFY, "-o", root / "run")
    assert r.exit_code == 0, r.output
    return root


@pytest.fixture
def roots(env, tmp_path):
    return (env, tmp_path)


# --------------------------------------------------------------------------- 1. decompression bombs

@pytest.mark.parametrize("case", ["content", "style", "init", "fast-apply", "fast-train-style", "fast-train-data",
                                  "visualize", "classify-folder"])
def test_decompression_bombs_are_refused_by_every_reader(case, env, roots, tmp_path, random_vgg19_file):
    bomb, content, style = env / "bomb.png", env / "content.png", env / "style.png"
    w = ["--weights", random_vgg19_file]
    out = tmp_path / "out.png"
    if case == "fast-train-data":
        (tmp_path / "data").mkdir()
        shutil.copy(bomb, tmp_path / "data" / "b.png")
    if case == "classify-folder":
        shutil.copytree(env / "colours", tmp_path / "colours")
        shutil.copy(bomb, tmp_path / "colours" / "red" / "b.png")
    args = {
        "content": ["stylize", bomb, style, "-o", out, *w, *FAST_STYLIZE],
        "style": ["stylize", content, bomb, "-o", out, *w, *FAST_STYLIZE],
        "init": ["stylize", content, style, "--init", bomb, "-o", out, *w, *FAST_STYLIZE],
        "fast-apply": ["fast", "apply", env / "model.pth", bomb, "-o", out],
        "fast-train-style": ["fast", "train", bomb, "--data", env / "photos", "-o", tmp_path / "m.pth", *w,
                             *FAST_TRAIN],
        "fast-train-data": ["fast", "train", style, "--data", tmp_path / "data", "-o", tmp_path / "m.pth", *w,
                            *FAST_TRAIN],
        "visualize": ["visualize", "activations", "simple-cnn", "--random-init", "--image", bomb, "--layer", "conv1",
                      "-o", out],
        "classify-folder": ["classify", "train", "--dataset", tmp_path / "colours", *CLASSIFY, "-o", tmp_path / "r"],
    }[case]
    line = refused(roots, *args)
    assert "decompression bomb" in line or "no readable images" in line
    assert not out.exists()


# --------------------------------------------------------------------------- 2. small and thin images

def test_fast_network_takes_tiny_and_thin_images(env, tmp_path):
    for w, h in [(1, 1), (3, 2), (400, 2), (1, 300)]:
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(tmp_path / f"in-{w}x{h}.png")
        ok("fast", "apply", env / "model.pth", tmp_path / f"in-{w}x{h}.png", "-o", tmp_path / f"out-{w}x{h}.png",
           "-q")
        assert Image.open(tmp_path / f"out-{w}x{h}.png").size == (w, h)
    ok("fast", "apply", env / "model.pth", env / "content.png", "-o", tmp_path / "s4.png", "--size", "4", "-q")
    assert max(Image.open(tmp_path / "s4.png").size) == 4


@pytest.mark.parametrize("extra, expect", [(["--crop-size", "4"], "--crop-size 4 is too small"),
                                           (["--style-size", "4"], "too small for the loss layers")])
def test_fast_train_checks_the_minimum_size(extra, expect, env, roots, tmp_path, random_vgg19_file):
    refused(roots, "fast", "train", env / "style.png", "--data", env / "photos", "-o", tmp_path / "m.pth",
            "--weights", random_vgg19_file, *FAST_TRAIN, *extra, expect=expect)


# --------------------------------------------------------------------------- 3. numbers

NUMBER_CASES = [
    (["classify", "train", "--dataset", "{colours}", "-o", "{tmp}/r", "--max-seconds", "nan"], "--max-seconds"),
    (["classify", "train", "--dataset", "{colours}", "-o", "{tmp}/r", "--lr", "inf"], "--lr"),
    (["classify", "train", "--dataset", "{colours}", "-o", "{tmp}/r", "--lr", "-0.1"], "--lr"),
    (["classify", "train", "--dataset", "{colours}", "-o", "{tmp}/r", "--epochs", "0"], "--epochs"),
    (["classify", "train", "--dataset", "{colours}", "-o", "{tmp}/r", "--momentum", "1.5"], "--momentum"),
    (["classify", "train", "--dataset", "{colours}", "-o", "{tmp}/r", "--test-data", "{tmp}/nodir"],
     "nodir is not a folder: give a folder with one sub-folder of images per class"),
    (["classify", "train", "--dataset", "{colours}", "-o", "{tmp}/r", "--seed", "1" * 20], "--seed"),
    (["classify", "train", "--dataset", "{colours}", "-o", "{tmp}/r", "--model", "res-cnn", "--option", "width=abc"],
     "whole number"),
    (["classify", "train", "--dataset", "{colours}", "-o", "{tmp}/r", "--model", "res-cnn", "--option", "width=0"],
     "at least 1"),
    (["classify", "train", "--dataset", "{colours}", "-o", "{tmp}/r", "--model", "res-cnn", "--option", "dropout=2"],
     "[0, 1)"),
    (["classify", "train", "--dataset", "{colours}", "-o", "{tmp}/r", "--model", "fc-only", "--option", "hidden=-5"],
     "at least 1"),
    (["classify", "grid", "--dataset", "{colours}", "-o", "{tmp}/g", "--lr", "0.1,nan"], "--lr"),
    (["classify", "grid", "--dataset", "{colours}", "-o", "{tmp}/g", "--lr", "0.1,,0.2"], "has an empty item"),
    (["classify", "grid", "--dataset", "{colours}", "-o", "{tmp}/g", "--lr", "0.1,0.10"], "--lr gives 0.1 twice"),
    (["stylize", "{content}", "{style}", "--scales", "64,32", "--size", "32"], "--scales 64 is larger than --size"),
    (["stylize", "{content}", "{style}", "--style-layers", "relu1_1,,relu2_1"], "has an empty item"),
    (["stylize", "{content}", "{style}", "-o", "{tmp}/" + "a" * 300 + ".png"], "is too long (over 255 bytes)"),
    (["summary", "conv(8,p1)-relu-" * 30 + "flatten-fc", "--input", "3x8x8", "--option", "x=1"], "takes no --option"),
    (["stylize", "{content}", "{style}", "--style-layers", "relu1_1,relu1_1:2"], "relu1_1 is named twice"),
    (["fast", "apply", "--style-image", "{style}", "{content}", "-o", "{tmp}/o.png", "--levels", "relu3_1,relu3_1"],
     "relu3_1 is given twice"),
    (["fast", "sheet", "{content}", "--styles", "{model},{model}", "-o", "{tmp}/s.png"], "is given twice"),
    (["fast", "apply", "{model}", "{content}", "-o", "{tmp}/o.png", "--strength", "0.5"],
     "--strength is for --style-image: a trained MODEL paints its own style"),
    (["fast", "apply", "{model}", "{content}", "-o", "{tmp}/o.png", "--decoder", "cascade"], "--decoder is for"),
    (["fast", "apply", "{model}", "{content}", "-o", "{tmp}/o.png", "--tones", "0"], "--tones is for --style-image"),
    (["classify", "eval", "{run}", "--batch-size", "0"], "--batch-size"),
    (["stylize", "{content}", "{style}", "--style-scale", "nan"], "--style-scale"),
    (["stylize", "{content}", "{style}", "--seed", "1" * 20], "--seed"),
    (["stylize", "{content}", "{style}", "--size", "0"], "--size"),
    (["fast", "train", "{style}", "--data", "{photos}", "-o", "{tmp}/m.pth", "--workers", "-1"], "--workers"),
    (["fast", "train", "{style}", "--data", "{photos}", "-o", "{tmp}/m.pth", "--lr", "nan"], "--lr"),
    (["fast", "train", "{style}", "--data", "{photos}", "-o", "{tmp}/m.pth", "--steps", "2", "--stop-at", "10"],
     "--stop-at 10 is past --steps 2"),
    (["fast", "train-decoders", "--data", "{photos}", "-o", "{tmp}/d", "--steps", "2", "--stop-at", "3"],
     "--stop-at 3 is past --steps 2"),
    (["fast", "apply", "{model}", "{content}", "-o", "{tmp}/o.png", "--size", "-5"], "--size"),
    (["visualize", "activations", "{run}", "--image", "{content}", "--layer", "conv1", "--count", "0",
      "-o", "{tmp}/a.png"], "--count"),
    (["summary", "res-cnn", "--option", "width=nan"], "whole number"),
    (["summary", "res-cnn", "--option", "width=1e3"], "give a whole number, written in digits (1000000, not 1e6)"),
    (["summary", "simple-cnn", "--num-classes", "100000000000"], "for 100000000000 classes does not fit in memory"),
    (["visualize", "activations", "vgg19", "--random-init", "--input", "1x2x2", "--image", "{content}", "--layer",
      "relu1_1", "-o", "{tmp}/a.png"], "vgg19 cannot take a 1x2x2 input"),  # the image would have run
]


@pytest.mark.parametrize("args, expect", NUMBER_CASES, ids=[" ".join(a[:2]) + " " + a[-2] for a, _ in NUMBER_CASES])
def test_numbers_are_range_checked(args, expect, env, roots, tmp_path):
    names = {"colours": env / "colours", "tmp": tmp_path, "run": env / "run", "content": env / "content.png",
             "style": env / "style.png", "photos": env / "photos", "model": env / "model.pth"}
    refused(roots, *[a.format(**{k: str(v) for k, v in names.items()}) for a in args], expect=expect)


def test_library_configs_refuse_nan_too(env, tmp_path):
    with pytest.raises(StyleforgeError, match="--max-seconds must be a finite number"):
        TrainConfig(DataSpec(str(env / "colours")), output=str(tmp_path / "r"), max_seconds=math.nan).validate()


# --------------------------------------------------------------------------- 4. memory

@pytest.mark.parametrize("case", ["stylize-size", "style-scale", "fast-train", "fast-apply", "fast-sheet",
                                  "train-decoders", "classify-train", "visualize", "summary"])
def test_huge_sizes_are_refused_with_needed_and_available_memory(case, env, roots, tmp_path, random_vgg19_file):
    content, style, w = env / "content.png", env / "style.png", ["--weights", random_vgg19_file]
    args = {"stylize-size": ["stylize", content, style, "-o", tmp_path / "o.png", *w, "--size", "60000"],
            "style-scale": ["stylize", content, style, "-o", tmp_path / "o.png", *w, "--style-scale", "2000"],
            "fast-train": ["fast", "train", style, "--data", env / "photos", "-o", tmp_path / "m.pth", *w,
                           "--crop-size", "40000"],
            "fast-apply": ["fast", "apply", env / "model.pth", content, "-o", tmp_path / "o.png", "--size", "60000"],
            "train-decoders": ["fast", "train-decoders", "--data", env / "photos", "-o", tmp_path / "d", *w,
                               "--crop-size", "40000"],
            "fast-sheet": ["fast", "sheet", content, "--styles", env / "model.pth", "-o", tmp_path / "s.png",
                           "--size", "60000"],
            "classify-train": ["classify", "train", "--dataset", env / "colours", *CLASSIFY, "--image-size", "40000",
                               "-o", tmp_path / "r"],
            "visualize": ["visualize", "activations", env / "run", "--image", content, "--layer", "conv1",
                          "--short-side", "60000", "-o", tmp_path / "a.png"],
            "summary": ["summary", "simple-cnn", "--input", "3x60000x60000"]}
    line = refused(roots, *args[case], expect="GB of memory, but only")
    assert "needs about" in line and "available" in line
    assert list(tmp_path.iterdir()) == []  # no output, nor an empty output folder


def test_a_very_elongated_image_is_refused_before_visualize_runs(env, roots, tmp_path):
    Image.new("L", (2000, 1)).save(tmp_path / "wide.png")  # its short side scaled up makes it 16-32 k px long
    refused(roots, "visualize", "activations", env / "run", "--image", tmp_path / "wide.png", "--layer", "conv1",
            "-o", tmp_path / "a.png", expect="over 8192 px long: crop it nearer a square or give a smaller --short-")
    assert not (tmp_path / "a.png").exists()


# --------------------------------------------------------------------------- 5. visualize --short-side

def test_visualize_size_works_with_a_linear_head(env, roots, tmp_path):
    r = ok("visualize", "activations", env / "run", "--image", env / "content.png", "--layer", "last_conv",
           "--short-side", "40", "-o", tmp_path / "a.png")
    assert "last_conv output 128x" in r.output and (tmp_path / "a.png").is_file()
    ok("visualize", "filters", env / "run", "--image", env / "content.png", "--short-side", "64",
       "-o", tmp_path / "f.png")
    refused(roots, "visualize", "activations", env / "run", "--image", env / "content.png", "--layer", "head",
            "--short-side", "40", "-o", tmp_path / "h.png", expect="leave out --short-side")


# --------------------------------------------------------------------------- 6. output paths

@pytest.mark.parametrize("case", ["eval-onto-file", "train-onto-file", "grid-onto-file", "compare-xyz",
                                  "visualize-xyz", "stylize-onto-folder", "sheet-onto-folder", "weights-folder"])
def test_outputs_are_checked_before_the_work(case, env, roots, tmp_path, random_vgg19_file):
    (tmp_path / "file").write_text("mine")
    folder = tmp_path / "folder"
    folder.mkdir()
    expect = {"stylize-onto-folder": "folder is a folder: give an image file, e.g.",
              "sheet-onto-folder": "folder is a folder: give an image file",
              "weights-folder": "folder is a folder: give the file itself"}.get(case, "")
    args = {"eval-onto-file": ["classify", "eval", env / "run", "-o", tmp_path / "file"],
            "train-onto-file": ["classify", "train", "--dataset", env / "colours", *CLASSIFY, "-o", tmp_path / "file"],
            "grid-onto-file": ["classify", "grid", "--dataset", env / "colours", *CLASSIFY, "--lr", "0.1,0.2",
                               "-o", tmp_path / "file"],
            "compare-xyz": ["classify", "compare", env / "run", "-o", tmp_path / "c.xyz"],
            "visualize-xyz": ["visualize", "filters", env / "run", "--image", env / "content.png",
                              "-o", tmp_path / "f.xyz"],
            "stylize-onto-folder": ["stylize", env / "content.png", env / "style.png", "-o", folder],
            "sheet-onto-folder": ["fast", "sheet", env / "content.png", "--styles", env / "model.pth", "-o", folder],
            "weights-folder": ["stylize", env / "content.png", env / "style.png", "-o", tmp_path / "o.png",
                               "--weights", folder]}[case]
    refused(roots, *args, expect=expect)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"] and not any(folder.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root, who can write into read-only folders")
def test_read_only_output_folder(env, roots, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        refused(roots, "classify", "train", "--dataset", env / "colours", *CLASSIFY, "-o", ro / "run")
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------------- 7. damaged files

def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist(tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        _idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return raw


def test_damaged_mnist_files(mnist, roots, tmp_path):
    labels = mnist / "train-labels-idx1-ubyte.gz"
    _idx(labels, np.full(40, 12))
    args = ["classify", "train", "--dataset", "mnist", "--data-root", tmp_path / "data", *CLASSIFY, "-o",
            tmp_path / "r"]
    refused(roots, *args, expect="a train label is 12")
    data = gzip.compress(b"\0" * 200)
    labels.write_bytes(data[:12] + bytes(b ^ 0x5A for b in data[12:]))  # a corrupt deflate stream
    refused(roots, *args, expect="not a readable MNIST idx file")
    assert not (tmp_path / "r" / "config.json").exists()


@pytest.mark.parametrize("what", ["summary", "metrics"])
def test_compare_refuses_damaged_run_records(what, env, roots, tmp_path):
    shutil.copytree(env / "run", tmp_path / "run")
    if what == "summary":
        (tmp_path / "run" / "summary.json").write_text("{not json")
    else:
        (tmp_path / "run" / "metrics.csv").write_text("epoch,train_loss\none,abc\n")
    damaged = "summary.json" if what == "summary" else "metrics.csv"
    refused(roots, "classify", "compare", env / "run", tmp_path / "run", expect=f"{damaged} is damaged")


def _classify_variant(env, tmp_path, change) -> Path:
    ckpt = torch.load(env / "run" / "best.pt", weights_only=True)
    change(ckpt)
    torch.save(ckpt, tmp_path / "variant.pt")
    return tmp_path / "variant.pt"


def _set_nan(ckpt):
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][name] = torch.full_like(ckpt["state_dict"][name], float("nan"))


@pytest.mark.parametrize("change, expect", [
    (lambda c: c.pop("state_dict"), "has no state_dict"),
    (lambda c: c["state_dict"].update({"trunk.0.weight": [1, 2]}), "is not a tensor"),
    (lambda c: c.update(input_shape="3x16x16"), "lacks a valid 'input_shape'"),
    (lambda c: c.update(num_classes=7), "impossible input shape or class list"),
    (_set_nan, "NaN or infinite"),
], ids=["no-state", "non-tensor", "bad-shape", "bad-classes", "nan-weights"])
def test_classifier_checkpoints_are_validated(change, expect, env, roots, tmp_path):
    path = _classify_variant(env, tmp_path, change)
    refused(roots, "classify", "eval", path, "--dataset", env / "colours", expect=expect)
    refused(roots, "visualize", "layers", path, expect=expect)


@pytest.mark.parametrize("model, expect", [("broken-model.pth", "is not a tensor"), ("nan-model.pth", "NaN"),
                                           ("inf-model.pth", "infinite")])
def test_style_models_are_validated(model, expect, env, roots, tmp_path):
    refused(roots, "fast", "apply", env / model, env / "content.png", "-o", tmp_path / "o.png", expect=expect)
    refused(roots, "fast", "export", env / model, "-o", tmp_path / "o.onnx", expect=expect)


def test_pickled_code_is_never_loaded(env, roots, tmp_path):
    """A model or checkpoint file that holds pickled objects is refused, not run."""
    torch.save({"format": "styleforge-fast-style", "arch": "light", "state_dict": Path("x")}, tmp_path / "p.pth")
    refused(roots, "fast", "apply", tmp_path / "p.pth", env / "content.png", "-o", tmp_path / "o.png",
            expect="pickled Python objects")
    torch.save({"format": "styleforge-classifier/1", "obj": Path("x")}, tmp_path / "p.pt")
    refused(roots, "classify", "eval", tmp_path / "p.pt", expect="pickled Python objects, which styleforge never loads")


# --------------------------------------------------------------------------- 8. resume

@pytest.mark.parametrize("extra, named", [
    (["--optimizer", "adam"], "--optimizer sgd -> adam"), (["--seed", "3"], "--seed 0 -> 3"),
    (["--lr", "0.2"], "--lr 0.05 -> 0.2"),
    (["--batch-size", "8"], "the effective batch (--batch-size x processes) 16 -> 8"),
    (["--per-class", "5"], "--per-class unset -> 5"), (["--activation", "tanh"], "--activation relu -> tanh"),
    (["--epochs", "3"], "--epochs 1 -> 3"), (["--model", "res-cnn", "--option", "width=8"], "--option none -> width=8"),
    (["--lr", "0.2", "--batch-size", "8"], "--lr 0.05 -> 0.2; the effective batch"),  # each named, in one line
], ids=["optimizer", "seed", "lr", "batch", "per-class", "activation", "epochs", "option", "lr-and-batch"])
def test_classify_resume_refuses_changed_settings_and_writes_nothing(extra, named, env, roots):
    base = dict(zip(CLASSIFY[::2], CLASSIFY[1::2]))
    base.update(dict(zip(extra[::2], extra[1::2])))
    args = [a for kv in base.items() for a in kv if a != "-q"]
    refused(roots, "classify", "train", "--dataset", env / "colours", *args, "-q", "-o", env / "run", "--resume",
            expect=named)


def test_classify_resume_refuses_a_damaged_last_checkpoint(env, roots, tmp_path):
    shutil.copytree(env / "run", tmp_path / "run")
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    last["optimizer"]["param_groups"] = last["optimizer"]["param_groups"][:1] * 5
    torch.save(last, tmp_path / "run" / "last.pt")
    refused(roots, "classify", "train", "--dataset", env / "colours", *CLASSIFY, "-o", tmp_path / "run", "--resume",
            expect="its optimizer settings do not fit this run")
    last.pop("epoch")
    torch.save(last, tmp_path / "run" / "last.pt")
    refused(roots, "classify", "train", "--dataset", env / "colours", *CLASSIFY, "-o", tmp_path / "run", "--resume",
            expect="lacks a valid 'epoch'")


@pytest.fixture(scope="module")
def fast_run(env, tmp_path_factory, random_vgg19_file):
    out = tmp_path_factory.mktemp("fastrun") / "m.pth"
    ok("fast", "train", env / "style.png", "--data", env / "photos", "-o", out, "--weights", random_vgg19_file,
       *FAST_TRAIN, "--checkpoint-steps", "1")
    return out


def test_fast_resume_refuses_other_data_and_damaged_checkpoints(env, fast_run, roots, tmp_path, random_vgg19_file):
    (tmp_path / "other").mkdir()
    shutil.copy(env / "content.png", tmp_path / "other" / "c.png")
    args = ["fast", "train", env / "style.png", "-o", fast_run, "--weights", random_vgg19_file, *FAST_TRAIN]
    refused((*roots, fast_run.parent), *args, "--data", tmp_path / "other", "--resume", "--steps", "4",
            expect="--data")
    refused((*roots, fast_run.parent), *args, "--data", env / "photos",
            expect="m.pth is already there: use --overwrite")
    damaged = tmp_path / "d.pth"
    record = torch.load(str(fast_run) + ".ckpt", weights_only=True)
    record.pop("optimizer")
    torch.save(record, str(damaged) + ".ckpt")
    refused((*roots, fast_run.parent), "fast", "train", env / "style.png", "--data", env / "photos", "-o", damaged,
            "--weights", random_vgg19_file, *FAST_TRAIN, "--resume", expect="lacks a valid 'optimizer'")


def test_fast_train_replaces_only_files_a_styleforge_run_wrote(env, fast_run, roots, tmp_path, random_vgg19_file):
    args = [env / "style.png", "--data", env / "photos", "--weights", random_vgg19_file, *FAST_TRAIN]
    notes = tmp_path / "notes.pth"
    notes.write_text("my notes")
    refused(roots, "fast", "train", *args, "-o", notes, expect="notes.pth is already there")
    refused(roots, "fast", "train", *args, "-o", notes, "--overwrite", expect="is not a file a styleforge run wrote")
    assert notes.read_text() == "my notes"
    # m.pth and m.pt share their loss table and plot (named after the stem): another run's are not replaced.
    table = fast_run.with_name("m.losses.csv")
    before = table.read_bytes()
    refused((*roots, fast_run.parent), "fast", "train", *args, "-o", fast_run.with_suffix(".pt"),
            expect="m.losses.csv is already there")
    assert table.read_bytes() == before and not fast_run.with_suffix(".pt").exists()
    refused(roots, "fast", "train", *args, "-o", tmp_path / "model.png", expect="a model file ends in .pth")


def test_fast_train_nan_at_the_first_step_names_no_checkpoint(env, roots, tmp_path, random_vgg19_file):
    line = refused(roots, "fast", "train", env / "style.png", "--data", env / "photos", "-o", tmp_path / "m.pth",
                   "--weights", random_vgg19_file, *FAST_TRAIN, "--style-weight", "1e39")
    assert "at step 1" in line and "no checkpoint was written" in line
    assert not (tmp_path / "m.pth.ckpt").exists()


# --------------------------------------------------------------------------- 9. one-line errors

def test_dataloader_worker_failure_is_one_line(env, roots, tmp_path, random_vgg19_file, monkeypatch):
    (tmp_path / "cut").mkdir()
    # Headers readable, pixel data cut off. The batch check decodes photos first and would stop here
    # (test_a_truncated_photo_does_not_count_toward_the_first_batch): it is skipped, as if the files were
    # damaged after it, so that the workers meet them.
    monkeypatch.setattr("styleforge.style.fast.train.check_batch", lambda files, batch: None)
    for i in range(6):
        data = (env / "photos" / f"p{i % 2}.png").read_bytes()
        (tmp_path / "cut" / f"c{i}.png").write_bytes(data[:len(data) // 2])
    args = [a if a != "0" or i != FAST_TRAIN.index("--workers") + 1 else "1" for i, a in enumerate(FAST_TRAIN)]
    refused(roots, "fast", "train", env / "style.png", "--data", tmp_path / "cut", "-o", tmp_path / "m.pth",
            "--weights", random_vgg19_file, *args, expect="none of the training images can be decoded")


def test_a_weights_variable_naming_a_file_or_nothing_says_so(env, roots, tmp_path, monkeypatch):
    args = ["stylize", env / "content.png", env / "style.png", "-o", tmp_path / "o.png"]
    monkeypatch.setenv("STYLEFORGE_WEIGHTS", str(env / "style.png"))
    refused(roots, *args, expect="$STYLEFORGE_WEIGHTS names")
    refused(roots, *args, expect="which is a file: name the folder that holds the weights")
    monkeypatch.setenv("STYLEFORGE_WEIGHTS", str(tmp_path / "nowhere"))
    monkeypatch.setattr("styleforge.backbone.PROJECT_WEIGHTS", tmp_path / "empty")
    monkeypatch.setattr("torch.hub.load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    refused(roots, *args, expect="nowhere, which does not exist")


def test_offline_download_is_one_line(roots, tmp_path, monkeypatch):
    from urllib.error import URLError

    from torchvision import datasets

    def offline(self, *a, **k):
        print("Downloading http://example/train-images-idx3-ubyte.gz\nFailed to download (trying next):")
        (tmp_path / "d" / "MNIST" / "raw").mkdir(parents=True)  # as torchvision makes it before downloading
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried http://example/, got:\n"
                           f"{URLError('[Errno -3] Temporary failure in name resolution')}")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    line = refused(roots, "classify", "train", "--dataset", "mnist", "--data-root", tmp_path / "d", "--download",
                   *CLASSIFY, "-o", tmp_path / "r", expect="downloading mnist")
    assert "Temporary failure in name resolution" in line and "got:)" not in line  # the reason, not the mirror
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()  # no empty folders left


def test_export_without_onnx_says_what_to_install(env, roots, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    refused(roots, "fast", "export", env / "model.pth", "-o", tmp_path / "m.onnx",
            expect="pip install 'styleforge[onnx]'")


# --------------------------------------------------------------------------- 10. inputs and collisions

def test_stylize_never_writes_over_an_input(env, roots, tmp_path, random_vgg19_file):
    content, style = env / "content.png", env / "style.png"
    w = ["--weights", random_vgg19_file, *FAST_STYLIZE]
    refused(roots, "stylize", content, style, "-o", content, *w, expect="is the content image")
    refused(roots, "stylize", content, style, "-o", tmp_path / "o.png", "--log", style, *w, expect="style image")
    refused(roots, "stylize", content, style, "-o", tmp_path / "o.png", "--log", tmp_path / "o.png", *w,
            expect="would both be written")
    snap = tmp_path / "o.s1-0001.png"  # a style image named like one of --save-every's images
    snap.write_bytes(style.read_bytes())
    refused(roots, "stylize", content, snap, "-o", tmp_path / "o.png", "--save-every", "1", *w,
            expect="--save-every's images beside -o")
    assert snap.read_bytes() == style.read_bytes() and not (tmp_path / "o.png").exists()


def test_fast_apply_never_writes_over_an_input_or_twice(env, roots, tmp_path, monkeypatch):
    model = env / "model.pth"
    shutil.copytree(env / "photos", tmp_path / "photos")
    refused(roots, "fast", "apply", model, tmp_path / "photos" / "p0.png", "-o", tmp_path / "photos" / "p0.png",
            expect="is the input")
    monkeypatch.chdir(tmp_path / "photos")
    refused(roots, "fast", "apply", model, ".", "-o", ".", expect="-o . is the input .: styleforge never writes over")
    # Nor inside it: the pictures would join the photos, and a later run would read them.
    refused(roots, "fast", "apply", model, ".", "-o", "styled", expect="-o styled is inside the input folder .")
    assert not (tmp_path / "photos" / "styled").exists()
    monkeypatch.chdir(tmp_path)
    refused(roots, "fast", "apply", model, tmp_path / "photos" / "p0.png", "-o", model,  # one input: not "a folder"
            expect=f"-o {model} is the model file: styleforge never writes over an input")
    style = tmp_path / "photos" / "s.png"  # the painting of --style-image: never an output either
    shutil.copy(env / "style.png", style)
    refused(roots, "fast", "apply", "--style-image", style, env / "content.png", "-o", style,
            expect=f"-o {style} is the style image")
    shutil.copy(env / "content.png", tmp_path / "s.png")
    refused(roots, "fast", "apply", "--style-image", style, tmp_path / "s.png", "-o", tmp_path / "photos",
            expect="would be written over the style image")
    assert style.read_bytes() == (env / "style.png").read_bytes()
    style.unlink()
    Image.open(env / "content.png").save(tmp_path / "photos" / "p0.gif")
    line = refused(roots, "fast", "apply", model, tmp_path / "photos", "-o", tmp_path / "out",
                   expect="would both be written")
    assert "p0.gif" in line and "p0.png" in line
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for d in ("x", "y"):
        shutil.copy(env / "content.png", tmp_path / d / "p.png")
    line = refused(roots, "fast", "apply", model, tmp_path / "x" / "p.png", tmp_path / "y" / "p.png",
                   "-o", tmp_path / "out", expect="would both be written")
    assert "x/p.png" in line and "y/p.png" in line


def test_fast_train_and_export_never_write_over_inputs(env, roots, tmp_path, random_vgg19_file):
    shutil.copytree(env / "photos", tmp_path / "photos")
    args = ["--weights", random_vgg19_file, *FAST_TRAIN]
    style = tmp_path / "style.pth"  # a painting under a model's name: -o must end in .pth
    shutil.copy(env / "style.png", style)
    refused(roots, "fast", "train", style, "--data", tmp_path / "photos", "-o", style, *args,
            expect="is the style image")
    shutil.copy(env / "content.png", tmp_path / "photos" / "m.losses.png")  # a photo named like the loss plot
    refused(roots, "fast", "train", env / "style.png", "--data", tmp_path / "photos", "-o",
            tmp_path / "photos" / "m.pth", *args, expect="would be written over the training photo")
    assert style.read_bytes() == (env / "style.png").read_bytes()
    refused(roots, "fast", "export", env / "model.pth", "-o", tmp_path / "m.png", expect="an ONNX file ends in .onnx")
    named = tmp_path / "model.onnx"  # a model under an ONNX name
    shutil.copy(env / "model.pth", named)
    refused(roots, "fast", "export", named, "-o", named, expect="is the model file")
    refused(roots, "fast", "apply", env / "model.pth", env / "content.png", "-o", tmp_path / "typo.pgn",
            expect=".pgn is not an image or video format")
    assert not (tmp_path / "typo.pgn").exists() and not (tmp_path / "m.png").exists()


def test_grid_overwrite_deletes_only_what_styleforge_made(env, tmp_path):
    out = tmp_path / "grid"
    (out / "01-holiday-photos").mkdir(parents=True)
    (out / "01-holiday-photos" / "beach.jpg").write_bytes(b"my photo")
    args = ["classify", "grid", "--dataset", env / "colours", *CLASSIFY, "--lr", "0.05,0.1", "--val-split", "0.25",
            "-o", out]
    ok(*args)
    made = sorted(p.name for p in out.glob("0*-lr*"))
    assert len(made) == 2
    r = run(*args)
    assert r.exit_code == 2 and "already holds a grid search" in r.stderr
    ok(*args, "--overwrite")
    assert (out / "01-holiday-photos" / "beach.jpg").read_bytes() == b"my photo"
    assert sorted(p.name for p in out.glob("0*-lr*")) == made
    (out / "grid.md").write_text("My notes on the search")  # a user's file under a grid's name
    r = run(*args, "--overwrite")
    assert r.exit_code == 2 and "grid.md is not a file a styleforge grid search wrote" in r.stderr
    assert (out / "grid.md").read_text() == "My notes on the search"


# --------------------------------------------------------------------------- 11. locks

def test_a_second_run_into_a_locked_output_is_refused(env, roots, tmp_path, random_vgg19_file):
    with lock.hold(tmp_path / "run", folder=False):
        refused(roots, "classify", "train", "--dataset", env / "colours", *CLASSIFY, "-o", tmp_path / "run",
                expect="in use by another styleforge run")
        assert not (tmp_path / "run").exists()
    with lock.hold(tmp_path / "m.pth", folder=False):
        refused(roots, "fast", "train", env / "style.png", "--data", env / "photos", "-o", tmp_path / "m.pth",
                "--weights", random_vgg19_file, *FAST_TRAIN, expect=f"process {os.getpid()}")
    with lock.hold(tmp_path / "grid", folder=False):
        refused(roots, "classify", "grid", "--dataset", env / "colours", *CLASSIFY, "--lr", "0.1,0.2",
                "-o", tmp_path / "grid", expect="in use")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the locks went with their holders


# --------------------------------------------------------------------------- 13. bf16

def test_auto_precision_where_bf16_is_native(env, tmp_path, monkeypatch, random_vgg19_file):
    """On a CPU with native bf16, ``auto`` picks bf16 for inference; a classifier trains exactly as fp32
    does, a style network exactly as ``--precision bf16`` does (its bf16 losses matched fp32's)."""
    from styleforge.runtime import device

    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    assert device.runtime("cpu", "auto").amp_dtype is torch.bfloat16
    assert device.for_training(device.runtime("cpu", "auto"), "auto").amp_dtype is None
    assert device.for_training(device.runtime("cpu", "bf16"), "bf16").amp_dtype is torch.bfloat16
    args = ["classify", "train", "--dataset", env / "colours", "--model", "simple-cnn", "--epochs", "1",
            "--batch-size", "16", "--device", "cpu", "-q"]
    ok(*args, "--precision", "auto", "-o", tmp_path / "auto")
    ok(*args, "--precision", "fp32", "-o", tmp_path / "fp32")
    a, b = (torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("auto", "fp32"))
    assert a["config"]["precision"] == "fp32"
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    train = ["fast", "train", env / "style.png", "--data", env / "photos", "--weights", random_vgg19_file,
             *[x for x in FAST_TRAIN if x not in ("--precision", "fp32")], "--fp32-model"]
    ok(*train, "--precision", "auto", "-o", tmp_path / "auto.pth")
    ok(*train, "--precision", "bf16", "-o", tmp_path / "bf16.pth")
    ok(*train, "--precision", "fp32", "-o", tmp_path / "fp32.pth")
    a, b, c = (torch.load(tmp_path / name, weights_only=True) for name in ("auto.pth", "bf16.pth", "fp32.pth"))
    assert a["training"]["precision"] == "bf16"
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert not all(torch.equal(a["state_dict"][k], c["state_dict"][k]) for k in a["state_dict"])


def test_forced_bf16_training_stays_finite_and_learns(env, tmp_path):
    """``--precision bf16`` (emulated on AVX2 CPUs) keeps loss and optimizer state in fp32."""
    r = ok("classify", "train", "--dataset", env / "colours", "--model", "simple-cnn", "--epochs", "3",
           "--batch-size", "8", "--device", "cpu", "--precision", "bf16", "--val-split", "0", "-q",
           "-o", tmp_path / "bf16")
    summary = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["stopped"] == "completed" and summary["train_acc"] > 0.6, r.output
    state = torch.load(tmp_path / "bf16" / "last.pt", weights_only=True)
    moments = [v for s in state["optimizer"]["state"].values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert moments and all(v.dtype == torch.float32 for v in moments)


# --------------------------------------------------------------------------- 12 and 15. signals (subprocesses)

def _start(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "styleforge", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)


def _wait_for(path: Path, proc, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, "timed out"
        time.sleep(0.05)


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_sigterm_stops_training_like_ctrl_c_and_leaves_no_temporaries(env, tmp_path):
    out = tmp_path / "run"
    proc = _start(["classify", "train", "--dataset", env / "colours", "--model", "simple-cnn", "--epochs", "100000",
                   "--batch-size", "16", "--precision", "fp32", "--checkpoint-seconds", "0", "-q", "-o", out], tmp_path)
    _wait_for(out / "last.pt", proc)
    # A second run into the same place, while the first runs: refused, naming the first.
    refused((env,), "classify", "train", "--dataset", env / "colours", *CLASSIFY, "-o", out,
            "--overwrite", expect=f"in use by another styleforge run (process {proc.pid})")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "stopped by SIGTERM" in _error_line(err) and "--resume" in err
    assert [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".lock"))] == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_ctrl_c_in_stylize_keeps_the_image_and_init_continues(env, tmp_path, random_vgg19_file):
    out = tmp_path / "out.png"
    args = [env / "content.png", env / "style.png", "--weights", random_vgg19_file, "--size", "32",
            "--no-multiscale", "--precision", "fp32", "--device", "cpu"]
    proc = _start(["stylize", *args, "-o", out, "--steps", "100000", "--save-every", "2", "-q"], tmp_path)
    _wait_for(tmp_path / "out.s1-0004.png", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    partial = tmp_path / "out.partial.png"
    assert proc.returncode == 130, err
    line = _error_line(err)
    assert f"the image so far is in {partial}; continue with --init {partial}" in line
    assert Image.open(partial).size == Image.open(tmp_path / "out.s1-0004.png").size and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    ok("stylize", *args, "-o", out, "--init", partial, "--steps", "1", "-q")
    assert out.is_file()


# --------------------------------------------------------------------------- promises (README)

def test_promise_atomic_outputs_survive_a_failed_run(env, tmp_path, random_vgg19_file):
    """A named output is replaced only by a complete file: a failing run leaves it as it was."""
    out = tmp_path / "out.png"
    out.write_bytes(b"earlier result")
    r = run("stylize", env / "content.png", env / "style.png", "-o", out, "--weights", random_vgg19_file,
            *FAST_STYLIZE, "--style-weight", "1e39")
    assert r.exit_code == 2 and out.read_bytes() == b"earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_promise_limits_are_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## What styleforge promises", 1)[1].split("\n## ", 1)[0]
    for word in ("Atomic", "never written over", "locks", "--resume", "pickled", "memory", "NaN"):
        assert word in section, word


def test_promise_a_run_is_not_replaced_without_overwrite(env, roots):
    """A run directory that holds a run is refused unless --overwrite (or --resume)."""
    before = json.loads((env / "run" / "summary.json").read_text())
    refused(roots, "classify", "train", "--dataset", env / "colours", *CLASSIFY, "-o", env / "run")
    assert json.loads((env / "run" / "summary.json").read_text()) == before
