"""Wall time and peak memory of the default ``styleforge stylize`` command, per size.

Each run is a fresh process (``python -m styleforge stylize ...``), so peak RSS is that
command's own, weights loading included. Reference in the same run: the classic settings
(``--no-multiscale --precision fp32``) for 3 iterations: network, fp32 activations and
gradients at full size, but not yet the L-BFGS history a long classic run accumulates
(2 x 100 image-sized vectors), so the ratio understates what the default saves against
a full classic run. On CUDA the default run also reports peak GPU memory.

    python bench/stylize_memory.py                  # 512 and 1024 px
    python bench/stylize_memory.py --sizes 512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import record, require_shared, table


def run(cmd: list[str]) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS in MB) of that process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    shared = require_shared()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--content", default=str(shared / "data/content/tubingen.jpg"))
    ap.add_argument("--style", default=str(shared / "data/styles/starry_night.jpg"))
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out-dir", default=str(Path(tempfile.gettempdir()) / "styleforge-bench"),
                    help="where the stylized images go, to look at (default: %(default)s)")
    args = ap.parse_args()

    rows, results = [], []
    tmp = Path(args.out_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    for size in [int(s) for s in args.sizes.split(",")]:
        base = [sys.executable, "-m", "styleforge", "stylize", args.content, args.style, "--size", str(size),
                "--device", args.device, "-q", "-o", str(tmp / f"out{size}.png")]
        log = tmp / f"log{size}.json"
        wall, rss = run(base + ["--log", str(log)])
        gpu = json.loads(log.read_text())["config"]["resolved"].get("peak_gpu_mb")
        classic = base[:-1] + [str(tmp / f"classic{size}.png"), "--no-multiscale", "--precision", "fp32",
                               "--steps", "3"]
        classic_wall, classic_rss = run(classic)
        results.append({"size": size, "default_wall_s": wall, "default_peak_rss_mb": rss,
                        "classic_peak_rss_mb": classic_rss, "peak_gpu_mb": gpu})
        rows.append({"size": size, "default wall s": f"{wall:.1f}", "default peak RSS MB": f"{rss:.0f}",
                     "classic fp32 3 its peak RSS MB": f"{classic_rss:.0f}",
                     "RSS ratio default/classic": f"{rss / classic_rss:.2f}",
                     "GPU peak MB": f"{gpu:.0f}" if gpu else "-"})
        print(rows[-1], flush=True)
    print(table(rows, list(rows[0])))
    print(f"recorded {record('stylize_memory', {'runs': results, 'content': args.content, 'style': args.style})}")


if __name__ == "__main__":
    main()
