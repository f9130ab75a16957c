import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A model small enough that a training step takes milliseconds on a CPU.
TINY = [
    "data.dataset=synthetic", "data.synthetic_size=64", "data.image_size=16", "data.batch_size=8",
    "data.num_workers=0", "model.patch_size=4", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
    "predictor.depth=2", "predictor.width=32", "predictor.num_heads=2", "mask.min_context=2",
    "mask.num_targets=2", "aug.blur_sigma=[0.1,1.0]", "run.progress=false", "run.log_every=1",
]


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
