"""Classifier training: learning, run-directory files, cache equivalence, resume, NaN, eval, grid, compare."""

import csv
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from styleforge.classify import apply_freeze, build_model
from styleforge.classify.checkpoint import check_compatible, load_checkpoint, model_from_checkpoint
from styleforge.classify.compare import compare
from styleforge.classify.data import DataSpec
from styleforge.classify.evaluate import EvalConfig, evaluate
from styleforge.classify.grid import grid
from styleforge.classify.train import TrainConfig, _train_mode, fit, make_optimizer
from styleforge.runtime.errors import StyleforgeError


def pattern(kind: int, rng, size: int = 12) -> np.ndarray:
    """Class 0: horizontal stripes, 1: vertical stripes, 2: a bright centre; random phase and noise."""
    yy, xx = np.mgrid[:size, :size]
    phase = rng.integers(0, 4)
    if kind == 0:
        img = ((yy + phase) // 2) % 2
    elif kind == 1:
        img = ((xx + phase) // 2) % 2
    else:
        img = ((abs(yy - size / 2 + 0.5) < 3 + phase % 2) & (abs(xx - size / 2 + 0.5) < 3)).astype(int)
    img = img * 170 + rng.integers(0, 60, (size, size))
    return np.repeat(img[..., None], 3, axis=2).astype(np.uint8)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """3 classes x 40 images of 12x12 patterns (no colour cue: the shape tells the class)."""
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"k{c}").mkdir()
        for i in range(40):
            Image.fromarray(pattern(c, rng)).save(root / f"k{c}" / f"{i}.png")
    return root


def cfg(toy, out, **kw) -> TrainConfig:
    base = TrainConfig(DataSpec(str(toy), test_split=0.25, val_split=0.2), str(out), model="convnet2", epochs=4,
                       batch_size=16, lr=0.05, precision="fp32", plots=False)
    return base.with_settings(**kw)


def test_tiny_run_learns_and_writes_a_well_formed_run_dir(toy, tmp_path):
    out = tmp_path / "run"
    r = fit(cfg(toy, out, epochs=6, plots=True))
    s = r.summary
    assert s["test_acc"] >= 0.9 and s["train_acc"] >= 0.9, s
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"] * 0.5
    for name in ("config.json", "metrics.csv", "curves.png", "confusion_test.png", "summary.json", "best.pt",
                 "last.pt", "report.md", "per_class_test.csv", "per_class_test.md"):
        assert (out / name).is_file(), name
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert all(0 <= float(r["val_acc"]) <= 1 and float(r["seconds"]) > 0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_train"] + summary["num_val"] + summary["num_test"] == 120 and summary["num_test"] == 30
    assert summary["best_epoch"] in range(1, 7) and summary["wall_seconds"] > 0
    assert sum(map(sum, summary["confusion_test"])) == 30
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "convnet2" and config["class_names"] == ["k0", "k1", "k2"]
    for png in ("curves.png", "confusion_test.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 300
    with open(out / "per_class_test.csv") as f:
        per_class = list(csv.DictReader(f))
    assert [p["class"] for p in per_class] == ["k0", "k1", "k2"] and sum(int(p["support"]) for p in per_class) == 30
    report = (out / "report.md").read_text()
    assert f"{100 * summary['test_acc']:.2f}%" in report and "curves.png" in report
    # The best checkpoint rebuilds the model without the data, and gives the recorded test accuracy.
    ckpt = load_checkpoint(out)
    assert ckpt["class_names"] == ["k0", "k1", "k2"] and ckpt["input_shape"] == [3, 12, 12]
    model = model_from_checkpoint(ckpt)
    assert isinstance(model, torch.nn.Module)
    ev = evaluate(EvalConfig(str(out)))  # auto: as training evaluated (fp32 on a CPU), the run's own figures
    assert ev.n == 30 and ev.acc == pytest.approx(summary["test_acc"]) and ev.precision == "fp32"
    assert ev.loss == pytest.approx(summary["test_loss"], rel=1e-5)


def test_existing_run_dir_is_refused_unless_overwrite(toy, tmp_path):
    out = tmp_path / "run"
    fit(cfg(toy, out, epochs=1))
    before = (out / "summary.json").read_text()
    with pytest.raises(StyleforgeError, match="already holds a run .*--overwrite"):
        fit(cfg(toy, out, epochs=1))
    assert (out / "summary.json").read_text() == before
    fit(cfg(toy, out, epochs=1, overwrite=True, seed=3))
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 1
    mine = tmp_path / "mine"  # a user's own files under a run's names: --overwrite replaces only styleforge's
    mine.mkdir()
    (mine / "config.json").write_text("my settings")
    (mine / "report.md").write_text("Dear diary")
    with pytest.raises(StyleforgeError, match="config.json is not a file a styleforge run wrote"):
        fit(cfg(toy, mine, epochs=1, overwrite=True))
    assert (mine / "config.json").read_text() == "my settings" and (mine / "report.md").read_text() == "Dear diary"
    (mine / "config.json").write_text('{"lr": 0.1, "model": "mine"}')  # JSON, but laid out by hand
    with pytest.raises(StyleforgeError, match="config.json is not a file a styleforge run wrote"):
        fit(cfg(toy, mine, epochs=1, overwrite=True))
    # A model.py beside a run of a built-in model is the user's own (a run copies only a FILE.py:CLASS model).
    (out / "model.py").write_text("x = 1  # my own script\n")
    with pytest.raises(StyleforgeError, match="model.py is not a file a styleforge run wrote"):
        fit(cfg(toy, out, epochs=1, overwrite=True))
    assert (out / "model.py").read_text() == "x = 1  # my own script\n"


def test_a_run_given_a_relative_dataset_path_evaluates_and_resumes_from_another_folder(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(toy.parent)
    interrupted(cfg(toy.name, tmp_path / "run", epochs=2, checkpoint_seconds=0))  # relative to toy.parent
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["dataset"] == str(toy)
    monkeypatch.chdir(tmp_path)
    assert evaluate(EvalConfig(str(tmp_path / "run"), precision="fp32")).n == 30
    assert fit(cfg(toy, tmp_path / "run", epochs=2, checkpoint_seconds=0, resume=True)).summary["epochs_run"] == 2
    said: list[str] = []  # resumed again, finished: nothing trains, and that is said
    again = cfg(toy, tmp_path / "run", epochs=2, checkpoint_seconds=0, resume=True)
    fit(again, callback=lambda e: said.append(e.message))
    assert "the run had finished its 2 epochs: nothing to train; its best checkpoint is evaluated" in " ".join(said)


def interrupted(config: TrainConfig) -> None:
    """A run stopped after its first epoch (its last.pt holds epoch 1)."""
    def stop(event):
        if event.kind == "epoch_end" and event.epoch == 1:
            raise KeyboardInterrupt
    with pytest.raises(StyleforgeError, match="interrupted"):
        fit(config, callback=stop)


def test_resume_refuses_data_that_gained_an_image(toy, tmp_path):
    data = shutil.copytree(toy, tmp_path / "data")
    interrupted(cfg(data, tmp_path / "run", epochs=2, checkpoint_seconds=0))
    shutil.copy(data / "k0" / "0.png", data / "k0" / "extra.png")  # the splits would be drawn again
    with pytest.raises(StyleforgeError, match=r"trained on other data \(train images per class \[.*\] -> "):
        fit(cfg(data, tmp_path / "run", epochs=2, checkpoint_seconds=0, resume=True))
    (data / "k0" / "extra.png").unlink()
    assert fit(cfg(data, tmp_path / "run", epochs=2, checkpoint_seconds=0, resume=True)).summary["epochs_run"] == 2


def rewrite_dataset(run, dataset: str) -> None:
    """A run as recorded before folders were made absolute: the dataset named as the user gave it."""
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run / name, weights_only=True)
        ckpt["config"]["data"]["dataset"] = dataset
        torch.save(ckpt, run / name)


def test_an_older_run_with_a_relative_dataset_resumes_from_the_folder_it_names(toy, tmp_path, monkeypatch):
    interrupted(cfg(toy, tmp_path / "run", epochs=2, checkpoint_seconds=0))
    rewrite_dataset(tmp_path / "run", toy.name)
    monkeypatch.chdir(toy.parent)
    fit(cfg(toy.name, tmp_path / "run", epochs=2, checkpoint_seconds=0, resume=True))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["dataset"] == str(toy)


def test_cached_trunk_gives_the_same_result_as_uncached(toy, tmp_path):
    runs = {}
    for mode in ("on", "off"):
        r = fit(cfg(toy, tmp_path / mode, model="bn-cnn", model_options={"widths": (8, 16)}, freeze="all-but-head",
                    cache_features=mode, epochs=3))
        runs[mode] = r
        assert r.summary["cached_features"] is (mode == "on")
    a = load_checkpoint(tmp_path / "on" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "off" / "last.pt")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), k
    head_before = build_model("bn-cnn", (3, 12, 12), 3, widths=(8, 16)).head[1].weight
    assert not torch.allclose(a["head.1.weight"], head_before)  # the head did train
    for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
        assert runs["on"].history[-1][key] == pytest.approx(runs["off"].history[-1][key], abs=1e-5)


def test_one_step_changes_exactly_the_unfrozen_parameters_and_frozen_bn_statistics_stay(toy):
    torch.manual_seed(0)
    model = build_model("res-cnn", (3, 16, 16), 3, width=8)
    model.trunk[0].weight.data.normal_()  # make sure nothing starts at an optimum
    apply_freeze(model, "all-but-head")
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    opt = make_optimizer(cfg(toy, "unused").validate(), model)
    _train_mode(model)
    loss = torch.nn.functional.cross_entropy(model(torch.rand(6, 3, 16, 16)), torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    opt.step()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    for n, t in model.state_dict().items():
        assert (not torch.equal(before[n], t)) == (n in trainable), n


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(toy, tmp_path):
    kw = dict(epochs=3, augment=["crop", "flip"], model="bn-cnn", model_options={"widths": (8, 16)},
              checkpoint_seconds=0)
    fit(cfg(toy, tmp_path / "straight", **kw))

    def interrupt(event):
        if event.kind == "epoch_end" and event.epoch == 2:
            raise KeyboardInterrupt  # after epoch 2's files are written, as a kill would

    with pytest.raises(StyleforgeError, match=r"interrupted: the checkpoint .*last.pt \(epoch 2\) is valid.*--resume"):
        fit(cfg(toy, tmp_path / "resumed", **kw), callback=interrupt)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 2
    r = fit(cfg(toy, tmp_path / "resumed", resume=True, **kw))
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["state_dict"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    assert [row["epoch"] for row in r.history] == [1, 2, 3]
    with open(tmp_path / "resumed" / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    with pytest.raises(StyleforgeError, match="nothing to resume"):
        fit(cfg(toy, tmp_path / "nowhere", resume=True))


def as_first_format(record: dict) -> dict:
    """A run record as written before config_version: DataSpec's fields beside the others."""
    flat = {k: v for k, v in record.items() if k not in ("data", "config_version")}
    return {**flat, **record["data"]}


def rewrite_in_first_format(run_dir, missing: tuple[str, ...] = ()) -> None:
    """The run's records in the first format, without the settings named in ``missing``
    (as if written before those settings existed)."""
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run_dir / name, weights_only=True)
        ckpt["config"] = {k: v for k, v in as_first_format(ckpt["config"]).items() if k not in missing}
        torch.save(ckpt, run_dir / name)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(as_first_format(config)))


def test_a_run_of_the_first_config_format_resumes_evaluates_and_is_rewritten_nested(toy, tmp_path):
    kw = dict(epochs=2, model="bn-cnn", model_options={"widths": (8, 16)}, checkpoint_seconds=0,
              data_root=str(tmp_path / "moved"))  # data_root may differ on --resume, and is nested now
    fit(cfg(toy, tmp_path / "straight", **kw))

    def interrupt(event):
        if event.kind == "epoch_end" and event.epoch == 1:
            raise KeyboardInterrupt

    old = tmp_path / "old"
    with pytest.raises(StyleforgeError, match="interrupted"):
        fit(cfg(toy, old, **kw), callback=interrupt)
    before = evaluate(EvalConfig(str(old), split="val", precision="fp32"))
    rewrite_in_first_format(old, missing=("loss",))  # a later setting resumes at its default
    assert "config_version" not in torch.load(old / "last.pt", weights_only=True)["config"]
    ev = evaluate(EvalConfig(str(old), split="val", precision="fp32"))  # the dataset, splits and seed: flat keys
    assert (ev.n, ev.acc, ev.loss) == (before.n, before.acc, before.loss) and ev.n == 18
    with pytest.raises(StyleforgeError, match=r"other settings \(--val-split 0.2 -> 0.3\)"):
        fit(cfg(toy, old, resume=True, **{**kw, "val_split": 0.3}))
    fit(cfg(toy, old, resume=True, **{**kw, "data_root": None}))
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["state_dict"]
    b = load_checkpoint(old / "last.pt")["state_dict"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    config = json.loads((old / "config.json").read_text())
    assert config["config_version"] == 2 and config["data"]["val_split"] == 0.2 and "val_split" not in config
    assert TrainConfig.from_dict(config).data == DataSpec(str(toy), val_split=0.2, test_split=0.25)


def test_a_record_of_a_newer_format_is_refused_in_one_line(toy, tmp_path):
    fit(cfg(toy, tmp_path / "run", epochs=1))
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    ckpt["config"]["config_version"] = 99
    torch.save(ckpt, tmp_path / "run" / "best.pt")
    newer = r"written by a newer styleforge \(config format 99, this one reads up to 2\): upgrade styleforge"
    for read in (lambda: load_checkpoint(tmp_path / "run"), lambda: TrainConfig.from_dict(ckpt["config"]),
                 lambda: evaluate(EvalConfig(str(tmp_path / "run")))):
        with pytest.raises(StyleforgeError, match=newer) as err:
            read()
        assert "\n" not in str(err.value)
    ckpt["config"] = {**ckpt["config"], "config_version": 2, "data": "mnist"}
    with pytest.raises(StyleforgeError, match="holds no valid 'data' settings: the file is damaged"):
        TrainConfig.from_dict(ckpt["config"])


def blow_up_after_first_epoch(monkeypatch, epochs: int) -> None:
    """The learning rate is sane in epoch 1 and 1e12 times larger after it (resume refuses another --lr)."""
    from styleforge.classify import train

    monkeypatch.setattr(train, "lr_factor", lambda schedule, p, warmup=0.2: 1.0 if p < 1 / epochs else 1e12)


def test_nan_loss_stops_keeps_the_best_checkpoint_and_leaves_a_valid_run_dir(toy, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        blow_up_after_first_epoch(m, 3)
        with pytest.raises(StyleforgeError, match=r"the loss became NaN.*lower --lr; the best checkpoint \(epoch 1\)"):
            fit(cfg(toy, out, epochs=3))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "nan" and summary["best_epoch"] == 1 and summary["test_acc"] is not None
    assert load_checkpoint(out)["epoch"] == 1
    with pytest.raises(StyleforgeError, match="no epoch finished, so no checkpoint was kept"):
        fit(cfg(toy, tmp_path / "fresh", epochs=1, lr=1e12, schedule="constant"))
    assert json.loads((tmp_path / "fresh" / "summary.json").read_text())["stopped"] == "nan"


def test_time_budget_stops_training(toy, tmp_path):
    r = fit(cfg(toy, tmp_path / "run", epochs=5000, max_seconds=1.0))
    assert r.summary["stopped"] == "time-limit" and r.summary["epochs_run"] < 5000
    # The whole budget is used (elapsed time counted once), and not much more.
    assert 1.0 <= r.summary["train_seconds"] < 5.0


def test_checkpoint_compatibility_errors(toy, tmp_path):
    fit(cfg(toy, tmp_path / "run", epochs=1))
    ckpt = load_checkpoint(tmp_path / "run")
    with pytest.raises(StyleforgeError, match="holds a convnet2 model, not simple-cnn"):
        check_compatible(ckpt, model="simple-cnn")
    with pytest.raises(StyleforgeError, match="was trained on 3 classes but the data has 2"):
        evaluate(EvalConfig(str(tmp_path / "run"), dataset=str(toy), classes=["k0", "k1"]))
    with pytest.raises(StyleforgeError, match="other settings .--model convnet2 -> fc-only; --epochs 1 -> 2."):
        fit(cfg(toy, tmp_path / "run", model="fc-only", epochs=2, resume=True))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(StyleforgeError, match="not a readable styleforge checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_grid_ranks_on_validation_and_tests_only_the_best(toy, tmp_path):
    result = grid(cfg(toy, tmp_path / "unused", epochs=2), {"lr": [0.001, 0.05]}, tmp_path / "grid")
    assert [r["rank"] for r in result.rows] == [1, 2]
    assert result.rows[0]["val_acc"] >= result.rows[1]["val_acc"]
    assert result.test["test_acc"] is not None and result.test["run"] == result.rows[0]["run"]
    for row in result.rows:  # no run saw the test set during the search
        assert json.loads((tmp_path / "grid" / row["run"] / "summary.json").read_text())["test_acc"] is None
    table = (tmp_path / "grid" / "grid.csv").read_text().splitlines()
    assert table[0].startswith("rank,run,lr,val_acc") and len(table) == 3
    assert "test accuracy" in (tmp_path / "grid" / "grid.md").read_text()
    with pytest.raises(StyleforgeError, match="already holds a grid search"):
        grid(cfg(toy, tmp_path / "unused", epochs=1), {"lr": [0.01, 0.1]}, tmp_path / "grid")
    for axis in ("data", "dataset", "output", "colour"):  # DataSpec's other fields are settings like lr
        with pytest.raises(StyleforgeError, match=f"cannot search over '{axis}'"):
            grid(cfg(toy, tmp_path / "unused"), {axis: [1, 2]}, tmp_path / "grid2")
    with pytest.raises(StyleforgeError, match="no run can be ranked: the validation split is empty"):
        grid(cfg(toy, tmp_path / "unused", epochs=1, val_split=0.001), {"lr": [0.01, 0.1]}, tmp_path / "grid3")
    assert [p.name for p in (tmp_path / "grid3").glob("0*")] == ["01-lr0.01"]  # said after the first run
    with pytest.raises(StyleforgeError, match="--batch-size gives 8 twice: give each value once"):
        grid(cfg(toy, tmp_path / "unused"), {"lr": [0.1], "batch_size": [8, 16, 8]}, tmp_path / "grid2")
    assert not (tmp_path / "grid2").exists()


def test_grid_does_not_mix_with_a_kept_run_folder(toy, tmp_path):
    out = tmp_path / "grid"
    first = grid(cfg(toy, tmp_path / "unused", epochs=1), {"lr": [0.05, 0.1]}, out)
    kept = out / first.rows[0]["run"]
    (kept / "mynotes.txt").write_text("mine")  # so --overwrite leaves this run folder alone
    with pytest.raises(StyleforgeError, match=f"{kept.name} holds files styleforge did not write"):
        grid(cfg(toy, tmp_path / "unused", epochs=1), {"lr": [0.05, 0.1]}, out, overwrite=True)
    assert (kept / "mynotes.txt").read_text() == "mine"


def test_an_interrupted_and_resumed_grid_matches_an_uninterrupted_one(toy, tmp_path):
    base = cfg(toy, tmp_path / "unused", epochs=2, checkpoint_seconds=0)
    axes = {"lr": [0.05, 0.1]}
    whole = grid(base, axes, tmp_path / "whole")
    ends = []

    def interrupt(event):
        ends.extend([1] if event.kind == "epoch_end" else [])
        if len(ends) == 3:  # after run 2's first epoch: run 1 finished, run 2 half done
            raise KeyboardInterrupt

    out = tmp_path / "grid"
    with pytest.raises(StyleforgeError, match=r"interrupted in run 2 of 2 \(02-lr0.1\): run the same command with "
                                              "--resume to continue the search"):
        grid(base, axes, out, callback=interrupt)
    with pytest.raises(StyleforgeError, match="already holds a grid search .*: use --resume to continue it"):
        grid(base, axes, out)
    with pytest.raises(StyleforgeError, match="holds a search over --lr 0.05,0.1, not --lr 0.01,0.1"):
        grid(base, {"lr": [0.01, 0.1]}, out, resume=True)
    with pytest.raises(StyleforgeError, match="other settings .--epochs 2 -> 3."):
        grid(replace(base, epochs=3), axes, out, resume=True)
    with pytest.raises(StyleforgeError, match="nothing to resume: .* holds no grid search"):
        grid(base, axes, tmp_path / "none" / "g", resume=True)
    assert not (tmp_path / "none").exists()  # no parent folder made for it
    (out / "02-lr0.1" / "notes.txt").write_text("mine")  # into the interrupted run: it would mix with the run
    with pytest.raises(StyleforgeError, match="02-lr0.1 holds files styleforge did not write"):
        grid(base, axes, out, resume=True)
    (out / "02-lr0.1" / "notes.txt").unlink()
    events = []
    resumed = grid(base, axes, out, callback=events.append, resume=True)
    phases = [e.message for e in events if e.kind == "phase" and e.message.startswith("run ")]
    assert phases == ["run 1/2: lr=0.05: finished earlier, kept", "run 2/2: lr=0.1"]
    assert sum(e.kind == "epoch_end" for e in events) == 1  # run 2's second epoch, and nothing trained twice
    keys = ("run", "val_acc", "val_loss", "train_acc", "epochs_run", "rank")
    assert [[r[k] for k in keys] for r in resumed.rows] == [[r[k] for k in keys] for r in whole.rows]
    assert resumed.test == whole.test
    again = grid(base, axes, out, resume=True)  # a finished search resumed: ranked and tested again, no training
    assert again.rows == resumed.rows
    with pytest.raises(StyleforgeError, match=r"holds a search over --lr 0.05,0.1, not --lr 0.05,0.1,0.2: give the "
                                              "same comma lists"):
        grid(base, {"lr": [0.05, 0.1, 0.2]}, out, resume=True)  # a longer list would test a second best run
    (out / "01-holiday").mkdir()
    (out / "01-holiday" / "photo.txt").write_text("mine")  # a user's folder named like a run is left alone
    assert grid(base, axes, out, resume=True).rows == resumed.rows
    summary = json.loads((out / "01-lr0.05" / "summary.json").read_text())
    (out / "01-lr0.05" / "summary.json").write_text(json.dumps({**summary, "val_acc": "x"}))
    with pytest.raises(StyleforgeError, match=r"summary.json is damaged \(a figure is not a number\)"):
        grid(base, axes, out, resume=True)
    (out / "01-lr0.05" / "config.json").write_text("{not json")
    with pytest.raises(StyleforgeError, match=r"01-lr0.05/config.json is damaged \(.*\): start the search again "
                                              "with --overwrite"):
        grid(base, axes, out, resume=True)


def test_compare_overlays_runs(toy, tmp_path):
    for name, model in (("a", "convnet2"), ("b", "fc-only")):
        fit(cfg(toy, tmp_path / name, model=model, epochs=2))
    rows = compare([tmp_path / "a", tmp_path / "b"], tmp_path / "cmp.png", tmp_path / "cmp.md")
    assert [r["model"] for r in rows] == ["convnet2", "fc-only"] and all(r["test_acc"] is not None for r in rows)
    with Image.open(tmp_path / "cmp.png") as im:
        assert im.format == "PNG"
    assert "| a | convnet2 |" in (tmp_path / "cmp.md").read_text()
    with pytest.raises(StyleforgeError, match="not a finished run directory"):
        compare([tmp_path])


def test_vgg19_transfer_with_real_weights_caches_features_and_learns(real_weights, toy, tmp_path, monkeypatch):
    r = fit(cfg(toy, tmp_path / "vgg", model="vgg19", image_size=32, epochs=8, optimizer="adamw", lr=3e-3,
                model_options={"layer": "relu2_2", "pool": "avgmax"}))
    s = r.summary
    assert s["cached_features"] and s["feature_seconds"] > 0
    assert s["params_trainable"] == 2 * 2 * 128 + (2 * 128 + 1) * 3  # batch norm + linear head only
    assert s["test_acc"] >= 0.8, s
    ckpt = load_checkpoint(tmp_path / "vgg")
    assert ckpt["model_options"]["layer"] == "relu2_2" and ckpt["freeze"] == "all-but-head"
    monkeypatch.delenv("STYLEFORGE_WEIGHTS")  # the checkpoint rebuilds the model without the weights file
    ev = evaluate(EvalConfig(str(tmp_path / "vgg"), precision="fp32"))
    assert ev.acc == pytest.approx(s["test_acc"])


def test_patience_stops_on_validation_loss_and_keeps_the_best_epoch(toy, tmp_path, monkeypatch):
    import styleforge.classify.train as train_mod

    real = train_mod.evaluate_source
    calls = []

    def rising_val_loss(net, source, *args):
        out = real(net, source, *args)
        if len(source) == 18 and len(calls) < 10:  # the validation split (6 per class), during training
            calls.append(1)
            out = {**out, "loss": float(len(calls))}  # 1, 2, 3, ...: epoch 1 stays the best
        return out

    monkeypatch.setattr(train_mod, "evaluate_source", rising_val_loss)
    r = fit(cfg(toy, tmp_path / "run", epochs=10, patience=2))
    assert r.summary["stopped"] == "early-stopping" and r.summary["epochs_run"] == 3
    assert r.summary["best_epoch"] == 1 and load_checkpoint(tmp_path / "run")["epoch"] == 1


def test_int8_features_train_the_head_like_fp32_features(toy, tmp_path):
    runs = {}
    for int8 in (False, True):
        runs[int8] = fit(cfg(toy, tmp_path / str(int8), model="bn-cnn", model_options={"widths": (8, 16)},
                             freeze="all-but-head", int8_features=int8, device="cpu", epochs=3)).summary
    assert runs[True]["int8_features"] and runs[True]["cached_features"]
    assert "int8 copy of the trunk" in (tmp_path / "True" / "report.md").read_text()
    # Same head training on slightly different features: close, not identical.
    assert runs[True]["train_loss"] != runs[False]["train_loss"]
    assert runs[True]["train_loss"] == pytest.approx(runs[False]["train_loss"], rel=0.1)


def test_int8_features_need_the_cache(toy, tmp_path):
    with pytest.raises(StyleforgeError, match="--int8-features needs the frozen-trunk cache"):
        fit(cfg(toy, tmp_path / "r", int8_features=True, device="cpu"))  # convnet2 trains its trunk
    assert not (tmp_path / "r" / "summary.json").exists()


def test_a_misspelt_model_is_said_before_the_data_loads(tmp_path):
    """--model's mistakes need no data: said first (here the data folder does not even exist)."""
    missing = DataSpec(str(tmp_path / "no-such-data"))
    for model, said in (("conv(8)-flaten-fc", "layer 2 'flaten' is not a layer"),
                        ("simpel-cnn", "unknown model 'simpel-cnn'"),
                        ("convnet2", "convnet2 has no option 'width'")):
        options = {"width": 8} if model == "convnet2" else {}
        with pytest.raises(StyleforgeError, match=said):
            fit(TrainConfig(missing, output=str(tmp_path / "run"), model=model, model_options=options))
    assert not (tmp_path / "run").exists()
