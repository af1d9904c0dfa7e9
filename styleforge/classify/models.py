"""The classifier registry: from a flatten-and-linear model to fine-tuned ResNet18 / VGG19.

Every builder takes the input shape (channels, height, width), the number of classes and
an activation name, and computes layer sizes from the input shape with a dry run, so each
model works on 1x28x28 MNIST as on 3x32x32 CIFAR-10 or larger images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import ResNet18Stages, VGGFeatures, resnet18
from ..runtime.errors import StyleforgeError, first_line, out_of_memory, too_large
from ..runtime.guard import check_model_options

if TYPE_CHECKING:
    from torchvision.models import ResNet

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky-relu": lambda: nn.LeakyReLU(0.1),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
FREEZE_POLICIES = ("none", "all-but-head", "all-but-layer4")


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise StyleforgeError(f"unknown activation {name!r}: use one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _flat_size(trunk: nn.Module, shape: tuple[int, int, int]) -> int:
    """Size of the trunk's flattened output, from a dry run."""
    return check_input(trunk, shape, "this model", "use larger images").flatten(1).shape[1]


def check_input(model: nn.Module, shape: tuple[int, int, int], name: str,
                hint: str = "use a larger --input") -> torch.Tensor:
    """One zero image of ``shape`` through ``model`` (its output, for sizes): one-line errors for a shape it
    cannot take, or one too large for memory (building a model, ``summary --input``, ``visualize --input``)."""
    text = "x".join(map(str, shape))
    was = model.training
    try:
        with torch.no_grad():
            return model.eval()(torch.zeros(1, *shape))
    except RuntimeError as exc:
        if out_of_memory(exc):
            raise too_large(exc, f"{name} on a {text} input", "use smaller --option values, --num-classes "
                            "or --input") from None
        raise StyleforgeError(f"{name} cannot take a {text} input ({first_line(exc, 100)}): {hint}") from None
    finally:
        model.train(was)


def _conv_stage(cin: int, cout: int, kernel: int, act: str, *, pool_first: bool = False) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    return [conv, nn.MaxPool2d(2), activation(act)] if pool_first else [conv, activation(act), nn.MaxPool2d(2)]


class InputNorm(nn.Module):
    """Per-channel ``(x - mean) / std`` for [0, 1] input; the statistics are buffers saved
    with the weights (set from the training set by :func:`~styleforge.classify.train.fit`)."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def set(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype).view_as(self.mean))
        self.std.copy_(torch.as_tensor(std, dtype=self.std.dtype).clamp_min(1e-6).view_as(self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``input_norm`` then ``trunk`` (features) then ``head`` (the trainable classifier on top).

    ``input_norm`` is the identity for pretrained backbones (they normalize with ImageNet
    statistics themselves) and an :class:`InputNorm` with the training set's statistics
    for models trained from scratch.
    """

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.input_norm: nn.Module = nn.Identity()
        self.trunk, self.head = trunk, head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's output (what the frozen-trunk cache stores)."""
        return self.trunk(self.input_norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def fc_only(shape, num_classes, act="relu", hidden: int = 128) -> Classifier:
    c, h, w = shape
    return Classifier(nn.Flatten(), nn.Sequential(nn.Linear(c * h * w, hidden), activation(act),
                                                  nn.Linear(hidden, num_classes)))


def gray1conv(shape, num_classes, act="relu", filters: int = 8) -> Classifier:
    trunk = nn.Sequential(nn.Conv2d(shape[0], filters, 3, padding=1), activation(act), nn.MaxPool2d(2))
    return Classifier(trunk, nn.Sequential(nn.Flatten(), nn.Linear(_flat_size(trunk, shape), num_classes)))


def convnet2(shape, num_classes, act="relu") -> Classifier:
    # As the course describes it: conv -> max-pool -> activation, twice.
    trunk = nn.Sequential(*_conv_stage(shape[0], 16, 3, act, pool_first=True),
                          *_conv_stage(16, 32, 3, act, pool_first=True))
    return Classifier(trunk, nn.Sequential(nn.Flatten(), nn.Linear(_flat_size(trunk, shape), num_classes)))


def simple_cnn(shape, num_classes, act="relu") -> Classifier:
    trunk = nn.Sequential(*_conv_stage(shape[0], 32, 5, act), *_conv_stage(32, 64, 5, act),
                          *_conv_stage(64, 128, 5, act))
    head = nn.Sequential(nn.Flatten(), nn.Linear(_flat_size(trunk, shape), 64), activation(act),
                         nn.Linear(64, num_classes))
    return Classifier(trunk, head)


def _bn_block(cin: int, cout: int, act: str) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), activation(act)]


def bn_cnn(shape, num_classes, act="relu", widths=(64, 128, 256), dropout: float = 0.3) -> Classifier:
    """VGG-style stages of two conv-BN-activation blocks and a max-pool, then global
    average pooling, dropout and a linear head (the stronger CNN for CIFAR-10)."""
    layers: list[nn.Module] = []
    cin = shape[0]
    for width in widths:
        layers += _bn_block(cin, width, act) + _bn_block(width, width, act) + [nn.MaxPool2d(2)]
        cin = width
    trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(trunk, nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, num_classes)))


class Residual(nn.Module):
    """``x + f(x)`` with ``f`` two conv-BN-activation blocks at constant width."""

    def __init__(self, channels: int, act: str) -> None:
        super().__init__()
        self.f = nn.Sequential(*_bn_block(channels, channels, act), *_bn_block(channels, channels, act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


def res_cnn(shape, num_classes, act="relu", width: int = 64, dropout: float = 0.0) -> Classifier:
    """A small ResNet-9-like net (after the DAWNBench CIFAR-10 recipe, fewer layers):
    conv-BN stages of ``width``, 2×, 4× channels, each followed by max-pooling, residual
    blocks on the last two stages, global max pooling and a linear head.

    Widths that are multiples of 32 keep oneDNN's bf16 kernels on their fast path on CPU."""
    a, b, c = width, 2 * width, 4 * width
    trunk = nn.Sequential(*_bn_block(shape[0], a, act), nn.MaxPool2d(2),
                          *_bn_block(a, b, act), Residual(b, act), nn.MaxPool2d(2),
                          *_bn_block(b, c, act), nn.MaxPool2d(2), Residual(c, act),
                          nn.AdaptiveMaxPool2d(1), nn.Flatten())
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, num_classes)) if dropout else nn.Linear(c, num_classes)
    return Classifier(trunk, head)


def fast_cnn(shape, num_classes, act="relu", width: int = 32) -> Classifier:
    """Four conv-BN blocks (``width``, 2×, 4×, 4× channels), three max-pools, global max
    pooling and a linear head: cheap enough for a useful CIFAR-10 model in a minute on CPU."""
    a, b, c = width, 2 * width, 4 * width
    trunk = nn.Sequential(*_bn_block(shape[0], a, act), nn.MaxPool2d(2), *_bn_block(a, b, act), nn.MaxPool2d(2),
                          *_bn_block(b, c, act), nn.MaxPool2d(2), *_bn_block(c, c, act),
                          nn.AdaptiveMaxPool2d(1), nn.Flatten())
    return Classifier(trunk, nn.Linear(c, num_classes))


class ResNetTrunk(ResNet18Stages):
    """The backbone's ResNet18 trunk, pooled features out; grayscale repeated to RGB."""

    def __init__(self, model: ResNet, in_channels: int) -> None:
        super().__init__(model)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.stages(x)["pool"]


def resnet18_classifier(shape, num_classes, act="relu", pretrained: bool = False,
                        weights: str | None = None) -> Classifier:
    if act != "relu":
        raise StyleforgeError("resnet18 uses its own ReLU activations: drop --activation")
    model = resnet18(pretrained=pretrained, weights=weights)
    return Classifier(ResNetTrunk(model, shape[0]), nn.Linear(model.fc.in_features, num_classes))


VGG_POOLS = ("avg", "max", "avgmax", "grid2")


class VGGTrunk(nn.Module):
    """VGG features up to ``layer``, pooled: globally (``avg``, ``max``, or both
    concatenated, ``avgmax``) or to a 2x2 grid of averages (``grid2``, keeps coarse layout)."""

    def __init__(self, features: VGGFeatures, in_channels: int, layer: str, pool: str = "avg") -> None:
        super().__init__()
        if pool not in VGG_POOLS:
            raise StyleforgeError(f"unknown pooling {pool!r} for vgg19: use one of {', '.join(VGG_POOLS)}")
        self.features, self.layer, self.in_channels, self.pool_kind = features, layer, in_channels, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        f = self.features(x)[self.layer]
        if self.pool_kind == "avg":
            return f.mean((2, 3))
        if self.pool_kind == "max":
            return f.amax((2, 3))
        if self.pool_kind == "grid2":
            return F.adaptive_avg_pool2d(f, 2).flatten(1)
        return torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)


def vgg19_classifier(shape, num_classes, act="relu", pretrained: bool = True,
                     weights: str | None = None, layer: str = "relu5_4", pool: str = "avg",
                     hidden: int = 0, dropout: float = 0.0, norm: bool = True) -> Classifier:
    """VGG19 conv trunk to ``layer``, pooled (see :class:`VGGTrunk`), then a new head:
    batch norm over the features (``norm``; VGG activations are far from unit scale, and
    the original Caffe weights' are 40-270x larger than torchvision's), then linear, or
    with ``hidden > 0`` one hidden ReLU layer, with ``dropout`` before each linear layer.
    With ``pretrained=False`` the trunk is randomly initialized (mechanics only)."""
    if act != "relu":
        raise StyleforgeError("vgg19 uses its own ReLU activations: drop --activation")
    from ..backbone import build_vgg_features

    state = None if pretrained or weights else {k: v for k, v in build_vgg_features().state_dict().items()}
    feats = VGGFeatures([layer], weights=weights, state_dict=state, trainable=True)  # the freeze policy decides
    trunk = VGGTrunk(feats, shape[0], layer, pool)
    width = _flat_size(trunk, (shape[0], max(shape[1], feats.min_size), max(shape[2], feats.min_size)))
    layers: list[nn.Module] = [nn.BatchNorm1d(width)] if norm else []
    drop = [nn.Dropout(dropout)] if dropout else []
    if hidden:
        layers += [*drop, nn.Linear(width, hidden), nn.ReLU(), *drop, nn.Linear(hidden, num_classes)]
    else:
        layers += [*drop, nn.Linear(width, num_classes)]
    return Classifier(trunk, nn.Sequential(*layers))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., Classifier]
    description: str
    pretrained: bool = False  # takes --pretrained / --weights


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in [
    ModelSpec("fc-only", fc_only, "flatten + two fully connected layers"),
    ModelSpec("gray1conv", gray1conv, "one 3x3 conv, one 2x2 max-pool (halves the image), a linear layer"),
    ModelSpec("convnet2", convnet2, "two (conv -> max-pool -> activation) stages, flatten, a linear layer"),
    ModelSpec("simple-cnn", simple_cnn,
              "three conv5x5 (32, 64, 128) + activation + max-pool stages, a 64-unit layer, the output"),
    ModelSpec("bn-cnn", bn_cnn, "VGG-style conv-BN stages (64, 128, 256), global pooling, dropout"),
    ModelSpec("res-cnn", res_cnn, "small ResNet-9-like conv-BN net with residual blocks (width 64)"),
    ModelSpec("fast-cnn", fast_cnn, "four conv-BN blocks (32..128), global max pooling: fast on CPU"),
    ModelSpec("resnet18", resnet18_classifier, "torchvision ResNet18 with a new head", pretrained=True),
    ModelSpec("vgg19", vgg19_classifier, "VGG19 conv trunk with a new head", pretrained=True),
]}


def model_options(name: str) -> dict[str, object]:
    """The extra keyword options a registered model takes, with their defaults."""
    import inspect

    if name not in MODELS:
        raise StyleforgeError(f"unknown model {name!r}: use one of {', '.join(MODELS)}")
    params = list(inspect.signature(MODELS[name].build).parameters.values())[3:]
    return {p.name: p.default for p in params if p.name not in ("pretrained", "weights")}


def check_option_names(name: str, keys: Sequence[str]) -> None:
    """A one-line error for an ``--option`` the registered model ``name`` does not take."""
    valid = model_options(name)
    for key in keys:
        if key not in valid:
            takes = f"its options are {', '.join(valid)}" if valid else "it takes no --option"
            raise StyleforgeError(f"{name} has no option {key!r}: {takes}")


def check_pretrained(name: str, pretrained: bool | str | None) -> None:
    """A one-line error for ``--pretrained`` (or ``--weights``) with a model that has no pretrained weights."""
    if pretrained and not (name in MODELS and MODELS[name].pretrained):
        raise StyleforgeError(f"{name} has no pretrained weights: --pretrained and --weights work with resnet18 "
                              "and vgg19")


def build_model(name: str, shape: tuple[int, int, int], num_classes: int, activation_name: str = "relu",
                pretrained: bool = False, weights: str | None = None, *, model_source: str | None = None,
                **options) -> Classifier:
    """Build a model for inputs of ``shape`` = (C, H, W): a registered name, a layer spec
    (``conv(32,k5,p2)-relu-maxpool(2)-flatten-fc``) or ``path/file.py:ClassName``.

    ``options`` are the model's own settings (see :func:`model_options`), e.g.
    ``width=32`` for ``res-cnn`` or ``layer="relu4_4"`` for ``vgg19``; for a user's class,
    keyword arguments of its ``__init__``. ``model_source`` is a user file's recorded code
    (checkpoints keep it), used instead of reading the file. Models trained from scratch
    get an :class:`InputNorm` in front (identity statistics until set)."""
    if num_classes < 2:
        raise StyleforgeError(f"a classifier needs at least 2 classes, got {num_classes}")
    try:
        return _build(name, shape, num_classes, activation_name, pretrained, weights, model_source, options)
    except (RuntimeError, MemoryError) as exc:
        if not out_of_memory(exc):
            raise
        from .spec import short_name

        raise too_large(exc, f"{short_name(name)} for {num_classes} classes",
                        "use fewer classes (--num-classes) or smaller --option values") from None


def _build(name: str, shape: tuple[int, int, int], num_classes: int, activation_name: str, pretrained: bool,
           weights: str | None, model_source: str | None, options: dict) -> Classifier:
    """:func:`build_model` after its class-count check."""
    if name not in MODELS:
        check_pretrained(name, pretrained or weights)
        model = _build_user(name, shape, num_classes, activation_name, model_source, options)
        model.input_norm = InputNorm(shape[0])
        return model
    spec = MODELS[name]
    check_model_name(name, options)
    check_pretrained(name, pretrained or weights)
    if spec.pretrained:
        return spec.build(shape, num_classes, activation_name, pretrained=pretrained, weights=weights, **options)
    model = spec.build(shape, num_classes, activation_name, **options)
    model.input_norm = InputNorm(shape[0])
    return model


def _build_user(name, shape, num_classes, act, source, options) -> Classifier:
    """A layer spec or a user file's class (see :mod:`.spec`)."""
    from . import spec as user

    if user.is_file_ref(name):
        path, cls_name, text = (name.rsplit(":", 1)[0], name.rsplit(":", 1)[1], source) if source is not None \
            else user.read_model_file(name)
        cls = user.class_from_source(text, path, cls_name)
        return user.build_from_class(cls, shape, num_classes, act, options, path)
    if name.startswith("python:"):
        raise StyleforgeError(f"this model ({name[7:]}) was passed to fit() as a Python object: rebuild it in "
                              "Python and pass it back (load_classifier(path, model=...))")
    check_model_name(name, options)
    return user.build_spec(name, shape, num_classes, act)


def check_model_name(name: str, options: Mapping[str, Any] | None = None) -> None:
    """What can be checked of ``--model`` before any data is loaded: a registered model's --option names and
    values, a layer spec's syntax, a misspelt name; one-line errors. (A FILE.py:CLASS is read when built: a
    resumed run rebuilds it from the copy it keeps.)"""
    from . import spec as user

    options = dict(options or {})
    if name in MODELS:
        check_option_names(name, list(options))
        check_model_options(name, options, model_options(name))
        return
    if user.is_file_ref(name) or name.startswith("python:"):
        return
    if options:
        raise StyleforgeError(f"a layer spec takes no --option ({next(iter(options))!r}): write the settings "
                              "into the layers")
    try:
        user.parse_spec(name)
    except StyleforgeError as exc:
        if name.endswith(".py") and "(" not in name:  # a file without its class
            raise StyleforgeError(f"--model {name!r} names a file: add the class to train, as {name}:ClassName") \
                from None
        if "(" not in name:  # most likely a misspelt name
            detail = "" if len(user.split_spec(name)) == 1 else f" (as a layer spec: {exc})"
            raise StyleforgeError(f"unknown model {name!r}: use one of {', '.join(MODELS)}, a layer spec such as "
                                  f"{user.EXAMPLE!r}, or FILE.py:CLASS{detail}") from None
        raise StyleforgeError(f"--model {name!r}: {exc}") from None


def apply_freeze(model: Classifier, policy: str) -> None:
    """``none`` trains everything; ``all-but-head`` only the head; ``all-but-layer4`` the
    last residual stage (ResNet18) or last conv block (VGG19) and the head."""
    if policy not in FREEZE_POLICIES:
        raise StyleforgeError(f"unknown freeze policy {policy!r}: use one of {', '.join(FREEZE_POLICIES)}")
    model.requires_grad_(True)
    if policy == "none":
        return
    model.trunk.requires_grad_(False)
    if policy == "all-but-layer4":
        if isinstance(model.trunk, ResNetTrunk):
            model.trunk.layer4.requires_grad_(True)
        elif isinstance(model.trunk, VGGTrunk):
            names = model.trunk.features.names
            for name, module in zip(names, model.trunk.features.features):
                if name.startswith("conv5"):
                    module.requires_grad_(True)
        else:
            raise StyleforgeError("all-but-layer4 applies to resnet18 and vgg19")


def as_classifier(net: nn.Module, shape: tuple[int, int, int], num_classes: int | None = None) -> Classifier:
    """A model object (``fit(model=...)``) as a :class:`Classifier`: a Classifier is kept as
    it is; any other module becomes the trunk, with an empty head and an :class:`InputNorm`
    in front. ``num_classes`` is checked with a dry run (errors name the failing layer)."""
    from .spec import dry_run, fmt_shape

    if not isinstance(net, nn.Module):
        raise StyleforgeError(f"model= takes an nn.Module object, not {type(net).__name__}")
    if not isinstance(net, Classifier):
        wrapped = Classifier(net, nn.Sequential())
        wrapped.input_norm = InputNorm(shape[0])
        net = wrapped
    if num_classes is not None:
        out = dry_run(net, shape, type(net.trunk).__name__)
        if tuple(out.shape[1:]) != (num_classes,):
            raise StyleforgeError(f"the model gives {fmt_shape(out.shape[1:])} outputs per image but the data has "
                                  f"{num_classes} classes: change its last layer")
    return net
