"""iwm: Image World Models (Garrido et al. 2024) in PyTorch."""

__version__ = "0.1.0"

from .api import Run, from_pretrained, load, pretrained
from .config import Config, ConfigError

__all__ = ["Config", "ConfigError", "Run", "from_pretrained", "load", "pretrained", "__version__"]
