import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A model small enough that a training step takes milliseconds on a CPU.
TINY = [
    "data.dataset=synthetic", "data.synthetic_size=64", "data.image_size=16", "data.batch_size=8",
    "data.num_workers=0", "model.patch_size=4", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
    "predictor.depth=2", "predictor.width=32", "predictor.num_heads=2", "mask.min_context=2",
    "mask.num_targets=2", "aug.blur_sigma=[0.1,1.0]", "run.progress=false", "run.log_every=1",
    # training health stays on (the default), on a few held-out images
    "eval.health_bank=48", "eval.health_test=24", "eval.health_loss_batch=8", "eval.health_mrr_images=2",
    "eval.health_mrr_bank=8",
]


# IWM_CUDA_DRY_RUN=1 runs the cuda-marked tests on the CPU, their GPU-only checks left out: a
# check of the tests themselves before a GPU session (scripts/gpu_check.sh --dry-run sets it)
CUDA_DRY_RUN = os.environ.get("IWM_CUDA_DRY_RUN") == "1"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() or CUDA_DRY_RUN:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; on one, scripts/gpu_check.sh runs these (pytest -m cuda)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_overrides(tmp_path):
    return TINY + [f"run.out_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"]


@pytest.fixture
def one_thread():
    """Tensors in these tests are tiny: extra threads only add overhead, badly on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_seg_folder(root: Path, counts=(("training", 3), ("validation", 2)), h=12, w=16) -> Path:
    """ADE20K layout: left half red = class 0, right half blue = class 1, top row void,
    and a green class-2 square in the first image of each split."""
    for split, n in counts:
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(n):
            img = np.zeros((h, w, 3), np.uint8)
            mask = np.zeros((h, w), np.uint8)
            img[:, : w // 2] = (220, 20, 20)
            img[:, w // 2:] = (20, 20, 220)
            mask[:, w // 2:] = 1
            if i == 0:
                img[6:10, 2:6] = (20, 220, 20)
                mask[6:10, 2:6] = 2
            mask[0] = 255  # void
            Image.fromarray(img).save(root / "images" / split / f"{split}_{i:04d}.jpg", quality=95)
            Image.fromarray(mask, mode="L").save(root / "annotations" / split / f"{split}_{i:04d}.png")
    return root


def train_tiny(tmp: Path, steps: int = 2) -> Path:
    """A tiny run of ``steps`` steps in ``tmp/run``, for module fixtures whose tests only read it."""
    from iwm import config
    from iwm.train import Trainer

    torch.set_num_threads(1)
    cfg = config.from_dict(None, TINY + [f"run.out_dir={tmp / 'run'}", f"data.cache_dir={tmp / 'cache'}",
                                         f"optim.max_steps={steps}"])
    Trainer(cfg).fit()
    return Path(cfg.run.out_dir)
