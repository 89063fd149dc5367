"""The Colab notebooks in colab/ run top to bottom in their small mode, and are stored clean.

Each notebook is executed with nbclient in a Jupyter kernel of this interpreter (so it
imports the jaxvna under test and installs nothing), with its working directory and its
temporary folders (the notebooks' WORKDIR) inside the test's tmp_path.
"""

import os
import pathlib

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

COLAB = pathlib.Path(__file__).resolve().parents[1] / "colab"
NOTEBOOKS = ("quickstart", "real_data", "interpretation", "scaling")
CELL_TIMEOUT_S = 600


def read_notebook(name: str) -> nbformat.NotebookNode:
  return nbformat.read(COLAB / f"{name}.ipynb", as_version=4)


def run_notebook(name: str, tmp_path: pathlib.Path, monkeypatch) -> None:
  """Runs every cell of colab/<name>.ipynb (a failing cell raises CellExecutionError), then
  checks that figures were shown inline and that the runs went to a temporary WORKDIR, not
  to the working directory (in a checkout, colab/)."""
  # A kernel spec of this interpreter, whatever "python3" kernels the machine has.
  kernels = tmp_path / "kernels"
  write_kernel_spec(kernels / "python3")
  manager = KernelManager(kernel_name="python3",
                          kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
  # The kernel inherits this environment. A notebook runs on the one device a Colab CPU
  # runtime has, not on the tests' fake devices. Small mode is dominated by compiling:
  # without LLVM's optimisations XLA compiles it in half the time (same programs, slower
  # machine code, which these few steps do not notice). Temporary folders go to tmp_path.
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  monkeypatch.setenv("XLA_FLAGS", " ".join(flags + ["--xla_backend_optimization_level=0"]))
  temporary, work = tmp_path / "tmp", tmp_path / "cwd"
  temporary.mkdir()
  work.mkdir()
  monkeypatch.setenv("TMPDIR", str(temporary))
  nb = read_notebook(name)
  NotebookClient(nb, km=manager, timeout=CELL_TIMEOUT_S,
                 resources={"metadata": {"path": str(work)}}).execute()

  shown = [output for cell in nb.cells if cell.cell_type == "code"
           for output in cell.outputs if "image/png" in output.get("data", {})]
  assert shown, "the notebook displayed no figure"
  workdirs = list(temporary.glob(f"jaxvna_{name}_*"))
  assert len(workdirs) == 1 and any(workdirs[0].iterdir()), "nothing was written to WORKDIR"
  assert not any(work.iterdir()), "the notebook wrote to its working directory"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_clean_and_installs_jaxvna_first(name):
  nb = read_notebook(name)
  nbformat.validate(nb)
  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  assert all(not cell.outputs and cell.execution_count is None for cell in code), (
      f"{name}.ipynb holds outputs: clear them before committing")
  assert "%pip install" in code[0].source and "import jaxvna" in code[0].source
  assert any(line.strip() == "SMALL = True" for cell in code for line in cell.source.splitlines())


@pytest.mark.parametrize("name", ("quickstart", "interpretation", "scaling"))
def test_notebook_runs_in_small_mode(name, tmp_path, monkeypatch):
  run_notebook(name, tmp_path, monkeypatch)


@pytest.mark.real_data
def test_real_data_notebook_runs_in_small_mode(tmp_path, monkeypatch, real_data_dir):
  monkeypatch.setenv("JAXVNA_DATA_DIR", str(real_data_dir.resolve()))
  run_notebook("real_data", tmp_path, monkeypatch)
