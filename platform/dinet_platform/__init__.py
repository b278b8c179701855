"""DINet platform: train, tune, evaluate and serve DINet lip-sync models on Ray + MLflow."""

__version__ = "0.1.0"
