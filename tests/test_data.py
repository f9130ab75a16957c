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


def _class_tree(root, splits, classes=("cats", "dogs"), per_class=2):
    for split in splits:
        for c, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            for k in range(per_class):
                Image.new("RGB", (20, 20), (40 * c, 10 * k, 0)).save(root / split / cls / f"{split}_{k}.png")
    return root


def _folder(path):
    return DataConfig(dataset="folder", path=str(path), image_size=16)


def test_folder_held_out_split_is_val_beside_train(tmp_path):
    root = _class_tree(tmp_path / "ds", ["train", "val"])
    for path in (root, root / "train"):  # the dataset root, or its train/ folder (as ImageNet configs were)
        held_out = build_dataset(_folder(path), seed=0, split="test")
        assert held_out.classes == ["cats", "dogs"]
        assert {p.parent.parent.name for p in held_out.files} == {"val"}
        train = build_dataset(_folder(path), seed=0, split="train")
        assert {p.parent.parent.name for p in train.files} == {"train"}


def test_folder_held_out_split_names_in_order(tmp_path):
    root = _class_tree(tmp_path / "ds", ["train", "test", "validation"])
    assert build_dataset(_folder(root), 0, "test").files[0].parts[-3] == "validation"
    _class_tree(root, ["val"])
    assert build_dataset(_folder(root), 0, "test").files[0].parts[-3] == "val"


def test_folder_without_held_out_split_is_refused_for_evaluation(tmp_path):
    root = _class_tree(tmp_path / "photos", [""])  # classes straight under the root
    assert len(build_dataset(_folder(root), 0, "train")) == 4  # training on it is fine
    with pytest.raises(FileNotFoundError, match=r"has no held-out split \(looked for val/, validation/, test/"):
        build_dataset(_folder(root), 0, "test")
    only_train = _class_tree(tmp_path / "ds", ["train"])
    with pytest.raises(FileNotFoundError, match="no held-out split"):
        build_dataset(_folder(only_train / "train"), 0, "test")


def test_knn_on_a_folder_without_held_out_split_is_refused(tmp_path, tiny_overrides):
    from iwm import config
    from iwm.eval import knn_eval
    from iwm.train import build_model

    root = _class_tree(tmp_path / "photos", [""])
    cfg = config.from_dict(None, tiny_overrides + ["data.dataset=folder", f"data.path={root}"])
    with pytest.raises(FileNotFoundError, match=f"data.path: {root} has no held-out split"):
        knn_eval(build_model(cfg).target_encoder, cfg)
