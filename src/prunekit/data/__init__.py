"""Real reference data, read from disk with no downloads: Fashion-MNIST, derived tasks, a text corpus."""
from prunekit.data.detection import load_det_mosaic
from prunekit.data.fashion_mnist import CLASSES, find_fashion_mnist, load_fashion_mnist, normalize
from prunekit.data.mosaic import load_mosaic
from prunekit.data.motion import load_motion, motion_items
from prunekit.data.text import load_corpus

__all__ = ["CLASSES", "find_fashion_mnist", "load_fashion_mnist", "normalize", "load_mosaic",
           "load_det_mosaic", "load_motion", "motion_items", "load_corpus"]
