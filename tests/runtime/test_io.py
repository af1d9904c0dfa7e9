import os
import signal
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from styleforge.runtime import io, lock
from styleforge.runtime.errors import StyleforgeError
from styleforge.runtime.guard import Terminated, sigterm_as_interrupt


def _rgb_array(h=20, w=30):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_load_image_is_float_rgb_in_unit_range(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(_rgb_array()).save(p)
    x = io.load_image(p)
    assert x.shape == (1, 3, 20, 30) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert io.load_image(p, size=15).shape == (1, 3, 10, 15)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK"])
def test_other_modes_become_rgb(tmp_path, mode):
    img = Image.fromarray(_rgb_array()).convert(mode)
    p = tmp_path / ("a.jpg" if mode == "CMYK" else "a.png")
    img.save(p)
    assert io.load_image(p).shape == (1, 3, 20, 30)


def test_rgba_transparency_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.save(tmp_path / "t.png")
    torch.testing.assert_close(io.load_image(tmp_path / "t.png"), torch.ones(1, 3, 4, 4))


def test_16_bit_grayscale_keeps_its_range(tmp_path):
    arr = np.array([[0, 65535], [32768, 16384]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    x = io.load_image(tmp_path / "g16.png")
    assert x.shape == (1, 3, 2, 2)
    assert x[0, 0, 0, 1] == 1.0 and x[0, 0, 0, 0] == 0.0
    assert abs(x[0, 0, 1, 0].item() - 0.5) < 0.01  # not clipped to white


def test_exif_orientation_is_respected(tmp_path):
    img = Image.fromarray(_rgb_array(10, 40))  # landscape pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert io.load_image(tmp_path / "r.jpg").shape == (1, 3, 40, 10)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(StyleforgeError, match="no such file"):
        io.load_image(tmp_path / "missing.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(StyleforgeError, match="empty"):
        io.load_image(tmp_path / "empty.jpg")
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(StyleforgeError, match="not an image"):
        io.load_image(tmp_path / "notes.jpg")
    Image.fromarray(_rgb_array(200, 200)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(StyleforgeError, match="truncated or corrupt"):
        io.load_image(tmp_path / "cut.jpg")


def test_save_image_round_trip_and_atomic_replace(tmp_path):
    x = io.load_image(_save(tmp_path))
    out = tmp_path / "out.png"
    io.save_image(x, out)
    torch.testing.assert_close(io.load_image(out), x)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_failed_write_leaves_existing_file_intact(tmp_path, monkeypatch):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")

    def broken_save(self, fp, *a, **k):
        with open(fp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError):
        io.save_image(torch.rand(1, 3, 4, 4), out)
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C raising KeyboardInterrupt, as in a terminal (a job started in the background ignores it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("sig, raised", [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_while_the_temporary_is_made_leaves_nothing_behind(tmp_path, monkeypatch, ctrl_c_raises, sig,
                                                                    raised):
    made = tempfile.mkstemp

    def mkstemp_then_signal(*args, **kwargs):  # the signal lands just after the file exists
        result = made(*args, **kwargs)
        os.kill(os.getpid(), sig)
        return result

    monkeypatch.setattr(io.tempfile, "mkstemp", mkstemp_then_signal)
    with sigterm_as_interrupt(), pytest.raises(raised):
        with io.atomic_path(tmp_path / "out.csv") as tmp:
            tmp.write_text("never finished")
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are back


def test_a_sigterm_while_a_lock_is_taken_leaves_no_lock_file(tmp_path, monkeypatch):
    opened = lock._open

    def open_then_sigterm(path):  # the signal lands just after the lock file exists
        fd = opened(path)
        os.kill(os.getpid(), signal.SIGTERM)
        return fd

    monkeypatch.setattr(lock, "_open", open_then_sigterm)
    with sigterm_as_interrupt(), pytest.raises(Terminated):
        with lock.hold(tmp_path / "out.pth", folder=False):
            pass
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with lock.hold(tmp_path / "out.pth", folder=False):  # and the next run takes it
        assert [p.name for p in tmp_path.iterdir()] == [".out.pth.lock"]


def test_unwritable_outputs_are_refused_early(tmp_path):
    with pytest.raises(StyleforgeError, match="does not exist"):
        io.check_writable(tmp_path / "nope" / "out.png")
    with pytest.raises(StyleforgeError, match="cannot tell the image format"):
        io.image_format(tmp_path / "out.xyz")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StyleforgeError, match="is not a folder"):
        io.check_writable(tmp_path / "file" / "out.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(StyleforgeError, match="not writable"):
            io.check_writable(locked / "out.png")
    finally:
        locked.chmod(0o700)


def _save(tmp_path):
    p = tmp_path / "in.png"
    Image.fromarray(_rgb_array()).save(p)
    return p


def test_load_torch_turns_every_unreadable_file_into_one_line(tmp_path):
    from styleforge.runtime.errors import first_line
    from styleforge.runtime.io import load_torch

    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(load_torch(good, "a thing", "fix it")["w"], torch.ones(2))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:40])
    for name in ("junk.pt", "cut.pt"):  # named for what they are, without torch's message about legacy formats
        with pytest.raises(StyleforgeError, match=rf"{name} is truncated or another kind of file, not a thing: fix"):
            load_torch(tmp_path / name, "a thing", "fix it")
    Image.new("RGB", (8, 8)).save(tmp_path / "painting.jpg")  # an image where a model goes: named as one
    with pytest.raises(StyleforgeError, match=r"painting.jpg is an image, not a thing: check which argument takes it"):
        load_torch(tmp_path / "painting.jpg", "a thing", "fix it")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:  # a complete zip, not one torch.save wrote
        z.writestr("notes.txt", "hello")
    with pytest.raises(StyleforgeError, match=r"other.zip is damaged or not a thing \(.*notes.txt\): fix it$"):
        load_torch(tmp_path / "other.zip", "a thing", "fix it")
    torch.save({"when": Path("x")}, tmp_path / "pickle.pt")  # a pickled object weights_only refuses
    with pytest.raises(StyleforgeError, match="holds pickled Python objects, which styleforge never loads: fix it"):
        load_torch(tmp_path / "pickle.pt", "a thing", "fix it")
    assert first_line(RuntimeError("Error(s) in loading:\n\tMissing key(s): a\n\tmore")) == "Missing key(s): a"
    assert first_line(ValueError("\n bad value \nsecond")) == "bad value" and first_line(KeyError()) == "KeyError"
    assert first_line(ValueError("a few words " * 20), limit=30) == "a few words a few words a few ..."  # between words


def test_no_empty_folder_left_removes_only_an_empty_folder_the_block_made(tmp_path):
    made = tmp_path / "made"
    with pytest.raises(StyleforgeError):
        with io.no_empty_folder_left(made):
            made.mkdir()
            raise StyleforgeError("bad input")
    assert not made.exists()
    with io.no_empty_folder_left(made):  # made and written into: kept
        made.mkdir()
        (made / "a.txt").write_text("x")
    assert (made / "a.txt").is_file()
    before = tmp_path / "before"
    before.mkdir()
    with io.no_empty_folder_left(before):  # there before the block: kept even though empty
        pass
    assert before.is_dir()
    deep = before / "new" / "newer" / "run"
    with pytest.raises(StyleforgeError):  # the parents it made go too, up to the one that existed
        with io.no_empty_folder_left(deep):
            deep.mkdir(parents=True)
            raise StyleforgeError("bad input")
    assert not (before / "new").exists() and before.is_dir()
    with io.no_empty_folder_left(deep):  # a parent that received a file stays, with the path to it
        deep.parent.mkdir(parents=True)
        (deep.parent / "keep.txt").write_text("x")
    assert (deep.parent / "keep.txt").is_file() and not deep.exists()


def test_written_by_styleforge_tells_its_own_files_from_a_users(tmp_path):
    import matplotlib.figure

    from styleforge.runtime.figures import save_figure

    ours = {"m.losses.csv": "step,content\n1,2\n", "metrics.csv": "epoch,train_loss\n", "report.md": "# run\n",
            "per_class_test.md": "| class |\n", "config.json": '{\n  "model": "x"\n}\n'}  # save_json's layout
    theirs = {"notes.csv": "name,age\n", "config.json": "my settings", "report.md": "Dear diary",
              "summary.json": '{"lr": 0.1, "model": "mine"}',  # JSON, laid out by hand
              "model.py": "class Net: pass\n",  # a run's copy of a model file is the run folder's to judge
              "m.pth": "my notes"}
    for name, text in ours.items():
        (tmp_path / name).write_text(text)
        assert io.written_by_styleforge(tmp_path / name), name
    torch.save({"format": "x", "state_dict": {}}, tmp_path / "m.pth")
    fig = matplotlib.figure.Figure()
    fig.add_subplot().plot([1, 2])
    save_figure(fig, tmp_path / "curves.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.png")
    assert io.written_by_styleforge(tmp_path / "m.pth") and io.written_by_styleforge(tmp_path / "curves.png")
    assert not io.written_by_styleforge(tmp_path / "photo.png")
    for name, text in theirs.items():
        (tmp_path / "theirs").mkdir(exist_ok=True)
        (tmp_path / "theirs" / name).write_text(text)
        assert not io.written_by_styleforge(tmp_path / "theirs" / name), name


def test_save_figure_keeps_missing_glyph_warnings_off_the_terminal(tmp_path):
    import warnings

    import matplotlib.figure

    from styleforge.runtime.figures import save_figure

    fig = matplotlib.figure.Figure()
    fig.add_subplot().set_title("photo 名.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        save_figure(fig, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0


def test_an_output_that_is_a_pipe_or_device_is_refused_not_replaced(tmp_path):
    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    with pytest.raises(StyleforgeError, match="is not a regular file .a device or a pipe."):
        io.save_image(torch.zeros(1, 3, 4, 4), fifo)
    assert fifo.is_fifo()
