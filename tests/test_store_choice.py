"""Which store a command uses (--tracking-uri, else $MLFLOW_TRACKING_URI, else the
default), that it says so without spoiling machine-readable output, and that a login in a
server's URI leaves the URI at once. In-process through ``cli.main``, on real SQLite
stores; the same against a real tracking server is in tests/test_server_deployment.py."""
import os

import pytest
from conftest import TINY_GRID

from cvlib import cli
from cvlib.tracking.server_config import Reach
from cvlib.tracking.uris import take_login

ENV = "MLFLOW_TRACKING_URI"


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_GRID)
    return str(path)


def test_the_variable_is_the_store_when_no_flag_names_one(tiny_store, monkeypatch, capsys,
                                                          tmp_path):
    uri, _, _ = tiny_store
    monkeypatch.setenv(ENV, uri)
    monkeypatch.chdir(tmp_path)  # where the default store would be made
    assert cli.main(["table", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("activation,bn,initializer")  # clean CSV
    assert len(out.splitlines()) == 5
    assert f"of {uri} (from $MLFLOW_TRACKING_URI)" in err
    assert not (tmp_path / "mlruns").exists()


def test_the_flag_wins_over_the_variable(tiny_store, monkeypatch, capsys, tmp_path, grid_file):
    uri, _, _ = tiny_store
    monkeypatch.setenv(ENV, f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert cli.main(["run", grid_file, "--dry-run", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert f"in experiment 'tiny' of {uri}: 4 cells done, 0 to run, 0 to redo" in out
    assert not (tmp_path / "elsewhere.db").exists()


def test_without_either_the_default_store_is_named_as_such(monkeypatch, capsys, tmp_path,
                                                           grid_file):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", grid_file, "--dry-run"]) == 0
    assert ("no store at sqlite:///mlruns/mlflow.db (the default) yet: all 4 cells to run"
            in capsys.readouterr().out)


def test_a_login_leaves_the_uri_for_the_login_variables(monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    credentialed = "https://ada:p%40ss%3Aword@mlflow.lab.example:8443/base"
    monkeypatch.setenv(ENV, credentialed)
    assert take_login(credentialed) == "https://mlflow.lab.example:8443/base"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ada"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss:word"
    assert os.environ[ENV] == "https://mlflow.lab.example:8443/base"


def test_a_user_name_alone_keeps_the_password_variable(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "from-the-environment")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    assert take_login("http://bob@127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "bob"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "from-the-environment"


def test_a_named_server_keeps_the_default_hosts_and_allows_its_ui_origins():
    reach = Reach("127.0.0.1", 5000, ("mlflow.lab.example",),
                  ("https://notebooks.lab.example",), "https://mlflow.lab.example")
    hosts = reach.allowed_hosts()
    assert {"localhost", "127.0.0.1:*", "10.*", "mlflow.lab.example",
            "mlflow.lab.example:*"} <= set(hosts)
    assert reach.cors_origins() == ["http://mlflow.lab.example:5000",
                                    "https://mlflow.lab.example",
                                    "https://notebooks.lab.example"]
    assert reach.behind_tls() and reach.url() == "https://mlflow.lab.example"
    assert Reach("127.0.0.1", 5000).allowed_hosts() == []  # MLflow's defaults apply
    assert not Reach("0.0.0.0", 5000, public_url="http://mlflow.lab.example").behind_tls()
