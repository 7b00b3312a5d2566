"""What an entry point sets before TensorFlow starts: the ``cvlib`` command calls
:func:`configure_process` first thing, and worker processes inherit its settings.
Importing cvlib itself changes nothing."""
from __future__ import annotations

import logging
import os

# Environment variables set unless the user set them: TensorFlow's C++ start-up chatter
# (oneDNN, CUDA probing) buries cvlib's own output; Keras runs on TensorFlow; MLflow's
# per-download progress bar is noise for the one small file a report fetches.
DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


class _DropRetracingWarning(logging.Filter):
    """Each model gets its own statistics tf.function, by design (cvlib.stats); TensorFlow
    counts them as retracings of one function and warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


_RETRACING_FILTER = _DropRetracingWarning()


def configure_process() -> None:
    """Set cvlib's environment defaults and log filters in this process (idempotent)."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    # TensorFlow logs through the standard "tensorflow" logger (tf.get_logger()).
    tensorflow_logger = logging.getLogger("tensorflow")
    if _RETRACING_FILTER not in tensorflow_logger.filters:
        tensorflow_logger.addFilter(_RETRACING_FILTER)
