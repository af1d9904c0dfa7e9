"""Reading images robustly and writing any output atomically.

Convention everywhere in styleforge: an image is a float tensor of shape (1, 3, H, W)
with values in [0, 1], RGB.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from . import guard
from .errors import StyleforgeError, first_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP",
                 ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP", ".ppm": "PPM"}


# --------------------------------------------------------------------------- reading

def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Open any common image as 8-bit RGB: EXIF orientation applied, alpha composited
    on white, palette/grayscale/CMYK converted, 16-bit and float images rescaled."""
    path = Path(path)
    if not path.exists():
        raise StyleforgeError(f"{path}: no such file")
    if path.is_dir():
        raise StyleforgeError(f"{path} is a folder, not an image file: give an image (.png, .jpg, ...)")
    if path.stat().st_size == 0:
        raise StyleforgeError(f"{path} is empty (0 bytes): give a real image file")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except Exception as exc:  # noqa: BLE001  (PIL raises many types for damaged files)
        raise _read_error(path, exc) from None


def _read_error(path: Path, exc: Exception) -> Exception:
    """The one-line error for an image PIL cannot open (anything unexpected stays a bug)."""
    if isinstance(exc, Image.DecompressionBombError):
        # PIL refuses images whose header declares more pixels than MAX_IMAGE_PIXELS (a few
        # bytes of PNG can declare 10^10 pixels); its error is not an OSError.
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        return StyleforgeError(f"{path} declares an image too large to decode safely (over {limit:,} pixels, "
                               "a possible decompression bomb): give a smaller image")
    if isinstance(exc, UnidentifiedImageError):
        return StyleforgeError(f"{path} is not an image file this tool can read (PNG, JPEG, ...)")
    if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
        return StyleforgeError(f"{path} is truncated or corrupt ({first_line(exc)}): re-export or re-download it")
    return exc


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the header alone, or None for a file that is not a readable image."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:  # noqa: BLE001
        if isinstance(_read_error(Path(path), exc), StyleforgeError):
            return None
        raise


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit / 32-bit grayscale: PIL's convert("L") would clip at 255, so rescale.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode != "F" and arr.max() > 255 else (1.0 if mode == "F" and arr.max() <= 1 else 255.0)
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.array(img, dtype=np.uint8)  # a writable copy
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).float().div_(255.0).contiguous()


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError("tensor_to_pil takes a single image")
        x = x[0]
    arr = x.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def resize_long_side(img: Image.Image, size: int) -> Image.Image:
    """Resize so the longer side is ``size`` pixels (aspect kept), Lanczos."""
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new == img.size:
        return img
    return img.resize(new, Image.Resampling.LANCZOS)


def load_image(path: str | os.PathLike, size: int | None = None) -> torch.Tensor:
    """Load an image file as a (1, 3, H, W) float tensor in [0, 1], long side ``size``."""
    img = open_rgb(path)
    if size is not None:
        img = resize_long_side(img, size)
    return pil_to_tensor(img)


# --------------------------------------------------------------------------- writing

def names_a_path(text: str | os.PathLike, kind: str = "any") -> bool:
    """Whether ``text`` names an existing file (``kind="file"``), folder (``"dir"``) or either; text too
    long to be a path (a long layer spec, over 255 bytes a name) names none."""
    path = Path(text)
    try:
        return {"file": path.is_file, "dir": path.is_dir}.get(kind, path.exists)()
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return False
        raise


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before any long computation) if ``path`` cannot be written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise StyleforgeError(f"output folder {folder} does not exist: create it first")
    if not folder.is_dir():
        raise StyleforgeError(f"{folder} is not a folder: choose another output path")
    if path.is_dir():
        raise StyleforgeError(f"output path {path} is a folder: give a file name")
    if path.exists() and not path.is_file():  # a device or a pipe: renaming a file over it would replace it
        raise StyleforgeError(f"output path {path} is not a regular file (a device or a pipe): give a file name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StyleforgeError(f"output folder {folder} is not writable: choose another output path")
    return path


def make_folder(path: str | os.PathLike) -> Path:
    """Create an output folder (and its parents), with a one-line error when that is not possible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StyleforgeError(f"{path} (or a folder above it) is a file: choose another output folder") from None
    except OSError as exc:
        raise StyleforgeError(f"cannot create the output folder {path} ({exc.strerror}): choose another") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StyleforgeError(f"output folder {path} is not writable: choose another output path")
    return path


def check_output_folder(path: str | os.PathLike) -> Path:
    """Fail early if ``path`` cannot become (or is not) a writable folder; creates nothing."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise StyleforgeError(f"output folder {path} is a file: give a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise StyleforgeError(f"cannot write into {existing}: choose another output folder")
    return path


@contextlib.contextmanager
def no_empty_folder_left(path: str | os.PathLike) -> Iterator[None]:
    """A folder at ``path`` that the block makes and leaves empty (it stopped on bad input before
    writing anything) is removed afterwards, and so are the missing parents the block made for it
    (``-o new/run``) where they stayed empty; a folder that existed before is never touched."""
    path = Path(path).absolute()
    made = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        yield
    finally:
        for folder in made:
            if not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()


def is_temporary(name: str) -> bool:
    """A file styleforge writes while it works: ``atomic_path``'s ``.NAME.xxxx.tmp`` or a lock."""
    return name.startswith(".") and name.endswith((".tmp", ".lock"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    Readers never see a half-written file and an existing file is replaced only by a
    complete one. On error the temporary file is removed and ``path`` is untouched.
    """
    path = check_writable(path)
    tmp_path: Path | None = None
    # Ctrl-C and SIGTERM (which raise where the program is) are held while the temporary file is
    # made and named, and acted on inside the ``try`` that removes it: one landing between the two
    # left a stray temporary (tests/cli/test_hostile.py's SIGTERM test, once, session 30).
    held = guard.InterruptsHeld()
    try:
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            tmp_path = Path(tmp)
            os.close(fd)
        finally:
            held.release()
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def image_format(path: str | os.PathLike) -> str:
    """PIL's format for an output image's suffix; one-line errors for a folder or an unknown suffix."""
    suffix = Path(path).suffix.lower()
    if Path(path).is_dir():
        raise StyleforgeError(f"{path} is a folder: give an image file, e.g. {Path(path) / 'out.png'}")
    if suffix not in _SAVE_FORMATS:
        raise StyleforgeError(
            f"cannot tell the image format of {path}: use one of {', '.join(sorted(_SAVE_FORMATS))}"
        )
    return _SAVE_FORMATS[suffix]


def save_image(x: torch.Tensor | Image.Image, path: str | os.PathLike, quality: int = 95) -> Path:
    """Write an image (tensor in [0, 1] or PIL) atomically; format from the extension."""
    fmt = image_format(path)
    img = tensor_to_pil(x) if isinstance(x, torch.Tensor) else x
    options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **options)
    return Path(path)


def save_json(data: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return Path(path)


# What the files styleforge writes begin with, by suffix: CSV headers (the fast trainers' loss tables, a
# run's metrics and steps, per-class tables, grid tables), Markdown (a report's title or a table).
_OWN_STARTS = {".csv": ("step,", "epoch,", "class,", "rank,"), ".md": ("#", "|")}


def read_json(path: str | os.PathLike, fix: str) -> dict[str, Any]:
    """A JSON record styleforge wrote (an object); one line naming the file and ``fix`` when it is damaged."""
    try:
        record = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError, OSError) as exc:  # JSONDecodeError is a ValueError
        raise StyleforgeError(f"{path} is damaged ({first_line(exc, 100)}): {fix}") from None
    if not isinstance(record, dict):
        raise StyleforgeError(f"{path} is damaged (not a styleforge record): {fix}")
    return record


def written_by_styleforge(path: str | os.PathLike) -> bool:
    """Whether an existing file looks like one styleforge writes under that name, so that --overwrite may
    replace it: a table or report by how it begins, a JSON record by save_json's exact layout, a figure by
    matplotlib's mark, a model, checkpoint or decoder as a PyTorch file holding a dict. (A run's copy of a
    user's model file is the run folder's to judge: classify.rundir.)"""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":  # a user's hand-written JSON is laid out otherwise
            text = path.read_text(encoding="utf-8")
            return text.startswith("{") and json.dumps(json.loads(text), indent=2, default=str) + "\n" == text
        if suffix in _OWN_STARTS:
            with open(path, encoding="utf-8") as fh:
                return fh.read(64).lstrip().startswith(_OWN_STARTS[suffix])
        if suffix == ".png":
            with Image.open(path) as img:
                return str(getattr(img, "text", {}).get("Software", "")).startswith("Matplotlib")
        return zipfile.is_zipfile(path) and isinstance(load_torch(path, "a PyTorch file", ""), dict)
    except (StyleforgeError, OSError, UnicodeDecodeError, ValueError):  # json's errors are ValueErrors
        return False


def refuse_foreign(paths: Iterable[str | os.PathLike], writer: str = "a styleforge run",
                   replacer: str = "--overwrite replaces") -> None:
    """Refuse to replace an existing file among ``paths`` that :func:`written_by_styleforge` does not
    recognize (a user's own file under one of styleforge's names)."""
    for p in (Path(p) for p in paths):
        if p.is_file() and not written_by_styleforge(p):
            raise StyleforgeError(f"{p} is not a file {writer} wrote, and {replacer} only those: move it or choose "
                                  "another -o")


def check_replaceable(paths: Iterable[str | os.PathLike], overwrite: bool, checkpoint: Path | None = None) -> None:
    """A training run's outputs that are already there: refused without ``overwrite``, and with it unless
    styleforge wrote them. ``checkpoint``: the one a --resume would continue, said in the message."""
    existing = [Path(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        p = existing[0]
        raise StyleforgeError(f"{p} is already there: use --overwrite to replace it"
                              + (", --resume to continue it" if p == checkpoint else "") + ", or another -o")
    refuse_foreign(existing)


def load_torch(path: str | os.PathLike, what: str, fix: str) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True``, so no pickled code runs.

    A truncated or non-torch file raises ``PATH is truncated or another kind of file, not WHAT: FIX`` (an image:
    ``PATH is an image, not WHAT``);
    a damaged archive gives torch's reason; one holding pickled Python objects says so.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for damaged or foreign files
        # torch.save writes a zip archive. Other bytes (an image, a truncated file: its directory is at the
        # end) are named as such, without torch's message for them, which is about its legacy formats.
        if not zipfile.is_zipfile(path):
            if header_size(path) is not None:  # e.g. a painting given where a model goes
                raise StyleforgeError(f"{path} is an image, not {what}: check which argument takes it") from None
            raise StyleforgeError(f"{path} is truncated or another kind of file, not {what}: {fix}") from None
        detail = first_line(exc)
        # A complete torch.save file that weights_only refuses holds pickled objects.
        if "Weights only load failed" in detail:
            raise StyleforgeError(f"{path} holds pickled Python objects, which styleforge never loads: {fix}") \
                from None
        raise StyleforgeError(f"{path} is damaged or not {what} ({detail}): {fix}") from None


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (checkpoints, models, weights)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
