"""A contact sheet: one photo through every installed style, labelled, in one picture.

This is how a user chooses a style: the same photo, side by side, at the size they will use.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

from PIL import Image, ImageDraw

from ...runtime import guard
from ...runtime.device import runtime as make_runtime
from ...runtime.errors import StyleforgeError
from ...runtime.io import open_rgb, pil_to_tensor, resize_long_side, tensor_to_pil
from .apply import apply_to_tensor
from .model import ARCHS, available_models, load_model, resolve_model

DEFAULT_TILE = 384
LABEL_HEIGHT = 18
GAP = 6


@dataclass
class SheetProgress:
    done: int
    total: int
    style: str


def _columns(count: int, columns: int | None) -> int:
    if columns is not None:
        if columns < 1:
            raise StyleforgeError(f"--columns must be positive, got {columns}")
        return columns
    return min(count, max(1, math.ceil(math.sqrt(count * 1.5))))  # a little wider than tall


def style_sheet(photo: str | os.PathLike | Image.Image, styles: Sequence[str] | None = None,
                tile: int = DEFAULT_TILE, columns: int | None = None, device: str = "auto",
                precision: str = "auto", callback: Callable[[SheetProgress], None] | None = None) -> Image.Image:
    """The photo (first tile) and its stylization by each model in ``styles`` (default: every installed one).

    ``styles`` holds model names or files; ``tile`` is each tile's long side in pixels (the
    photo is resized once, so every style sees the same pixels and stroke scale).
    """
    if tile < 32:
        raise StyleforgeError(f"--size must be at least 32 px for a sheet, got {tile}")
    names = list(styles) if styles else list(available_models())
    if not names:
        raise StyleforgeError("no style models installed: train one with `styleforge fast train` "
                              "or put fast-NAME.pth files in $STYLEFORGE_WEIGHTS")
    models = [load_model(resolve_model(n)) for n in names]   # all errors before any work
    image = photo if isinstance(photo, Image.Image) else open_rgb(photo)
    rt = make_runtime(device, precision)
    pixels = guard.scaled_pixels(image.size, tile)
    widest = max(guard.transformer_bytes_per_pixel(ARCHS[net.arch].channels[0]) for net, _ in models)
    guard.check_memory(pixels * (widest + 4 * (len(models) + 2)), f"a sheet of {pixels / 1e6:.0f}-megapixel tiles",
                       "use a smaller --size", rt.device)  # the widest network, and the tiles and sheet (RGBA)
    small = resize_long_side(image.convert("RGB"), tile)
    x = pil_to_tensor(small)
    tiles = [("photo", small)]
    if callback is not None:
        callback(SheetProgress(0, len(names), ""))
    for i, (name, (net, record)) in enumerate(zip(names, models)):
        out = apply_to_tensor(rt.for_inference(net), x, rt)[0]
        tiles.append((str(record.get("style") or name), tensor_to_pil(out)))
        if callback is not None:
            callback(SheetProgress(i + 1, len(names), name))
    return compose(tiles, _columns(len(tiles), columns))


def compose(tiles: Sequence[tuple[str, Image.Image]], columns: int) -> Image.Image:
    """Tiles (label, image of one size) in a grid on white, each with its label above it."""
    w, h = tiles[0][1].size
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (columns * (w + GAP) + GAP, rows * (h + LABEL_HEIGHT + GAP) + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (label, img) in enumerate(tiles):
        r, c = divmod(n, columns)
        x0, y0 = GAP + c * (w + GAP), GAP + r * (h + LABEL_HEIGHT + GAP)
        draw.text((x0 + 2, y0 + 3), label.replace("_", " "), fill="black")
        sheet.paste(img.resize((w, h)) if img.size != (w, h) else img, (x0, y0 + LABEL_HEIGHT))
    return sheet
