"""Shared fixtures: real CIFAR-10 (laid out by ../shared/data/make_cifar10.py) and
temporary MLflow stores."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The folder holding real CIFAR-10 in the official layout ($CVLIB_DATA_DIR)."""
    folder = os.environ.get("CVLIB_DATA_DIR")
    if not folder or not Path(folder, "cifar-10-batches-py").is_dir():
        pytest.skip("needs real CIFAR-10: run `python ../shared/data/make_cifar10.py DIR` "
                    "and set CVLIB_DATA_DIR=DIR")
    return Path(folder)


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    """A fresh SQLite MLflow store in a temporary folder."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def run_cvlib(*args: str, env_extra: dict | None = None, timeout: float = 600):
    """Run the real ``cvlib`` command (as ``python -m cvlib``) in a subprocess."""
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "cvlib", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env)
