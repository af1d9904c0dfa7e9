"""User architectures: a compact layer-spec string, and ``nn.Module`` classes from the user's files.

A layer spec is a chain of layers joined by ``-``; sizes are inferred from the input::

    conv(32,k5,p2)-relu-maxpool(2)-conv(64,k5,p2)-relu-maxpool(2)-flatten-fc(64)-relu-fc

Layers (arguments in brackets are optional; PyTorch's defaults unless said):

- ``conv(C[,kK][,sS][,pP|psame])``: 2-D convolution to C channels, kernel K (3), stride S
  (1), padding P (0; ``psame`` is K//2, which keeps the size at stride 1).
- ``maxpool([K][,sS])`` / ``avgpool([K][,sS])``: pooling window K (2), stride S (= K).
- ``gap``: global average pooling (C x 1 x 1).
- ``bn``: batch norm (2-D or 1-D, after the shape). ``dropout([P])``: dropout, P = 0.5.
- ``flatten``; ``fc(N)`` (or ``linear(N)``): a fully connected layer of N units; a last
  ``fc`` without N has one output per class.
- activations: ``relu``, ``leaky-relu``, ``elu``, ``gelu``, ``silu``, ``tanh``, ``sigmoid``,
  or ``act`` (the ``--activation`` choice).
- ``in(CxHxW)`` as the first layer pins the input shape the spec was written for
  (checked against the data, as a model with hard-coded sizes would be).

The layers before ``flatten`` (or before the first ``fc``) form the model's trunk, the
rest its head, so ``--freeze all-but-head`` and the feature cache work as for the
registered models. Modules are created in spec order, so the Table 2 network of the
TDT4265 course written as a spec is ``simple-cnn`` parameter for parameter, with the same
initial weights for the same seed.

A model file reference is ``path/to/file.py:ClassName``. The class is built with the
keyword arguments its ``__init__`` takes among ``num_classes``, ``in_channels``,
``input_shape`` and ``activation``, plus the ``--option`` settings. Checkpoints record the
file's source, so ``eval``/``predict``/``visualize`` rebuild the model from the code it was
trained with, even when the file has moved or changed (as with a pickle, load only
checkpoints you trust: rebuilding runs that code).
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..runtime.errors import StyleforgeError

EXAMPLE = "conv(32,k5,p2)-relu-maxpool(2)-flatten-fc(64)-relu-fc"
LAYERS_HELP = """\
  conv(C,kK,sS,pP)   convolution to C channels; kernel K (3), stride S (1), padding P (0; psame = K//2)
  maxpool(K,sS)      max pooling, window K (2), stride S (= K); avgpool(K,sS) the same, averaging
  gap                global average pooling        bn      batch norm        dropout(P)  P = 0.5
  flatten            feature maps to a vector      fc(N)   N units; a last fc without N: one output per class
  relu, leaky-relu, elu, gelu, silu, tanh, sigmoid, or act (the --activation choice)
  in(CxHxW)          first only: the input shape the spec was written for (checked against the data)
  e.g. TDT4265 Table 2 (= simple-cnn): conv(32,k5,p2)-relu-maxpool(2)-conv(64,k5,p2)-relu-maxpool(2)-\
conv(128,k5,p2)-relu-maxpool(2)-flatten-fc(64)-relu-fc"""
SPEC_ACTIVATIONS = {"relu": "relu", "leaky_relu": "leaky-relu", "elu": "elu", "gelu": "gelu", "silu": "silu",
                    "tanh": "tanh", "sigmoid": "sigmoid"}
_TOKEN = re.compile(r"^([a-z_0-9]+)\s*(?:\((.*)\))?$")
_FILE_REF = re.compile(r"^(?P<path>.+\.py):(?P<cls>[A-Za-z_][A-Za-z0-9_]*)$")


def is_file_ref(name: str) -> bool:
    return bool(_FILE_REF.match(name.strip()))


def file_ref_path(name: str) -> Path | None:
    """The file of a ``path/file.py:ClassName`` reference (None for a name or layer spec)."""
    m = _FILE_REF.match(name.strip())
    return Path(m.group("path")).expanduser() if m else None


def short_name(name: str, limit: int = 40) -> str:
    """A model name for titles: long layer specs are cut."""
    return name if len(name) <= limit else name[:limit - 3] + "..."


def fmt_shape(shape) -> str:
    return "x".join(str(int(v)) for v in shape)


# --------------------------------------------------------------------------- layer specs

def split_spec(spec: str) -> list[str]:
    """The layer tokens of a spec: ``-`` outside brackets separates layers."""
    text = re.sub(r"leaky-relu", "leaky_relu", spec.strip().lower())
    tokens, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "-" and depth == 0:
            tokens.append(cur.strip())
            cur = ""
        else:
            cur += ch
    tokens.append(cur.strip())
    return tokens


def _args(token: str, where: str, text: str | None) -> tuple[list[str], dict[str, str]]:
    """``32,k5,s=2,psame`` -> (["32"], {"k": "5", "s": "2", "p": "same"})."""
    positional, keyed = [], {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        m = re.fullmatch(r"([a-z]+)\s*=?\s*([0-9.]+|same)", item)
        if m:
            keyed[m.group(1)] = m.group(2)
        elif re.fullmatch(r"[0-9.]+(x[0-9]+x[0-9]+)?", item):
            positional.append(item)
        else:
            raise StyleforgeError(f"{where}: cannot read {item!r} in {token!r}; write e.g. conv(32,k5,s1,p2)")
    return positional, keyed


def _int(value: str, what: str, where: str, low: int = 1) -> int:
    try:
        v = int(value)
    except ValueError:
        raise StyleforgeError(f"{where}: {what} must be a whole number, not {value!r}") from None
    if v < low:
        raise StyleforgeError(f"{where}: {what} must be at least {low}, not {v}")
    return v


# How the image size is given: training and the tools that take data read --image-size; summary takes --input.
SIZE_OPTIONS = "--image-size; summary: --input CxHxW"


class _Layer:
    """One parsed layer: ``make(shape)`` builds its module for an input of ``shape``."""

    def __init__(self, index: int, token: str, name: str, positional: list[str], keyed: dict[str, str]) -> None:
        self.index, self.token, self.name = index, token, name
        self.positional, self.keyed = positional, keyed
        self.where = f"layer {index} {token!r}"

    def allow(self, n_positional: int, keys: str) -> None:
        if len(self.positional) > n_positional or any(k not in set(keys) for k in self.keyed):
            extra = next((k for k in self.keyed if k not in set(keys)), None) or self.positional[n_positional]
            raise StyleforgeError(f"{self.where}: unexpected setting {extra!r}; see 'styleforge classify models'")


def parse_spec(spec: str) -> list[_Layer]:
    """Parse a spec into layers (settings checked, shapes not yet)."""
    from .models import ACTIVATIONS

    layers = []
    for i, token in enumerate(split_spec(spec), start=1):
        where = f"layer {i} {token!r}"
        if not token:
            raise StyleforgeError(f"layer {i} of the spec is empty (two '-' in a row?): write e.g. {EXAMPLE}")
        m = _TOKEN.match(token)
        if not m:
            raise StyleforgeError(f"{where} is not NAME or NAME(SETTINGS): write e.g. {EXAMPLE}")
        name = {"linear": "fc", "dense": "fc"}.get(m.group(1), m.group(1))
        known = ("conv", "maxpool", "avgpool", "gap", "bn", "dropout", "flatten", "fc", "act", "in", "softmax")
        if name not in known and name not in SPEC_ACTIVATIONS:
            names = ", ".join(k for k in known if k != "softmax")
            raise StyleforgeError(f"{where} is not a layer: use {names} or an activation "
                                  f"({', '.join(ACTIVATIONS)})")
        if name == "softmax":
            raise StyleforgeError(f"{where}: end with fc, not softmax; the loss applies softmax itself (and "
                                  "'classify predict' reports probabilities)")
        if name == "in" and i != 1:
            raise StyleforgeError(f"{where}: in(CxHxW) can only be the first layer")
        layer = _Layer(i, token, name, *_args(token, where, m.group(2)))
        layer.allow(*{"conv": (1, "ksp"), "maxpool": (1, "ks"), "avgpool": (1, "ks"), "dropout": (1, "p")}.get(
            name, (1, "") if name in ("fc", "in") else (0, "")))
        layers.append(layer)
    return layers


def _make(layer: _Layer, shape: tuple[int, ...], num_classes: int, act: str, last: bool) -> nn.Module:
    """The module of ``layer`` for an input of ``shape`` (errors name the layer)."""
    from .models import activation

    n, kw, where = layer.name, layer.keyed, layer.where
    pos = layer.positional
    if n in ("conv", "maxpool", "avgpool", "gap") and len(shape) != 3:
        raise StyleforgeError(f"{where} needs C x H x W feature maps but gets {fmt_shape(shape)} values "
                              "(after flatten): move it before flatten")
    if n == "conv":
        if not pos:
            raise StyleforgeError(f"{where}: give the number of output channels, e.g. conv(32,k5)")
        k = _int(kw.get("k", "3"), "the kernel size k", where)
        pad = k // 2 if kw.get("p") == "same" else _int(kw.get("p", "0"), "the padding p", where, 0)
        return nn.Conv2d(shape[0], _int(pos[0], "the channel count", where), k,
                         stride=_int(kw.get("s", "1"), "the stride s", where), padding=pad)
    if n in ("maxpool", "avgpool"):
        k = _int(pos[0] if pos else kw.get("k", "2"), "the window", where)
        s = _int(kw.get("s", str(k)), "the stride s", where)
        return nn.MaxPool2d(k, s) if n == "maxpool" else nn.AvgPool2d(k, s)
    if n == "gap":
        return nn.AdaptiveAvgPool2d(1)
    if n == "bn":
        return nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])
    if n == "dropout":
        try:
            p = float(pos[0] if pos else kw.get("p", "0.5"))
        except ValueError:
            raise StyleforgeError(f"{where}: the dropout probability must be a number") from None
        if not 0 <= p < 1:
            raise StyleforgeError(f"{where}: the dropout probability must be in [0, 1)")
        return nn.Dropout(p)
    if n == "flatten":
        return nn.Flatten()
    if n == "fc":
        if len(shape) != 1:
            raise StyleforgeError(f"{where} gets {fmt_shape(shape)} feature maps: put flatten (or gap-flatten) "
                                  "before the first fc")
        if not pos and not last:
            raise StyleforgeError(f"{where}: give the number of units, e.g. fc(64); only the last fc may leave it "
                                  "out (one output per class)")
        return nn.Linear(shape[0], _int(pos[0], "the unit count", where) if pos else num_classes)
    return activation(act if n == "act" else SPEC_ACTIVATIONS[n])


@torch.no_grad()
def _out_shape(module: nn.Module, shape: tuple[int, ...], layer: _Layer) -> tuple[int, ...]:
    try:
        out = module.eval()(torch.zeros(1, *shape))
    except RuntimeError:
        out = None
    if out is None or out.numel() == 0:
        if len(shape) != 3:
            hint = "check the sizes"
        else:
            fix = ("remove it or an earlier pooling stage" if "pool" in layer.name
                   else "pad it (p...), use a smaller kernel")
            hint = f"{fix}, or use larger images ({SIZE_OPTIONS})"
        raise StyleforgeError(f"{layer.where} does not fit its {fmt_shape(shape)} input: it would leave no "
                              f"output; {hint}")
    return tuple(out.shape[1:])


def build_spec(spec: str, shape: tuple[int, int, int], num_classes: int, act: str = "relu"):
    """A :class:`~styleforge.classify.models.Classifier` from a layer spec for inputs of ``shape``."""
    from .models import Classifier

    layers = parse_spec(spec)
    if layers[0].name == "in":
        pinned = layers.pop(0)
        want = pinned.positional[0] if pinned.positional else ""
        if want.lower() != fmt_shape(shape):
            raise StyleforgeError(f"{pinned.where}: the spec was written for {want or '?'} input but the images are "
                                  f"{fmt_shape(shape)}: give images of that size ({SIZE_OPTIONS}) and channels, or "
                                  "drop in(...) to let the layers adapt")
    if not layers:
        raise StyleforgeError(f"the spec has no layers: write e.g. {EXAMPLE}")
    split = next((i for i, la in enumerate(layers) if la.name in ("flatten", "fc")), len(layers))
    trunk: list[nn.Module] = []
    head: list[nn.Module] = []
    cur = tuple(shape)
    for i, layer in enumerate(layers):
        module = _make(layer, cur, num_classes, act, last=i == len(layers) - 1)
        cur = _out_shape(module, cur, layer)
        (trunk if i < split else head).append(module)
    if cur != (num_classes,):
        raise StyleforgeError(f"the spec's last layer {layers[-1].token!r} gives {fmt_shape(cur)} outputs but the "
                              f"data has {num_classes} classes: end the spec with fc (one output per class)")
    return Classifier(nn.Sequential(*trunk), nn.Sequential(*head))


# --------------------------------------------------------------------------- user files

def read_model_file(ref: str) -> tuple[str, str, str]:
    """(path, class name, source) of ``path/file.py:ClassName``."""
    m = _FILE_REF.match(ref.strip())
    if not m:
        raise StyleforgeError(f"{ref!r} is not FILE.py:CLASS")
    path = Path(m.group("path")).expanduser()
    if not path.is_file():
        raise StyleforgeError(f"model file {path} does not exist: give --model path/to/file.py:ClassName")
    return str(path), m.group("cls"), path.read_text()


def class_from_source(source: str, filename: str, class_name: str) -> type:
    """Run ``source`` as a fresh module and return its ``class_name`` (an nn.Module subclass)."""
    module = types.ModuleType(f"styleforge_user_{abs(hash((filename, source)))}")
    module.__file__ = filename
    sys.modules[module.__name__] = module  # dataclasses and pickling look the module up
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
    except Exception as exc:
        raise StyleforgeError(f"cannot run model file {filename} ({type(exc).__name__}: {_where(exc, filename)}"
                              f"{exc}): fix the file") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        found = [k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
                 and v.__module__ == module.__name__]
        raise StyleforgeError(f"{filename} has no nn.Module class {class_name!r}: its classes are "
                              f"{', '.join(found) or 'none'}")
    return cls


def _where(exc: BaseException, filename: str) -> str:
    if isinstance(exc, SyntaxError):
        return f"line {exc.lineno}: "
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"line {line}: " if line else ""


def instantiate(cls: type, shape: tuple[int, int, int], num_classes: int, act: str,
                options: dict[str, Any], filename: str = "") -> nn.Module:
    """``cls(**kwargs)`` with the standard arguments its ``__init__`` takes, and ``options``."""
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    standard = {"num_classes": num_classes, "in_channels": shape[0], "input_shape": tuple(shape), "activation": act}
    kwargs = {k: v for k, v in standard.items() if k in params or (takes_any and k == "num_classes")}
    unknown = [k for k in options if k not in params and not takes_any]
    if unknown:
        raise StyleforgeError(f"{cls.__name__} takes no option {unknown[0]!r}: its arguments are "
                              f"{', '.join(params) or 'none'}")
    try:
        return cls(**kwargs, **options)
    except Exception as exc:
        raise StyleforgeError(f"{cls.__name__}(...) failed ({type(exc).__name__}: {_where(exc, filename)}{exc}): "
                              "fix the class or its --option settings") from None


def build_from_class(cls: type, shape: tuple[int, int, int], num_classes: int, act: str = "relu",
                     options: dict[str, Any] | None = None, filename: str = ""):
    """A user's class as a Classifier: its module is the trunk, the head is empty."""
    from .models import Classifier

    net = instantiate(cls, shape, num_classes, act, dict(options or {}), filename)
    out = dry_run(net, shape, cls.__name__)
    if not isinstance(out, torch.Tensor):
        raise StyleforgeError(f"{cls.__name__}.forward returns a {type(out).__name__}, not a tensor: return the "
                              "class scores alone, one row per image")
    if tuple(out.shape[1:]) != (num_classes,):
        raise StyleforgeError(f"{cls.__name__} gives {fmt_shape(out.shape[1:])} outputs per image but the data has "
                              f"{num_classes} classes: take a num_classes argument in __init__ or fix the last layer")
    return Classifier(net, nn.Sequential())


@torch.no_grad()
def dry_run(model: nn.Module, shape: tuple[int, int, int], label: str) -> torch.Tensor:
    """``model`` on one zero image; a failure names the layer that could not take its input."""
    active: list[tuple[str, nn.Module, tuple]] = []
    done: list[tuple[str, tuple]] = []

    def enter(module, inputs, name):
        first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        active.append((name, module, tuple(first.shape[1:]) if first is not None else ()))

    def leave(module, inputs, output, name):
        active.pop()
        if isinstance(output, torch.Tensor):
            done.append((name, tuple(output.shape[1:])))

    hooks = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_pre_hook(lambda m, i, name=name: enter(m, i, name)))
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: leave(m, i, o, name)))
    was = model.training
    try:
        return model.eval()(torch.zeros(1, *shape))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, (RuntimeError, IndexError, ValueError)):  # torch's size errors are among these
            after = f" after layer {done[-1][0]!r}" if done else ""
            raise StyleforgeError(f"{label}'s forward fails{after} with {type(exc).__name__} ({first}): a mistake in "
                                  "its code, not in the image size; fix it and run again") from None
        hint = ("sizes written for other images must be computed from the input shape, or train on images of "
                f"the size the model was written for ({SIZE_OPTIONS})")
        if active:
            name, module, got = active[-1]
            where = f"layer {name!r} ({_describe(module)}) gets a {fmt_shape(got)} input"
            if isinstance(module, nn.Conv2d) and got and got[0] != module.in_channels:
                hint = (f"it was written for {module.in_channels}-channel images: take the channel count from an "
                        "in_channels argument, or use data with that many channels")
            elif isinstance(module, nn.Linear):
                hint = (f"its {module.in_features} inputs were computed for another image size: compute them from "
                        "an input_shape argument (or flatten after global pooling), or use images of its size "
                        f"({SIZE_OPTIONS})")
        elif done:
            where = f"its forward fails after layer {done[-1][0]!r} (output {fmt_shape(done[-1][1])})"
        else:
            where = "its forward fails"
        raise StyleforgeError(f"{label} does not fit {fmt_shape(shape)} images: {where} ({first}); {hint}") from None
    finally:
        model.train(was)
        for h in hooks:
            h.remove()


def _describe(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return f"Linear, {m.in_features} inputs"
    if isinstance(m, nn.Conv2d):
        return f"Conv2d, {m.in_channels} input channels, kernel {m.kernel_size[0]}x{m.kernel_size[1]}"
    return type(m).__name__


def model_source(name: str, obj: nn.Module | None = None, resume_state: dict | None = None) -> str | None:
    """The code a run records in ``model.py``: a model file's source (on resume: the one
    recorded at the start), or the class of a model object where Python can find it."""
    if obj is not None:
        try:
            return inspect.getsource(type(obj))
        except (OSError, TypeError):
            return None
    if not is_file_ref(name):
        return None
    if resume_state is not None and resume_state.get("model_source") is not None:
        return resume_state["model_source"]
    return read_model_file(name)[2]
