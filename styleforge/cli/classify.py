"""``styleforge classify ...`` (models, train, eval, grid, compare) and ``styleforge summary``.

Thin wrappers: each command builds a config and calls the library
(:func:`~styleforge.classify.train.fit`, :func:`~styleforge.classify.evaluate.evaluate`,
:func:`~styleforge.classify.grid.grid`, :func:`~styleforge.classify.compare.compare`);
progress callbacks become tqdm bars here.
"""

from __future__ import annotations

from pathlib import Path

import click

from .. import distributed
from ..classify import MODELS
from ..classify.models import ACTIVATIONS, FREEZE_POLICIES, model_options
from ..classify.progress import TrainBars
from ..classify.recipe import LOSSES, RECIPES
from ..classify.spec import EXAMPLE as SPEC_EXAMPLE
from ..classify.spec import LAYERS_HELP as SPEC_LAYERS
from ..classify.train import CACHE_MODES, OPTIMIZERS, SCHEDULES, TrainConfig
from ..device import PRECISIONS
from ..errors import StyleforgeError, first_line
from ..guard import check_memory
from .options import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    SEED,
    main_group,
    parse_numbers,
)


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


def parse_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [s.strip() for s in text.split(",") if s.strip()]
    return items or None


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
    valid = model_options(model) if model in MODELS else {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise StyleforgeError(f"--option {item!r} is not KEY=VALUE")
        if model in MODELS and key not in valid:
            raise StyleforgeError(f"{model} has no option {key!r}: its options are {', '.join(valid) or 'none'}")
        out[key] = tuple(_value(v) for v in text.split(",")) if "," in text else _value(text.strip())
    return out


def parse_augment(text: str) -> list[str]:
    return [] if text.strip().lower() in ("", "none") else [s.strip().lower() for s in text.split(",") if s.strip()]


def data_options(f):
    """Dataset and split options shared by train and grid."""
    opts = [
        click.option("--dataset", required=True,
                     help="mnist, fashion-mnist, cifar10, or an image folder (one sub-folder per class; "
                          "or with train/ and test/ inside)."),
        click.option("--data-root", help="Folder holding the named datasets (default: $STYLEFORGE_DATA, else "
                                         "~/.cache/styleforge/data)."),
        click.option("--test-data", help="A separate test image folder (image-folder datasets)."),
        click.option("--download", is_flag=True, help="Download a named dataset if it is missing (online)."),
        click.option("--classes", help="A subset of classes by name, e.g. 0,1,7 or cat,dog."),
        click.option("--per-class", type=COUNT, help="Training images per class (drawn after the validation split)."),
        click.option("--val-split", type=PROBABILITY, default=0.1, show_default=True,
                     help="Fraction of the training set held out for validation (0: none)."),
        click.option("--test-split", type=PROBABILITY, default=0.2, show_default=True,
                     help="Folders without a test set: fraction of each class held out as test."),
        click.option("--split-seed", type=SEED, default=0, show_default=True, help="Seed of the splits and subsets."),
        click.option("--image-size", type=COUNT, help="Model input size (square); default: the data's own size."),
        click.option("--augment", default="none", show_default=True,
                     help="none, or a list of crop,flip (on tensors, per batch)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def model_opts(f):
    opts = [
        click.option("--model", default="simple-cnn", show_default=True,
                     help=f"One of: {', '.join(MODELS)}; or a layer spec, e.g. '{SPEC_EXAMPLE}' (see "
                          "'styleforge classify models'); or FILE.py:CLASS (an nn.Module of yours)."),
        click.option("--activation", type=click.Choice(list(ACTIVATIONS)), default="relu", show_default=True),
        click.option("--pretrained/--random-init", default=None,
                     help="ImageNet weights for vgg19/resnet18 (default: on for vgg19, off for resnet18)."),
        click.option("--weights", type=click.Path(path_type=Path), help="Backbone weights file (skips the lookup)."),
        click.option("--freeze", type=click.Choice(("auto",) + FREEZE_POLICIES), default="auto", show_default=True,
                     help="auto: all-but-head for vgg19, all-but-layer4 for pretrained resnet18, else none."),
        click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
                     help="A model's own setting, e.g. width=32 (res-cnn), layer=relu4_4, pool=avgmax, hidden=512 "
                          "(vgg19). Repeatable."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def run_options(f):
    opts = [
        click.option("--recipe", type=click.Choice(list(RECIPES)), default="default", show_default=True,
                     help="default: momentum 0.9 (Nesterov), weight decay 5e-4, one-cycle schedule with 20% warm-up; "
                          "plain: textbook SGD/Adam (no momentum, no weight decay, constant lr, no smoothing). "
                          "Options given explicitly win; the resolved recipe is printed and kept in the report."),
        click.option("--loss", type=click.Choice(LOSSES), default="cross-entropy", show_default=True,
                     help="cross-entropy; nll (log-softmax then negative log-likelihood: the same value); mse "
                          "(squared error between softmax probabilities and the one-hot target)."),
        click.option("--schedule", type=click.Choice(SCHEDULES),
                     help="LR schedule over training: onecycle (warm-up then linear decay), cosine, step, constant "
                          "(default: from --recipe)."),
        click.option("--warmup", type=PROBABILITY, help="Warm-up fraction of training (default: from --recipe)."),
        click.option("--label-smoothing", type=PROBABILITY, help="Default: from --recipe (0)."),
        click.option("--eval-batch-size", type=COUNT, default=512, show_default=True),
        click.option("--patience", type=COUNT, help="Stop after this many epochs without a lower validation loss."),
        click.option("--max-seconds", type=POSITIVE, help="Training-time budget; the schedule follows elapsed time."),
        click.option("--cache-features", type=click.Choice(CACHE_MODES), default="auto", show_default=True,
                     help="Cache a frozen trunk's outputs (auto: when the trunk is frozen and --augment none)."),
        click.option("--int8-features", is_flag=True,
                     help="CPU, with the cache: extract features with an int8 copy of the trunk (about 1.8x faster)."),
        click.option("--checkpoint-every", "checkpoint_seconds", type=NON_NEGATIVE, default=30.0, show_default=True,
                     help="Write best.pt/last.pt at most every this many seconds (and after the last epoch)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True),
        click.option("--seed", type=SEED, default=0, show_default=True),
        click.option("--no-plots", is_flag=True, help="Skip curves.png and confusion_test.png."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _base_config(kw: dict, output: str) -> TrainConfig:
    return TrainConfig(
        dataset=kw["dataset"], output=output, model=kw["model"], data_root=kw["data_root"],
        test_data=kw["test_data"], download=kw["download"], classes=parse_list(kw["classes"]),
        per_class=kw["per_class"], val_split=kw["val_split"], test_split=kw["test_split"],
        split_seed=kw["split_seed"], image_size=kw["image_size"], augment=parse_augment(kw["augment"]),
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
        extra = " (--pretrained)" if spec.pretrained else ""
        opts = model_options(spec.name)
        opt_text = f" [options: {', '.join(f'{k}={v}' for k, v in opts.items())}]" if opts else ""
        click.echo(f"{spec.name:12s} {spec.description}{extra}{opt_text}")
    click.echo("\nYour own architecture: --model 'LAYER-LAYER-...' (a layer spec; sizes inferred) or "
               "--model FILE.py:CLASS.")
    click.echo(SPEC_LAYERS)


@classify_group.command("train")
@data_options
@model_opts
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="sgd", show_default=True)
@click.option("--lr", type=POSITIVE, help="Learning rate (default: 0.05 for sgd, 0.001 for adam/adamw).")
@click.option("--momentum", type=PROBABILITY, help="SGD momentum (default: from --recipe: 0.9 Nesterov, plain 0).")
@click.option("--weight-decay", type=NON_NEGATIVE, help="Default: from --recipe (5e-4, plain 0).")
@click.option("--epochs", type=COUNT, default=10, show_default=True)
@click.option("--batch-size", type=COUNT, default=128, show_default=True, help="Per process (under torchrun).")
@run_options
@click.option("--overwrite", is_flag=True, help="Replace a run already in the output directory.")
@click.option("--resume", is_flag=True, help="Continue the run in the output directory from its last.pt.")
@click.option("--track-test", is_flag=True,
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
@click.option("--dataset", help="Dataset (default: the one the checkpoint was trained on, same splits).")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--data-root", help="Folder holding the named datasets.")
@click.option("--test-data", help="A separate test image folder.")
@click.option("--download", is_flag=True)
@click.option("--classes", help="A subset of classes by name (must match the checkpoint's).")
@click.option("--val-split", type=PROBABILITY)
@click.option("--test-split", type=PROBABILITY)
@click.option("--image-size", type=COUNT, help="Decode size for folders of mixed-size images.")
@click.option("--batch-size", type=COUNT, default=512, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Folder for confusion_<split>.png, per_class_<split>.csv/.md and eval_<split>.json.")
def eval_cmd(checkpoint, dataset, split, data_root, test_data, download, classes, val_split, test_split,
             image_size, batch_size, device, precision, output):
    """Evaluate a run directory or checkpoint on a dataset split."""
    from ..classify.evaluate import EvalConfig, evaluate
    from ..classify.report import markdown_table

    with distributed.session() as ctx:
        result = evaluate(EvalConfig(str(checkpoint), dataset, split, data_root, test_data, download,
                                     parse_list(classes), val_split, test_split, image_size, batch_size, device,
                                     precision, str(output) if output else None))
    if not ctx.is_main:
        return
    click.echo(f"{split} accuracy {result.acc:.4f}, loss {result.loss:.4f} on {result.n} images "
               f"({result.seconds:.1f} s)")
    click.echo(markdown_table(result.per_class, ["class", "precision", "recall", "f1", "support"]))
    if output:
        click.echo(f"wrote {output}/confusion_{split}.png, per_class_{split}.csv/.md, eval_{split}.json")


@classify_group.command("grid")
@data_options
@model_opts
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Folder for the runs and grid.csv / grid.md.")
@click.option("--optimizer", default="sgd", show_default=True, help="One or more of sgd, adam, adamw (comma list).")
@click.option("--lr", help="Learning rates, e.g. 0.01,0.1 (default: per optimizer).")
@click.option("--momentum", help="Comma list (default: from --recipe).")
@click.option("--weight-decay", help="Comma list (default: from --recipe).")
@click.option("--epochs", default="10", show_default=True, help="Comma list.")
@click.option("--batch-size", default="128", show_default=True, help="Comma list, e.g. 256,512.")
@run_options
@click.option("--overwrite", is_flag=True, help="Replace a grid search already in the output folder.")
def grid_cmd(output, optimizer, lr, momentum, weight_decay, epochs, batch_size, quiet, overwrite, **kw):
    """Train every combination of the comma-separated settings; rank on validation accuracy,
    evaluate the best on the test set."""
    from ..classify.grid import grid

    kw["quiet"] = quiet
    base = _base_config(kw, str(output))
    lists = {"optimizer": parse_list(optimizer), "lr": parse_numbers(lr, "--lr", float, POSITIVE),
             "momentum": parse_numbers(momentum, "--momentum", float, PROBABILITY),
             "weight_decay": parse_numbers(weight_decay, "--weight-decay", float, NON_NEGATIVE),
             "epochs": parse_numbers(epochs, "--epochs", int, COUNT),
             "batch_size": parse_numbers(batch_size, "--batch-size", int, COUNT)}
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
            grid(base, axes, output, callback=bars, overwrite=overwrite)
    finally:
        bars.close()
    if ctx.is_main:
        click.echo((Path(output) / "grid.md").read_text())


@classify_group.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="PNG of the overlaid curves.")
@click.option("--table", type=click.Path(path_type=Path), help="Write the table (.csv, or .md for markdown).")
def compare_cmd(runs, output, table):
    """Overlay the learning curves of finished RUNS and tabulate their results."""
    from ..classify.compare import COLUMNS, compare
    from ..classify.report import markdown_table

    rows = compare(runs, output, table)
    click.echo(markdown_table(rows, COLUMNS))
    if output:
        click.echo(f"wrote {output}")


@classify_group.command("predict")
@click.argument("run_or_checkpoint", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=COUNT, default=3, show_default=True, help="Classes to list per image.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (image, top classes with probabilities).")
@click.option("--device", default="auto", show_default=True)
def predict_cmd(run_or_checkpoint, images, top_k, as_json, device):
    """The most probable classes of each of IMAGES under a trained model (a run directory or
    checkpoint), with probabilities."""
    import json

    from ..classify.predict import format_predictions, predict

    preds = predict(run_or_checkpoint, [str(p) for p in images], top_k, device)
    if as_json:
        click.echo(json.dumps([p.as_dict() for p in preds], indent=2))
    else:
        click.echo(format_predictions(preds))


@classify_group.command("preview")
@data_options
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True)
@click.option("--count", type=COUNT, default=32, show_default=True, help="Images to show (spread over the classes).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Which images, and their augmentation.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output PNG.")
def preview_cmd(split, count, seed, output, **kw):
    """A labelled grid of dataset images after resizing (--image-size) and augmentation (--augment)."""
    from ..classify.data import DataSpec
    from ..classify.preview import preview
    from ..classify.report import check_figure_path, save_figure

    check_figure_path(output)
    spec = DataSpec(kw["dataset"], kw["data_root"], kw["test_data"], kw["download"], parse_list(kw["classes"]),
                    kw["per_class"], kw["val_split"], kw["test_split"], kw["split_seed"], kw["image_size"])
    save_figure(preview(spec, parse_augment(kw["augment"]), count, split, seed), output)
    click.echo(f"wrote {output}")


@main_group.command("summary")
@click.argument("model")
@click.option("--input", "input_shape", default="3x32x32", show_default=True, help="Input shape CxHxW.")
@click.option("--classes", type=COUNT, default=10, show_default=True, help="Number of classes.")
@click.option("--activation", type=click.Choice(list(ACTIVATIONS)), default="relu", show_default=True)
@click.option("--freeze", type=click.Choice(("auto",) + FREEZE_POLICIES), default="auto", show_default=True,
              help="The freeze policy whose trainable counts to show (auto: as 'classify train' would use).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="A model's own setting (repeatable).")
def summary_cmd(model: str, input_shape: str, classes: int, activation: str, freeze: str,
                options: tuple[str, ...]) -> None:
    """Per-layer settings (kernel, stride, padding, window), output shapes, parameters, the
    trainable part under the freeze policy, and multiply-adds of MODEL (a name, layer spec or
    FILE.py:CLASS)."""
    from ..classify.summary import summary

    shape = parse_shape(input_shape)
    try:
        result = summary(model, shape, classes, activation, freeze, **parse_model_options(options, model))
    except RuntimeError as exc:
        raise StyleforgeError(f"{model} cannot take a {input_shape} input ({first_line(exc, 100)}): "
                              "use a larger --input") from None
    click.echo(result.table())
