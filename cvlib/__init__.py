"""cvlib: the CS231n "Training Neural Networks I" questions, answered on CIFAR-10.

Grids of Keras 3 models (activation x initializer x batch-norm placement x ...)
are trained from a YAML file and logged to MLflow.
"""
import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) buries cvlib's own
# output; users can still raise it by setting the variable themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
