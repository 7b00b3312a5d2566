"""A cell's trained model in MLflow's own format (the Keras flavour, ``mlflow.keras``):
made where the cell trained, as files that travel to the command's process like its
plots, and logged there under ``schema.MODEL_FOLDER`` in the cell's run; and the
registration of a run's model in MLflow's model registry.

This module receives a Keras model object and hands it to MLflow; it imports no Keras.
"""
from __future__ import annotations

import functools
import importlib.metadata
import tempfile
from pathlib import Path
from typing import Any

from cvlib.errors import CvlibError
from cvlib.tracking import schema
from cvlib.tracking.keras_loader import CUSTOM_LAYER_MODULES, import_custom_layers

# What loading a cell's model needs: its Keras layers (cvlib's own among them) and the
# backend they run on. Given, so that MLflow does not load the model once more in a
# subprocess to infer them (seconds a cell).
MODEL_REQUIREMENTS = ("keras", "tensorflow", "cvlib")


@functools.cache
def _requirements() -> tuple[str, ...]:
    pinned = []
    for name in MODEL_REQUIREMENTS:
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pinned.append(name)
    return tuple(pinned)


def _custom_layer_modules(model: Any) -> list[str]:
    """The modules of a Keras model's layers that Keras itself does not ship, nested
    models' layers included."""
    modules, layers = set(), list(model.layers)
    while layers:
        layer = layers.pop()
        layers.extend(getattr(layer, "layers", []))
        module = type(layer).__module__
        if module.split(".")[0] != "keras":
            modules.add(module)
    return sorted(modules)


def _load_with_custom_layers(path: Path) -> None:
    """Make MLflow's pyfunc loader of the model at ``path`` tracking.keras_loader, which
    imports the model's custom layers first."""
    from mlflow.models import Model
    from mlflow.models.model import MLMODEL_FILE_NAME
    from mlflow.pyfunc import FLAVOR_NAME, MAIN

    description = Model.load(path / MLMODEL_FILE_NAME)
    description.flavors[FLAVOR_NAME][MAIN] = "cvlib.tracking.keras_loader"
    description.save(path / MLMODEL_FILE_NAME)


def _signature(model: Any):
    """A Keras model's signature from its input and output shapes and dtypes: asking
    MLflow to infer it from a prediction traced a new predict function for every cell."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(tensor) -> Schema:
        return Schema([TensorSpec(np.dtype(tensor.dtype), (-1, *tensor.shape[1:]))])

    return ModelSignature(inputs=spec(model.inputs[0]), outputs=spec(model.outputs[0]))


def model_files(model: Any, examples) -> dict[str, bytes]:
    """Save a trained model as an MLflow model, with its signature and input example.

    Args:
        model: A Keras model taking raw uint8 images (training.servable_model).
        examples: A few raw uint8 images (NHWC): the input example.

    Returns:
        The MLflow model's files: path relative to the model's folder -> contents.
    """
    import mlflow.keras

    signature = _signature(model)
    with tempfile.TemporaryDirectory(prefix="cvlib-model-") as folder:
        path = Path(folder, schema.MODEL_FOLDER)
        path.mkdir()  # the Keras flavour writes the input example before making it
        mlflow.keras.save_model(
            model, str(path), signature=signature, input_example=examples,
            pip_requirements=list(_requirements()),
            metadata={CUSTOM_LAYER_MODULES: _custom_layer_modules(model)})
        _load_with_custom_layers(path)
        return {str(file.relative_to(path)): file.read_bytes()
                for file in sorted(path.rglob("*")) if file.is_file()}


def write_model_files(files: dict[str, bytes], folder: str | Path) -> None:
    """Lay a model's files (:func:`model_files`) out under ``folder/schema.MODEL_FOLDER``,
    ready to be logged as a run's artifacts."""
    for relative, payload in files.items():
        target = Path(folder, schema.MODEL_FOLDER, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload)


class ModelNotFound(CvlibError):
    """No run, or no model in the run, where one was asked for."""


def load_keras_model(tracking_uri: str, run_id: str) -> Any:
    """The trained Keras model a cell run logged (:func:`model_files`).

    Args:
        tracking_uri: The store.
        run_id: The cell's run.

    Returns:
        The Keras model; it takes raw uint8 images (N, 32, 32, 3) and gives the ten
        classes' probabilities.

    Raises:
        ModelNotFound: the store has no such run, or the run logged no model.
    """
    import mlflow.keras
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    from cvlib.tracking.store import open_client

    client = open_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        raise ModelNotFound(f"no run {run_id!r} in {tracking_uri}") from None
    path = run.data.tags.get(schema.MODEL_TAG)
    if path is None:
        raise ModelNotFound(f"run {run.info.run_name} ({run_id}) has no model: only a cell "
                            f"that finished with train.save_model: final logs one")
    with tempfile.TemporaryDirectory(prefix="cvlib-model-") as folder:
        local = client.download_artifacts(run_id, path, folder)
        import_custom_layers(local)
        return mlflow.keras.load_model(local)


def model_uri(run_id: str, path: str = schema.MODEL_FOLDER) -> str:
    """The URI that MLflow loads a run's model from (``runs:/RUN_ID/model``)."""
    return f"runs:/{run_id}/{path}"


def register_model(tracking_uri: str, run_id: str, name: str,
                   path: str = schema.MODEL_FOLDER) -> str:
    """Register a run's model in the store's model registry, as a new version of the
    registered model ``name`` (created on its first registration).

    Args:
        tracking_uri: The store, which is its own registry (SQLite, PostgreSQL, a server).
        run_id: The run that holds the model.
        name: The registered model's name.
        path: The model's artifact path in the run.

    Returns:
        The new version's number, as MLflow gives it (``"1"``, ``"2"``, ...).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as error:  # registered before: a new version of it
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{path}"
    return str(client.create_model_version(name, source, run_id=run_id).version)
