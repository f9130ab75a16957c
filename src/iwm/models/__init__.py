from .encoder import Encoder, build_encoder, gather_tokens
from .iwm import IWM
from .predictor import Predictor, build_predictor
from .regularizers import Regularizer, SIGReg, build_regularizer, register_regularizer

__all__ = ["IWM", "Encoder", "Predictor", "Regularizer", "SIGReg", "build_encoder", "build_predictor",
           "build_regularizer", "gather_tokens", "register_regularizer"]
