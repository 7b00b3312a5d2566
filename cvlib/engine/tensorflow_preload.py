"""Imported by the workers' fork server (multiprocessing's "forkserver"): TensorFlow's
import is done once there, and every worker forked from it starts with it imported."""
from cvlib.engine.child import preload_tensorflow

preload_tensorflow()
