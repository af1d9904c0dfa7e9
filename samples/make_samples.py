"""Recreate samples/: redistributable inputs from scikit-image and the outputs styleforge makes.

Inputs (copied from the scikit-image wheel, `pip install scikit-image`):
- chelsea.jpg: "Chelsea the cat", CC0 by the photographer Stefan van der Walt
  (skimage.data.chelsea).
- hubble.jpg: Hubble eXtreme Deep Field, NASA, public domain (skimage.data.hubble_deep_field),
  centre crop.
- ihc.jpg: immunohistochemistry micrograph, Center for Microscopy And Molecular Imaging,
  "no known copyright restrictions" (skimage.data.immunohistochemistry).

Outputs: chelsea-ihc.jpg and chelsea-hubble.jpg by `styleforge stylize` with default settings,
and readme.jpg, the before/after strip the README shows.

    python samples/make_samples.py            # inputs only
    python samples/make_samples.py --outputs  # also run styleforge (needs VGG19 weights)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent


def inputs() -> None:
    import skimage.data as data

    Image.fromarray(data.chelsea()).save(HERE / "chelsea.jpg", quality=95)
    Image.fromarray(data.immunohistochemistry()).save(HERE / "ihc.jpg", quality=95)
    hubble = Image.fromarray(data.hubble_deep_field())
    w, h = hubble.size
    hubble.crop(((w - 600) // 2, (h - 600) // 2, (w + 600) // 2, (h + 600) // 2)).save(HERE / "hubble.jpg", quality=95)


def outputs() -> None:
    for style in ("ihc", "hubble"):
        subprocess.run([sys.executable, "-m", "styleforge", "stylize", str(HERE / "chelsea.jpg"),
                        str(HERE / f"{style}.jpg"), "-o", str(HERE / f"chelsea-{style}.jpg"),
                        "--log", str(HERE / f"chelsea-{style}.json")], check=True)
    strip(["chelsea.jpg", "ihc.jpg", "chelsea-ihc.jpg", "hubble.jpg", "chelsea-hubble.jpg"],
          ["content", "style", "styleforge stylize", "style", "styleforge stylize"], HERE / "readme.jpg")


def strip(names: list[str], labels: list[str], out: Path, height: int = 220) -> None:
    tiles = []
    for name in names:
        img = Image.open(HERE / name).convert("RGB")
        tiles.append(img.resize((round(img.width * height / img.height), height), Image.LANCZOS))
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + 6 * (len(tiles) - 1), height + 22), "white")
    x = 0
    draw = ImageDraw.Draw(canvas)
    for tile, label in zip(tiles, labels):
        canvas.paste(tile, (x, 0))
        draw.text((x + 4, height + 5), label, fill="black")
        x += tile.width + 6
    canvas.save(out, quality=92)


if __name__ == "__main__":
    inputs()
    if "--outputs" in sys.argv:
        outputs()
