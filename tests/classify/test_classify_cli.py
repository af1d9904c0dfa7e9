"""``styleforge classify ...`` and ``styleforge visualize ...`` through click's CliRunner."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from styleforge.classify import load_classifier
from styleforge.cli import main_group


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """One finished run (simple-cnn, 2 epochs) shared by the eval/visualize tests."""
    out = tmp_path_factory.mktemp("runs") / "run"
    r = CliRunner().invoke(main_group, ["classify", "train", "--dataset", str(folder), "--model", "simple-cnn",
                                        "--epochs", "2", "--batch-size", "16", "-o", str(out), "-q",
                                        "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    return out


def run(*args):
    return CliRunner().invoke(main_group, [str(a) for a in args])


def one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_train_writes_the_run_and_reports(folder, tmp_path):
    out = tmp_path / "run"
    r = run("classify", "train", "--dataset", folder, "--model", "convnet2", "--epochs", "2", "--batch-size", "16",
            "--augment", "crop,flip", "--optimizer", "adam", "--label-smoothing", "0.1", "-o", out)
    assert r.exit_code == 0, r.output
    assert "epoch 2/2: train loss" in r.output and f"wrote {out}: test acc" in r.output
    config = json.loads((out / "config.json").read_text())
    assert config["optimizer"] == "adam" and config["lr"] == 0.001 and config["augment"] == ["crop", "flip"]
    assert config["label_smoothing"] == 0.1 and (out / "report.md").is_file()


def test_eval_compare_and_grid(folder, trained, tmp_path):
    r = run("classify", "eval", trained, "-o", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    summary = json.loads((trained / "summary.json").read_text())
    assert f"test accuracy {summary['test_acc']:.4f}" in r.output and "| red |" in r.output
    assert (tmp_path / "ev" / "confusion_test.png").is_file() and (tmp_path / "ev" / "per_class_test.csv").is_file()
    again = run("classify", "eval", trained, "-o", tmp_path / "ev")  # an earlier evaluation's files: replaced
    assert again.exit_code == 0, again.output
    (tmp_path / "ev" / "eval_test.json").write_text("my notes")  # a user's file under its name: refused
    one_line_error(run("classify", "eval", trained, "-o", tmp_path / "ev"), "eval_test.json is not a file "
                   "styleforge wrote, and evaluations replace only those")
    assert (tmp_path / "ev" / "eval_test.json").read_text() == "my notes"
    copy = shutil.copytree(trained, tmp_path / "copy")  # another split may go into the run
    assert run("classify", "eval", copy, "--split", "train", "-o", copy).exit_code == 0
    assert (copy / "confusion_train.png").is_file() and (copy / "eval_train.json").is_file()
    r = run("classify", "compare", trained, trained, "-o", tmp_path / "cmp.png")
    assert r.exit_code == 0 and "simple-cnn" in r.output and (tmp_path / "cmp.png").is_file()
    # An output inside a compared run would replace its own files; a bad output leaves no folder behind.
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    one_line_error(run("classify", "compare", trained, "-o", trained / "curves.png"),
                   "is inside", "a run being compared: styleforge never writes over an input; choose another -o")
    one_line_error(run("classify", "compare", trained, "--table", trained / "summary.json"), "choose another --table")
    one_line_error(run("classify", "eval", trained, "-o", trained),  # training's own test record stays
                   "would replace the run's own confusion_test.png from training: choose another -o")
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before
    one_line_error(run("classify", "compare", trained, "-o", tmp_path / "new" / "c.txt"), "cannot write a figure")
    assert not (tmp_path / "new").exists()
    (tmp_path / "file.png").write_bytes(b"x")
    one_line_error(run("classify", "compare", trained, "-o", tmp_path / "file.png" / "c.png"), "is a file")
    r = run("classify", "grid", "--dataset", folder, "--model", "fc-only", "--epochs", "1", "--batch-size", "8,16",
            "--lr", "0.05", "-o", tmp_path / "grid", "-q")
    assert r.exit_code == 0, r.output
    assert "| rank | run | batch_size | val_acc" in r.output and "test accuracy" in r.output
    grid_args = ["classify", "grid", "--dataset", folder, "--model", "fc-only", "--epochs", "1", "--batch-size", "8,16",
                 "--lr", "0.05", "-o", tmp_path / "grid"]
    resumed = run(*grid_args, "--resume")  # a finished search: nothing trains, the same table
    assert resumed.exit_code == 0, resumed.output
    assert "finished earlier, kept" in resumed.output and r.output.strip() in resumed.output
    one_line_error(run(*grid_args, "--resume", "--overwrite"), "--overwrite and --resume exclude each other")
    one_line_error(run("classify", "grid", "--dataset", folder, "--lr", "0.05", "-o", tmp_path / "g2"),
                   "nothing to search")
    # Settings that stop the first run before it writes anything leave no grid folder behind.
    one_line_error(run("classify", "grid", "--dataset", folder, "--model", "fc-only", "--per-class", "100",
                       "--epochs", "1", "--lr", "0.05,0.1", "-o", tmp_path / "g3" / "grid"), "is more than available")
    assert not (tmp_path / "g3").exists()


def test_bad_input_gives_one_line_errors(folder, trained, tmp_path):
    base = ["classify", "train", "--epochs", "1", "-q"]
    one_line_error(run(*base, "--dataset", "nope", "-o", tmp_path / "a"),
                   "unknown dataset 'nope': use one of mnist, fashion-mnist, cifar10")
    one_line_error(run(*base, "--dataset", folder, "--model", "nope", "-o", tmp_path / "a"),
                   "unknown model 'nope': use one of fc-only", "vgg19")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "x.png")
    one_line_error(run(*base, "--dataset", flat, "-o", tmp_path / "a"), "has no class sub-folders")
    (flat / "cat").mkdir()
    (flat / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(flat / "cat" / "x.png")
    one_line_error(run(*base, "--dataset", flat, "-o", tmp_path / "a"), "dog holds no images")
    one_line_error(run(*base, "--dataset", folder, "--classes", "red,purple", "-o", tmp_path / "a"),
                   "no class 'purple'", "blue, green, red")
    one_line_error(run(*base, "--dataset", folder, "--per-class", "100", "-o", tmp_path / "a"),
                   "--per-class 100 is more than available")
    one_line_error(run(*base, "--dataset", folder, "--option", "width=8", "-o", tmp_path / "a"),
                   "simple-cnn has no option 'width'")
    assert not (tmp_path / "a").exists()  # none of them left an empty run folder behind
    one_line_error(run(*base, "--dataset", "nope", "-o", tmp_path / "new" / "parent" / "a"), "unknown dataset")
    assert not (tmp_path / "new").exists()  # nor the parents made for it
    # A run directory that already holds a run is refused, and left as it was.
    before = (trained / "summary.json").read_text()
    one_line_error(run(*base, "--dataset", folder, "-o", trained), "already holds a run", "--overwrite")
    assert (trained / "summary.json").read_text() == before
    # A checkpoint for another number of classes / another model.
    one_line_error(run("classify", "eval", trained, "--dataset", folder, "--classes", "red,green"),
                   "was trained on 3 classes but the data has 2")
    one_line_error(run(*base, "--dataset", folder, "--model", "convnet2", "-o", trained, "--resume"),
                   "other settings (--model simple-cnn -> convnet2")
    one_line_error(run("classify", "eval", tmp_path / "nothing-here"), "no such checkpoint file or run directory")


def test_nan_loss_stops_with_a_message_and_keeps_the_best_checkpoint(folder, tmp_path, monkeypatch):
    from styleforge.classify import train

    out = tmp_path / "run"
    # A sane learning rate in epoch 1, then 1e12 times larger (--resume refuses another --lr).
    monkeypatch.setattr(train, "lr_factor", lambda schedule, p, warmup=0.2: 1.0 if p < 0.5 else 1e12)
    line = one_line_error(run("classify", "train", "--dataset", folder, "--model", "convnet2", "--epochs", "2",
                              "--batch-size", "16", "-o", out, "-q"),
                          "the loss became NaN", "lower --lr", "best checkpoint (epoch 1) is kept")
    assert str(out / "best.pt") in line
    assert train.load_checkpoint(out / "best.pt")["epoch"] == 1
    assert json.loads((out / "summary.json").read_text())["stopped"] == "nan"
    # NaN from the start: no epoch, no checkpoint; running again is not told to --resume what is not there.
    monkeypatch.setattr(train, "lr_factor", lambda schedule, p, warmup=0.2: 1e12)
    args = ["classify", "train", "--dataset", folder, "--model", "convnet2", "--epochs", "1", "--batch-size", "16",
            "-o", tmp_path / "never", "-q"]
    result = run(*args[:-1])  # not quiet (bars on stderr too): the NaN is said once, by the error
    assert result.exit_code == 2 and result.output.count("the loss became NaN") == 1, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("error: the loss became NaN")
    shutil.rmtree(tmp_path / "never")
    one_line_error(run(*args), "the loss became NaN", "no epoch finished")
    line = one_line_error(run(*args), "already holds a run", "use --overwrite to replace it or another -o")
    assert "--resume" not in line


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    yy, xx = np.mgrid[:48, :48]
    img = np.stack([(xx * 5) % 256, (yy * 5) % 256, ((xx + yy) * 3) % 256], -1).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def test_visualize_filters_and_activations(trained, photo, tmp_path):
    r = run("visualize", "filters", trained, "--image", photo, "--layer", "conv1", "--indices", "0,5,31",
            "-o", tmp_path / "f.png")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "f.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    r = run("visualize", "activations", trained, "--image", photo, "--layer", "last_conv", "--count", "6",
            "-o", tmp_path / "a.png")
    assert r.exit_code == 0 and "last_conv output 128x4x4" in r.output, r.output
    r = run("visualize", "activations", "resnet18", "--random-init", "--input", "3x64x64", "--image", photo,
            "--layer", "layer4", "--count", "4", "-o", tmp_path / "r.png")
    assert r.exit_code == 0 and "layer4 output 512x2x2" in r.output, r.output
    r = run("visualize", "layers", "vgg19", "--random-init")
    assert r.exit_code == 0 and "relu5_4" in r.output and "conv1_1" in r.output
    one_line_error(run("visualize", "activations", trained, "--image", photo, "--layer", "conv9", "-o",
                       tmp_path / "x.png"), "unknown layer 'conv9': valid names are conv1, last_conv")
    one_line_error(run("visualize", "filters", trained, "--image", photo, "--layer", "trunk.3", "-o",
                       tmp_path / "x.png"), "takes 32 channels")
    one_line_error(run("visualize", "filters", trained, "--image", photo, "--indices", "40", "-o",
                       tmp_path / "x.png"), "has 32 channels (0..31); index 40 is out of range")
    one_line_error(run("visualize", "filters", "nope-model", "--image", photo, "-o", tmp_path / "x.png"),
                   "neither a model")
    params = sum(p.numel() for p in load_classifier(trained)[0].parameters())
    for given in (trained, trained / "best.pt"):  # a trained run's own model, input shape and freeze policy
        r = run("summary", given)
        assert r.exit_code == 0, r.output
        assert f"input 3x16x16; total params {params:,d}" in r.output and "Conv2d" in r.output
    one_line_error(run("summary", trained, "--input", "3x64x64"), "trained on 3x16x16 images: leave out --input")
    one_line_error(run("summary", trained, "--input", "1x32x32"), "takes 3-channel input, not 1")
    # The figure never replaces the image it is computed on.
    before = photo.read_bytes()
    one_line_error(run("visualize", "activations", trained, "--image", photo, "--layer", "last_conv", "-o", photo),
                   "is the --image: styleforge never writes over an input; choose another -o")
    assert photo.read_bytes() == before


@pytest.mark.slow
def test_visualize_real_vgg19_filters(real_weights, shared, tmp_path):
    r = run("visualize", "filters", "vgg19", "--image", shared / "data" / "content" / "zebra.jpg", "--short-side", "96",
            "--indices", "14,26,32,49,52", "-o", tmp_path / "vgg.png")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "vgg.png") as im:
        assert im.size[0] > 500


@pytest.mark.parametrize("model,options", [("res-cnn", ["--option", "width=16"]), ("fast-cnn", []),
                                           ("vgg19", ["--option", "layer=relu3_4", "--option", "pool=grid2"])])
def test_summary_of_the_new_models_matches_numel(model, options):
    from styleforge.classify import build_model
    from styleforge.cli.classify import parse_model_options

    r = run("summary", model, "--input", "3x32x32", *options)
    assert r.exit_code == 0, r.output
    net = build_model(model, (3, 32, 32), 10, **parse_model_options(tuple(options[1::2]), model))
    assert f"total params {sum(p.numel() for p in net.parameters()):,d}" in r.output


def test_int8_features_flag(folder, tmp_path):
    out = tmp_path / "int8"
    r = run("classify", "train", "--dataset", folder, "--model", "bn-cnn", "--option", "widths=8,16", "--freeze",
            "all-but-head", "--int8-features", "--device", "cpu", "--epochs", "2", "--batch-size", "16", "-q",
            "-o", out)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["int8_features"] and summary["cached_features"]
    one_line_error(run("classify", "train", "--dataset", folder, "--model", "convnet2", "--int8-features",
                       "--device", "cpu", "-q", "-o", tmp_path / "bad"), "--int8-features needs the frozen-trunk cache")
