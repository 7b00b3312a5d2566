"""Opening a new SQLite store from several processes at once, and a broken one."""
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import REPO
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import OperationalError

from cvlib.tracking import store
from cvlib.tracking.store import open_client

# Imports first, then one line on stdin starts every process at the same moment.
OPENER = textwrap.dedent("""\
    import sys
    from mlflow.tracking import MlflowClient
    from cvlib.tracking.store import open_client
    uri, how = sys.argv[1:]
    print("ready", flush=True)
    sys.stdin.readline()
    client = open_client(uri) if how == "cvlib" else MlflowClient(uri)
    client.search_experiments(max_results=1)
    print("opened", flush=True)
    """)


def test_processes_opening_a_new_store_at_once_all_get_a_whole_store(tmp_path):
    """Plain MLflow clients that open one new SQLite store together fail ("table
    experiments already exists") or leave it half-migrated; cvlib's never do, even
    beside a plain client (as `mlflow ui` would be) building it in place."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = tmp_path / "opener.py"
    script.write_text(OPENER)
    hows = ["cvlib", "cvlib", "mlflow"]
    processes = [subprocess.Popen([sys.executable, str(script), uri, how], cwd=REPO,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for how in hows]
    for process in processes:
        assert process.stdout.readline() == "ready\n", process.communicate()[1][-2000:]
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    outcomes = [process.communicate(timeout=300) for process in processes]
    for how, process, (stdout, stderr) in zip(hows, processes, outcomes):
        if how == "cvlib":
            assert process.returncode == 0 and "opened" in stdout, stderr[-2000:]
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("after")).info
    assert client.get_run(run.run_id).info.status == "RUNNING"
    assert [p.name for p in tmp_path.iterdir() if "building" in p.name] == []


def test_a_half_built_store_nobody_writes_fails_at_once(tmp_path, monkeypatch):
    """A store left half-built long ago is an error now, not after the wait for a
    builder that would finish it."""
    database = tmp_path / "mlflow.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY)")
    an_hour_ago = time.time() - 3600
    os.utime(database, (an_hour_ago, an_hour_ago))
    waits = []
    monkeypatch.setattr(store.time, "sleep", waits.append)  # the builder wait's only pause
    with pytest.raises((OperationalError, MlflowException)):
        open_client(f"sqlite:///{database}")
    assert waits == []
