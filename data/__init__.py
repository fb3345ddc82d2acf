"""Fashion-MNIST: reading and verifying the official files, splits, batched augmentation and loading."""

from fashionkit.data.fashion_mnist import CLASSES, class_id, load_split, parse_classes

__all__ = ["CLASSES", "class_id", "load_split", "parse_classes"]
