"""Progress reporting: the one bar adapter and what the commands show with it."""

from __future__ import annotations

import re

from click.testing import CliRunner
from conftest import synthetic_image

from styleforge.cli import main_group
from styleforge.runtime.io import save_image
from styleforge.style.fast import TransformerNet, save_model
from styleforge.style.fast.apply import stylize_files


def _images(folder, n):
    folder.mkdir()
    for i in range(n):
        save_image(synthetic_image(24, 24, phase=i), folder / f"p{i}.png")
    return folder


def test_apply_reports_the_start_then_every_image_in_one_stage(tmp_path):
    model = save_model(TransformerNet("light").eval(), tmp_path / "m.pth", "x", {})
    events = []
    stylize_files(model, [_images(tmp_path / "in", 5)], tmp_path / "out", batch_size=2, device="cpu",
                  callback=events.append)
    assert [(e.done, e.total, e.stage) for e in events] == [(i, 5, "images") for i in range(6)]


def test_apply_shows_one_bar_with_a_real_rate(tmp_path):
    """It opened a bar per image, after the image was written: '82241 img/s' for a batch of 4."""
    model = save_model(TransformerNet("light").eval(), tmp_path / "m.pth", "x", {})
    result = CliRunner().invoke(main_group, ["fast", "apply", str(model), str(_images(tmp_path / "in", 6)),
                                             "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    finals = re.findall(r"(\w+): 100%.*?(\d+)/(\d+) \[.*?([\d.]+)img/s\]", result.stderr)
    # (A slow machine may redraw the full bar once more before it closes: the same bar.)
    assert {(label, done, total) for label, done, total, _ in finals} == {("images", "6", "6")}, result.stderr
    # Six 24 px images cannot be decoded, stylized and written in under a millisecond.
    assert all(float(rate) < 6000 for *_, rate in finals)


def test_classify_bars_show_phases_epochs_and_lines(capsys):
    from styleforge.classify.train import TrainEvent
    from styleforge.cli.classify import TrainBars

    bars = TrainBars()
    events = [TrainEvent("phase", step=s, steps=4, message="extracting features") for s in (0, 2, 4)]
    events += [TrainEvent("phase", message="training"), TrainEvent("epoch_start", 1, 2, steps=3)]
    events += [TrainEvent("step", 1, 2, step=s, steps=3, metrics={"loss": 0.5, "acc": 0.75, "lr": 0.1})
               for s in (1, 2, 3)]
    events += [TrainEvent("epoch_end", 1, 2, metrics={"train_loss": 0.5, "train_acc": 0.75, "seconds": 1.0}),
               TrainEvent("done", message="best epoch 1")]
    for e in events:
        bars(e)
    bars.close()
    out, err = capsys.readouterr()
    # Bars open at the start of their stage and are cleared when it ends (leave=False).
    assert "extracting features:   0%" in err and "0/4" in err and "epoch 1/2:   0%" in err and "0/3" in err
    assert out.splitlines() == ["training", "epoch 1/2: train loss 0.5000 acc 0.7500 (1.0 s)", "best epoch 1"]
    for e in events:
        TrainBars(quiet=True)(e)
    assert capsys.readouterr() == ("", "")


def test_one_bar_at_a_time_counts_not_increments(capsys):
    from styleforge.runtime.progress import Bar

    with Bar() as bar:
        bar.write("note")
        for done in (0, 3, 7, 10):
            bar.show("first", done, 10, "img", {"loss": "0.5"})
        bar.show("second", 0, 4, "step")  # a new stage closes the previous bar
        assert bar.is_open and bar.label == "second"
    assert not bar.is_open
    out, err = capsys.readouterr()
    assert out == "note\n"
    assert re.search(r"first: 100%.*10/10.*loss=0.5", err) and "second:   0%" in err and "0/4" in err
    with Bar(quiet=True) as quiet:
        quiet.write("note")
        quiet.show("first", 1, 2, "img")
        assert not quiet.is_open
    assert capsys.readouterr() == ("", "")

