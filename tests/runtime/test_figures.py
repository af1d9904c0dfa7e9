"""Plots leave the program's matplotlib state alone (no backend switch, no pyplot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CODE = """
import sys, matplotlib, torch
matplotlib.use("pdf")
from styleforge.style.fast.train import write_history
from styleforge.classify.report import plot_confusion
out = sys.argv[1]
write_history([{"step": s, "content": 1.0 / s, "style": 2.0 / s, "tv": 0.1, "total": 3.1 / s} for s in range(1, 9)],
              out + "/m.pth")
plot_confusion(torch.tensor([[3, 1], [0, 4]]), ["a", "b"], out + "/cm.png")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_plots_keep_the_backend_and_never_import_pyplot(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CODE, str(tmp_path)], check=True, capture_output=True, text=True,
                         env=env).stdout.split()
    assert out == ["pdf", "False"]
    for name in ("m.losses.png", "cm.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
