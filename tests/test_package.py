"""The package itself: importing it changes nothing in the process; the entry point does."""
import subprocess
import sys

from conftest import REPO

CHECK = """
import logging, os, sys
before = dict(os.environ)
import cvlib, cvlib.cli, cvlib.engine.experiment, cvlib.studies.claims
assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())
# The command parses its arguments before TensorFlow or MLflow is imported.
assert "tensorflow" not in sys.modules and "mlflow" not in sys.modules
import cvlib.stats  # imports TensorFlow, which sets variables of its own
assert not logging.getLogger("tensorflow").filters
assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
from cvlib.environment import configure_process
configure_process()
assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2", os.environ.get("TF_CPP_MIN_LOG_LEVEL")
assert logging.getLogger("tensorflow").filters
print("ok")
"""


def test_importing_cvlib_sets_no_environment_and_no_log_filter():
    env = {key: value for key, value in __import__("os").environ.items()
           if key not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                            cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
