"""MLflow's pyfunc loader of cvlib's models (the ``loader_module`` of their
``python_function`` flavour): the Keras flavour's own loader, once the modules that
register the model's own layers are imported.

Keras finds a custom layer only when the module that registers it has run; MLflow's
loader imports none. Each model's MLmodel names those modules (``metadata``'s
``CUSTOM_LAYER_MODULES``), so ``mlflow.pyfunc.load_model`` works in a process that never
imported cvlib.
"""
from __future__ import annotations

import importlib
import os

# The MLmodel's metadata key: the modules to import before Keras reads the model.
CUSTOM_LAYER_MODULES = "custom_layer_modules"


def _load_pyfunc(path: str):
    """Load a cvlib model for ``mlflow.pyfunc.load_model``.

    Args:
        path: The model's local folder (or a file in it), as MLflow hands it.

    Returns:
        MLflow's Keras wrapper, whose ``predict`` takes raw uint8 images.
    """
    from mlflow.keras import _load_pyfunc as keras_load_pyfunc

    import_custom_layers(path if os.path.isdir(path) else os.path.dirname(path))
    return keras_load_pyfunc(path)


def import_custom_layers(folder: str) -> None:
    """Import the modules that register a saved model's own layers, as its MLmodel names
    them, so that Keras can read it.

    Args:
        folder: The MLflow model's local folder.
    """
    from mlflow.models import Model
    from mlflow.models.model import MLMODEL_FILE_NAME

    metadata = Model.load(os.path.join(folder, MLMODEL_FILE_NAME)).metadata or {}
    for module in metadata.get(CUSTOM_LAYER_MODULES, []):
        importlib.import_module(module)
