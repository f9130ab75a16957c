import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from iwm.config import DataConfig
from iwm.data import ImageFolder, ResumableSampler, build_dataset, load_cifar10


def _jpeg(color, size=(40, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def test_image_folder_classes_flat_and_bad_files(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    (tmp_path / "cats" / "a.jpg").write_bytes(_jpeg((255, 0, 0)))
    (tmp_path / "dogs" / "b.png").write_bytes(b"")  # zero bytes: skipped
    Image.new("L", (20, 20), 128).save(tmp_path / "dogs" / "c.png")  # grayscale: converted
    Image.new("RGBA", (20, 20)).save(tmp_path / "top.png")  # flat file: label -1
    ds = ImageFolder(tmp_path, size=16, seed=0)
    assert ds.classes == ["cats", "dogs"]
    assert sorted(ds.labels.tolist()) == [-1, 0, 1, 1]
    for i in range(len(ds)):
        view, _ = ds[i]
        assert view.shape == (3, 16, 16) and view.dtype == torch.uint8


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path"):
        ImageFolder(tmp_path / "missing", size=16)
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolder(tmp_path, size=16)


def test_views_depend_on_seed_epoch_index_only():
    ds = build_dataset(DataConfig(dataset="synthetic", synthetic_size=8, image_size=16), seed=0)
    a = ds[3][0]
    assert torch.equal(a, ds[3][0])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[3][0])


def test_cifar_tarball_reader_and_cache(tmp_path):
    tar_path = tmp_path / "cifar10-jpg.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for split, n in (("train", 3), ("test", 2)):
            for cls, color in (("cat", (200, 10, 10)), ("ship", (10, 10, 200))):
                for k in range(n):
                    data = _jpeg(color, (32, 32))
                    info = tarfile.TarInfo(f"cifar10-jpg/{split}/{cls}/{k:04d}.jpg")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    arrays = load_cifar10(tar_path, cache_dir=str(tmp_path / "cache"))
    assert arrays["train_x"].shape == (6, 32, 32, 3) and arrays["test_x"].shape == (4, 32, 32, 3)
    assert sorted(set(arrays["train_y"].tolist())) == [3, 8]  # cat, ship in CIFAR-10 order
    assert list((tmp_path / "cache").iterdir())
    again = load_cifar10(tar_path, cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(again["train_x"], arrays["train_x"])
    with pytest.raises(FileNotFoundError, match="data.path"):
        load_cifar10(tmp_path / "nope.tar.gz")


def test_sampler_global_batches_split_across_processes():
    one = list(ResumableSampler(20, batch=4, seed=0))
    two = [list(ResumableSampler(20, batch=2, seed=0, rank=r, world=2)) for r in range(2)]
    for k in range(5):  # global batch k is the same set, rank 0 then rank 1
        assert one[4 * k:4 * k + 4] == two[0][2 * k:2 * k + 2] + two[1][2 * k:2 * k + 2]
    s = ResumableSampler(20, batch=4, seed=0)
    s.set_epoch(0, start_batch=2)
    assert list(s) == one[8:]
    with pytest.raises(ValueError, match="batch_size"):
        ResumableSampler(3, batch=4)
