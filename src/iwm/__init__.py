"""iwm: Image World Models (Garrido et al. 2024) in PyTorch."""

__version__ = "0.1.0"

from .api import Run, load
from .config import Config, ConfigError

__all__ = ["Config", "ConfigError", "Run", "load", "__version__"]
