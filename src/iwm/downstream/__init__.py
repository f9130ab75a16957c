"""Leveraging a trained run downstream (the paper's "Leveraging the world model" and
"Abstraction" sections): probes on the frozen encoder, finetuning protocols, multi-task
predictor tuning and semantic segmentation."""

from .finetune import PROTOCOLS, build_protocol, run_protocols
from .metrics import confusion, mean_iou, pixel_accuracy
from .multitask import CIFAR10_TASKS, MultiTaskModel, Task, compare_multitask, parse_tasks, train_multitask
from .probes import KINDS, attentive_probe, knn_probe, linear_probe, run_probes
from .segmentation import SOURCES, Segmenter, run_segmentation, segmentation_sets

__all__ = ["CIFAR10_TASKS", "KINDS", "PROTOCOLS", "SOURCES", "MultiTaskModel", "Segmenter", "Task",
           "attentive_probe", "build_protocol", "compare_multitask", "confusion", "knn_probe", "linear_probe",
           "mean_iou", "parse_tasks", "pixel_accuracy", "run_probes", "run_protocols", "run_segmentation",
           "segmentation_sets", "train_multitask"]
