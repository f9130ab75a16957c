"""torch.hub entry points: ``torch.hub.load(REPO, "cifar10_equi")`` returns an ``iwm.Run``
(``run.target_encoder`` is the timm ViT; ``run.encode(images)`` its tokens).

REPO is this repository's directory (with ``source="local"``) or its GitHub name. Each
reference model loads the weights shipped in ``src/iwm/weights``; ``run`` loads any run
argument ``iwm`` takes (run directory, checkpoint, exported folder, pretrained:NAME).
"""

import os
import sys

dependencies = ["torch", "torchvision", "timm", "safetensors", "yaml", "huggingface_hub"]

# this checkout's package, so that the code matches the weights it ships
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

import iwm  # noqa: E402


def cifar10_equi(device="cpu"):
    """IWM with an equivariant world model, ViT on CIFAR-10 at 32 px (configs/cifar10_equi.yaml)."""
    return iwm.pretrained("cifar10_equi", device=device)


def cifar10_equi_strong(device="cpu"):
    """cifar10_equi with the jitter ranges doubled: a stronger world model, a less abstract encoder
    (configs/cifar10_equi_strong.yaml)."""
    return iwm.pretrained("cifar10_equi_strong", device=device)


def cifar10_equi_deep(device="cpu"):
    """cifar10_equi with a deeper, narrower predictor (6 blocks of 64, the paper's IWM^Equi_{18,384} shape
    relative to its encoder) (configs/cifar10_equi_deep.yaml)."""
    return iwm.pretrained("cifar10_equi_deep", device=device)


def cifar10_equi_deep_jitter15(device="cpu"):
    """cifar10_equi_deep with the jitter ranges at 1.5x the paper's: the deeper predictor's representation
    and a stronger world model in one (configs/cifar10_equi_deep_jitter15.yaml)."""
    return iwm.pretrained("cifar10_equi_deep_jitter15", device=device)


def cifar10_inv(device="cpu"):
    """IWM with an invariant world model, ViT on CIFAR-10 at 32 px (configs/cifar10_inv.yaml)."""
    return iwm.pretrained("cifar10_inv", device=device)


def cifar10_ijepa(device="cpu"):
    """I-JEPA (no transformation between the views), ViT on CIFAR-10 at 32 px (configs/cifar10_ijepa.yaml)."""
    return iwm.pretrained("cifar10_ijepa", device=device)


def run(path, device="cpu", image_size=None):
    """Any run argument: a run directory, a checkpoint, an exported folder, pretrained:NAME."""
    return iwm.load(path, device=device, image_size=image_size)
