"""Fashion-MNIST image classifiers: the model registry (``create_model``), training and evaluation.

Names are imported on first use (PEP 562), so ``classify --help`` does not pay for importing torch.
"""

__all__ = ["MODELS", "Classifier", "create_model", "model_table"]


def __getattr__(name: str):
    if name in __all__:
        from fashionkit.classify import models

        return getattr(models, name)
    raise AttributeError(f"module 'fashionkit.classify' has no attribute {name!r}")
