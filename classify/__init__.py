"""Fashion-MNIST image classifiers: the model registry (``create_model``), training and evaluation."""

from fashionkit.classify.models import MODELS, Classifier, create_model, model_table

__all__ = ["MODELS", "Classifier", "create_model", "model_table"]
