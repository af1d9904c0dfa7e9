"""Coursework features: predict, preview, recipes, losses, tracked test curves, best vs final, compare, empty splits."""

import csv
import json

import matplotlib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from styleforge.classify.compare import COLUMNS, compare
from styleforge.classify.data import DataSpec
from styleforge.classify.predict import image_tensor, predict
from styleforge.classify.preview import preview
from styleforge.classify.recipe import classification_loss
from styleforge.classify.train import TrainConfig, fit, make_optimizer
from styleforge.cli import main_group


def run(*args):
    return CliRunner().invoke(main_group, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    r = run("classify", "train", "--dataset", folder, "--model", "convnet2", "--epochs", "3", "--batch-size", "8",
            "--track-test", "-o", out, "--precision", "fp32")
    assert r.exit_code == 0, r.output
    return out, r.output


def test_train_prints_and_records_the_resolved_recipe_and_files(trained):
    out, output = trained
    assert ("recipe default: SGD, momentum 0.9 (Nesterov), lr 0.05 (one-cycle (20% warm-up, linear decay to 0) "
            "schedule), weight decay 0.0005") in output
    config = json.loads((out / "config.json").read_text())
    assert config["recipe_text"] in (out / "report.md").read_text()
    for name in ("predictions.png", "steps.csv", "curves.png"):
        assert (out / name).is_file(), name
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["test_acc"] != "" and len(rows) == 3  # --track-test recorded each epoch
    summary = json.loads((out / "summary.json").read_text())
    per_epoch = -(-summary["num_train"] // 8)
    with open(out / "steps.csv") as f:
        steps = list(csv.DictReader(f))
    assert [int(s["step"]) for s in steps] == list(range(1, 3 * per_epoch + 1))  # one row per batch
    assert [int(s["epoch"]) for s in steps[per_epoch - 1:per_epoch + 1]] == [1, 2]
    assert summary["final_epoch"] == 3 and summary["final_test_acc"] is not None
    report = (out / "report.md").read_text()
    assert f"best (epoch {summary['best_epoch']}) accuracy" in report and "final (epoch 3) accuracy" in report
    assert "no choice (best epoch, early stopping) looked at them" in report


def test_plain_recipe_is_the_textbook_optimizer(folder):
    cfg = TrainConfig(DataSpec(str(folder)), output="x", recipe="plain", lr=0.1).validate()
    assert (cfg.momentum, cfg.weight_decay, cfg.schedule, cfg.label_smoothing, cfg.nesterov) == \
        (0.0, 0.0, "constant", 0.0, False)
    opt = make_optimizer(cfg, torch.nn.Linear(2, 2))
    assert opt.param_groups[0]["momentum"] == 0 and opt.param_groups[0]["weight_decay"] == 0
    mixed = TrainConfig(DataSpec(str(folder)), output="x", recipe="plain", momentum=0.5).validate()
    assert mixed.momentum == 0.5 and mixed.schedule == "constant"  # explicit settings win over the recipe
    default = TrainConfig(DataSpec(str(folder)), output="x").validate()
    assert (default.momentum, default.weight_decay, default.schedule) == (0.9, 5e-4, "onecycle")


def test_losses():
    out = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    ce = classification_loss("cross-entropy", out, y)
    assert torch.allclose(classification_loss("nll", out, y), ce)
    p = torch.softmax(out, 1)
    expected = ((p - torch.eye(3)[y]) ** 2).sum(1).mean()
    assert torch.allclose(classification_loss("mse", out, y), expected)
    assert torch.allclose(classification_loss("mse", out, y, reduction="sum"), expected * 2)


def test_mse_loss_trains_and_is_reported(folder, tmp_path):
    r = fit(TrainConfig(DataSpec(str(folder)), output=str(tmp_path / "mse"), model="convnet2", loss="mse", epochs=3,
                        batch_size=8, precision="fp32", plots=False))
    assert r.summary["test_acc"] >= 0.8 and r.history[-1]["val_loss"] < 1.0
    assert "loss (mse)" in (tmp_path / "mse" / "report.md").read_text()
    bad = run("classify", "train", "--dataset", folder, "--loss", "hinge", "-o", tmp_path / "x")
    assert bad.exit_code == 2 and "hinge" in bad.stderr


def test_predict_top_k_and_json(trained, folder, tmp_path):
    out, _ = trained
    images = [folder / "red" / "0.png", folder / "blue" / "3.png"]
    preds = predict(out, images, top_k=2, device="cpu")
    assert [p.label for p in preds] == ["red", "blue"]
    assert all(len(p.top) == 2 and p.top[0][1] >= p.top[1][1] for p in preds)
    r = run("classify", "predict", out, *images, "--json", "--top-k", "5")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert len(data[0]["top"]) == 3 and abs(sum(t["probability"] for t in data[0]["top"]) - 1) < 1e-4
    text = run("classify", "predict", out, images[0])
    assert text.exit_code == 0 and text.output.startswith("0.png: red ")
    bad = run("classify", "predict", out, tmp_path / "missing.png")
    assert bad.exit_code == 2 and "no such file" in bad.stderr


def test_image_tensor_crops_the_centre_instead_of_squashing(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 10:30] = 255  # a white centre square, black sides
    Image.fromarray(img).save(tmp_path / "wide.png")
    x = image_tensor(tmp_path / "wide.png", (1, 10, 10))
    assert x.shape == (1, 10, 10) and x.min() > 0.9


def test_preview_grid_and_cli(folder, tmp_path):
    fig = preview(DataSpec(str(folder), image_size=24), ["flip", "crop"], count=6)
    assert len([ax for ax in fig.axes if ax.images]) == 6
    assert sorted(ax.get_title() for ax in fig.axes if ax.images) == ["blue"] * 2 + ["green"] * 2 + ["red"] * 2
    assert "3x24x24, augmented: flip, crop" in fig._suptitle.get_text()
    r = run("classify", "preview", "--dataset", folder, "--count", "5", "-o", tmp_path / "p.png")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "p.png") as im:
        assert im.format == "PNG"
    bad = run("classify", "preview", "--dataset", folder, "--augment", "rotate", "-o", tmp_path / "q.png")
    assert bad.exit_code == 2 and "rotate" in bad.stderr


def test_compare_table_and_folder(trained, folder, tmp_path):
    out, _ = trained
    other = tmp_path / "noval"
    fit(TrainConfig(DataSpec(str(folder), val_split=0), output=str(other), model="fc-only", epochs=2, batch_size=8,
                    precision="fp32", plots=False))
    rows = compare([out, other], tmp_path / "new" / "dir" / "cmp.png", tmp_path / "new" / "t.md")
    assert (tmp_path / "new" / "dir" / "cmp.png").is_file()
    assert rows[0]["train_images"] == json.loads((out / "summary.json").read_text())["num_train"]
    assert rows[0]["activation"] == "relu" and rows[0]["params"] > 0
    assert rows[1]["train_loss"] is not None and rows[0]["images_per_s"] > 0
    assert "| run | model | dataset | activation | params | train_images |" in (tmp_path / "new" / "t.md").read_text()
    assert set(COLUMNS) >= {"train_loss", "train_images", "params", "images_per_s", "activation"}
    from styleforge.classify.compare import compare_figure, load_run

    fig = compare_figure([other], [load_run(other)[1]])
    assert fig.axes[0].get_title() == "loss (train)"  # no "solid: validation" without validation
    # A run of one epoch is one point per line: drawn with a marker, or nothing would show.
    one = compare_figure([other], [load_run(other)[1][:1]])
    lines = [line for ax in one.axes for line in ax.get_lines()]
    assert lines and all(len(line.get_xdata()) == 1 and line.get_marker() not in ("", "None") for line in lines)
    for ax in one.axes:  # and its axis counts whole epochs, not 0.945 ... 1.050
        lo, hi = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert shown == [1.0], shown


def test_empty_split_is_a_one_line_error_not_a_type_error(tmp_path):
    root = tmp_path / "uneven"
    for name, n in (("big", 10), ("b", 2), ("c", 2)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(root / name / f"{i}.png")
    # 20 % of 2 images rounds to none: classes b and c have no test image.
    r = run("classify", "train", "--dataset", root, "--classes", "b,c", "--val-split", "0", "--epochs", "1",
            "-o", tmp_path / "run")
    assert r.exit_code == 2 and "the test split holds no image of the classes b, c" in r.stderr, r.output
    ok = run("classify", "train", "--dataset", root, "--val-split", "0", "--epochs", "1", "-o", tmp_path / "all", "-q")
    assert ok.exit_code == 0, ok.output
    ev = run("classify", "eval", tmp_path / "all", "--dataset", root, "--classes", "b,c")
    assert ev.exit_code == 2 and "TypeError" not in ev.output and "holds no image" in ev.stderr


def test_fit_leaves_the_matplotlib_backend_alone(folder, tmp_path):
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    plt.switch_backend("template")  # stands in for a notebook's inline backend
    try:
        figures = plt.get_fignums()
        fit(TrainConfig(DataSpec(str(folder)), output=str(tmp_path / "r"), model="fc-only", epochs=1, batch_size=16,
                        precision="fp32"))
        assert matplotlib.get_backend() == "template" and plt.get_fignums() == figures
        assert (tmp_path / "r" / "curves.png").is_file() and (tmp_path / "r" / "predictions.png").is_file()
    finally:
        plt.switch_backend(before)


def test_summary_shows_settings_freeze_and_multiply_adds(random_vgg19_file):
    from styleforge.classify import apply_freeze, build_model, summarize

    s = summarize(build_model("simple-cnn", (3, 32, 32), 10), (3, 32, 32))
    conv1 = next(r for r in s.rows if r.kind == "Conv2d")
    assert conv1.settings == "k5 s1 p2" and conv1.macs == 32 * 32 * 32 * (3 * 5 * 5)
    assert [r.settings for r in s.rows if r.kind == "MaxPool2d"] == ["k2 s2 p0"] * 3
    assert s.total_macs == 2_457_600 + 13_107_200 * 2 + 2048 * 64 + 64 * 10
    model = build_model("vgg19", (3, 32, 32), 10, weights=str(random_vgg19_file))
    apply_freeze(model, "all-but-head")
    frozen = summarize(model, (3, 32, 32), "all-but-head")
    assert frozen.trainable_params == 2 * 512 + 512 * 10 + 10 < frozen.total_params
    r = run("summary", "vgg19", "--input", "3x32x32")
    assert r.exit_code == 0, r.output
    assert "trainable 6,154 (freeze policy all-but-head)" in r.output and "k3 s1 p1" in r.output
    r = run("summary", "vgg19", "--input", "3x32x32", "--freeze", "none")
    assert f"trainable {frozen.total_params:,d} (freeze policy none)" in r.output


def test_visualize_keeps_the_aspect_ratio_and_adds_a_colorbar(tmp_path):
    from styleforge.classify import activations_figure, build_model, filters_figure
    from styleforge.classify.visualize import LoadedModel, load_input

    photo = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(photo)
    assert load_input(photo, (3, 32, 32)).shape == (1, 3, 32, 43)  # 4:3 stays 4:3 (was squashed to 32x32)
    torch.manual_seed(0)
    loaded = LoadedModel(build_model("simple-cnn", (3, 32, 32), 10).eval(), (3, 32, 32), "simple-cnn")
    fig, shape = activations_figure(loaded, photo, "trunk.0", count=4)
    assert shape == (32, 32, 43)  # the head (sized for 32x32) is never run
    assert any(ax.get_ylabel() == "activation" for ax in fig.axes)  # the colorbar
    maps = [im for ax in fig.axes for im in ax.images][1:]
    assert len({im.get_clim() for im in maps}) == 1  # one colour scale for every map
    fig = filters_figure(loaded, photo, count=3)
    assert any(ax.get_ylabel() == "activation" for ax in fig.axes)


def test_predictions_figure_marks_mistakes():
    from styleforge.classify import predictions_figure

    images = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    fig = predictions_figure(images, torch.tensor([0, 0, 0]), probs, ["cat", "dog"])
    titles = [(ax.get_title(), ax.title.get_color()) for ax in fig.axes if ax.images]
    assert titles == [("cat 90%", "tab:green"), ("dog 80%\n(true: cat)", "tab:red"), ("cat 60%", "tab:green")]
    assert "1 of 3 wrong" in fig._suptitle.get_text()
