"""The notebooks in notebooks/ run from top to bottom on a CPU, in small settings.

Each notebook's first code cell is tagged `parameters` (as papermill expects); the test inserts a
cell after it that sets `SMALL = True` plus the overrides listed below, and runs the notebook in a
fresh Jupyter kernel (nbclient) inside a temporary working directory. Any cell that raises fails
the test. To add a notebook, add one line to NOTEBOOKS.
"""

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the dev extras")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need the dev extras")
pytest.importorskip("ipykernel", reason="notebook tests need the dev extras")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"

# (notebook, overrides of its parameters cell besides SMALL = True)
NOTEBOOKS = [
    ("01_encodings_tour.ipynb", {}),
    ("02_extrapolation.ipynb", {}),
    ("02_extrapolation.ipynb",
     {"RESULTS_CSV": str(ROOT / "experiments" / "extrapolation" / "comparison.csv")}),
    ("03_attention_patterns.ipynb", {}),
    ("04_finetuning.ipynb", {}),
]
CELL_TIMEOUT_S = 600


def _id(case):
  name, overrides = case
  return name.removesuffix(".ipynb") + "".join(f"-{k}" for k in overrides)


def _kernel_env():
  """The kernel's environment: JAX on the CPU with its one real device (the 8 simulated devices
  that conftest.py sets up would only slow the kernel down)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  return env


def _parameters_index(nb) -> int:
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert "parameters" in cell.metadata.get("tags", []), (
          "the first code cell must hold the parameters and be tagged 'parameters'")
      return i
  raise AssertionError("the notebook has no code cell")


def test_every_notebook_is_tested():
  tested = {name for name, _ in NOTEBOOKS}
  assert tested == {p.name for p in NOTEBOOK_DIR.glob("*.ipynb")}


@pytest.mark.parametrize("name", sorted({name for name, _ in NOTEBOOKS}))
def test_notebook_is_saved_without_outputs(name):
  nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
  nbformat.validate(nb)
  _parameters_index(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, (
          f"{name} was saved with outputs: clear them before committing")


@pytest.mark.parametrize("case", NOTEBOOKS, ids=_id)
def test_notebook_runs(case, tmp_path):
  name, overrides = case
  nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
  index = _parameters_index(nb)
  settings = {"SMALL": True}
  if "WORKDIR" in nb.cells[index].source:
    settings["WORKDIR"] = str(tmp_path / "runs")
  settings.update(overrides)
  nb.cells.insert(index + 1, nbformat.v4.new_code_cell(
      "# injected by tests/test_notebooks.py\n"
      + "\n".join(f"{key} = {value!r}" for key, value in settings.items())))
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute(env=_kernel_env())  # raises CellExecutionError, with the traceback, on failure
