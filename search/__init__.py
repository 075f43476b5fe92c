"""search: hyperparameter search for small Keras convnets on MNIST-like data, built on Optuna."""

import os

# TensorFlow prints several lines of start-up notes at INFO level; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
