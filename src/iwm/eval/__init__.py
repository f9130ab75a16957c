from .features import extract, subset
from .knn import knn_accuracy, knn_eval, knn_predict

__all__ = ["extract", "subset", "knn_accuracy", "knn_eval", "knn_predict"]
