"""iwm: Image World Models (Garrido et al. 2024) in PyTorch."""

from .version import __version__
from .api import Run, from_pretrained, load, pretrained
from .config import Config, ConfigError

__all__ = ["Config", "ConfigError", "Run", "from_pretrained", "load", "pretrained", "__version__"]
