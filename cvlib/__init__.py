"""cvlib: the CS231n "Training Neural Networks I" questions, answered on CIFAR-10.

Grids of Keras 3 models (activation x initializer x batch-norm placement x ...) are
trained from a YAML file and logged to MLflow. The flow, one way:

grid file (:mod:`~cvlib.grids`, :mod:`~cvlib.config`) -> cells -> data
(:mod:`~cvlib.data`) -> model (:mod:`~cvlib.models`) -> training
(:mod:`~cvlib.training`) -> engine (:mod:`cvlib.engine`: workers, recorder) -> tracking
(:mod:`cvlib.tracking`) -> table and report (:mod:`~cvlib.results`, :mod:`~cvlib.report_page`).
:mod:`cvlib.studies` builds the sanity checks, the learning-rate search and the claims on
the engine; :mod:`cvlib.cli` is the ``cvlib`` command.

From Python, the same as the command (:mod:`cvlib.api`)::

    import cvlib
    results = cvlib.run("experiments/smoke.yaml")     # a pandas DataFrame
    cvlib.report()                                     # shown inline in Jupyter
    model = cvlib.load_model("relu-he-before-s0")      # a keras.Model

Importing cvlib loads neither TensorFlow, MLflow nor pandas: each function does, when
called, so that the command's one-line errors stay fast.
"""
from cvlib.errors import CvlibError

__version__ = "0.1.0"

# The Python API, loaded from cvlib.api on first use.
API = ("run", "table", "report", "claims", "load_model")
__all__ = ["CvlibError", *API]


def __getattr__(name: str):
    if name in API:
        from cvlib import api

        return getattr(api, name)
    raise AttributeError(f"module 'cvlib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
