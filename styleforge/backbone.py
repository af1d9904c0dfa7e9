"""The backbone layer: pretrained feature extractors and where their weights come from.

Every job (style transfer, fast-style training, classifiers) gets its pretrained network
here. Weight lookup order, for each architecture:

1. an explicit path (``--weights PATH``);
2. a file in the folder named by ``$STYLEFORGE_WEIGHTS``;
3. a file in the project's ``weights/`` folder;
4. torchvision's own checkpoint in the torch hub cache, or its weights API, which
   downloads when online.

``$STYLEFORGE_WEIGHTS`` may list several folders (``os.pathsep``-separated); style models
(``fast-NAME.pth``) are looked up in the same folders. The names looked for in each
folder are :func:`local_names`: ``<arch>-features.pth`` (VGG conv weights only, keys
``features.N.weight`` or ``N.weight``; the pinned Caffe VGG19 file has this name),
``<arch>-torchvision-features.pth`` (torchvision's conv trunk, as ``styleforge weights
--download`` saves it), ``resnet18.pth``, and torchvision's checkpoint file names
(``vgg19-dcbb9e9d.pth``, ``resnet18-f37072fd.pth``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

import torch
from torch import nn

from .runtime.errors import StyleforgeError, first_line
from .runtime.io import load_torch

if TYPE_CHECKING:  # torchvision is imported where needed
    from torchvision.models import ResNet

WEIGHTS_ENV = "STYLEFORGE_WEIGHTS"
PROJECT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Known-good files by name: sha256 and what they are.
KNOWN_FILES: dict[str, tuple[str, str]] = {
    "vgg19-features.pth": (
        "8f6f08e29a9c9a1fa1a45ccc003a819475b72db6b582eab114cf26d5137efc96",
        "original Oxford/Caffe VGG19 conv weights, fp16, preprocessing folded into conv1_1",
    ),
}

_VGG_CFG = {
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
_VGG_WIDTHS = (64, 128, 256, 512, 512)
ARCHS = ("vgg19", "vgg16", "resnet18")


def torchvision_weights(arch: str):
    from torchvision import models

    return {
        "vgg19": models.VGG19_Weights.IMAGENET1K_V1,
        "vgg16": models.VGG16_Weights.IMAGENET1K_V1,
        "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
    }[arch]


# --------------------------------------------------------------------------- VGG layout

def vgg_layer_names(arch: str = "vgg19") -> list[str]:
    """Names of the modules of ``torchvision.models.<arch>().features``, in order:
    ``conv1_1, relu1_1, conv1_2, relu1_2, pool1, conv2_1, ...``."""
    if arch not in _VGG_CFG:
        raise StyleforgeError(f"unknown VGG architecture {arch!r}: use vgg19 or vgg16")
    names = []
    for block, n_convs in enumerate(_VGG_CFG[arch], start=1):
        for i in range(1, n_convs + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return names


def build_vgg_features(arch: str = "vgg19", pooling: str = "max",
                       inplace_after: Iterable[int] = ()) -> nn.Sequential:
    """The conv trunk with torchvision's module indices (so its state-dict keys match).

    ``pooling='avg'`` swaps max-pooling for average pooling (Gatys et al. found it gives
    slightly smoother results). ReLUs whose input conv is not read out are in-place.
    """
    if pooling not in ("max", "avg"):
        raise StyleforgeError(f"unknown pooling {pooling!r}: use max or avg")
    keep_conv_output = set(inplace_after)
    layers: list[nn.Module] = []
    in_ch = 3
    for block, n_convs in enumerate(_VGG_CFG[arch]):
        width = _VGG_WIDTHS[block]
        for _ in range(n_convs):
            layers.append(nn.Conv2d(in_ch, width, kernel_size=3, padding=1))
            layers.append(nn.ReLU(inplace=(len(layers) - 1) not in keep_conv_output))
            in_ch = width
        layers.append(nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- weight lookup

@dataclass(frozen=True)
class WeightsCandidate:
    arch: str
    origin: str
    path: Path

    @property
    def exists(self) -> bool:
        return self.path.is_file()


def _torchvision_filename(arch: str) -> str:
    return Path(torchvision_weights(arch).url).name


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_folders() -> list[tuple[str, Path]]:
    """(origin, folder) for every folder named by ``$STYLEFORGE_WEIGHTS``, then the project's weights/."""
    env = [Path(d).expanduser() for d in os.environ.get(WEIGHTS_ENV, "").split(os.pathsep) if d.strip()]
    return [(f"${WEIGHTS_ENV}", d) for d in env] + [("project weights/", PROJECT_WEIGHTS)]


def download_name(arch: str) -> str:
    """The file name ``styleforge weights --download`` saves ``arch`` under.

    Not ``vgg19-features.pth``: that name is pinned to the Caffe file's sha256, so
    torchvision's trunk saved under it would be rejected as corrupt by every later run.
    """
    return "resnet18.pth" if arch == "resnet18" else f"{arch}-torchvision-features.pth"


def local_names(arch: str) -> list[str]:
    """The file names the lookup checks in each weights folder, in order."""
    if arch not in ARCHS:
        raise StyleforgeError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHS)}")
    own = [download_name(arch)] if arch == "resnet18" else [f"{arch}-features.pth", download_name(arch)]
    return own + [_torchvision_filename(arch)]


def missing_env_folders() -> list[Path]:
    """The folders ``$STYLEFORGE_WEIGHTS`` names that do not exist (a run's error and ``styleforge weights`` say so)."""
    return [d for origin, d in weights_folders() if origin == f"${WEIGHTS_ENV}" and not d.exists()]


def _where_to_put(arch: str) -> str:
    missing = missing_env_folders()
    note = f" (${WEIGHTS_ENV} names {missing[0]}, which does not exist)" if missing else ""
    return (f"put {local_names(arch)[0]} in weights/ or in the folder named by ${WEIGHTS_ENV}{note}, "
            "or pass --weights PATH")


def check_env_folders() -> None:
    """A file named in $STYLEFORGE_WEIGHTS is a mistake for its folder: said before any download is tried."""
    for origin, d in weights_folders():
        if origin == f"${WEIGHTS_ENV}" and d.is_file():
            raise StyleforgeError(f"${WEIGHTS_ENV} names {d}, which is a file: name the folder that holds the "
                                  f"weights (e.g. {d.parent}), or pass --weights {d}")


def candidates(arch: str) -> list[WeightsCandidate]:
    """Every place the lookup checks for ``arch`` (except an explicit path), in order."""
    names = local_names(arch)
    out = [WeightsCandidate(arch, origin, folder / name) for origin, folder in weights_folders() for name in names]
    out.append(WeightsCandidate(arch, "torch hub cache", _hub_checkpoints() / _torchvision_filename(arch)))
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path) -> str:
    """``verified``, ``unknown`` (no reference hash) or raise on a mismatch.

    References: :data:`KNOWN_FILES` by file name, and torchvision's convention of
    putting the first 8+ hex digits of the sha256 in the file name (``vgg19-dcbb9e9d.pth``).
    """
    path = Path(path)
    expected = KNOWN_FILES.get(path.name, (None,))[0]
    m = re.fullmatch(r"[a-z0-9_]+-([0-9a-f]{8,})\.pth", path.name)
    if expected is None and m is None:
        return "unknown"
    digest = sha256_file(path)
    if expected:
        ok = digest == expected
    else:
        assert m is not None  # no reference hash: the name carries one (else "unknown" above)
        ok = digest.startswith(m.group(1))
    if not ok:
        raise StyleforgeError(
            f"{path} does not match its known sha256 (got {digest[:12]}...): the file is corrupt or "
            "incomplete; copy or download it again"
        )
    return "verified"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise StyleforgeError(f"weights file {path} does not exist")
    obj = load_torch(path, "a readable PyTorch weights file", "check the path or download it again")
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise StyleforgeError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def _download_state_dict(arch: str, asked: bool = False) -> dict[str, torch.Tensor]:
    """torchvision's weights for ``arch``; ``asked``: the user asked for the download itself
    (``styleforge weights --download``), so its error is not about the local lookup."""
    from .runtime.io import no_empty_folder_left

    weights = torchvision_weights(arch)
    said = io.StringIO()
    try:
        # torch makes its cache folder before it downloads, and prints "Downloading: URL to FILE" (stdout; its
        # progress bar is on stderr): that line is held back until the download succeeds, so a failed one
        # is the one-line error alone.
        with no_empty_folder_left(_hub_checkpoints()), contextlib.redirect_stdout(said):
            state = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # URLError, socket errors, hash errors
        if asked:
            # torch's check_hash raises RuntimeError; the network, OSError (URLError is one).
            what = "check the internet connection" if isinstance(exc, OSError) else "try again"
            raise StyleforgeError(f"downloading torchvision's {arch} weights failed ({type(exc).__name__}): {what}; "
                                  "'styleforge weights' lists the local files runs use") from None
        looked = ", ".join(str(c.path) for c in candidates(arch))
        raise StyleforgeError(
            f"no {arch} weights found locally and the download failed ({type(exc).__name__}): "
            f"{_where_to_put(arch)} (looked in: {looked})"
        ) from None
    sys.stdout.write(said.getvalue())
    return state


def locate(arch: str, explicit: str | os.PathLike | None = None) -> WeightsCandidate | None:
    """The first existing weights file for ``arch`` in lookup order, or None."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_dir():
            raise StyleforgeError(f"--weights {path} is a folder: give the file itself, or name the folder in "
                                  f"${WEIGHTS_ENV}")
        if not path.is_file():
            raise StyleforgeError(f"--weights {path}: no such file")
        return WeightsCandidate(arch, "--weights", path)
    check_env_folders()
    for c in candidates(arch):
        if c.exists:
            return c
    return None


def load_state_dict(arch: str, explicit: str | os.PathLike | None = None,
                    download: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """Find and read the weights for ``arch``; returns (state dict, where it came from).

    VGG state dicts come back with ``features.`` stripped (conv trunk only).
    """
    found = locate(arch, explicit)
    if found is not None:
        verify(found.path)
        state, source = _read_state_dict(found.path), f"{found.path} ({found.origin})"
    elif download:
        state, source = _download_state_dict(arch), f"torchvision {torchvision_weights(arch)}"
    else:
        raise StyleforgeError(f"no {arch} weights found: {_where_to_put(arch)}")
    if arch in _VGG_CFG:
        if any(k.startswith("features.") for k in state):
            state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    return state, source


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], arch: str, source: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise StyleforgeError(f"{source} does not hold {arch} weights ({first_line(exc, 160)})") from None


def download_weights(arch: str, folder: str | os.PathLike) -> Path:
    """Download torchvision's weights for ``arch`` into ``folder`` as :func:`download_name`, where the
    lookup finds them: for VGG the conv trunk alone (80 MB for VGG19). The folder is checked first."""
    from .runtime.io import check_writable, save_torch

    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise StyleforgeError(f"--to {folder} is a file: give a folder to save the weights into")
    if not folder.is_dir():
        raise StyleforgeError(f"folder {folder} does not exist: create it first")
    out = check_writable(folder / download_name(arch))
    state = _download_state_dict(arch, asked=True)
    if arch in _VGG_CFG:
        state = {k: v for k, v in state.items() if k.startswith("features.")}
    return save_torch(state, out)


# --------------------------------------------------------------------------- extractors

class ImageNetNormalize(nn.Module):
    """[0, 1] RGB in, ImageNet-normalized out."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class VGGFeatures(nn.Module):
    """VGG trunk returning named activations from one forward pass.

    Takes RGB in [0, 1] (normalizes itself) and stops at the deepest requested layer.

    ``trainable=False`` (the default, what the style losses use): a fixed function. Its
    parameters need no gradient and it stays in eval mode, so ``train()`` on it, or on a
    model holding it, changes nothing. ``trainable=True`` (a classifier's trunk): its
    parameters require gradients (a freeze policy may turn parts off again) and
    ``train()``/``eval()`` work as on any module.
    """

    def __init__(self, layers: Iterable[str], arch: str = "vgg19", pooling: str = "max",
                 weights: str | os.PathLike | None = None,
                 state_dict: Mapping[str, torch.Tensor] | None = None, download: bool = True,
                 trainable: bool = False) -> None:
        super().__init__()
        self.trainable = trainable
        names = vgg_layer_names(arch)
        self.layers = list(dict.fromkeys(layers))
        if not self.layers:
            raise StyleforgeError("no feature layers requested")
        unknown = [name for name in self.layers if name not in names]
        if unknown:
            valid = ", ".join(n for n in names if not n.startswith("pool"))
            raise StyleforgeError(f"unknown layer {unknown[0]!r} for {arch}: valid names are {valid}")
        index = {name: i for i, name in enumerate(names)}
        deepest = max(index[name] for name in self.layers)
        conv_reads = {index[n] for n in self.layers if n.startswith("conv")}
        full = build_vgg_features(arch, pooling, inplace_after=conv_reads)
        if state_dict is None:
            state_dict, self.source = load_state_dict(arch, weights, download=download)
        else:
            self.source = "given state dict"
        _load_strict(full, state_dict, arch, self.source)
        self.arch = arch
        self.normalize = ImageNetNormalize()
        self.features = full[: deepest + 1]
        self.names = names[: deepest + 1]
        self._wanted = set(self.layers)
        # The smallest input for which the deepest layer still has at least one pixel (a pool, the deepest
        # included, halves the side and needs 2 px).
        self.min_size = 2 ** sum(1 for n in self.names if n.startswith("pool"))
        self.requires_grad_(trainable)
        self.eval()

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(mode and self.trainable)

    def forward(self, x: torch.Tensor, layers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Activations of the configured layers, or of ``layers`` only (stopping after the deepest)."""
        wanted = self._wanted if layers is None else set(layers)
        if not wanted <= self._wanted:
            raise StyleforgeError(f"layers {sorted(wanted - self._wanted)} were not configured for this extractor")
        out = {}
        x = self.normalize(x)
        for name, module in zip(self.names, self.features):
            x = module(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        return out


def resnet18(num_classes: int = 1000, pretrained: bool = False,
             weights: str | os.PathLike | None = None, download: bool = True) -> ResNet:
    """torchvision ResNet18; pretrained weights through the same lookup as VGG.

    With ``num_classes != 1000`` the ImageNet head is replaced by a fresh linear layer.
    """
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None)
    if pretrained or weights is not None:
        state, source = load_state_dict("resnet18", weights, download=download)
        _load_strict(model, state, "resnet18", source)
    if num_classes != 1000:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


class ResNet18Stages(nn.Module):
    """ResNet18 without its head, as named stages (``stem``, ``layer1`` ... ``layer4``, ``pool``)
    for [0, 1] RGB input. What ``forward`` returns is a subclass's: every stage's output
    (:class:`ResNet18Trunk`) or the pooled features (a classifier's trunk, ``classify.models.ResNetTrunk``)."""

    STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "pool")

    def __init__(self, model: ResNet | None = None, pretrained: bool = False,
                 weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        model = model if model is not None else resnet18(pretrained=pretrained, weights=weights)
        self.normalize = ImageNetNormalize()
        self.stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = model.layer1, model.layer2, model.layer3, model.layer4
        self.pool = nn.Sequential(model.avgpool, nn.Flatten(1))
        self.out_features = model.fc.in_features

    def stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        x = self.normalize(x)
        for name in self.STAGES:
            x = getattr(self, name)(x)
            out[name] = x
        return out


class ResNet18Trunk(ResNet18Stages):
    """ResNet18 without its head, returning named stage outputs
    (``stem``, ``layer1`` ... ``layer4``, ``pool``) for [0, 1] RGB input."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.stages(x)


def int8_copy(module: nn.Module, calibration: Iterable[torch.Tensor]) -> nn.Module:
    """A post-training int8 copy of a frozen ``module`` for CPU inference.

    Static quantization in FX graph mode with PyTorch's x86 backend (per-channel int8
    weights, activation ranges observed on the ``calibration`` batches, which should be
    real inputs). On an AVX2 CPU, VGG19 to relu4_4 at 64 px runs about 1.8x faster than
    fp32 channels_last; its outputs keep a cosine similarity of about 0.997 with fp32's
    on CIFAR-10 images. The original module is left untouched.
    """
    import copy
    import warnings

    try:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError as e:
        raise StyleforgeError(f"int8 inference needs torch.ao.quantization, which torch {torch.__version__} "
                              f"does not have ({e}): run without int8") from None
    engines = torch.backends.quantized.supported_engines
    engine = next((e for e in ("x86", "fbgemm") if e in engines), None)
    if engine is None:
        raise StyleforgeError(f"this CPU/torch has no x86 int8 kernels (engines: {', '.join(engines)}): "
                              "run without int8")
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise StyleforgeError("int8 calibration needs at least one batch of inputs")
    torch.backends.quantized.engine = engine
    model = copy.deepcopy(module).cpu().float().eval()
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; it is what ships with torch today.
        warnings.simplefilter("ignore")
        try:
            prepared = prepare_fx(model, get_default_qconfig_mapping(engine), (first[:1].cpu().float(),))
        except Exception as e:  # symbolic tracing failed: a data-dependent forward
            raise StyleforgeError(f"{type(module).__name__} cannot be quantized to int8 "
                                  f"({type(e).__name__}): run without int8") from None
        with torch.no_grad():
            for x in (first, *batches):
                prepared(x.cpu().float())
        return convert_fx(prepared)
