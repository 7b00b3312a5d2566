"""cvlib from Python: `cvlib.run` on a grid dict gives the table `cvlib table` gives of the
same store; a bad call raises a CvlibError with the command's one-line message, before
TensorFlow or MLflow is imported; `cvlib.load_model` of a cell gives the model that scores
its run's test_accuracy; `cvlib.report` shows inline in Jupyter."""
import io
import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, read_until, run_cvlib
from test_saved_models import _cell_runs, _test_split

import cvlib
from cvlib.tracking.schema import CELL_TAG, MODEL_FOLDER

# Two cells, one with cvlib's own layer (the fused BatchNormalization) in its model.
GRID = {"name": "pyapi",
        "data": {"train_size": 200, "val_size": 100, "test_size": 100,
                 "preprocess": "per_channel_mean"},
        "model": {"arch": "cnn", "widths": [8], "dense_units": 16},
        "train": {"epochs": 1, "batch_size": 50},
        "grid": {"model.bn": ["none", "before"]},
        "seeds": [0]}


def _python(script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a Python script in a fresh process, from the repository."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def api_store(tmp_path_factory, cifar_dir):
    """The grid trained by `cvlib.run(dict)` in a fresh process: (URI, grid file, the
    table it returned)."""
    folder = tmp_path_factory.mktemp("pyapi")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    returned = folder / "returned.pkl"
    done = _python(f"""
        import cvlib
        table = cvlib.run({GRID!r}, tracking_uri={uri!r}, data_dir={str(cifar_dir)!r},
                          workers=1, progress=False)
        table.to_pickle({str(returned)!r})
        """)
    assert done.returncode == 0, done.stderr[-3000:]
    grid_file = folder / "pyapi.yaml"
    grid_file.write_text(yaml.safe_dump(GRID))
    return uri, grid_file, pd.read_pickle(returned)


def test_run_returns_the_table_that_cvlib_table_gives(api_store):
    uri, _, returned = api_store
    assert len(returned) == 2 and set(returned["outcome"]) == {"ok"}
    assert set(returned["bn"]) == {"none", "before"}
    command = run_cvlib("table", "--tracking-uri", uri, "--experiment", "pyapi",
                        "--format", "csv")
    assert command.returncode == 0, command.stderr[-3000:]
    # The command's csv writes figures to 4 decimals.
    written = returned.to_csv(index=False, float_format="%.4f")
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(written)),
                                  pd.read_csv(io.StringIO(command.stdout)))
    pd.testing.assert_frame_equal(cvlib.table("pyapi", tracking_uri=uri), returned)


# Bad calls: what the message names, and the command that must refuse it in the same words
# (None: the command has no counterpart; its parser refuses a claims scale in its own).
BAD_CALLS = {
    "cvlib.run({'name': 'bad', 'model': {'activation': 'tahn'}}, tracking_uri=URI)":
        ("did you mean 'tanh'?", ["run", "GRID", "--tracking-uri", "URI"]),
    "cvlib.run('missing.yaml', tracking_uri=URI)":
        ("grid file not found: missing.yaml", ["run", "missing.yaml", "--tracking-uri", "URI"]),
    "cvlib.table('smoke', tracking_uri=URI)":
        ("no runs yet", ["table", "--experiment", "smoke", "--tracking-uri", "URI"]),
    "cvlib.report(tracking_uri=URI)": ("no runs yet", ["report", "--tracking-uri", "URI"]),
    "cvlib.load_model('relu-he-none-s0', tracking_uri=URI)": ("no runs yet", None),
    "cvlib.claims('fast', tracking_uri=URI)": ("unknown claims scale 'fast'", None),
}


@pytest.fixture(scope="module")
def bad_calls(tmp_path_factory):
    """Each bad call made in one fresh process, against a store that is not there:
    (the store's folder, its URI, call -> (the error's class, its message, heavy modules
    loaded by then))."""
    folder = tmp_path_factory.mktemp("bad") / "none"
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    done = _python(f"""
        import json, sys
        import cvlib
        URI = {uri!r}
        for call in {list(BAD_CALLS)!r}:
            try:
                eval(call)
                raised = (None, None)
            except cvlib.CvlibError as error:
                raised = (type(error).__name__, str(error))
            heavy = sorted({{"tensorflow", "keras"}} & set(sys.modules))
            print(json.dumps([call, *raised, heavy]))
        """, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, uri, {call: tuple(rest) for call, *rest in map(json.loads, done.stdout.splitlines())}


@pytest.mark.parametrize("call", BAD_CALLS)
def test_a_bad_call_raises_the_commands_one_line_error_without_loading_tensorflow(
        call, bad_calls, tmp_path):
    folder, uri, raised = bad_calls
    kind, message, heavy = raised[call]
    named, command = BAD_CALLS[call]
    assert kind is not None and kind.endswith("Error"), f"{call} raised no CvlibError"
    assert named in message and "\n" not in message
    assert heavy == []
    if command is None:
        return
    grid = tmp_path / "bad.yaml"
    grid.write_text("name: bad\nmodel: {activation: tahn}\n")
    words = [str(grid) if word == "GRID" else uri if word == "URI" else word
             for word in command]
    result = run_cvlib(*words)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"cvlib: error: {message}"]
    assert not folder.exists()  # neither the calls nor the commands made the store


def test_load_model_of_a_cell_scores_its_runs_test_accuracy(api_store, cifar_dir):
    uri, grid_file, returned = api_store
    images, labels = _test_split(cifar_dir, grid_file)
    runs = _cell_runs(uri, "pyapi")
    assert len(runs) == 2
    for run in runs:
        by_name = cvlib.load_model(run.info.run_name, tracking_uri=uri)
        accuracy = float(np.mean(by_name.predict(images, verbose=0).argmax(axis=1) == labels))
        assert accuracy == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)
        # The table's model URI, the run id and the cell hash name the same model.
        uri_of_model = f"runs:/{run.info.run_id}/{MODEL_FOLDER}"
        assert uri_of_model in set(returned["model_uri"])
        for name in (uri_of_model, run.info.run_id, run.data.tags[CELL_TAG]):
            again = cvlib.load_model(name, experiment="pyapi", tracking_uri=uri)
            np.testing.assert_allclose(again.predict(images[:8], verbose=0),
                                       by_name.predict(images[:8], verbose=0), rtol=1e-6)


def test_load_model_says_which_cells_there_are(api_store):
    uri, _, _ = api_store
    with pytest.raises(cvlib.CvlibError, match=r"no cell 'relu-he-bfore-s0' in experiment "
                                               r"'pyapi'; did you mean 'relu-he-before-s0'\?"):
        cvlib.load_model("relu-he-bfore-s0", tracking_uri=uri)
    with pytest.raises(cvlib.CvlibError, match="no run '0+' in"):
        cvlib.load_model("0" * 32, tracking_uri=uri)


def test_report_writes_the_page_and_shows_it_inline(api_store, tmp_path):
    uri, _, _ = api_store
    page = cvlib.report("pyapi", tracking_uri=uri, out=tmp_path / "pyapi.html",
                        cell="relu-he-before-s0")
    assert page.path == tmp_path / "pyapi.html" and page.cell == "relu-he-before-s0"
    written = page.path.read_text()
    assert "<h1>cvlib report: pyapi</h1>" in written
    inline = page._repr_html_()
    assert inline.startswith("<iframe srcdoc=\"") and inline.endswith("</iframe>")
    # The page travels whole, escaped: its quotes cannot end the attribute.
    srcdoc = inline.split('srcdoc="', 1)[1].split('" sandbox="allow-scripts" style=', 1)[0]
    assert '"' not in srcdoc and "&quot;" in srcdoc and "&lt;h1&gt;" in srcdoc


def test_no_module_of_cvlib_is_named_as_a_function_of_its_api():
    # Importing a submodule sets the package's attribute of its name: a cvlib/report.py
    # would replace cvlib.report once anything imported it.
    modules = {path.stem for path in (REPO / "cvlib").iterdir()}
    assert not modules & set(cvlib.API)


def test_importing_cvlib_and_naming_its_api_loads_nothing_heavy():
    done = _python("""
        import sys
        import cvlib
        assert callable(cvlib.run) and callable(cvlib.load_model)
        assert {"run", "table", "report", "claims", "load_model", "CvlibError"} <= set(dir(cvlib))
        heavy = {"tensorflow", "mlflow", "keras", "pandas"} & set(sys.modules)
        assert not heavy, heavy
        """, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_an_interrupted_run_marks_its_runs_killed_raises_and_resumes(tmp_path, cifar_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = {**GRID, "name": "stopped", "train": {"epochs": 20, "batch_size": 50}}
    script = textwrap.dedent(f"""\
        import cvlib
        try:
            table = cvlib.run({grid!r}, tracking_uri={uri!r}, data_dir={str(cifar_dir)!r},
                              workers=1, progress=False)
        except KeyboardInterrupt as interruption:
            print("interrupted:", interruption, flush=True)
            raise SystemExit(7)
        print("outcomes:", sorted(table["outcome"]))
        """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        read_until(process, "  training ")  # the first cell has trained two epochs
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=120)[0]
    finally:
        process.kill()
    assert process.returncode == 7, rest[-3000:]
    assert "interrupted: SIGINT: the open runs were marked KILLED" in rest
    statuses = sorted(run.info.status for run in _cell_runs(uri, "stopped"))
    assert statuses == ["KILLED"]
    again = _python(script)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 cells done, 1 to run, 1 to redo" in again.stdout
    assert "outcomes: ['ok', 'ok']" in again.stdout


def test_the_inline_report_renders_sorts_and_cannot_reach_the_notebook(api_store, tmp_path,
                                                                       page, test_artifacts):
    uri, _, _ = api_store
    shown = cvlib.report("pyapi", tracking_uri=uri, out=tmp_path / "pyapi.html")
    notebook = tmp_path / "notebook.html"  # as Jupyter places an output: inside its page
    notebook.write_text(f"<!doctype html><title>notebook</title><body>{shown._repr_html_()}")
    page.goto(notebook.as_uri())
    frame = page.frame_locator("iframe")
    assert frame.locator("h1").inner_text() == "cvlib report: pyapi"
    assert frame.locator("#heatmap img").count() == 1
    header = frame.locator("#results table thead th", has_text="bn").first
    header.click()  # the page's own sorting script runs inside the sandbox
    assert header.get_attribute("aria-sort") == "ascending"
    inside = page.frames[1]
    assert inside.evaluate("""() => { try { return parent.document.title; }
                                      catch (error) { return "blocked"; } }""") == "blocked"
    page.screenshot(path=str(test_artifacts / "report-inline.png"), full_page=True)
