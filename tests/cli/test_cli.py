"""The stylize and weights commands through Click's runner, on seeded random weights."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import striped_image, synthetic_image
from PIL import Image

from styleforge.backbone import build_vgg_features
from styleforge.cli import main_group
from styleforge.runtime.io import save_image

FAST = ["--size", "32", "--steps", "2", "--no-multiscale", "--precision", "fp32", "--device", "cpu", "-q"]


@pytest.fixture
def images(tmp_path):
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    save_image(synthetic_image(48, 64), content)
    save_image(striped_image(64, 64), style)
    return content, style


def run(*args):
    return CliRunner().invoke(main_group, [str(a) for a in args])


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def _fails(result, message):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_stylize_writes_the_output(images, tmp_path, random_vgg19_file):
    content, style = images
    out = tmp_path / "out.png"
    _ok(run("stylize", content, style, "-o", out, "--weights", random_vgg19_file, *FAST))
    assert Image.open(out).size == (32, 24)


@pytest.fixture(scope="module")
def random_vgg16_file(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("w16") / "vgg16.pth"
    torch.save(build_vgg_features("vgg16").state_dict(), path)
    return path


@pytest.mark.parametrize("extra", [
    ["--style-strength", "0.3"],
    ["--content-weight", "1", "--style-weight", "10", "--tv-weight", "0"],
    ["--content-layers", "relu3_2", "--style-layers", "relu1_1:2,relu2_1"],
    ["--style-scale", "0.5", "--pooling", "avg", "--seed", "3", "--pyramid-levels", "0"],
    ["--init", "noise", "--optimizer", "adam", "--lr", "0.05"],
    ["--original-colors", "--precision", "bf16"],
    ["--multiscale", "--size", "64", "--scales", "32,64", "--steps", "2,1"],
])
def test_stylize_options(images, tmp_path, random_vgg19_file, extra):
    content, style = images
    out = tmp_path / "out.jpg"
    _ok(run("stylize", content, style, "-o", out, "--weights", random_vgg19_file, *FAST, *extra))
    assert Image.open(out).size == ((64, 48) if "64" in extra else (32, 24))


def test_two_styles_blend_init_file_vgg16(images, tmp_path, random_vgg16_file):
    content, style = images
    out = tmp_path / "out.png"
    _ok(run("stylize", content, style, content, "--style-blend", "0.7,0.3", "--init", content,
            "--backbone", "vgg16", "--weights", random_vgg16_file, "-o", out, *FAST))
    assert out.exists()


def test_save_every_and_log(images, tmp_path, random_vgg19_file):
    content, style = images
    out, log = tmp_path / "out.png", tmp_path / "run.json"
    _ok(run("stylize", content, style, "-o", out, "--weights", random_vgg19_file, "--save-every", "1",
            "--log", log, *FAST))
    assert sorted(p.name for p in tmp_path.glob("out.s*.png")) == ["out.s1-0001.png", "out.s1-0002.png"]
    record = json.loads(log.read_text())
    assert len(record["history"]) == 2 and record["config"]["resolved"]["scales"] == [32]
    assert record["history"][-1]["total"] > 0


@pytest.mark.parametrize("kind", ["L", "P", "RGBA", "I;16", "CMYK"])
def test_unusual_image_modes_work(tmp_path, random_vgg19_file, kind):
    arr = (synthetic_image(40, 40)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    if kind == "I;16":
        img = Image.fromarray((arr[..., 0].astype(np.uint16) * 257))
    else:
        img = img.convert(kind)
    src = tmp_path / ("in.jpg" if kind == "CMYK" else "in.png")
    img.save(src)
    _ok(run("stylize", src, src, "-o", tmp_path / "out.png", "--weights", random_vgg19_file, *FAST))


def test_bad_inputs_fail_cleanly(images, tmp_path, random_vgg19_file):
    content, style = images
    out = tmp_path / "out.png"
    w = ["--weights", random_vgg19_file]
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "empty.png").write_bytes(b"")
    data = (tmp_path / "big.jpg")
    Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(data)
    (tmp_path / "cut.jpg").write_bytes(data.read_bytes()[:400])
    cases = [
        ((tmp_path / "missing.jpg", style), [], "no such file"),
        ((tmp_path / "text.jpg", style), [], "not an image file"),
        ((content, tmp_path / "empty.png"), [], "is empty"),
        ((content, tmp_path / "cut.jpg"), [], "truncated or corrupt"),
        ((content, style), ["--size", "8"], "too small"),
        ((content, style), ["--style-layers", "relu9_1"], "unknown layer 'relu9_1'"),
        ((content, style), ["--style-strength", "1.5"], "must be in [0, 1], got 1.5"),
        ((content, style), ["--style-blend", "1,2"], "2 weights but there is 1 style image"),
        ((content, style), ["--style-weight", "1e39"], "loss became NaN"),
        ((content, style), ["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"],
         "device"),
        ((content, style), ["--steps", "1,2,3"], "3 values but there is 1 scale"),
    ]
    for inputs, extra, message in cases:
        _fails(run("stylize", *inputs, "-o", out, *w, *FAST, *extra), message)
        assert not out.exists()
    _fails(run("stylize", content, style, "-o", tmp_path / "nope" / "o.png", *w, *FAST), "does not exist")
    _fails(run("stylize", content, style, "-o", tmp_path / "o.xyz", *w, *FAST), "cannot tell the image format")
    _fails(run("stylize", content, style, "-o", out, "--weights", tmp_path / "text.jpg", *FAST),
           "not a readable PyTorch weights file")
    _fails(run("stylize", content, style, "-o", out, "--size", "abc"), "Invalid value for '--size'")


def test_existing_output_survives_a_failed_run(images, tmp_path, random_vgg19_file):
    content, style = images
    out = tmp_path / "out.png"
    out.write_bytes(b"earlier result")
    _fails(run("stylize", content, style, "-o", out, "--weights", random_vgg19_file, *FAST,
               "--style-weight", "1e39"), "NaN")
    assert out.read_bytes() == b"earlier result"


def test_weights_command_lists_the_lookup(tmp_path, monkeypatch, random_vgg19_file):
    monkeypatch.setenv("STYLEFORGE_WEIGHTS", str(tmp_path))
    (tmp_path / "vgg19-features.pth").write_bytes(random_vgg19_file.read_bytes())
    result = run("weights")  # right name, wrong bytes: listed, then one line, and the exit says so
    line = next(ln for ln in result.stdout.splitlines() if "vgg19-features.pth" in ln and str(tmp_path) in ln)
    assert "SHA256 MISMATCH" in line and "<- used" in line and "resnet18" in result.stdout
    assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "vgg19-features.pth does not match its known sha256" in result.stderr
    # A $STYLEFORGE_WEIGHTS folder that does not exist is noted; a file named as the folder is refused, as a run
    # would refuse it.
    monkeypatch.setenv("STYLEFORGE_WEIGHTS", str(tmp_path / "nowhere"))
    result = run("weights")
    assert f"note: $STYLEFORGE_WEIGHTS names {tmp_path / 'nowhere'}, which does not exist" in result.stdout
    monkeypatch.setenv("STYLEFORGE_WEIGHTS", str(tmp_path / "vgg19-features.pth"))
    _fails(run("weights"), "vgg19-features.pth, which is a file: name the folder that holds the weights")


def test_weights_command_passes_verified_weights(real_weights):
    line = next(ln for ln in _ok(run("weights")).output.splitlines() if str(real_weights) in ln and "vgg19" in ln)
    assert "verified" in line and "<- used" in line


def test_weights_download_offline_fails_cleanly(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)  # after torch has made its cache folder
    hub = Path(torch.hub.get_dir())
    # About the download asked for, not about local files (which the lookup may well have).
    _fails(run("weights", "--download", "vgg19", "--to", tmp_path), "weights failed (")
    result = run("weights", "--download", "vgg19", "--to", tmp_path)
    _fails(result, "check the internet connection")
    assert "Downloading" not in result.output  # torch's line before it tries is held back
    assert list(tmp_path.iterdir()) == [] and not hub.exists()  # nor torch's empty cache folder
    _fails(run("weights", "--download", "resnet18", "--to", tmp_path), "downloading torchvision's resnet18 weights")
    (tmp_path / "img.jpg").write_bytes(b"x")  # a file as the folder: said so, before any download
    _fails(run("weights", "--download", "vgg19", "--to", tmp_path / "img.jpg"), "--to ")
    _fails(run("weights", "--download", "vgg19", "--to", tmp_path / "img.jpg"), "is a file: give a folder")
