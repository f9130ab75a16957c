"""The device-side data path (data.on_device): crops as the per-sample path cuts them, boxes by
torchvision's rule, exact resume, any process count."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from iwm import config
from iwm.config import ConfigError, DataConfig
from iwm.data import ImageFolder
from iwm.data.device_crops import DeviceImages, device_images, draw_boxes, resized_crops
from iwm.data.views import crop_box
from iwm.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _per_sample(images, boxes, size, dtype=torch.uint8):
    out = []
    for img, (top, left, h, w, flip) in zip(images, boxes.tolist()):
        v = TF.resized_crop(img.to(dtype), top, left, h, w, [size, size], antialias=True)
        out.append(TF.horizontal_flip(v) if flip else v)
    return torch.stack(out)


@pytest.mark.parametrize("h,w,size", [(32, 32, 32), (17, 23, 32), (64, 48, 16)])  # up-, mixed and downscaling
def test_crops_match_the_per_sample_torchvision_path(h, w, size):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 3, h, w), dtype=torch.uint8, generator=g)
    boxes = draw_boxes(torch.tensor([[h, w]]).expand(48, 2), (0.08, 1.0), True, g)
    assert boxes[:, 4].any() and not boxes[:, 4].all()
    ours = resized_crops(images, torch.arange(48), boxes, size).int()
    # torchvision's uint8 kernel uses fixed-point weights: within one grey level of ours
    assert (ours - _per_sample(images, boxes, size).int()).abs().max() <= 1
    # its float kernel, rounded, is what we compute: equal but for rare halves rounded the other way
    exact = _per_sample(images, boxes, size, torch.float32).round().int()
    assert (ours - exact).abs().max() <= 1 and (ours != exact).float().mean() < 1e-3


def test_boxes_follow_the_random_resized_crop_rule():
    g = torch.Generator().manual_seed(1)
    sizes = torch.tensor([[24, 40]]).expand(4000, 2)
    top, left, h, w, flip = draw_boxes(sizes, (0.3, 1.0), True, g).T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 24).all() and (left + w <= 40).all()
    area = (h * w).double() / (24 * 40)
    # scale [0.3, 1] and ratio [3/4, 4/3], widened by the rounding to whole pixels
    assert area.min() > 0.25 and (w / h).min() > 0.7 and (w / h).max() < 1.45
    g2 = torch.Generator().manual_seed(1)
    ref = torch.tensor([crop_box(24, 40, (0.3, 1.0), (3 / 4, 4 / 3), g2) for _ in range(4000)]).double()
    assert abs(area.mean() - (ref[:, 2] * ref[:, 3] / (24 * 40)).mean()) < 0.02
    assert abs(flip.double().mean() - 0.5) < 0.05
    # no try fits (the whole image at a ratio outside the range): crop_box's centred fallback
    wide = draw_boxes(torch.tensor([[16, 24]]).expand(8, 2), (1.0, 1.0), False, g)
    assert wide[:, :4].tolist() == [list(crop_box(16, 24, (1.0, 1.0), (3 / 4, 4 / 3), g2))] * 8 == [[0, 1, 16, 21]] * 8


def test_images_of_different_sizes_are_cut_from_their_own_pixels(tmp_path):
    rng = np.random.default_rng(0)
    for name, shape in (("a", (20, 30)), ("b", (36, 24)), ("c", (16, 16))):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    folder = ImageFolder(tmp_path, size=12, seed=0)
    dev = device_images(folder, DataConfig(dataset="folder", image_size=12), 0, torch.device("cpu"))
    assert dev.images.shape == (3, 3, 36, 30) and dev.sizes.tolist() == [[20, 30], [36, 24], [16, 16]]
    indices = torch.tensor([0, 1, 2, 1])
    boxes = dev.boxes(indices, step=5)
    crops = dev.crops(indices, step=5)
    for k, i in enumerate(indices.tolist()):  # the padding of the shared array is never read
        alone = resized_crops(folder.load(i)[None], torch.tensor([0]), boxes[k:k + 1], 12)
        assert torch.equal(crops[k:k + 1], alone)


def test_each_process_cuts_its_slice_of_the_global_batch():
    g = torch.Generator().manual_seed(2)
    dev = DeviceImages(torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8, generator=g),
                       torch.tensor([[16, 16]]).expand(20, 2), 16, (0.3, 1.0), True, seed=0)
    glob = torch.randperm(20, generator=g)[:8]
    one = dev.crops(glob, step=3)
    assert torch.equal(torch.cat([dev.crops(glob, 3, rank=r, world=2) for r in range(2)]), one)
    assert not torch.equal(dev.crops(glob, step=4), one)  # another step, other crops


def test_only_in_memory_data_can_live_on_the_device():
    with pytest.raises(ConfigError, match="data.on_device"):
        device_images(torch.utils.data.TensorDataset(torch.zeros(4, 3)), DataConfig(), 0, torch.device("cpu"))


def test_on_device_training_resumes_bitwise(tmp_path, tiny_overrides):
    common = tiny_overrides + ["optim.max_steps=6", "run.ckpt_every=2", "data.synthetic_size=40", "data.subset=36"]
    base = common + ["data.on_device=true"]
    straight = Trainer(config.from_dict(None, base + [f"run.out_dir={tmp_path / 'a'}"]))
    assert straight.on_device is not None and len(straight.on_device) == 36
    full = straight.fit()
    split = config.from_dict(None, base + [f"run.out_dir={tmp_path / 'b'}"])
    assert Trainer(split).fit(until=3).steps == 3  # stops mid-epoch (4 batches per epoch)
    assert Trainer(split).fit().losses == full.losses
    loader = Trainer(config.from_dict(None, common + [f"run.out_dir={tmp_path / 'c'}"]))
    assert loader.on_device is None
    assert loader.fit().losses != full.losses  # the device path did cut the crops
