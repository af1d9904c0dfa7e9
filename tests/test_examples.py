"""The example notebook runs from top to bottom on its own tiny data."""

import importlib.util
import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "classify_coursework.ipynb"


def code_cells() -> list[str]:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def test_notebook_executes_in_a_kernel(tmp_path):
    """What a student gets: every cell in a real Jupyter kernel (nbclient, from the test extra)."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the 'test' extra: pip install -e '.[test]'")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the 'test' extra: pip install -e '.[test]'")
    pytest.importorskip("ipykernel", reason="ipykernel is in the 'test' extra: pip install -e '.[test]'")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5  # the returned figures display themselves


def test_notebook_code_runs_in_process(monkeypatch, tmp_path):
    """Without nbclient: the same cells, run in this process (no kernel needed)."""
    if importlib.util.find_spec("nbclient") and importlib.util.find_spec("ipykernel"):
        pytest.skip("the notebook runs in a kernel in test_notebook_executes_in_a_kernel")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__notebook__"}
    for source in code_cells():
        exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    assert namespace["result"].summary["test_acc"] >= 0.8
    assert len(namespace["history"]) == 3


def test_the_readmes_own_architecture_example_builds_for_other_inputs():
    """examples/my_nets.py:LeNet, as the README's `--model` example: LeNet-5's 61,706 parameters on MNIST."""
    from click.testing import CliRunner

    from styleforge.cli import main_group

    lenet = str(NOTEBOOK.parent / "my_nets.py") + ":LeNet"
    r = CliRunner().invoke(main_group, ["summary", lenet, "--input", "1x28x28"])
    assert r.exit_code == 0, r.output
    assert "total params 61,706" in r.output
    r = CliRunner().invoke(main_group, ["summary", lenet, "--input", "3x32x32", "--num-classes", "3",
                                        "--option", "width=12"])
    assert r.exit_code == 0, r.output
    # RGB in, width 12, the flattened size from 32x32 (16 x 6 x 6), 3 classes out
    assert "12x32x32" in r.output and "576 -> 120" in r.output and "84 -> 3" in r.output
