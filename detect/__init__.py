"""YOLO detection of Fashion-MNIST items in images and video, trained and evaluated on synthetic scenes."""
