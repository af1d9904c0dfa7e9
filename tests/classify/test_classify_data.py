"""Classifier data: image folders, MNIST idx files, splits and subsets, batch augmentation."""

import dataclasses
import gzip
import json
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from styleforge.classify import data as cdata
from styleforge.classify.data import DataSpec, load_folder, load_mnist, load_splits
from styleforge.classify.train import TrainConfig, augment_batch, fit, lr_factor
from styleforge.runtime.errors import StyleforgeError


def make_folder(root, counts=(6, 6, 6), size=(12, 12), seed=0):
    """Class folders c0, c1, ... of small PNGs whose colour tells the class."""
    rng = np.random.default_rng(seed)
    for c, n in enumerate(counts):
        d = root / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            sz = size[i % len(size)] if isinstance(size, list) else size
            base = np.zeros((sz[1], sz[0], 3), np.uint8)
            base[..., c % 3] = 200
            Image.fromarray(base + rng.integers(0, 40, base.shape, dtype=np.uint8)).save(d / f"{i:03d}.png")
    return root


def test_folder_loads_as_uint8_tensor_and_uses_the_cache(tmp_path):
    root = make_folder(tmp_path / "set", counts=(4, 5))
    s = load_folder(root)
    assert s.images.dtype == torch.uint8 and s.images.shape == (9, 3, 12, 12)
    assert s.classes == ["c0", "c1"] and s.counts() == [4, 5]
    assert (s.images[:4, 0].float().mean() > 150) and (s.images[4:, 1].float().mean() > 150)
    cached = list((cdata.cache_dir() / "folders").glob("*.pt"))
    assert len(cached) == 1
    again = load_folder(root)
    assert torch.equal(again.images, s.images) and torch.equal(again.labels, s.labels)
    # A new file changes the key: the folder is decoded again, with the new image.
    make_folder(tmp_path / "set", counts=(5, 5))
    assert len(load_folder(root)) == 10
    assert len(list((cdata.cache_dir() / "folders").glob("*.pt"))) == 2
    # An image rewritten in place (same name, same count) changes the key too: its new pixels are read.
    before = load_folder(root).images[0].clone()
    Image.new("RGB", (12, 12), (0, 0, 255)).save(root / "c0" / "000.png")
    os.utime(root / "c0" / "000.png", ns=(1, 1))  # whatever the clock, its time stamp differs
    assert torch.equal(load_folder(root).images[0, 2], torch.full((12, 12), 255, dtype=torch.uint8))
    assert not torch.equal(before, load_folder(root).images[0])


def test_mixed_sizes_are_decoded_at_image_size(tmp_path):
    root = make_folder(tmp_path / "mixed", counts=(3, 3), size=[(20, 14), (16, 16), (30, 40)])
    assert load_folder(root, image_size=10).images.shape == (6, 3, 10, 10)
    assert load_folder(root).images.shape[-2:] == (cdata.DEFAULT_FOLDER_SIZE, cdata.DEFAULT_FOLDER_SIZE)


def test_splits_are_stratified_seeded_and_disjoint(tmp_path):
    root = make_folder(tmp_path / "set", counts=(20, 20, 20))
    spec = DataSpec(str(root), val_split=0.25, test_split=0.2, per_class=8)
    a, b = load_splits(spec), load_splits(spec)
    assert torch.equal(a.train.images, b.train.images)
    assert a.test.counts() == [4, 4, 4] and a.val.counts() == [4, 4, 4] and a.train.counts() == [8, 8, 8]
    # No image is in two splits (the noise makes every image unique).
    flat = lambda s: {bytes(x.numpy().tobytes()) for x in s.images}  # noqa: E731
    assert not (flat(a.train) & flat(a.val)) and not (flat(a.train) & flat(a.test)) and not (flat(a.val) & flat(a.test))
    sub = load_splits(DataSpec(str(root), classes=["c2", "c0"], val_split=0))
    assert sub.classes == ["c2", "c0"] and sub.train.counts() == [16, 16]
    assert sub.train.images[sub.train.labels == 0, 2].float().mean() > 150  # label 0 is now c2


def test_train_test_folder_layout(tmp_path):
    make_folder(tmp_path / "ds" / "train", counts=(5, 5))
    make_folder(tmp_path / "ds" / "test", counts=(2, 3), seed=1)
    s = load_splits(DataSpec(str(tmp_path / "ds"), val_split=0))
    assert len(s.train) == 10 and s.test.counts() == [2, 3] and s.val is None


def test_bad_folders_and_subsets(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(StyleforgeError, match="has no class sub-folders"):
        load_folder(tmp_path / "flat")
    root = make_folder(tmp_path / "set", counts=(3, 3))
    (root / "empty").mkdir()
    with pytest.raises(StyleforgeError, match=r"class folder .*empty holds no images"):
        load_folder(root)
    (root / "empty").rmdir()
    (tmp_path / "root" / "MNIST" / "raw").mkdir(parents=True)  # a --data-root given as the dataset
    (tmp_path / "root" / "FashionMNIST" / "raw").mkdir(parents=True)  # named first, but mnist is suggested
    (tmp_path / "root" / "cifar10-jpeg" / "train").mkdir(parents=True)
    with pytest.raises(StyleforgeError, match=r"root looks like a data root \(it holds FashionMNIST, MNIST, "
                                              r"cifar10-jpeg\): use --dataset mnist --data-root .*root$"):
        load_folder(tmp_path / "root")
    with pytest.raises(StyleforgeError, match="no class 'dog' in this dataset; its classes are c0, c1"):
        load_splits(DataSpec(str(root), classes=["c0", "dog"]))
    with pytest.raises(StyleforgeError, match=r"--per-class 9 is more than available: class 'c0' has 2"):
        load_splits(DataSpec(str(root), per_class=9, val_split=0))
    with pytest.raises(StyleforgeError, match="unknown dataset 'imagenet': use one of mnist, fashion-mnist, cifar10"):
        load_splits(DataSpec("imagenet"))
    with pytest.raises(StyleforgeError, match="mnist not found"):
        load_splits(DataSpec("mnist", data_root=str(tmp_path)))


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_mnist_idx_files_parse(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 28, 28))
    _write_idx(raw / "train-images-idx3-ubyte.gz", imgs)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(7) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", imgs[:3])
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(3))
    train, test = load_mnist("mnist", tmp_path)
    assert train.images.shape == (7, 1, 28, 28) and torch.equal(train.images[3, 0], torch.from_numpy(imgs[3]).byte())
    assert train.labels.tolist() == list(range(7)) and len(test) == 3 and train.classes[7] == "7"


def test_real_mnist_loads_and_a_short_run_beats_chance(shared, tmp_path):
    train, test = load_mnist("mnist", shared / "data")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.counts()[1] == 6742 and test.counts()[0] == 980
    r = fit(TrainConfig(DataSpec("mnist", str(shared / "data"), per_class=30, val_split=0.02),
                        output=str(tmp_path / "run"), model="fc-only", epochs=3, batch_size=32, precision="fp32",
                        plots=False))
    assert r.summary["num_train"] == 300 and r.summary["num_test"] == 10000
    assert r.summary["test_acc"] > 0.6, r.summary  # chance is 0.1


def test_augmentation_crops_and_flips_per_image():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, ["crop"], g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    for i in range(2):  # each output is some 8x8 window of its own padded image
        windows = padded[i, 0].unfold(0, 8, 1).unfold(1, 8, 1).reshape(-1, 8, 8)
        assert any(torch.equal(out[i, 0], w) for w in windows)
    flips = augment_batch(x.repeat(16, 1, 1, 1), ["flip"], g)
    flipped = [torch.equal(f, x[i % 2].flip(-1)) for i, f in enumerate(flips)]
    kept = [torch.equal(f, x[i % 2]) for i, f in enumerate(flips)]
    assert all(a or b for a, b in zip(flipped, kept)) and any(flipped) and any(kept)


def test_lr_schedules():
    assert lr_factor("constant", 0.7) == 1.0
    assert lr_factor("step", 0.4) == 1.0 and lr_factor("step", 0.6) == pytest.approx(0.1)
    assert lr_factor("onecycle", 0.1, warmup=0.2) == pytest.approx(0.5)
    assert lr_factor("onecycle", 0.2, warmup=0.2) == pytest.approx(1.0)
    assert lr_factor("onecycle", 1.0, warmup=0.2) == pytest.approx(0.0)
    assert lr_factor("cosine", 0.6, warmup=0.2) == pytest.approx(0.5)


def test_train_config_nests_the_data_spec_and_copies_none_of_its_fields():
    spec_fields = {f.name for f in dataclasses.fields(DataSpec)}
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert train_fields["data"].type in (DataSpec, "DataSpec") and not spec_fields & set(train_fields)
    values = {"dataset": "set", "data_root": "root", "test_data": "t", "download": True, "classes": ["a"],
              "per_class": 3, "val_split": 0.3, "test_split": 0.4, "split_seed": 5, "image_size": 16}
    assert set(values) == spec_fields
    # with_settings names settings as the options do: DataSpec's go to data, the others stay.
    cfg = TrainConfig(DataSpec("x"), "o").with_settings(lr=0.5, **values)
    assert cfg.data == DataSpec(**values) and cfg.lr == 0.5 and cfg.output == "o"


def test_a_train_config_round_trips_through_its_record_and_reads_the_first_format():
    cfg = TrainConfig(DataSpec("set", "root", "t", True, ["a", "b"], 3, 0.3, 0.4, 5, 16), "out", model="res-cnn",
                      augment=["crop"], model_options={"width": 8}, lr=0.2, epochs=2, seed=7, resume=True)
    record = cfg.as_dict()
    assert record["config_version"] == 2 and record["data"]["val_split"] == 0.3 and "val_split" not in record
    assert TrainConfig.from_dict(record) == cfg
    assert TrainConfig.from_dict(json.loads(json.dumps(record))) == cfg
    # The first format (styleforge 0.1.0): DataSpec's fields at the top level, no version; what the
    # run found (class_names, device, ...) beside the settings is left out.
    flat = {**{k: v for k, v in record.items() if k not in ("data", "config_version")}, **record["data"],
            "class_names": ["a", "b"], "params_total": 10}
    assert TrainConfig.from_dict(flat) == cfg
    with pytest.raises(StyleforgeError, match="lacks a valid 'dataset' entry"):
        TrainConfig.from_dict({"config_version": 2, "output": "o", "data": {}})
    with pytest.raises(StyleforgeError, match="config_version 'two': the file is damaged"):
        TrainConfig.from_dict({**record, "config_version": "two"})


def test_data_spec_validate_gives_one_line_errors():
    assert DataSpec("x", val_split=0.0).validate() == DataSpec("x", val_split=0.0)
    for bad, message in ((dict(val_split=1.0), "--val-split must be in"), (dict(split_seed=-1), "--split-seed"),
                         (dict(per_class=0), "--per-class must be at least 1"),
                         (dict(image_size=2), "--image-size must be at least 4")):
        with pytest.raises(StyleforgeError, match=message):
            DataSpec("x", **bad).validate()
