"""The package itself: importing it changes nothing in the process; the entry point does."""
import ast
import importlib.metadata
import subprocess
import sys

import pytest
import tomllib
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canonical

from cvlib.cli import main

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


def _declared() -> dict[str, list[str]]:
    """pyproject.toml's requirements: "core" and each extra -> distribution names."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {group: [canonical(Requirement(text).name) for text in requirements]
            for group, requirements in groups.items()}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules that cvlib's own code imports, other than the standard library
    and cvlib itself -> the files that import them."""
    found: dict[str, set[str]] = {}
    for path in (REPO / "cvlib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "cvlib":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_declared_in_pyproject():
    declared = {name for names in _declared().values() for name in names}
    distributions = importlib.metadata.packages_distributions()
    imports = _third_party_imports()
    assert {"tensorflow", "mlflow", "ray"} <= imports.keys()  # the scan sees them
    undeclared = {module: sorted(files) for module, files in imports.items()
                  if not {canonical(d) for d in distributions.get(module, [module])} & declared}
    assert not undeclared, f"imported but not in pyproject.toml: {undeclared}"


def test_requirements_txt_pins_every_declared_distribution():
    pinned = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pinned[canonical(requirement.name)] = str(requirement.specifier)
    declared = {name for group, names in _declared().items() if group != "all"
                for name in names}
    assert declared - {"cvlib"} <= pinned.keys(), declared - pinned.keys()
    assert all(specifier.startswith("==") for specifier in pinned.values()), pinned
    assert _declared()["all"] == ["cvlib"]


@pytest.mark.parametrize("hidden, args, extra", [
    ("ray", ["run", "experiments/smoke.yaml", "--ray"], "cvlib[ray]"),
    ("flask_wtf", ["server", "--auth"], "cvlib[server]"),
    ("psycopg", ["server", "--backend-store-uri", "postgresql://cvlib@db/mlflow"],
     "cvlib[server]"),
    ("psycopg", ["table", "--tracking-uri", "postgresql://cvlib@db/mlflow"], "cvlib[server]"),
])
def test_a_command_whose_extra_is_missing_exits_2_naming_it(hidden, args, extra, monkeypatch,
                                                             capsys, tmp_path):
    monkeypatch.setitem(sys.modules, hidden, None)  # as if the package were not installed
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "k")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "p")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "smoke.yaml").write_text((REPO / "experiments" / "smoke.yaml")
                                                         .read_text())
    assert main(args) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and f"pip install '{extra}'" in errors[0], errors
    assert not (tmp_path / "mlruns").exists()
