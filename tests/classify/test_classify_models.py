import pytest
import torch
from click.testing import CliRunner

from styleforge.classify import MODELS, apply_freeze, build_model, summarize, summary
from styleforge.cli import main_group
from styleforge.runtime.errors import StyleforgeError

SMALL = ["fc-only", "gray1conv", "convnet2", "simple-cnn", "bn-cnn"]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_output_shape_on_mnist_and_cifar_inputs(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, num_classes=10).eval()
    out = model(torch.rand(2, *shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", SMALL)
def test_summary_totals_match_numel(name):
    model = build_model(name, (3, 32, 32), 10)
    s = summarize(model, (3, 32, 32))
    assert s.total_params == sum(p.numel() for p in model.parameters())
    assert sum(r.params for r in s.rows) == s.total_params
    assert s.rows[-1].output_shape == (10,)


def test_simple_cnn_layout():
    s = summarize(build_model("simple-cnn", (3, 32, 32), 10), (3, 32, 32))
    convs = [r for r in s.rows if r.kind == "Conv2d"]
    assert [r.output_shape for r in convs] == [(32, 32, 32), (64, 16, 16), (128, 8, 8)]
    assert [r.output_shape for r in s.rows if r.kind == "Linear"] == [(64,), (10,)]
    gray = summarize(build_model("gray1conv", (1, 28, 28), 3), (1, 28, 28))
    assert [r.output_shape for r in gray.rows if r.kind == "MaxPool2d"] == [(8, 14, 14)]


@pytest.mark.parametrize("act", ["tanh", "leaky-relu", "gelu"])
def test_activation_choice(act):
    model = build_model("convnet2", (1, 28, 28), 10, act)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"tanh": "Tanh", "leaky-relu": "LeakyReLU", "gelu": "GELU"}[act] in kinds and "ReLU" not in kinds


def test_freeze_policies_on_resnet18():
    model = build_model("resnet18", (3, 32, 32), 10)
    apply_freeze(model, "all-but-layer4")
    trainable = {n.split(".")[1] if n.startswith("trunk") else "head" for n, p in model.named_parameters()
                 if p.requires_grad}
    assert trainable == {"layer4", "head"}
    apply_freeze(model, "all-but-head")
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"head"}
    apply_freeze(model, "none")
    assert all(p.requires_grad for p in model.parameters())


def test_vgg19_classifier_freezing_all_but_the_last_block():
    # random trunk weights (pretrained=False): only which parameters train matters here
    model = build_model("vgg19", (3, 32, 32), 4, pretrained=False, layer="relu5_1")
    apply_freeze(model, "all-but-layer4")
    features = model.trunk.features
    tuned = {name for name, m in zip(features.names, features.features) if any(p.requires_grad for p in m.parameters())}
    assert tuned == {"conv5_1"} and all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert features.training  # a trainable trunk follows train()/eval()
    model.eval()
    assert not features.training


def test_one_step_changes_exactly_the_unfrozen_parameters():
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 32, 32), 4)
    apply_freeze(model, "all-but-layer4")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == p.requires_grad, n


def test_bad_names():
    with pytest.raises(StyleforgeError, match="unknown model 'nope': use one of fc-only"):
        build_model("nope", (3, 32, 32), 10)
    with pytest.raises(StyleforgeError, match="unknown activation"):
        build_model("convnet2", (3, 32, 32), 10, "swish2")
    with pytest.raises(StyleforgeError, match="no pretrained weights"):
        build_model("simple-cnn", (3, 32, 32), 10, pretrained=True)
    with pytest.raises(StyleforgeError, match="simple-cnn has no pretrained weights: --pretrained and --weights"):
        build_model("simple-cnn", (3, 32, 32), 10, weights="w.pth")
    with pytest.raises(StyleforgeError, match="simple-cnn has no option 'width': it takes no --option"):
        build_model("simple-cnn", (3, 32, 32), 10, width=3)


def test_the_training_config_gives_the_same_errors_as_the_builder(tmp_path):
    from styleforge.classify import DataSpec, TrainConfig

    base = TrainConfig(DataSpec(str(tmp_path)), str(tmp_path / "run"), model="simple-cnn")
    for bad, message in (({"pretrained": True}, "simple-cnn has no pretrained weights"),
                         ({"augment": ["crop", "rotate"]}, "unknown --augment 'rotate': use none or a list of crop"),
                         ({"optimizer": "lbfgs"}, "unknown --optimizer 'lbfgs': use one of sgd"),
                         ({"overwrite": True, "resume": True}, "--overwrite and --resume exclude each other")):
        with pytest.raises(StyleforgeError, match=message):
            TrainConfig(**{**base.__dict__, **bad}).validate()


def test_cli_models_and_summary():
    runner = CliRunner()
    out = runner.invoke(main_group, ["classify", "models"])
    assert out.exit_code == 0 and all(name in out.output for name in MODELS)
    lines = {line.split()[0]: line for line in out.output.splitlines() if line.split()}
    assert "(ImageNet weights; --random-init for none)" in lines["vgg19"]  # each one's default
    assert "(random weights; --pretrained for ImageNet's)" in lines["resnet18"]
    for args, said in ((["convnet2", "--option", "width=8"], "convnet2 has no option 'width': it takes no --option"),
                       (["nets.py"], "names a file: add the class to train, as nets.py:ClassName"),
                       (["runs/none"], "runs/none does not exist: give a trained run folder or checkpoint")):
        bad = runner.invoke(main_group, ["summary", *args])
        assert bad.exit_code == 2 and said in bad.stderr, bad.output
    out = runner.invoke(main_group, ["summary", "simple-cnn", "--input", "3x32x32"])
    assert out.exit_code == 0, out.output
    total = sum(p.numel() for p in build_model("simple-cnn", (3, 32, 32), 10).parameters())
    assert f"total params {total:,d}" in out.output
    bad = runner.invoke(main_group, ["summary", "simple-cnn", "--input", "3x32"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --input '3x32' is not CxHxW")
    small = runner.invoke(main_group, ["summary", "simple-cnn", "--input", "1x4x4"])
    assert small.exit_code == 2 and "cannot take a 1x4x4 input" in small.stderr


def test_summary_shows_where_a_trunk_pools_its_features():
    """VGG19's trunk pools in its own forward: a row of its own, between its last ReLU and the head."""
    rows = [(r.name, r.kind, r.settings, r.output_shape) for r in summary("vgg19", (3, 64, 64), pretrained=False).rows]
    assert rows[-3:-1] == [("trunk", "VGGTrunk", "avg pool", (512,)), ("head.0", "BatchNorm1d", "", (512,))]
    assert rows[-4][2:] == ("", (512, 4, 4))
    # A module of layers whose forward adds nothing to them is no row (its last layer says it).
    assert not any(r.name in ("trunk", "head") for r in summary("simple-cnn", (3, 32, 32)).rows)
