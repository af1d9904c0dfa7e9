"""``styleforge classify ...`` (models, train, eval, grid, compare) and ``styleforge summary``.

Thin wrappers: each command builds a config and calls the library
(:func:`~styleforge.classify.train.fit`, :func:`~styleforge.classify.evaluate.evaluate`,
:func:`~styleforge.classify.grid.grid`, :func:`~styleforge.classify.compare.compare`);
progress callbacks become tqdm bars here.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click

from ..classify import MODELS
from ..classify.data import DataSpec
from ..classify.evaluate import SPLITS, EvalConfig, evaluate
from ..classify.models import ACTIVATIONS, FREEZE_POLICIES, check_option_names, model_options
from ..classify.predict import predict
from ..classify.preview import preview
from ..classify.progress import TrainBars
from ..classify.recipe import LOSSES, RECIPES
from ..classify.spec import EXAMPLE as SPEC_EXAMPLE
from ..classify.spec import LAYERS_HELP as SPEC_LAYERS
from ..classify.summary import DEFAULT_SHAPE, summary
from ..classify.train import AUGMENTS, CACHE_MODES, DEFAULT_LR, OPTIMIZERS, SCHEDULES, TrainConfig
from ..runtime import distributed
from ..runtime.errors import StyleforgeError
from ..runtime.guard import check_memory
from .options import (
    BATCH_HELP,
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    CommaList,
    config_option,
    device_option,
    main_group,
    option,
    overwrite_option,
    precision_option,
    quiet_option,
    resume_option,
    runtime_options,
    seed_option,
    stack,
    weights_option,
)

INPUT_HELP = "Input shape CxHxW (of a trained run or checkpoint: its own, or another size with its channels)."


def num_classes_option(source):
    """--num-classes (once --classes, which now means a list of class names everywhere)."""
    return config_option(source, "num_classes", "--num-classes", type=COUNT, old=("--classes",),
                         help="Number of classes of a model given by name.")


def as_text_shape(shape) -> str:
    return "x".join(map(str, shape))


def parse_shape(text: str) -> tuple[int, int, int]:
    """``3x32x32`` -> (3, 32, 32)."""
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise StyleforgeError(f"--input {text!r} is not CxHxW, e.g. 1x28x28 or 3x32x32") from None
    if c not in (1, 3) or h < 1 or w < 1:
        raise StyleforgeError(f"--input {text!r}: channels must be 1 or 3 and sizes positive")
    check_memory(4 * c * h * w, f"an input of {text}", "give a smaller --input")  # the input tensor alone
    return c, h, w


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_model_options(items: tuple[str, ...], model: str) -> dict:
    """``--option width=32 --option layer=relu4_4`` -> {"width": 32, "layer": "relu4_4"}."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise StyleforgeError(f"--option {item!r} is not KEY=VALUE")
        if model in MODELS:
            check_option_names(model, [key])
        out[key] = tuple(_value(v) for v in text.split(",")) if "," in text else _value(text.strip())
    return out


def parse_augment(text: str | None) -> list[str]:
    return [] if text is None or text.strip().lower() in ("", "none") else \
        [s.strip().lower() for s in text.split(",") if s.strip()]


DATA_HELP = {
    "dataset": "mnist, fashion-mnist, cifar10, or an image folder (one sub-folder per class; or with train/ and test/ "
               "inside).",
    "data_root": "Folder holding the named datasets (else $STYLEFORGE_DATA, else ~/.cache/styleforge/data).",
    "test_data": "A separate test image folder (image-folder datasets).",
    "download": "Download a named dataset if it is missing (online).",
    "classes": "A subset of classes by name or index, e.g. 0,1,7 or cat,dog.",
    "val_split": "Fraction of the training set held out for validation (0: none).",
    "test_split": "Folders without a test set: fraction of each class held out as test.",
    "image_size": "Side of the square images the model sees, px; folders of mixed-size images are decoded at it.",
}


def _data_option_list(source=None) -> list:
    """The data options; defaults from ``source`` (DataSpec), or None: as the checkpoint was trained."""
    def opt(name: str, *decls: str, **kw):
        if source is not None:
            return config_option(source, name, *decls, help=DATA_HELP[name], **kw)
        return option(*decls, name, show_default=None if kw.get("is_flag") else "the checkpoint's",
                      help=DATA_HELP[name], **kw)

    return [opt("dataset", "--dataset", required=source is not None, metavar="NAME|FOLDER"),
            opt("data_root", "--data-root", metavar="FOLDER"),
            opt("test_data", "--test-data", metavar="FOLDER"),
            opt("download", "--download", is_flag=True),
            opt("classes", "--classes", type=CommaList(click.STRING), metavar="NAME,..."),
            opt("val_split", "--val-split", type=PROBABILITY),
            opt("test_split", "--test-split", type=PROBABILITY),
            opt("image_size", "--image-size", type=COUNT, metavar="PX")]


def data_options(f):
    """Dataset and split options shared by train, grid and preview (defaults: DataSpec's)."""
    spec_only = [
        config_option(DataSpec, "per_class", "--per-class", type=COUNT,
                      help="Training images per class (drawn after the validation split)."),
        seed_option(DataSpec, "Seed of the splits and subsets (they do not move with --seed).", "split_seed"),
        option("--augment", metavar="none|crop,flip", show_default="none",
               help=f"Augmentation, on tensors per batch: none, or a list of {','.join(AUGMENTS)}."),
    ]
    return stack(*_data_option_list(DataSpec), *spec_only)(f)


def model_opts(f):
    return stack(
        config_option(TrainConfig, "model", "--model", metavar="NAME|SPEC|FILE.py:CLASS",
                      help=f"The classifier: one of {', '.join(MODELS)}; or a layer spec, e.g. '{SPEC_EXAMPLE}' (see "
                           "'styleforge classify models'); or FILE.py:CLASS (an nn.Module of yours)."),
        activation_option,
        option("--pretrained/--random-init", default=None, show_default="on for vgg19, off for resnet18",
               help="ImageNet weights for vgg19/resnet18."),
        weights_option,
        freeze_option,
        model_option)(f)


activation_option = config_option(TrainConfig, "activation", "--activation", type=click.Choice(list(ACTIVATIONS)),
                                  help="Activation function, where the architecture allows.")
freeze_option = config_option(TrainConfig, "freeze", "--freeze", type=click.Choice(("auto",) + FREEZE_POLICIES),
                              help="Which layers do not train (auto: all-but-head for vgg19, all-but-layer4 for "
                                   "pretrained resnet18, else none).")
model_option = option("--option", "options", multiple=True, metavar="KEY=VALUE",
                      help="A model's own setting, e.g. width=32 (res-cnn), layer=relu4_4, pool=avgmax, "
                           "hidden=512 (vgg19).")


def _from_recipe(key: str) -> str:
    return "from --recipe: " + ", ".join(f"{v:g} ({name})" for name, v in
                                         ((n, float(r[key])) for n, r in RECIPES.items()))


def search_options(lists: bool):
    """--optimizer, --lr, --momentum, --weight-decay, --epochs, --batch-size: one value each
    (train), or comma lists whose combinations a grid search trains (``lists``)."""
    def opt(name: str, decl: str, kind, help: str, **kw):
        if lists:
            kw.setdefault("metavar", "VALUE,...")
            help += " Comma list: one run per value."
            kind = CommaList(kind)
        if "show_default" in kw:
            return option(decl, name, type=kind, help=help, **kw)
        return config_option(TrainConfig, name, decl, type=kind, help=help, **kw)

    return stack(
        opt("optimizer", "--optimizer", click.Choice(OPTIMIZERS), "Optimizer."),
        opt("lr", "--lr", POSITIVE, "Learning rate.",
            show_default=", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items())),
        opt("momentum", "--momentum", PROBABILITY, "SGD momentum.", show_default=_from_recipe("momentum")),
        opt("weight_decay", "--weight-decay", NON_NEGATIVE, "Weight decay (on weights, not biases or norms).",
            show_default=_from_recipe("weight_decay")),
        opt("epochs", "--epochs", COUNT, "Passes over the training data."),
        opt("batch_size", "--batch-size", COUNT, BATCH_HELP))


def run_options(f):
    recipes = "; ".join(f"'{name}' = " + ", ".join(f"{k} {v}" for k, v in r.items()) for name, r in RECIPES.items())
    return stack(
        config_option(TrainConfig, "recipe", "--recipe", type=click.Choice(list(RECIPES)),
                      help=f"Preset of the optimization settings ({recipes}). Options given explicitly win; the "
                           "resolved recipe is printed and kept in the report."),
        config_option(TrainConfig, "loss", "--loss", type=click.Choice(LOSSES),
                      help="cross-entropy; nll (log-softmax then negative log-likelihood: the same value); mse "
                           "(squared error between softmax probabilities and the one-hot target)."),
        option("--schedule", type=click.Choice(SCHEDULES), show_default="from --recipe",
               help="Learning-rate schedule over training: onecycle (warm-up then linear decay), cosine, step, "
                    "constant."),
        option("--warmup", type=PROBABILITY, show_default=_from_recipe("warmup"),
               help="Warm-up fraction of training."),
        option("--label-smoothing", type=PROBABILITY, show_default=_from_recipe("label_smoothing"),
               help="Label smoothing of the cross-entropy targets."),
        config_option(TrainConfig, "eval_batch_size", "--eval-batch-size", type=COUNT,
                      help="Images per batch when evaluating."),
        option("--patience", type=COUNT, help="Stop after this many epochs without a lower validation loss."),
        option("--max-seconds", type=POSITIVE, metavar="SECONDS",
               help="Training-time budget; the schedule follows elapsed time."),
        config_option(TrainConfig, "cache_features", "--cache-features", type=click.Choice(CACHE_MODES),
                      help="Cache a frozen trunk's outputs (auto: when the trunk is frozen and --augment none)."),
        option("--int8-features", is_flag=True,
               help="CPU, with the cache: extract features with an int8 copy of the trunk (about 1.8x faster)."),
        config_option(TrainConfig, "checkpoint_seconds", "--checkpoint-seconds", type=NON_NEGATIVE,
                      metavar="SECONDS", old=("--checkpoint-every",),
                      help="Write best.pt/last.pt at most every this many seconds (and after the last epoch)."),
        runtime_options(TrainConfig),
        option("--no-plots", is_flag=True, help="Skip curves.png and confusion_test.png."),
        quiet_option)(f)


def _data_spec(kw: dict) -> DataSpec:
    """The data options' values (:func:`data_options`) as a DataSpec."""
    return DataSpec(**{f.name: kw[f.name] for f in fields(DataSpec)})


def _base_config(kw: dict, output: str) -> TrainConfig:
    return TrainConfig(
        data=_data_spec(kw), output=output, model=kw["model"], augment=parse_augment(kw["augment"]),
        activation=kw["activation"], pretrained=kw["pretrained"],
        weights=str(kw["weights"]) if kw["weights"] else None, freeze=kw["freeze"],
        model_options=parse_model_options(kw["options"], kw["model"]), schedule=kw["schedule"],
        recipe=kw["recipe"], loss=kw["loss"],
        warmup=kw["warmup"], label_smoothing=kw["label_smoothing"], eval_batch_size=kw["eval_batch_size"],
        patience=kw["patience"], max_seconds=kw["max_seconds"], cache_features=kw["cache_features"],
        int8_features=kw["int8_features"], checkpoint_seconds=kw["checkpoint_seconds"],
        device=kw["device"], precision=kw["precision"], seed=kw["seed"], plots=not kw["no_plots"])


@main_group.group("classify")
def classify_group() -> None:
    """CNN classifiers and transfer learning: train, evaluate, grid-search, compare."""


@classify_group.command("models")
def models_cmd() -> None:
    """List the registered models and their --option settings."""
    for spec in MODELS.values():
        default = TrainConfig(DataSpec(""), output="", model=spec.name).resolved_pretrained()
        extra = ("" if not spec.pretrained else " (ImageNet weights; --random-init for none)" if default
                 else " (random weights; --pretrained for ImageNet's)")
        opts = model_options(spec.name)
        opt_text = f" [options: {', '.join(f'{k}={v}' for k, v in opts.items())}]" if opts else ""
        click.echo(f"{spec.name:12s} {spec.description}{extra}{opt_text}")
    click.echo("\nYour own architecture: --model 'LAYER-LAYER-...' (a layer spec; sizes inferred) or "
               "--model FILE.py:CLASS.")
    click.echo(SPEC_LAYERS)


@classify_group.command("train")
@data_options
@model_opts
@option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Run directory.")
@search_options(lists=False)
@run_options
@overwrite_option()
@resume_option("OUTPUT/last.pt")
@option("--track-test", is_flag=True,
        help="Also record test loss/accuracy after every epoch, for the curves (never used for any choice).")
def train_cmd(output, optimizer, lr, momentum, weight_decay, epochs, batch_size, overwrite, resume, track_test, quiet,
              **kw):
    """Train a classifier; writes metrics, curves, checkpoints and a report to OUTPUT."""
    from ..classify.train import fit

    kw["quiet"] = quiet
    cfg = _base_config(kw, str(output))
    cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay = optimizer, lr, momentum, weight_decay
    cfg.epochs, cfg.batch_size, cfg.overwrite, cfg.resume = epochs, batch_size, overwrite, resume
    cfg.track_test = track_test
    bars = TrainBars(quiet)
    try:
        with distributed.session() as ctx:
            result = fit(cfg, callback=bars)
    finally:
        bars.close()
    s = result.summary
    if ctx.is_main and not quiet:
        acc = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
        click.echo(f"wrote {output}: test acc {acc(s.get('test_acc'))}, val acc {acc(s.get('val_acc'))}, "
                   f"train acc {acc(s.get('train_acc'))} (best epoch {s.get('best_epoch')}, "
                   f"{s['wall_seconds']:.1f} s)")
        if s.get("final_epoch") not in (None, s.get("best_epoch")):
            click.echo(f"final epoch {s['final_epoch']}: test acc {acc(s.get('final_test_acc'))}, train acc "
                       f"{acc(s.get('final_train_acc'))} (the checkpoint and report describe the best epoch)")


@classify_group.command("eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@config_option(EvalConfig, "split", "--split", type=click.Choice(SPLITS), help="Which part of the data.")
@stack(*_data_option_list())
@config_option(EvalConfig, "batch_size", "--batch-size", type=COUNT, help=BATCH_HELP)
@device_option(EvalConfig)
@precision_option(EvalConfig)
@option("-o", "--output", type=click.Path(path_type=Path),
        help="Folder for confusion_<split>.png, per_class_<split>.csv/.md and eval_<split>.json.")
@quiet_option
def eval_cmd(checkpoint, split, output, quiet, **kw):
    """Evaluate a run directory or checkpoint on a dataset split."""
    from ..classify.report import markdown_table

    with distributed.session() as ctx:
        result = evaluate(EvalConfig(str(checkpoint), split=split, output=str(output) if output else None, **kw))
    if not ctx.is_main:
        return
    click.echo(f"{split} accuracy {result.acc:.4f}, loss {result.loss:.4f} on {result.n} images "
               f"({result.precision}, {result.seconds:.1f} s)")
    click.echo(markdown_table(result.per_class, ["class", "precision", "recall", "f1", "support"]))
    if output and not quiet:
        click.echo(f"wrote {output}/confusion_{split}.png, per_class_{split}.csv/.md, eval_{split}.json")


@classify_group.command("grid")
@data_options
@model_opts
@option("-o", "--output", required=True, type=click.Path(path_type=Path),
        help="Folder for the runs and grid.csv / grid.md.")
@search_options(lists=True)
@run_options
@overwrite_option()
@resume_option("OUTPUT/NN-.../last.pt of the search's interrupted run; its finished runs are kept, the rest "
               "train")
def grid_cmd(output, optimizer, lr, momentum, weight_decay, epochs, batch_size, quiet, overwrite, resume, **kw):
    """Train every combination of the comma-separated settings; rank on validation accuracy,
    evaluate the best on the test set."""
    from ..classify.grid import grid

    kw["quiet"] = quiet
    base = _base_config(kw, str(output))
    lists = {"optimizer": optimizer, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
             "epochs": epochs, "batch_size": batch_size}
    axes = {}
    for key, values in lists.items():
        if not values:
            continue
        if len(values) == 1:
            setattr(base, key, values[0])
        else:
            axes[key] = values
    if not axes:
        raise StyleforgeError("nothing to search: give at least one setting with several values, e.g. --lr 0.01,0.1")
    bars = TrainBars(quiet)
    try:
        with distributed.session() as ctx:
            grid(base, axes, output, callback=bars, overwrite=overwrite, resume=resume)
    finally:
        bars.close()
    if ctx.is_main:
        click.echo((Path(output) / "grid.md").read_text())


@classify_group.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@option("-o", "--output", type=click.Path(path_type=Path), help="PNG of the overlaid curves.")
@option("--table", type=click.Path(path_type=Path), help="Write the table (.csv, or .md for markdown).")
@quiet_option
def compare_cmd(runs, output, table, quiet):
    """Overlay the learning curves of finished RUNS and tabulate their results."""
    from ..classify.compare import COLUMNS, compare
    from ..classify.report import markdown_table

    rows = compare(runs, output, table)
    click.echo(markdown_table(rows, COLUMNS))
    if output and not quiet:
        click.echo(f"wrote {output}")


@classify_group.command("predict")
@click.argument("run_or_checkpoint", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@config_option(predict, "top_k", "--top-k", type=COUNT, help="Classes to list per image.")
@option("--json", "as_json", is_flag=True, help="Print JSON (image, top classes with probabilities).")
@device_option(predict)
def predict_cmd(run_or_checkpoint, images, top_k, as_json, device):
    """The most probable classes of each of IMAGES under a trained model (a run directory or
    checkpoint), with probabilities."""
    import json

    from ..classify.predict import format_predictions

    preds = predict(run_or_checkpoint, [str(p) for p in images], top_k, device)
    if as_json:
        click.echo(json.dumps([p.as_dict() for p in preds], indent=2))
    else:
        click.echo(format_predictions(preds))


@classify_group.command("preview")
@data_options
@config_option(preview, "split", "--split", type=click.Choice(SPLITS), help="Which part of the data.")
@config_option(preview, "count", "--count", type=COUNT, help="How many to show. Here images, spread over the classes.")
@seed_option(preview)
@option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output PNG.")
@quiet_option
def preview_cmd(split, count, seed, output, quiet, **kw):
    """A labelled grid of dataset images after resizing (--image-size) and augmentation (--augment)."""
    from ..classify.report import check_figure_path, save_figure

    check_figure_path(output)
    save_figure(preview(_data_spec(kw), parse_augment(kw["augment"]), count, split, seed), output)
    if not quiet:
        click.echo(f"wrote {output}")


@main_group.command("summary")
@click.argument("model")
@option("--input", "input_shape", metavar="CxHxW", help=INPUT_HELP,
        show_default=f"{as_text_shape(DEFAULT_SHAPE)}, or a trained run's own")
@num_classes_option(summary)
@activation_option
@freeze_option
@model_option
def summary_cmd(model: str, input_shape: str | None, num_classes: int, activation: str, freeze: str,
                options: tuple[str, ...]) -> None:
    """Per-layer settings (kernel, stride, padding, window), output shapes, parameters, the
    trainable part under the freeze policy, and multiply-adds of MODEL (a name, layer spec,
    FILE.py:CLASS, or a trained run or checkpoint: its own model, classes and freeze policy)."""
    result = summary(model, parse_shape(input_shape) if input_shape else None, num_classes, activation, freeze,
                     **parse_model_options(options, model))
    click.echo(result.table())
