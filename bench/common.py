"""Shared helpers for the benchmarks: where ../shared is, machine description, result files."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("STYLEFORGE_SHARED", ROOT.parent / "shared"))
RESULTS = ROOT / "bench" / "results"


def require_shared() -> Path:
    if not (SHARED / "weights" / "vgg19-features.pth").is_file():
        sys.exit(f"benchmark needs the real weights and data in {SHARED} (set STYLEFORGE_SHARED)")
    os.environ.setdefault("STYLEFORGE_WEIGHTS", str(SHARED / "weights"))
    return SHARED


DISPATCH_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "python": platform.python_version(), "os": platform.platform()}
    # Settings that change which kernels run (ATEN_CPU_CAPABILITY=avx2 with ONEDNN_MAX_CPU_ISA=AVX2
    # stands in for an AVX2-only CPU on a newer one), when given.
    env = {k: os.environ[k] for k in DISPATCH_ENV if k in os.environ}
    if env:
        info["env"] = env
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def record(name: str, results: dict) -> Path:
    """Write results with machine, command and date to bench/results/NAME-DATE.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now()
    payload = {"benchmark": name, "date": now.isoformat(timespec="seconds"), "machine": machine(),
               "command": " ".join(shlex.quote(a) for a in ["python"] + sys.argv), **results}
    stem = f"{name}-{now:%Y%m%d-%H%M%S}"
    # Two benchmarks ending in the same second (session 17: two styles scored side by side) must
    # not overwrite each other's record: the second gets -2, and so on.
    for n in range(1, 100):
        path = RESULTS / (stem + (f"-{n}" if n > 1 else "") + ".json")
        try:
            with path.open("x") as fh:
                fh.write(json.dumps(payload, indent=2) + "\n")
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"too many records named {stem}")


def table(rows: list[dict], columns: list[str]) -> str:
    """A small markdown table."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells]
    return "\n".join(out)
