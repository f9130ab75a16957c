from .cifar10 import CIFAR10_CLASSES, find_cifar10, load_cifar10
from .datasets import ArrayDataset, ImageFolder, ViewDataset, build_dataset, synthetic_images
from .folders import folder_split
from .sampler import ResumableSampler
from .views import normalize

__all__ = ["ArrayDataset", "CIFAR10_CLASSES", "ImageFolder", "ViewDataset", "ResumableSampler", "build_dataset",
           "find_cifar10", "folder_split", "load_cifar10", "normalize", "synthetic_images"]
