"""Recreate samples/: redistributable inputs from scikit-image and the outputs styleforge makes.

Inputs (copied from the scikit-image wheel, `pip install scikit-image`):
- chelsea.jpg: "Chelsea the cat", CC0 by the photographer Stefan van der Walt
  (skimage.data.chelsea).
- ihc.jpg: immunohistochemistry micrograph, Center for Microscopy And Molecular Imaging,
  "no known copyright restrictions" (skimage.data.immunohistochemistry).

Outputs: chelsea-ihc.jpg by `styleforge stylize` with default settings, chelsea-ihc-colors.jpg
with `--original-colors`, and readme.jpg, the before/after strip the README shows.

    python samples/make_samples.py            # inputs only
    python samples/make_samples.py --outputs  # also run styleforge (needs VGG19 weights)
    python samples/make_samples.py --fast     # fast.jpg: `fast sheet` of the shipped style models
    python samples/make_samples.py --three-ways  # three-ways.jpg: one painting, stylize / trained / any-style
    python samples/make_samples.py --decoders    # decoders.jpg: one painting through each fast apply --decoder
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent


def inputs() -> None:
    import skimage.data as data

    Image.fromarray(data.chelsea()).save(HERE / "chelsea.jpg", quality=95)
    Image.fromarray(data.immunohistochemistry()).save(HERE / "ihc.jpg", quality=95)


def outputs() -> None:
    for name, extra in (("chelsea-ihc", []), ("chelsea-ihc-colors", ["--original-colors"])):
        subprocess.run([sys.executable, "-m", "styleforge", "stylize", "samples/chelsea.jpg", "samples/ihc.jpg",
                        "-o", f"samples/{name}.jpg", "--log", f"samples/{name}.json", *extra],
                       check=True, cwd=HERE.parent)
    strip(["chelsea.jpg", "ihc.jpg", "chelsea-ihc.jpg", "chelsea-ihc-colors.jpg"],
          ["content", "style", "styleforge stylize (defaults)", "... --original-colors"], HERE / "readme.jpg")


def fast() -> None:
    """samples/fast.jpg: chelsea through every shipped style model (`styleforge fast sheet`)."""
    subprocess.run([sys.executable, "-m", "styleforge", "fast", "sheet", "samples/chelsea.jpg", "-o",
                    "samples/fast.jpg", "--size", "320", "--device", "cpu", "--precision", "fp32",
                    "-q"], check=True, cwd=HERE.parent)


def painting(name: str) -> str:
    """A public-domain painting from ../shared (or $STYLEFORGE_SHARED)."""
    shared = Path(os.environ.get("STYLEFORGE_SHARED", HERE.parent.parent / "shared"))
    return str(shared / "data" / "styles" / f"{name}.jpg")


def three_ways() -> None:
    """samples/three-ways.jpg: the cat in The Starry Night (public domain; from ../shared) the three ways,
    each labelled with its command's time end to end on this machine (process start included)."""
    style = painting("starry_night")
    size = ["--size", "320"]
    ways = [("stylize", ["stylize", "samples/chelsea.jpg", style, *size, "-q"]),
            ("fast apply starry_night", ["fast", "apply", "starry_night", "samples/chelsea.jpg", *size, "-q"]),
            ("fast apply --style-image", ["fast", "apply", "samples/chelsea.jpg", "--style-image", style, *size,
                                          "--style-size", "320", "-q"])]
    timed_strip(ways, ["chelsea.jpg"], ["photo"], HERE / "three-ways.jpg")


def decoders() -> None:
    """samples/decoders.jpg: the cat with Kandinsky's Composition VII (public domain) as --style-image,
    through each --decoder at its defaults, labelled with each command's time end to end."""
    style = painting("composition_vii")
    common = ["fast", "apply", "samples/chelsea.jpg", "--style-image", style, "--size", "320", "--style-size", "320",
              "-q"]
    ways = [(f"--decoder {d}", [*common, "--decoder", d]) for d in ("cascade", "hourglass", "hourglass+cascade")]
    timed_strip(ways, [style], ["style: Composition VII"], HERE / "decoders.jpg")


def timed_strip(ways: list[tuple[str, list[str]]], names: list[str], labels: list[str], out: Path) -> None:
    """Run each way's styleforge command, then :func:`strip` ``names`` and the results, labelled with the times."""
    names, labels = list(names), list(labels)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, args) in enumerate(ways):
            path = Path(tmp) / f"{i}.png"
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "styleforge", *args, "-o", str(path)], check=True, cwd=HERE.parent)
            names.append(str(path))
            labels.append(f"{label}: {time.perf_counter() - start:.0f} s")
        strip(names, labels, out)
    print("; ".join(labels))


def strip(names: list[str], labels: list[str], out: Path, height: int = 220) -> None:
    tiles = []
    for name in names:
        img = Image.open(HERE / name).convert("RGB")
        tiles.append(img.resize((round(img.width * height / img.height), height), Image.LANCZOS))
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + 6 * (len(tiles) - 1), height + 22), "white")
    x = 0
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)  # a scalable font where Pillow has one (>= 10.1), else its bitmap font
    for tile, label in zip(tiles, labels):
        canvas.paste(tile, (x, 0))
        draw.text((x + 4, height + 4), label, fill="black", font=font)
        x += tile.width + 6
    canvas.save(out, quality=92)


if __name__ == "__main__":
    if "--three-ways" in sys.argv:
        three_ways()
        sys.exit()
    if "--decoders" in sys.argv:
        decoders()
        sys.exit()
    if "--fast" not in sys.argv:
        inputs()
    if "--outputs" in sys.argv:
        outputs()
    if "--fast" in sys.argv:
        fast()
