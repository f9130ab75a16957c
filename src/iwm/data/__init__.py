from .datasets import ArrayDataset, ImageFolder, ViewDataset, build_dataset, load_cifar10, synthetic_images
from .sampler import ResumableSampler
from .views import normalize

__all__ = ["ArrayDataset", "ImageFolder", "ViewDataset", "ResumableSampler", "build_dataset",
           "load_cifar10", "normalize", "synthetic_images"]
