"""examples/lecture6.ipynb: kept in git without outputs, and run whole in a real Jupyter
kernel (nbclient) on real CIFAR-10, in a temporary folder with a fresh store."""
import mlflow
import nbformat
import pytest
from conftest import REPO

from cvlib.tracking.schema import CELL_TAG

NOTEBOOK = REPO / "examples" / "lecture6.ipynb"


def _outputs(cell) -> list[str]:
    """The MIME types of a code cell's displayed outputs, in order."""
    return [kind for output in cell.outputs for kind in output.get("data", {})]


def test_the_notebook_is_kept_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), \
        "clear the notebook's outputs in Jupyter before committing it"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_notebook_runs_on_the_smoke_grid(tmp_path, cifar_dir, monkeypatch, test_artifacts):
    from nbclient import NotebookClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The kernel inherits the environment: the store, the data and the clone to read.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CVLIB_DATA_DIR", str(cifar_dir))
    monkeypatch.setenv("CVLIB_REPO", str(REPO))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Raises CellExecutionError, with the cell and its traceback, when any cell fails.
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(notebook, test_artifacts / "lecture6-executed.ipynb")  # to look at

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    table, = [cell for cell in code if "cvlib.run(" in cell.source]
    assert "text/html" in _outputs(table)
    progress = "".join(output.get("text", "") for output in table.outputs)
    assert "4/4" in progress and "[4/4] " in progress  # the bar, and the cells' lines
    heatmap, = [cell for cell in code if "accuracy_heatmaps" in cell.source]
    assert _outputs(heatmap).count("image/png") == 1
    histograms, = [cell for cell in code if "activations_" in cell.source]
    assert _outputs(histograms).count("image/png") == 2  # at initialization, at the end
    compared, = [cell for cell in code if "compared.plot" in cell.source]
    assert "image/png" in _outputs(compared) and "text/html" in _outputs(compared)
    report, = [cell for cell in code if "cvlib.report(" in cell.source]
    page = [output["data"]["text/html"] for output in report.outputs
            if "text/html" in output.get("data", {})]
    assert len(page) == 1 and page[0].startswith("<iframe srcdoc=")

    client = mlflow.MlflowClient(uri)
    smoke = client.get_experiment_by_name("smoke")
    cells = [run for run in client.search_runs([smoke.experiment_id])
             if CELL_TAG in run.data.tags]
    assert sorted(run.info.run_name for run in cells) == [
        "relu-he-before-s0", "relu-he-none-s0", "tanh-he-before-s0", "tanh-he-none-s0"]
    assert {run.info.status for run in cells} == {"FINISHED"}
    assert (tmp_path / "mlruns" / "reports").exists() is False  # the store is the one given
    assert (tmp_path / "reports" / "smoke.html").exists()
