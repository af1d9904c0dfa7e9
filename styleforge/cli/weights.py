"""``styleforge weights``: where backbone weights are found, verified, or saved."""

from __future__ import annotations

from pathlib import Path

import click

from .. import backbone
from ..runtime.errors import StyleforgeError
from .options import main_group, option


@main_group.command("weights")
@option("--download", "download", type=click.Choice(backbone.ARCHS),
        help="(Online) fetch torchvision's weights and save a local file the lookup finds "
             "(VGG: the conv trunk alone, as ARCH-torchvision-features.pth).")
@option("--to", "folder", type=click.Path(path_type=Path), default=None,
        show_default="the first of $STYLEFORGE_WEIGHTS, else the project's weights/",
        help="Folder to save the --download into.")
def weights_cmd(download: str | None, folder: Path | None) -> None:
    """List the weights files the lookup finds, in order, and verify their sha256."""
    if download:
        path = backbone.download_weights(download, folder or backbone.weights_folders()[0][1])
        click.echo(f"saved {path} ({path.stat().st_size / 1e6:.0f} MB)")
        return
    backbone.check_env_folders()  # a file named as the folder: one line, as a run would say
    damaged = _list_lookup()
    if damaged:  # the listing is on stdout; the file a run would use cannot be used: say so and fail
        raise StyleforgeError(damaged[0])


def _list_lookup() -> list[str]:
    """Print each architecture's candidates in lookup order; return the errors of used files that
    fail their sha256 check (a run would stop on them)."""
    click.echo(f"lookup: --weights PATH, then ${backbone.WEIGHTS_ENV}, then {backbone.PROJECT_WEIGHTS}, "
               "then torchvision (torch hub cache / download)")
    for folder in backbone.missing_env_folders():
        click.echo(f"note: ${backbone.WEIGHTS_ENV} names {folder}, which does not exist")
    damaged = []
    for arch in backbone.ARCHS:
        used = None
        for c in backbone.candidates(arch):
            error = None
            if not c.exists:
                status = "missing"
            else:
                try:
                    status = backbone.verify(c.path)
                except StyleforgeError as exc:
                    status, error = "SHA256 MISMATCH", str(exc)
                status += f", {c.path.stat().st_size / 1e6:.0f} MB"
                if used is None:
                    used, status = c, status + "  <- used"
                    damaged += [error] if error else []
            click.echo(f"{arch:9s} {c.origin:20s} {c.path}  [{status}]")
        if used is None:
            click.echo(f"{arch:9s} {'(none found)':20s} runs will try torchvision's download "
                       f"({Path(backbone.torchvision_weights(arch).url).name})")
    return damaged
