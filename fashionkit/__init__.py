"""fashionkit: Fashion-MNIST classifiers, metric-learning embeddings and a YOLO detector.

The stages live in sub-packages and data flows one way through run directories:
``fashionkit.data`` -> ``fashionkit.classify`` -> ``fashionkit.metric`` -> ``fashionkit.detect``.
"""

__version__ = "0.1.0"
