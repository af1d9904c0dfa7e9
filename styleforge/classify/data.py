"""Classifier datasets, kept in memory as uint8 tensors.

Datasets by name (``mnist``, ``fashion-mnist``, ``cifar10``) or any ImageFolder path
(one sub-folder per class; a folder holding ``train/`` and ``test/`` class folders gives
both splits). Every dataset is decoded once into an :class:`ImageSet`: a uint8
``(N, C, H, W)`` tensor and int64 labels. Batches are cut from it by indexing, converted
to float on the device and augmented there, so loading never dominates an epoch.

Where the data comes from:

- MNIST / Fashion-MNIST: the original idx files (``.gz`` or extracted) in
  ``ROOT/MNIST/raw`` or ``ROOT/FashionMNIST/raw`` (torchvision's layout), parsed directly,
  so a read-only folder holding only the ``.gz`` files works.
- CIFAR-10: torchvision's ``ROOT/cifar-10-batches-py``, else an ImageFolder copy in
  ``ROOT/cifar10-jpeg/{train,test}``.
- ``ROOT`` is ``--data-root``, else ``$STYLEFORGE_DATA``, else ``~/.cache/styleforge/data``.
  torchvision downloads into it only when asked (``download=True``).
- Decoded folders are cached (``$STYLEFORGE_CACHE``, else ``~/.cache/styleforge``), keyed
  by the folder's path, size setting, file count and modification times, so a 60,000-JPEG
  folder is decoded once.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ..runtime import guard
from ..runtime.errors import StyleforgeError, first_line
from ..runtime.io import IMAGE_SUFFIXES, header_size, load_torch, no_empty_folder_left, open_rgb, save_torch

DATASETS = ("mnist", "fashion-mnist", "cifar10")
# The folders a data root holds for each named dataset (module docstring): torchvision's, then the JPEG copy's.
MNIST_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
CIFAR_BATCHES, CIFAR_JPEG = "cifar-10-batches-py", "cifar10-jpeg"
ROOT_FOLDERS = {**{f: n for n, f in MNIST_FOLDER.items()}, CIFAR_BATCHES: "cifar10", CIFAR_JPEG: "cifar10"}
DATA_ENV = "STYLEFORGE_DATA"
CACHE_ENV = "STYLEFORGE_CACHE"
# Folders whose images differ in size are decoded at this square size unless --image-size says.
DEFAULT_FOLDER_SIZE = 128
_CACHE_VERSION = 1

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class ImageSet:
    """Images as a uint8 ``(N, C, H, W)`` tensor, int64 labels, and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor | Sequence[int]) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index], list(self.classes))

    def counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


@dataclass
class DataSpec:
    """What to load and how to cut it (the data part of a training configuration)."""

    dataset: str
    data_root: str | None = None
    test_data: str | None = None      # a separate test folder (ImageFolder datasets)
    download: bool = False
    classes: list[str] | None = None  # a subset, by name (or index)
    per_class: int | None = None      # training images per class (after the val split)
    val_split: float = 0.1            # fraction of the training set held out for validation
    test_split: float = 0.2           # for folders without a test set: fraction held out as test
    split_seed: int = 0               # the splits and subsets do not change with the training seed
    # The side of the square images a model trained on these data sees, and the decode size of
    # folders of mixed-size (or non-square) images; None: the data's own size.
    image_size: int | None = None

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "DataSpec":
        """The spec ``asdict`` (a run's config record, under "data") wrote; keys it does not know are left out."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})

    def validate(self) -> "DataSpec":
        """One-line errors for settings no dataset can use; returns the spec."""
        guard.check_numbers([("--val-split", self.val_split, guard.PROBABILITY),
                             ("--test-split", self.test_split, guard.PROBABILITY),
                             ("--split-seed", self.split_seed, guard.SEED),
                             ("--per-class", self.per_class, guard.COUNT)])
        if self.image_size is not None and self.image_size < 4:
            raise StyleforgeError("--image-size must be at least 4")
        if self.test_data and not Path(self.test_data).expanduser().is_dir():
            raise StyleforgeError(f"--test-data {self.test_data} is not a folder: give a folder with one sub-folder "
                                  "of images per class, the training set's classes")
        return self

    def located(self) -> "DataSpec":
        """The spec with its folders as absolute paths, so that a run's record finds its data
        from any working directory (``classify eval RUN`` run elsewhere). A dataset name that
        is not an existing path (``mnist``) is kept as given, as :func:`load_dataset` reads it."""
        def absolute(path: str | None, only_existing: bool = True) -> str | None:
            if not path or (only_existing and not Path(path).expanduser().exists()):
                return path  # a name, or a missing folder that the loader's error names as the user gave it
            return str(Path(path).expanduser().resolve())
        return replace(self, dataset=absolute(self.dataset) or self.dataset, test_data=absolute(self.test_data),
                       data_root=absolute(self.data_root, only_existing=False))


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    classes: list[str]
    source: str
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- places

def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "styleforge").expanduser()


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return cache_dir() / "data"


# --------------------------------------------------------------------------- MNIST idx files

def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not a uint8 idx file")
        dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error, zlib.error) as exc:
        raise StyleforgeError(f"{path} is not a readable MNIST idx file ({first_line(exc)}): copy or download it "
                              "again") from None


@contextlib.contextmanager
def _downloading(name: str, root: Path, folder: Path):
    """torchvision's download prints a line per mirror tried: keep it quiet, fail in one line, and leave
    no empty ``folder`` (the one it downloads into) or parents behind."""
    chatter = io.StringIO()
    try:
        with no_empty_folder_left(folder), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            yield
    except StyleforgeError:
        raise
    except Exception as exc:  # URLError, permission errors, checksum errors
        # torchvision's message lists the mirrors tried ("Tried URL, got:"); the reason is its last line.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = lines[-1][:120] if lines else first_line(exc)
        raise StyleforgeError(f"downloading {name} into {root} failed ({type(exc).__name__}: {reason}): "
                              "check the network, or copy the files there by hand") from None


def _find_idx(raw: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (raw / name).is_file():
            return raw / name
    return None


def load_mnist(name: str, root: Path, download: bool = False) -> tuple[ImageSet, ImageSet]:
    """MNIST or Fashion-MNIST (train, test) from torchvision's folder layout under ``root``."""
    folder = MNIST_FOLDER[name]
    classes = MNIST_CLASSES if name == "mnist" else FASHION_CLASSES
    raw = root / folder / "raw"
    stems = {split: (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
             for split, prefix in (("train", "train"), ("test", "t10k"))}
    missing = [s for pair in stems.values() for s in pair if _find_idx(raw, s) is None]
    if missing and download:
        from torchvision import datasets

        cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        with _downloading(name, root, raw):
            cls(str(root), train=True, download=True)
            cls(str(root), train=False, download=True)
        missing = [s for pair in stems.values() for s in pair if _find_idx(raw, s) is None]
    if missing:
        raise StyleforgeError(
            f"{name} not found: {raw} lacks {missing[0]}(.gz); pass --data-root (the folder that holds "
            f"{folder}/raw), set ${DATA_ENV}, or add --download")
    out = []
    for split, (img_stem, lab_stem) in stems.items():
        img_path, lab_path = _find_idx(raw, img_stem), _find_idx(raw, lab_stem)
        assert img_path is not None and lab_path is not None  # none is missing (checked above)
        images, labels = _read_idx(img_path), _read_idx(lab_path)
        if images.ndim != 3 or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise StyleforgeError(f"{raw}: {split} images and labels do not match: copy or download them again")
        if labels.size and int(labels.max()) >= len(classes):
            raise StyleforgeError(f"{raw}: a {split} label is {int(labels.max())}, but {name} has {len(classes)} "
                                  "classes: the labels file is damaged; copy or download it again")
        out.append(ImageSet(torch.from_numpy(images.copy()).unsqueeze(1),
                            torch.from_numpy(labels.astype(np.int64)), list(classes)))
    return out[0], out[1]


# --------------------------------------------------------------------------- CIFAR-10

def load_cifar10(root: Path, download: bool = False) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10 (train, test): torchvision's python batches, else ``cifar10-jpeg/`` folders."""
    if (root / CIFAR_BATCHES).is_dir() or download:
        from torchvision import datasets

        try:
            with _downloading("cifar10", root, root):
                sets = [datasets.CIFAR10(str(root), train=t, download=download) for t in (True, False)]
        except StyleforgeError as exc:
            if download or "RuntimeError" not in str(exc):
                raise
            raise StyleforgeError(f"CIFAR-10 in {root} is incomplete or corrupt: add --download") from None
        return tuple(ImageSet(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(),
                              torch.tensor(s.targets, dtype=torch.long), list(s.classes))
                     for s in sets)  # type: ignore[return-value]
    jpeg = root / CIFAR_JPEG
    if (jpeg / "train").is_dir() and (jpeg / "test").is_dir():
        return load_folder(jpeg / "train"), load_folder(jpeg / "test")
    raise StyleforgeError(f"cifar10 not found in {root} (no {CIFAR_BATCHES}/ or {CIFAR_JPEG}/): pass "
                          f"--data-root, set ${DATA_ENV}, or add --download")


# --------------------------------------------------------------------------- ImageFolder

def _class_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def is_split_folder(path: Path) -> bool:
    """A folder holding ``train/`` and ``test/``, each with class folders."""
    return all((path / s).is_dir() and _class_dirs(path / s) for s in ("train", "test"))


def _scan_folder(path: Path) -> tuple[list[str], list[list[Path]]]:
    if not path.exists():
        raise StyleforgeError(f"dataset folder {path} does not exist: use one of {', '.join(DATASETS)} or a "
                              "folder with one sub-folder of images per class")
    if not path.is_dir():
        raise StyleforgeError(f"dataset {path} is not a folder: use one of {', '.join(DATASETS)} or a folder "
                              "with one sub-folder of images per class")
    dirs = _class_dirs(path)
    if not dirs:
        raise StyleforgeError(f"{path} has no class sub-folders: an image-folder dataset holds one folder of "
                              "images per class")
    files = [_image_files(d) for d in dirs]
    named = [d.name for d, f in zip(dirs, files) if d.name in ROOT_FOLDERS and not f]
    if named:  # a --data-root given as the dataset
        first = min((ROOT_FOLDERS[n] for n in named), key=DATASETS.index)  # mnist before fashion-mnist
        raise StyleforgeError(f"{path} looks like a data root (it holds {', '.join(named)}): use --dataset "
                              f"{first} --data-root {path}")
    for d, f in zip(dirs, files):
        if not f:
            raise StyleforgeError(f"class folder {d} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...): "
                                  "add images or remove the folder")
    if len(dirs) < 2:
        raise StyleforgeError(f"{path} has only one class folder ({dirs[0].name}): a classifier needs at least 2")
    return [d.name for d in dirs], files


def _fit_square(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and crop the centre square."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _decode(path: Path, size: int | None) -> np.ndarray:
    img = open_rgb(path)
    if size is not None and img.size != (size, size):
        img = _fit_square(img, size)
    return np.asarray(img, dtype=np.uint8)


def _cache_key(path: Path, size: int | None, dirs: list[str], files: list[list[Path]]) -> str:
    """The folder's cache name: its place, the size asked for, and every image's name, size and
    modification time (an image rewritten in place changes the key; a stat per file, no reading)."""
    listing = hashlib.sha1()
    for f in (f for fs in files for f in fs):
        st = f.stat()
        listing.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    stamp = {"v": _CACHE_VERSION, "path": str(path.resolve()), "size": size, "classes": dirs,
             "counts": [len(f) for f in files], "files": listing.hexdigest()}
    return hashlib.sha1(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:20]


def load_folder(path: str | os.PathLike, image_size: int | None = None, use_cache: bool = True) -> ImageSet:
    """An ImageFolder (class-per-folder) as an :class:`ImageSet` (RGB).

    Square images of one size are kept at that size (the training loop resizes batches
    on the device); folders of mixed-size or non-square images are decoded at
    ``image_size`` (default 128) square: shorter side resized, centre cropped.
    """
    path = Path(path).expanduser()
    classes, files = _scan_folder(path)
    flat = [(f, label) for label, fs in enumerate(files) for f in fs]
    # The key holds the requested size, so a cache hit needs no look at the images.
    cache_file = cache_dir() / "folders" / f"{_cache_key(path, image_size, classes, files)}.pt"
    if use_cache and cache_file.is_file():
        try:
            obj = load_torch(cache_file, "a dataset cache", "it is rebuilt")
            if obj["classes"] == classes and obj["labels"].shape[0] == len(flat):
                return ImageSet(obj["images"], obj["labels"], classes)
        except Exception:  # a stale or damaged cache file is rebuilt
            pass
    sizes = set()
    for f, _ in flat:
        sizes.add(header_size(f))  # None: decoding below gives the one-line error
        if len(sizes) > 1:
            break
    only = next(iter(sizes))
    uniform = len(sizes) == 1 and only is not None and only[0] == only[1]
    size = None if uniform else (image_size or DEFAULT_FOLDER_SIZE)
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        arrays = list(pool.map(lambda item: _decode(item[0], size), flat, chunksize=64))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise StyleforgeError(f"{path}: images differ in size; pass --image-size N to decode them at N x N")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in flat], dtype=torch.long)
    if use_cache:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            save_torch({"images": images, "labels": labels, "classes": classes}, cache_file)
        except (OSError, StyleforgeError):
            pass  # an unwritable cache only costs the decode next time
    return ImageSet(images, labels, classes)


# --------------------------------------------------------------------------- loading by name

def load_dataset(spec: DataSpec) -> tuple[ImageSet, ImageSet | None, str]:
    """(train, test or None, description) for a dataset name or folder."""
    test: ImageSet | None
    name = spec.dataset
    if name.lower() in DATASETS and not Path(name).exists():
        name = name.lower()
        root = data_root(spec.data_root)
        if name in MNIST_FOLDER:
            train, test = load_mnist(name, root, spec.download)
        else:
            train, test = load_cifar10(root, spec.download)
        if spec.test_data:
            test = load_folder(spec.test_data, spec.image_size)
        return train, test, f"{name} ({root})"
    path = Path(name).expanduser()
    if not path.exists() and os.sep not in name and "/" not in name:
        raise StyleforgeError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} or a folder with one "
                              "sub-folder of images per class")
    if path.is_dir() and is_split_folder(path) and not spec.test_data:
        train = load_folder(path / "train", spec.image_size)
        test = load_folder(path / "test", spec.image_size or (train.shape[1] if train.shape[1] == train.shape[2]
                                                               else None))
        return train, test, f"folder {path} (train/, test/)"
    train = load_folder(path, spec.image_size)
    test = None
    if spec.test_data:
        test = load_folder(spec.test_data, spec.image_size or train.shape[1])
    return train, test, f"folder {path}"


def _stratified_split(labels: torch.Tensor, frac: float, seed: int, num_classes: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) indices: ``round(frac * n_c)`` of each class held out, seeded."""
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = int(frac * len(idx) + 0.5)
        held.append(idx[:n])
        keep.append(idx[n:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def _select_classes(sets: list[ImageSet], wanted: list[str]) -> list[ImageSet]:
    classes = sets[0].classes
    chosen: list[int] = []
    for token in wanted:
        token = token.strip()
        if token in classes:
            chosen.append(classes.index(token))
        elif token.isdigit() and int(token) < len(classes):
            chosen.append(int(token))
        else:
            raise StyleforgeError(f"--classes: no class {token!r} in this dataset; its classes are "
                                  f"{', '.join(classes)}")
    if len(set(chosen)) != len(chosen):
        raise StyleforgeError("--classes names a class twice")
    if len(chosen) < 2:
        raise StyleforgeError("--classes: a classifier needs at least 2 classes")
    remap = torch.full((len(classes),), -1, dtype=torch.long)
    remap[torch.tensor(chosen)] = torch.arange(len(chosen))
    out = []
    for s in sets:
        keep = torch.nonzero(remap[s.labels] >= 0).flatten()
        out.append(ImageSet(s.images[keep], remap[s.labels[keep]], [classes[i] for i in chosen]))
    return out


def load_splits(spec: DataSpec) -> Splits:
    """Load the dataset and cut train / val / test as ``spec`` says.

    Order: the test split (folders without a test set), the class subset, the validation
    split of the training set, then ``per_class`` training images per class drawn from
    what is left, so the validation images are never training images and the test set
    never serves any choice.
    """
    for name, frac in (("--val-split", spec.val_split), ("--test-split", spec.test_split)):
        if not 0 <= frac < 1:
            raise StyleforgeError(f"{name} {frac} must be in [0, 1)")
    train, test, source = load_dataset(spec)
    for name, s in (("training", train), ("test", test)):
        if s is not None and len(s) and not 0 <= int(s.labels.min()) <= int(s.labels.max()) < len(s.classes):
            raise StyleforgeError(f"{source}: a {name} label is outside 0..{len(s.classes) - 1}: the label file is "
                                  "damaged; copy or download it again")
    notes = []
    if test is None:
        if spec.test_split <= 0:
            raise StyleforgeError(f"{spec.dataset} has no test set: give --test-data FOLDER or a --test-split > 0")
        keep, held = _stratified_split(train.labels, spec.test_split, spec.split_seed, len(train.classes))
        if len(held) == 0:
            raise StyleforgeError(f"--test-split {spec.test_split} holds out no image: raise it")
        train, test = train.subset(keep), train.subset(held)
        notes.append(f"test set: {spec.test_split:.0%} of each class held out (split seed {spec.split_seed})")
    if test.classes != train.classes:
        raise StyleforgeError(f"the test set's classes ({', '.join(test.classes)}) differ from the training set's "
                              f"({', '.join(train.classes)})")
    if test.shape[0] != train.shape[0]:
        raise StyleforgeError("the test images have a different number of channels from the training images")
    if spec.classes:
        train, test = _select_classes([train, test], spec.classes)
    if len(test) == 0:  # e.g. --classes picks classes too small to give any image to --test-split
        raise StyleforgeError(f"the test split holds no image of the classes {', '.join(test.classes)}: raise "
                              "--test-split, give --test-data FOLDER, or choose other --classes")
    k = len(train.classes)
    val = None
    if spec.val_split > 0:
        keep, held = _stratified_split(train.labels, spec.val_split, spec.split_seed + 1, k)
        if len(held):
            train, val = train.subset(keep), train.subset(held)
    if spec.per_class is not None:
        if spec.per_class < 1:
            raise StyleforgeError("--per-class must be at least 1")
        counts = train.counts()
        short = [(train.classes[c], n) for c, n in enumerate(counts) if n < spec.per_class]
        if short:
            where = " after the validation split" if val is not None else ""
            raise StyleforgeError(f"--per-class {spec.per_class} is more than available: class {short[0][0]!r} has "
                                  f"{short[0][1]} training images{where}; lower --per-class"
                                  + (" or --val-split" if val is not None else ""))
        g = torch.Generator().manual_seed(spec.split_seed + 2)
        pick = []
        for c in range(k):
            idx = torch.nonzero(train.labels == c).flatten()
            pick.append(idx[torch.randperm(len(idx), generator=g)[:spec.per_class]])
        train = train.subset(torch.cat(pick).sort().values)
    missing = [train.classes[c] for c, n in enumerate(train.counts()) if n == 0]
    if missing:
        raise StyleforgeError(f"class {missing[0]!r} has no training images left after the splits: "
                              "lower --val-split/--test-split")
    return Splits(train, val, test, list(train.classes), source, notes)


def channel_stats(images: torch.Tensor, max_images: int = 10000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std in [0, 1] units (from up to ``max_images`` images, evenly strided)."""
    step = max(1, len(images) // max_images)
    x = images[::step].float().div_(255)
    return x.mean((0, 2, 3)), x.std((0, 2, 3))
