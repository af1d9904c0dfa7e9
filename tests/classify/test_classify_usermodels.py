"""User architectures: layer specs, user model files and fit(model=...), through train/eval/grid/summary/visualize."""

import json
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from styleforge.classify import build_model
from styleforge.classify.checkpoint import load_checkpoint, model_from_checkpoint
from styleforge.classify.data import DataSpec
from styleforge.classify.train import TrainConfig, fit
from styleforge.cli import main_group
from styleforge.runtime.errors import StyleforgeError

TABLE2 = ("conv(32,k5,p2)-relu-maxpool(2)-conv(64,k5,p2)-relu-maxpool(2)-conv(128,k5,p2)-relu-maxpool(2)"
          "-flatten-fc(64)-relu-fc")

MNIST_NET = textwrap.dedent('''
    import torch
    from torch import nn


    class MnistNet(nn.Module):
        """Sizes written for 1x28x28 images, as in a first MNIST exercise."""

        def __init__(self, num_classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc1 = nn.Linear(8 * 14 * 14, num_classes)

        def forward(self, x):
            return self.fc1(self.pool(torch.relu(self.conv1(x))).flatten(1))


    class Adaptive(nn.Module):
        def __init__(self, num_classes, in_channels, width=4):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

        def forward(self, x):
            return self.body(x)


    class WithFeatures(Adaptive):
        def forward(self, x):
            return self.body(x), x


    class Misspelt(Adaptive):
        def forward(self, x):
            return self.body(x).undefined_thing()
''')


def run(*args):
    return CliRunner().invoke(main_group, [str(a) for a in args])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "nets.py"
    path.write_text(MNIST_NET)
    return path


def test_table2_spec_is_simple_cnn_parameter_for_parameter():
    torch.manual_seed(3)
    reference = build_model("simple-cnn", (3, 32, 32), 10).state_dict()
    torch.manual_seed(3)
    spec = build_model(TABLE2, (3, 32, 32), 10)
    assert sum(p.numel() for p in spec.parameters()) == 390_410
    state = spec.state_dict()
    assert list(state) == list(reference)
    assert all(torch.equal(state[k], reference[k]) for k in state)


def test_table2_spec_trains_to_the_same_accuracy_as_simple_cnn(folder, tmp_path):
    results = []
    for name in ("simple-cnn", TABLE2):
        cfg = TrainConfig(DataSpec(str(folder)), output=str(tmp_path / str(len(results))), model=name, epochs=2,
                          batch_size=16, precision="fp32", plots=False, seed=5)
        results.append(fit(cfg))
    a, b = results
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert (a.summary["test_acc"], a.summary["val_acc"]) == (b.summary["test_acc"], b.summary["val_acc"])
    assert b.summary["params_total"] == a.summary["params_total"]


@pytest.mark.parametrize("spec, fragment", [
    ("conv(8)-relu-fc(16)-fc", "layer 3 'fc(16)' gets 8x30x30 feature maps: put flatten"),
    ("conv(8,k5)-maxpool(4)-maxpool(4)-maxpool(4)-flatten-fc", "layer 4 'maxpool(4)' does not fit its 8x1x1 input"),
    ("in(1x28x28)-conv(8)-flatten-fc", "layer 1 'in(1x28x28)': the spec was written for 1x28x28 input but the "
                                       "images are 3x32x32"),
    ("conv(8,z3)-flatten-fc", "layer 1 'conv(8,z3)': unexpected setting 'z'"),
    ("conv(8)-flatten-fc(5)", "gives 5 outputs but the data has 10 classes"),
    ("conv(8)-flatten-fc-softmax", "end with fc, not softmax"),
    ("flatten-conv(8)-fc", "layer 2 'conv(8)' needs C x H x W feature maps"),
])
def test_spec_errors_name_the_layer(spec, fragment):
    with pytest.raises(StyleforgeError) as err:
        build_model(spec, (3, 32, 32), 10)
    assert fragment in str(err.value)


def test_spec_settings_shape_the_layers():
    model = build_model("conv(6,k3,s2,psame)-bn-act-avgpool(3,s1)-dropout(0.2)-gap-flatten-fc", (1, 28, 28), 4,
                        "tanh")
    conv = model.trunk[0]
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (2, 2), (1, 1))
    assert isinstance(model.trunk[2], nn.Tanh) and model.trunk[3].kernel_size == 3
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 4)


def test_user_file_built_for_28x28_gray_names_the_layer_on_32x32_rgb(model_file):
    ok = build_model(f"{model_file}:MnistNet", (1, 28, 28), 10)
    assert ok(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(StyleforgeError, match=r"layer 'conv1' \(Conv2d, 1 input channels.*gets a 3x32x32 input.*"
                                              r"written for 1-channel images"):
        build_model(f"{model_file}:MnistNet", (3, 32, 32), 10)
    with pytest.raises(StyleforgeError, match=r"layer 'fc1' \(Linear, 1568 inputs\) gets a 2048 input.*"
                                              r"computed for another image size"):
        build_model(f"{model_file}:MnistNet", (1, 32, 32), 10)
    with pytest.raises(StyleforgeError, match="has no nn.Module class 'Nope': its classes are MnistNet, Adaptive"):
        build_model(f"{model_file}:Nope", (1, 28, 28), 10)
    with pytest.raises(StyleforgeError, match="Adaptive takes no option 'depth'"):
        build_model(f"{model_file}:Adaptive", (1, 28, 28), 10, depth=2)
    with pytest.raises(StyleforgeError, match="WithFeatures.forward returns a tuple, not a tensor: return the class"):
        build_model(f"{model_file}:WithFeatures", (1, 28, 28), 10)
    # A bug in forward is said to be one, not a size problem.
    with pytest.raises(StyleforgeError, match=r"Misspelt's forward fails after layer 'body.4' with AttributeError "
                                              r"\('Tensor' object has no attribute 'undefined_thing'\): a mistake in "
                                              r"its code, not in the image size"):
        build_model(f"{model_file}:Misspelt", (1, 28, 28), 10)


def test_user_file_trains_evals_summarizes_and_visualizes(folder, model_file, tmp_path):
    out = tmp_path / "run"
    ref = f"{model_file}:Adaptive"
    r = run("classify", "train", "--dataset", folder, "--model", ref, "--option", "width=6", "--epochs", "2",
            "--batch-size", "16", "-o", out, "-q", "--precision", "fp32")
    assert r.exit_code == 0, r.output
    assert (out / "model.py").read_text() == MNIST_NET
    model_file_copy = tmp_path / "moved.py"
    model_file_copy.write_text(MNIST_NET)
    # The checkpoint holds the code: eval works after the file is changed.
    model_file.write_text("raise RuntimeError('changed')\n")
    try:
        ev = run("classify", "eval", out)
        assert ev.exit_code == 0, ev.output
        assert "test accuracy" in ev.output
        ckpt = load_checkpoint(out)
        assert ckpt["model"] == ref and ckpt["model_options"] == {"width": 6}
        assert model_from_checkpoint(ckpt).trunk.body[0].out_channels == 6
        layers = run("visualize", "layers", out)
        assert layers.exit_code == 0 and "conv1" in layers.output
        pic = run("visualize", "filters", out, "--image", folder / "red" / "0.png", "--count", "3",
                  "-o", tmp_path / "filters.png")
        assert pic.exit_code == 0 and (tmp_path / "filters.png").is_file(), pic.output
        assert run("classify", "predict", out, folder / "red" / "0.png").output.startswith("0.png: red ")
    finally:
        model_file.write_text(MNIST_NET)
    s = run("summary", f"{model_file_copy}:Adaptive", "--input", "1x28x28", "--option", "width=5")
    assert s.exit_code == 0, s.output
    assert "trunk.body.0" in s.output and f"total params {5 * 9 + 5 + 5 * 10 + 10:,d}" in s.output
    # The run's own copy as --model of a new run into that folder: the copy would be deleted, then missing.
    again = run("classify", "train", "--dataset", folder, "--model", f"{out / 'model.py'}:Adaptive", "--epochs", "1",
                "-o", out, "--overwrite", "-q")
    assert again.exit_code == 2 and "where the run writes its own model.py: move the model file out" in again.output
    assert (out / "model.py").read_text() == MNIST_NET and (out / "best.pt").is_file()
    # --overwrite replaces the run, its copy of the model file included (a built-in model now: no copy).
    over = run("classify", "train", "--dataset", folder, "--model", "fc-only", "--epochs", "1", "-o", out,
               "--overwrite", "-q")
    assert over.exit_code == 0, over.output
    assert not (out / "model.py").exists()


def test_spec_runs_through_train_eval_grid_summary_and_visualize(folder, tmp_path):
    spec = "conv(8,k3,psame)-relu-maxpool(2)-flatten-fc"
    out = tmp_path / "run"
    r = run("classify", "train", "--dataset", folder, "--model", spec, "--epochs", "2", "--batch-size", "16",
            "-o", out, "-q", "--precision", "fp32")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["model"] == spec
    assert run("classify", "eval", out).exit_code == 0
    g = run("classify", "grid", "--dataset", folder, "--model", spec, "--lr", "0.01,0.05", "--epochs", "1",
            "--batch-size", "16", "-o", tmp_path / "grid", "-q", "--precision", "fp32")
    assert g.exit_code == 0, g.output
    s = run("summary", spec, "--input", "1x28x28", "--num-classes", "3")
    assert s.exit_code == 0 and f"total params {8 * 9 + 8 + 8 * 14 * 14 * 3 + 3:,d}" in s.output
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(photo)
    for src in (out, spec):
        v = run("visualize", "filters", src, "--image", photo, "--count", "4", "-o", tmp_path / "f.png")
        assert v.exit_code == 0, v.output
    bad = run("classify", "train", "--dataset", folder, "--model", "conv(8)-fc", "-o", tmp_path / "bad")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: layer 2 'fc' gets 8x14x14 feature maps")


def test_fit_takes_a_model_object(folder, tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(6, 3))
    before = net[0].weight.detach().clone()
    r = fit(TrainConfig(DataSpec(str(folder)), output=str(tmp_path / "run"), epochs=2, batch_size=16,
                        precision="fp32", plots=False), model=net)
    assert not torch.equal(before, net[0].weight.detach())  # trained in place
    ckpt = load_checkpoint(r.run_dir)
    assert ckpt["model"] == "python:Sequential"
    with pytest.raises(StyleforgeError, match="passed to fit"):
        model_from_checkpoint(ckpt)
    fresh = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 3))
    rebuilt = model_from_checkpoint(ckpt, model=fresh)
    assert torch.equal(rebuilt.trunk[0].weight, net[0].weight.detach().cpu())
    with pytest.raises(StyleforgeError, match="gives 4 outputs per image but the data has 3 classes"):
        fit(TrainConfig(DataSpec(str(folder)), output=str(tmp_path / "bad"), epochs=1, plots=False),
            model=nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)))
