"""Classifier checkpoints: plain dicts of tensors and JSON-like values.

A checkpoint records what is needed to rebuild the model without the training data or
pretrained-weights files: model name and options, input shape, number of classes, class
names, activation, and the plain ``state_dict`` (never a DDP wrapper's, so a checkpoint
from an 8-GPU run loads on one CPU and the other way round). It is written with
``torch.save`` atomically and read with ``torch.load(weights_only=True)``. The training
run's record (``config``) is brought to the current format on reading (:func:`upgrade_config`).
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, Sequence, cast

import torch

from ..runtime.errors import StyleforgeError, first_line
from ..runtime.guard import check_state_dict, require_keys
from ..runtime.io import load_torch, save_torch
from .data import DataSpec
from .models import Classifier, build_model

FORMAT = "styleforge-classifier/1"
META_KEYS = ("model", "input_shape", "num_classes", "class_names", "activation", "model_options")
# The format of a run's record (config.json, and a checkpoint's "config"), written as its
# "config_version". 1 (written without the number, before the number existed): DataSpec's fields
# at the top level; 2: nested under "data", as TrainConfig holds them.
CONFIG_VERSION = 2


def upgrade_config(record: Mapping[str, Any], where: str | os.PathLike) -> dict[str, Any]:
    """A run's record in the current format (a copy): the one place older formats are read."""
    version = record.get("config_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StyleforgeError(f"{where} records config_version {version!r}: the file is damaged or was edited")
    if version > CONFIG_VERSION:
        raise StyleforgeError(f"{where} was written by a newer styleforge (config format {version}, this one reads "
                              f"up to {CONFIG_VERSION}): upgrade styleforge to use it")
    out = dict(record)
    if version == 1:
        out["data"] = {f.name: out.pop(f.name) for f in fields(DataSpec) if f.name in out}
    if not isinstance(out.get("data", {}), dict):
        raise StyleforgeError(f"{where} holds no valid 'data' settings: the file is damaged or was edited")
    out["config_version"] = CONFIG_VERSION
    return out


def make_meta(model: str, input_shape: tuple[int, int, int], class_names: list[str], activation: str,
              model_options: Mapping[str, Any] | None = None, freeze: str = "none",
              model_source: str | None = None) -> dict[str, Any]:
    """The checkpoint's description of the model. ``model_source`` is the code of a user's
    model file (``--model file.py:Class``), kept so the model can be rebuilt anywhere."""
    meta = {"model": model, "input_shape": [int(v) for v in input_shape], "num_classes": len(class_names),
            "class_names": list(class_names), "activation": activation,
            "model_options": dict(model_options or {}), "freeze": freeze}
    if model_source is not None:
        meta["model_source"] = model_source
    return meta


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module | Mapping[str, torch.Tensor],
                    meta: Mapping[str, Any], **extra: Any) -> Path:
    """Write ``{format, meta..., state_dict, extra...}`` atomically (tensors on CPU).
    ``model`` is a module (a DDP wrapper is unwrapped) or a state dict."""
    from ..runtime.distributed import unwrap

    items = model.items() if isinstance(model, Mapping) else unwrap(model).state_dict().items()
    state = {k: v.detach().cpu() for k, v in items}
    return save_torch({"format": FORMAT, **meta, "state_dict": state, **extra}, path)


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A run directory means its ``best.pt``."""
    path = Path(path).expanduser()
    if path.is_dir():
        best = path / "best.pt"
        if not best.is_file():
            raise StyleforgeError(f"{path} holds no best.pt: give a run directory of 'styleforge classify train' "
                                  "or a checkpoint file")
        return best
    if not path.is_file():
        raise StyleforgeError(f"{path}: no such checkpoint file or run directory: give a run directory of "
                              "'styleforge classify train' or a checkpoint file")
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a classifier checkpoint (or a run directory's best.pt)."""
    path = resolve_checkpoint_path(path)
    ckpt = load_torch(path, "a readable styleforge checkpoint",
                      "give a best.pt or last.pt written by 'styleforge classify train'")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or any(k not in ckpt for k in META_KEYS):
        raise StyleforgeError(f"{path} is not a styleforge classifier checkpoint (no {FORMAT} record): give a "
                              "best.pt or last.pt written by 'styleforge classify train'")
    require_keys(ckpt, path, {"model": str, "input_shape": (list, tuple), "num_classes": int,
                              "class_names": (list, tuple), "activation": str, "model_options": dict})
    shape = ckpt["input_shape"]
    if (len(shape) != 3 or not all(isinstance(v, int) and v >= 1 for v in shape)
            or len(ckpt["class_names"]) != ckpt["num_classes"]):
        raise StyleforgeError(f"{path} records an impossible input shape or class list: the file is damaged or "
                              "was edited")
    check_state_dict(ckpt.get("state_dict"), path)
    if not isinstance(ckpt.get("config", {}), dict):
        raise StyleforgeError(f"{path} lacks a valid 'config' entry: the file is damaged or was edited")
    if "config" in ckpt:
        ckpt["config"] = upgrade_config(ckpt["config"], path)
    ckpt["path"] = str(path)
    return ckpt


def check_compatible(ckpt: Mapping[str, Any], model: str | None = None, num_classes: int | None = None,
                     class_names: list[str] | None = None, channels: int | None = None) -> None:
    """One-line errors when a checkpoint belongs to another model, class count or input."""
    where = ckpt.get("path", "the checkpoint")
    if model is not None and ckpt["model"] != model:
        raise StyleforgeError(f"{where} holds a {ckpt['model']} model, not {model}: give a {model} checkpoint "
                              f"or --model {ckpt['model']}")
    if num_classes is not None and ckpt["num_classes"] != num_classes:
        raise StyleforgeError(f"{where} was trained on {ckpt['num_classes']} classes but the data has "
                              f"{num_classes}: use the same dataset and --classes as in training")
    if class_names is not None and list(ckpt["class_names"]) != list(class_names):
        raise StyleforgeError(f"{where} was trained on classes {', '.join(ckpt['class_names'])}, the data has "
                              f"{', '.join(class_names)}: use the same --classes, in the same order")
    if channels is not None and ckpt["input_shape"][0] != channels:
        raise StyleforgeError(f"{where} takes {ckpt['input_shape'][0]}-channel images but the data has {channels}")


def model_from_checkpoint(ckpt: Mapping[str, Any], model: torch.nn.Module | None = None) -> Classifier:
    """Rebuild the model a checkpoint describes and load its weights (no weights lookup).
    ``model``: a fresh instance of the network for checkpoints of a model object passed to
    ``fit(model=...)`` (their architecture is Python code the checkpoint cannot hold)."""
    shape = tuple(ckpt["input_shape"])
    if model is not None:
        from .models import as_classifier

        model = as_classifier(model, shape)
    else:
        model = build_model(ckpt["model"], shape, ckpt["num_classes"], ckpt["activation"],
                            model_source=ckpt.get("model_source"), **dict(ckpt.get("model_options") or {}))
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise StyleforgeError(f"{ckpt.get('path', 'checkpoint')} does not fit a {ckpt['model']} model with "
                              f"{ckpt['num_classes']} classes ({first_line(exc)})") from None
    return model.eval()


def input_shape_for(ckpt: Mapping[str, Any], given: Sequence[int] | None) -> tuple[int, int, int]:
    """The input a checkpoint's model is run on: ``given`` (another size, its channels checked), else its own."""
    own = tuple(ckpt["input_shape"])
    if given is not None and given[0] != own[0]:
        raise StyleforgeError(f"{ckpt.get('path', 'the checkpoint')} takes {own[0]}-channel input, not {given[0]}")
    return cast("tuple[int, int, int]", tuple(given or own))
