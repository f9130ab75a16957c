from . import hf, webdataset  # noqa: F401 - registers the formats data.dataset names
from .cifar10 import CIFAR10_CLASSES, find_cifar10, load_cifar10
from .datasets import ArrayDataset, ImageFolder, ViewDataset, build_dataset, synthetic_images
from .folders import folder_split
from .formats import DataFormat, get_format, known_formats, register_format
from .sampler import ResumableSampler
from .stream import ShardStream
from .views import normalize

__all__ = ["ArrayDataset", "CIFAR10_CLASSES", "DataFormat", "ImageFolder", "ViewDataset", "ResumableSampler",
           "ShardStream", "build_dataset", "find_cifar10", "folder_split", "get_format", "known_formats",
           "load_cifar10", "normalize", "register_format", "synthetic_images"]
