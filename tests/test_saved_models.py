"""Every finished cell keeps its trained model in MLflow's own format: loaded back through
MLflow from a real store, it takes raw uint8 images and scores exactly the run's
test_accuracy; `cvlib register` puts the best one in the model registry; diverged cells
and `train.save_model: none` keep none."""
import contextlib
import csv
import io
import subprocess
import sys
import textwrap

import keras
import mlflow
import numpy as np
import pytest
from conftest import run_cvlib

from cvlib.cifar10 import load_cifar10
from cvlib.cli import main
from cvlib.data import stratified_order
from cvlib.grids import load_grid
from cvlib.tracking.schema import CELL_TAG, MODEL_FOLDER, MODEL_TAG


def _cell_runs(uri: str, experiment: str) -> list:
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return [run for run in client.search_runs([found.experiment_id])
            if CELL_TAG in run.data.tags]


@contextlib.contextmanager
def _store(uri: str):
    """MLflow's process-wide tracking and registry URIs set to a store, for the block."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def _test_split(data_dir, grid_file):
    """The raw uint8 test images and labels a grid's cells were tested on."""
    data = load_grid(grid_file).data
    _, (images, labels) = load_cifar10(data_dir)
    chosen = stratified_order(labels, data.split_seed)[:data.test_size]
    return images[chosen], labels[chosen]


def test_a_logged_model_takes_raw_images_and_scores_its_runs_test_accuracy(
        tiny_store, cifar_dir, tmp_path):
    uri, grid_file, _ = tiny_store
    images, labels = _test_split(cifar_dir, grid_file)
    assert images.dtype == np.uint8
    runs = _cell_runs(uri, "tiny")
    assert len(runs) == 4  # relu and tanh, with and without BatchNormalization
    with _store(uri):
        for run in runs:
            assert run.data.tags[MODEL_TAG] == MODEL_FOLDER
            uri_of_model = f"runs:/{run.info.run_id}/{MODEL_FOLDER}"
            pyfunc = mlflow.pyfunc.load_model(uri_of_model)
            probabilities = pyfunc.predict(images)
            assert probabilities.shape == (len(images), 10)
            np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
            accuracy = float(np.mean(probabilities.argmax(axis=1) == labels))
            assert accuracy == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)
            signature = pyfunc.metadata.signature.inputs.to_dict()[0]
            assert signature["tensor-spec"] == {"dtype": "uint8", "shape": (-1, 32, 32, 3)}
            assert pyfunc.metadata.saved_input_example_info is not None
            model = mlflow.keras.load_model(uri_of_model)
            assert isinstance(model, keras.Model)
            assert model.predict(images[:5], verbose=0) == pytest.approx(probabilities[:5])


def test_pyfunc_loads_a_model_in_a_process_that_never_imported_cvlib(tiny_store, cifar_dir):
    uri, grid_file, _ = tiny_store
    images, labels = _test_split(cifar_dir, grid_file)
    run = max(_cell_runs(uri, "tiny"), key=lambda run: run.data.params["model.bn"] == "before")
    assert run.data.params["model.bn"] == "before"  # cvlib's own FusedBatchNormalization
    script = textwrap.dedent(f"""\
        import sys, mlflow, numpy as np
        mlflow.set_tracking_uri({uri!r})
        images = np.frombuffer(sys.stdin.buffer.read(), np.uint8).reshape(-1, 32, 32, 3)
        assert not any(name.startswith("cvlib") for name in sys.modules)
        model = mlflow.pyfunc.load_model("runs:/{run.info.run_id}/{MODEL_FOLDER}")
        print(",".join(map(str, model.predict(images).argmax(axis=1))))
        """)
    done = subprocess.run([sys.executable, "-c", script], input=images.tobytes(),
                          capture_output=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:].decode()
    predicted = np.array(done.stdout.decode().strip().splitlines()[-1].split(","), int)
    assert np.mean(predicted == labels) == pytest.approx(run.data.metrics["test_accuracy"],
                                                         abs=1e-6)


def test_the_table_gives_each_cells_model_uri_in_csv_and_html(tiny_store, capsys):
    uri, _, _ = tiny_store
    assert main(["table", "--tracking-uri", uri, "--experiment", "tiny", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    ids = {run.info.run_id for run in _cell_runs(uri, "tiny")}
    assert {row["model_uri"] for row in rows} == {f"runs:/{i}/{MODEL_FOLDER}" for i in ids}
    assert main(["table", "--tracking-uri", uri, "--experiment", "tiny",
                 "--format", "html"]) == 0
    page = capsys.readouterr().out
    assert all(f"runs:/{i}/{MODEL_FOLDER}" in page for i in ids)
    assert main(["table", "--tracking-uri", uri, "--experiment", "tiny"]) == 0
    assert "runs:/" not in capsys.readouterr().out  # markdown is for reading


def test_the_report_gives_each_cells_model_uri(tiny_store, tmp_path):
    uri, _, _ = tiny_store
    page = tmp_path / "tiny.html"
    assert main(["report", "--tracking-uri", uri, "--experiment", "tiny",
                 "--out", str(page)]) == 0
    text = page.read_text()
    ids = {run.info.run_id for run in _cell_runs(uri, "tiny")}
    assert all(f"runs:/{i}/{MODEL_FOLDER}" in text for i in ids)
    assert "Its model: <code>runs:/" in text  # the cell looked inside


def test_register_twice_makes_two_versions_of_the_best_cell(tiny_store):
    uri, _, _ = tiny_store
    runs = _cell_runs(uri, "tiny")
    best = max(runs, key=lambda run: run.data.metrics["val_accuracy"])
    outputs = []
    for _ in range(2):
        result = run_cvlib("register", "--tracking-uri", uri, "--experiment", "tiny",
                           "--name", "tiny-best")
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout)
    assert "version 1" in outputs[0] and "version 2" in outputs[1]
    assert all(best.info.run_name in output for output in outputs)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'tiny-best'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert {v.run_id for v in versions} == {best.info.run_id}
    with _store(uri):
        model = mlflow.pyfunc.load_model("models:/tiny-best/2")
    assert model.predict(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 10)


def test_register_by_another_metric(tiny_store):
    uri, _, _ = tiny_store
    runs = _cell_runs(uri, "tiny")
    best = max(runs, key=lambda run: run.data.metrics["test_accuracy"])
    result = run_cvlib("register", "--tracking-uri", uri, "--experiment", "tiny",
                       "--metric", "test_accuracy", "--name", "tiny-by-test")
    assert result.returncode == 0, result.stderr[-3000:]
    assert best.info.run_name in result.stdout and "version 1" in result.stdout


GRID = textwrap.dedent("""\
    name: keep
    data: {train_size: 200, val_size: 100, test_size: 100}
    model: {arch: cnn, widths: [8], dense_units: 16}
    train: {epochs: 1, batch_size: 50, optimizer: sgd, stats_every: 0}
    grid:
      train.learning_rate: [0.001, 1.0e+6]
      train.save_model: [final, none]
    seeds: [0]
    """)


def test_diverged_cells_and_save_model_none_log_no_model(tmp_path, cifar_dir, capsys):
    grid = tmp_path / "keep.yaml"
    grid.write_text(GRID)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(grid), "--tracking-uri", uri, "--data-dir", str(cifar_dir),
                 "--workers", "1"]) == 0
    client = mlflow.MlflowClient(uri)
    with_model = []
    for run in _cell_runs(uri, "keep"):
        params = run.data.params
        logged = [item.path for item in client.list_artifacts(run.info.run_id)]
        if run.data.tags["cvlib.outcome"] == "ok" and params["train.save_model"] == "final":
            with_model.append(run)
            assert MODEL_FOLDER in logged and run.data.tags[MODEL_TAG] == MODEL_FOLDER
        else:
            assert MODEL_FOLDER not in logged and MODEL_TAG not in run.data.tags
    assert len(with_model) == 1
    assert main(["table", "--tracking-uri", uri, "--experiment", "keep", "--format",
                 "html"]) == 0
    page = capsys.readouterr().out
    assert page.count("no model") == 3 and "<td></td>" not in page
    outcomes = sorted(r.data.tags["cvlib.outcome"] for r in _cell_runs(uri, "keep"))
    assert outcomes == ["diverged", "diverged", "ok", "ok"]


@pytest.mark.slow
def test_on_a_tracking_server_models_travel_the_journal_and_register(team_server, tmp_path,
                                                                    cifar_dir):
    grid = tmp_path / "served.yaml"
    grid.write_text(GRID.replace("name: keep", "name: served")
                    .replace("train.learning_rate: [0.001, 1.0e+6]", "model.bn: [none, before]")
                    .replace("train.save_model: [final, none]", "train.save_model: [final]"))
    result = run_cvlib("run", str(grid), "--workers", "2", "--tracking-uri", team_server,
                       "--data-dir", str(cifar_dir))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    runs = _cell_runs(team_server, "served")
    assert len(runs) == 2
    images, labels = _test_split(cifar_dir, grid)
    with _store(team_server):
        for run in runs:
            model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/{MODEL_FOLDER}")
            accuracy = float(np.mean(model.predict(images).argmax(axis=1) == labels))
            assert accuracy == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)
    for version in ("version 1", "version 2"):
        registered = run_cvlib("register", "--tracking-uri", team_server,
                               "--experiment", "served", "--name", "served-best")
        assert registered.returncode == 0, registered.stderr[-3000:]
        assert version in registered.stdout
    client = mlflow.MlflowClient(team_server, registry_uri=team_server)
    assert len(client.search_model_versions("name = 'served-best'")) == 2
