import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from iwm import config
from iwm.eval import knn_accuracy, knn_eval
from iwm.eval.pixels import RawPixels
from iwm.models import build_encoder


def test_knn_on_separable_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=g) * 5
    ytr, yte = torch.randint(0, 5, (200,), generator=g), torch.randint(0, 5, (100,), generator=g)
    xtr = centers[ytr] + torch.randn(200, 16, generator=g)
    xte = centers[yte] + torch.randn(100, 16, generator=g)
    assert knn_accuracy(xtr, ytr, xte, yte, k=10) > 0.95
    shuffled = ytr[torch.randperm(200, generator=g)]
    assert knn_accuracy(xtr, shuffled, xte, yte, k=10) < 0.5


def _colour_folder(root, per_class=6):
    """train/ and test/ with three classes of flat colours plus a little noise: the pixels
    alone tell the classes apart."""
    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]
    for split in ("train", "test"):
        for c, rgb in enumerate(colours):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(per_class):
                img = np.clip(np.array(rgb) + rng.normal(0, 8, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / f"c{c}" / f"{i}.png")
    return root


def test_pixel_knn_is_the_same_protocol_on_raw_pixels(tmp_path, tiny_overrides):
    folder = _colour_folder(tmp_path / "colours")
    cfg = config.from_dict(None, tiny_overrides + ["data.dataset=folder", f"data.path={folder}", "eval.knn_k=3"])
    res = knn_eval(build_encoder(cfg), cfg, pixels=True)
    assert res["pixels_top1"] == 1.0 and (res["bank"], res["test"]) == (18, 18)
    # RawPixels as the encoder gives the same figure: one protocol for both
    assert knn_eval(RawPixels.of(cfg), cfg)["top1"] == res["pixels_top1"]
    assert "pixels_top1" not in knn_eval(build_encoder(cfg), cfg)


def test_pixel_tokens_are_the_patches_in_patch_embedding_order():
    img = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    px = RawPixels(8, 4)
    # a patch embedding whose kernel copies each pixel of the patch to its own channel
    eye = torch.eye(px.embed_dim).view(px.embed_dim, 3, 4, 4)
    embedded = F.conv2d(img, eye, stride=4).flatten(2).transpose(1, 2)
    assert torch.allclose(px.tokens(img), embedded, atol=1e-6)
    assert px.pooled(img).shape == (2, 3 * 8 * 8) and px.num_patches == 4
    keep = torch.tensor([[3, 0], [1, 2]])
    assert torch.equal(px.tokens(img, keep), torch.stack([embedded[0, [3, 0]], embedded[1, [1, 2]]]))
