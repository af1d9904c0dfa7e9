"""Command-line start-up: seconds for `styleforge --help`, `--version` and a command's help.

Each row is the median wall time of --repeats fresh processes (`python -m styleforge ...`,
this checkout first on the path), after one warm-up run that fills the OS file cache. The
top-level help and the version do not import torch (the commands load lazily), so they
should stay well under 0.5 s; `stylize --help` imports the library and shows what torch costs.

    python bench/cli_startup.py --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from common import ROOT, record, table

RUNS = {"styleforge --help": ["--help"], "styleforge --version": ["--version"],
        "styleforge stylize --help": ["stylize", "--help"]}


def seconds(args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "styleforge", *args], check=True, capture_output=True, env=env)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rows = []
    for name, argv in RUNS.items():
        seconds(argv)
        times = [seconds(argv) for _ in range(args.repeats)]
        rows.append({"command": name, "median s": f"{statistics.median(times):.3f}", "min s": f"{min(times):.3f}"})
    print(table(rows, ["command", "median s", "min s"]))
    print(f"recorded {record('cli_startup', {'repeats': args.repeats, 'rows': rows})}")


if __name__ == "__main__":
    main()
