from .encoder import Encoder, build_encoder, gather_tokens
from .iwm import IWM
from .predictor import Predictor, build_predictor

__all__ = ["IWM", "Encoder", "Predictor", "build_encoder", "build_predictor", "gather_tokens"]
