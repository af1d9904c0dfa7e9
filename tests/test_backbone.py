import hashlib
import os

import pytest
import torch
from conftest import synthetic_image

from styleforge import backbone
from styleforge.backbone import ResNet18Trunk, VGGFeatures, vgg_layer_names
from styleforge.runtime.errors import StyleforgeError


def test_layer_names_follow_torchvision_indices():
    names = vgg_layer_names("vgg19")
    assert len(names) == 37
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert names.index("relu4_2") == 22 and names.index("relu5_1") == 29
    assert len(vgg_layer_names("vgg16")) == 31


def test_named_activations_from_one_pass_and_truncation(random_vgg19_file):
    ex = VGGFeatures(["relu1_1", "relu3_1"], weights=random_vgg19_file)
    out = ex(synthetic_image(32, 48))
    assert set(out) == {"relu1_1", "relu3_1"}
    assert out["relu1_1"].shape == (1, 64, 32, 48) and out["relu3_1"].shape == (1, 256, 8, 12)
    assert len(ex.features) == vgg_layer_names().index("relu3_1") + 1  # stops at the deepest layer
    assert not any(p.requires_grad for p in ex.parameters())
    assert ex.min_size == 4
    deep = VGGFeatures(["pool5"], weights=random_vgg19_file)  # pool5 itself halves 2 px to 1
    assert deep.min_size == 32 and deep(synthetic_image(32, 32))["pool5"].shape == (1, 512, 1, 1)


def test_reading_a_conv_output_is_not_clobbered_by_inplace_relu(random_vgg19_file):
    ex = VGGFeatures(["conv1_1", "relu1_1"], weights=random_vgg19_file)
    out = ex(synthetic_image(16, 16))
    assert out["conv1_1"].min() < 0  # pre-activation kept its negative values
    torch.testing.assert_close(out["relu1_1"], out["conv1_1"].clamp(min=0))


def test_frozen_unless_built_trainable_and_train_mode_follows(random_vgg19_file):
    frozen = VGGFeatures(["relu1_1"], weights=random_vgg19_file)
    holder = torch.nn.Sequential(frozen).train()  # train() on a model holding it changes nothing
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert frozen(synthetic_image(8, 8))["relu1_1"].grad_fn is None
    trainable = VGGFeatures(["relu1_1"], weights=random_vgg19_file, trainable=True)
    assert not trainable.training and all(p.requires_grad for p in trainable.parameters())
    holder = torch.nn.Sequential(trainable).train()
    assert trainable.training and trainable.features[0].training
    holder.eval()
    assert not trainable.training and not trainable.features[0].training


def test_unknown_layer_lists_valid_names(random_vgg19_file):
    with pytest.raises(StyleforgeError, match="unknown layer 'relu9_9'.*relu1_1"):
        VGGFeatures(["relu9_9"], weights=random_vgg19_file)


def test_lookup_order_explicit_then_env_then_project(tmp_path, monkeypatch, random_vgg19_file):
    env_dir, proj_dir = tmp_path / "env", tmp_path / "proj"
    env_dir.mkdir(), proj_dir.mkdir()
    monkeypatch.setattr(backbone, "PROJECT_WEIGHTS", proj_dir)
    assert backbone.locate("vgg19") is None
    (proj_dir / "vgg19-features.pth").write_bytes(random_vgg19_file.read_bytes())
    assert backbone.locate("vgg19").origin == "project weights/"
    monkeypatch.setenv("STYLEFORGE_WEIGHTS", str(env_dir))
    (env_dir / "vgg19-features.pth").write_bytes(random_vgg19_file.read_bytes())
    assert backbone.locate("vgg19").origin == "$STYLEFORGE_WEIGHTS"
    assert backbone.locate("vgg19", random_vgg19_file).origin == "--weights"


def test_offline_without_weights_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(backbone, "PROJECT_WEIGHTS", tmp_path)

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(StyleforgeError, match="put vgg19-features.pth in weights/"):
        VGGFeatures(["relu1_1"])


def test_bad_weights_files(tmp_path, random_vgg19_file):
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    with pytest.raises(StyleforgeError, match="not a readable PyTorch weights file"):
        VGGFeatures(["relu1_1"], weights=junk)
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(random_vgg19_file.read_bytes()[:100_000])
    with pytest.raises(StyleforgeError, match="not a readable PyTorch weights file"):
        VGGFeatures(["relu1_1"], weights=truncated)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(StyleforgeError, match="does not hold vgg19 weights"):
        VGGFeatures(["relu1_1"], weights=wrong)
    with pytest.raises(StyleforgeError, match="does not hold vgg16 weights"):
        VGGFeatures(["relu1_1"], arch="vgg16", weights=random_vgg19_file)


def test_hash_checks(tmp_path, random_vgg19_file):
    data = random_vgg19_file.read_bytes()
    good = tmp_path / f"vgg19-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    good.write_bytes(data)
    assert backbone.verify(good) == "verified"
    bad = tmp_path / "vgg19-deadbeef.pth"
    bad.write_bytes(data)
    with pytest.raises(StyleforgeError, match="does not match its known sha256"):
        backbone.verify(bad)
    assert backbone.verify(random_vgg19_file) == "unknown"
    impostor = tmp_path / "vgg19-features.pth"  # the known file's name, other bytes
    impostor.write_bytes(data)
    with pytest.raises(StyleforgeError, match="corrupt or incomplete"):
        backbone.verify(impostor)


def test_real_vgg19_loads_strictly_with_known_statistics(real_weights):
    ex = VGGFeatures(["relu1_1", "relu3_1", "relu4_2", "relu5_1"])
    assert "vgg19-features.pth" in ex.source and backbone.verify(real_weights / "vgg19-features.pth") == "verified"
    with torch.no_grad():
        out = ex(synthetic_image(64, 64))
    # Reference means measured once on this deterministic image (Caffe-scale activations).
    expected = {"relu1_1": 38.407, "relu3_1": 190.67, "relu4_2": 523.88, "relu5_1": 77.284}
    for name, mean in expected.items():
        assert out[name].mean().item() == pytest.approx(mean, rel=1e-3), name


def test_loss_weights_mean_the_same_for_a_rescaled_backbone(random_vgg19_file):
    """Scaling every conv layer (as the Caffe VGG19 differs from torchvision's) leaves the
    style-transfer objective unchanged: the defaults work for both weight sources."""
    from styleforge.runtime.device import Runtime
    from styleforge.style.gatys import DEFAULT_STYLE_LAYERS
    from styleforge.style.perceptual import PerceptualLoss

    layers = ["relu4_2", *DEFAULT_STYLE_LAYERS]
    state = torch.load(random_vgg19_file)
    scaled = {}
    cumulative = 1.0
    for key in sorted((k for k in state if k.endswith("weight")), key=lambda k: int(k.split(".")[1])):
        cumulative *= 3.0  # each conv multiplies its output scale by 3 (bias scaled to match)
        scaled[key] = state[key] * 3.0
        scaled[key.replace("weight", "bias")] = state[key.replace("weight", "bias")] * cumulative
    strip = lambda d: {k[len("features."):]: v for k, v in d.items()}
    rt = Runtime(torch.device("cpu"))
    content, style, image = synthetic_image(32, 32), synthetic_image(32, 32, 2.0), synthetic_image(32, 32, 1.0)
    values = []
    for sd in (strip(state), strip(scaled)):
        ex = VGGFeatures(layers, state_dict=sd)
        obj = PerceptualLoss(ex, style, {"relu4_2": 1.0}, DEFAULT_STYLE_LAYERS, content=content,
                             content_weight=0.5, style_weight=50.0, tv_weight=1.0, rt=rt)
        values.append(obj(image)["total"].item())
    assert values[0] == pytest.approx(values[1], rel=1e-4)


def test_resnet18_trunk_random_init_shapes():
    trunk = ResNet18Trunk(pretrained=False)
    out = trunk(torch.rand(2, 3, 64, 64))
    assert out["layer4"].shape == (2, 512, 2, 2) and out["pool"].shape == (2, 512)
    assert trunk.out_features == 512
    model = backbone.resnet18(num_classes=7)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min())


def test_int8_copy_is_close_to_fp32_and_leaves_the_original_alone():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.rand(32, 3, 16, 16)
    q = backbone.int8_copy(net, [images[:16]])
    assert any("quantized" in type(m).__module__ for m in q.modules())  # really int8 kernels
    with torch.no_grad():
        ref, out = net(images[16:]), q(images[16:])
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert _cosine(out, ref) > 0.99
    assert not torch.equal(out, ref)  # quantized, not a copy
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_int8_copy_needs_calibration_data():
    with pytest.raises(StyleforgeError, match="calibration needs at least one batch"):
        backbone.int8_copy(torch.nn.Conv2d(3, 4, 3), [])


def test_int8_vgg19_features_of_real_photos_match_fp32(real_weights, shared):
    from styleforge.runtime.io import open_rgb, pil_to_tensor, resize_long_side

    photos = sorted((shared / "data" / "bsds500" / "val").glob("*.jpg"))[:12]
    x = torch.cat([pil_to_tensor(resize_long_side(open_rgb(p), 64))[..., :40, :40] for p in photos])
    trunk = VGGFeatures(["relu4_4"])
    body = torch.nn.Sequential(trunk.normalize, trunk.features)
    q = backbone.int8_copy(body, [x[:8]])
    with torch.no_grad():
        ref, out = body(x[8:]), q(x[8:])
    assert _cosine(out, ref) > 0.98  # held-out photos, real ImageNet weights


def test_downloaded_vgg_trunk_is_found_and_verifies(tmp_path, monkeypatch, random_vgg19_file):
    """`weights --download vgg19` saved torchvision's trunk as vgg19-features.pth, the name pinned
    to the Caffe file's sha256, so every later run rejected it as corrupt."""
    from click.testing import CliRunner

    from styleforge.cli import main_group

    full = {**torch.load(random_vgg19_file, weights_only=True), "classifier.0.weight": torch.zeros(2, 2)}
    monkeypatch.setattr(backbone, "_download_state_dict", lambda arch, asked=False: full)
    result = CliRunner().invoke(main_group, ["weights", "--download", "vgg19", "--to", str(tmp_path)])
    assert result.exit_code == 0, result.output
    saved = tmp_path / backbone.download_name("vgg19")
    assert saved.is_file() and saved.name in result.output and saved.name not in backbone.KNOWN_FILES
    monkeypatch.setenv("STYLEFORGE_WEIGHTS", str(tmp_path))
    ex = VGGFeatures(["relu1_1"])
    assert str(saved) in ex.source
    listing = CliRunner().invoke(main_group, ["weights"]).output
    assert "MISMATCH" not in listing and f"{saved}  [unknown" in listing


def test_offline_resnet18_message_names_a_file_the_lookup_checks(tmp_path, monkeypatch):
    monkeypatch.setattr(backbone, "PROJECT_WEIGHTS", tmp_path)
    with pytest.raises(StyleforgeError, match=r"no resnet18 weights found: put (\S+) in weights/") as err:
        backbone.load_state_dict("resnet18", download=False)
    named = err.value.args[0].split("put ")[1].split(" ")[0]
    assert named in [c.path.name for c in backbone.candidates("resnet18")]
    (tmp_path / named).write_bytes(b"")  # the named file is where the lookup then looks
    assert backbone.locate("resnet18").path == tmp_path / named


def test_weights_folders_are_one_list_for_backbones_and_style_models(tmp_path, monkeypatch):
    from styleforge.style.fast.model import available_models

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    monkeypatch.setenv("STYLEFORGE_WEIGHTS", f"{a}{os.pathsep}{b}")
    (b / "vgg16-features.pth").write_bytes(b"x")
    (b / "fast-mine.pth").write_bytes(b"x")
    assert [f for _, f in backbone.weights_folders()][:2] == [a, b]
    assert backbone.locate("vgg16").path == b / "vgg16-features.pth"
    assert available_models()["mine"] == b / "fast-mine.pth"
