"""Training from a Hugging Face `datasets` dataset (parquet files, a save_to_disk folder): split
across processes and resumed exactly as shards are, its columns and splits named in the config."""

import io

import pytest
import torch

from conftest import TINY
from iwm import config
from iwm.data import build_dataset, get_format
from test_shards import epoch, ids, killed_and_resumed_matches_straight

pytestmark = pytest.mark.usefixtures("one_thread")
datasets = pytest.importorskip("datasets")


def solid(i):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (i % 256, i // 256, 9)).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def splits(train=48, val=8):
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    return datasets.DatasetDict({
        name: datasets.Dataset.from_dict({"img": [solid(i) for i in ids_], "label": [i % 3 for i in ids_]},
                                         features=features)
        for name, ids_ in (("train", range(train)), ("validation", range(train, train + val)))})


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))  # datasets converts parquet there
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def parquet(tmp_path):
    out = tmp_path / "parquet"
    out.mkdir()
    for name, ds in splits().items():
        ds.to_parquet(str(out / f"{name}-00000-of-00001.parquet"))
    return out


def hf_cfg(path, *more):
    return config.from_dict(None, TINY + ["data.dataset=hf", f"data.path={path}", "data.image_column=img",
                                          *more]).data


def test_sigkill_then_resume_from_parquet_is_bitwise_identical(tmp_path, tiny_overrides):
    base = [o for o in tiny_overrides if not o.startswith("run.out_dir")]
    base += ["data.dataset=hf", f"data.path={parquet(tmp_path)}", "data.image_column=img", "data.num_workers=2",
             "data.batch_size=4"]
    killed_and_resumed_matches_straight(tmp_path, base)


def test_a_saved_dataset_streams_disjoint_rows_to_each_process_and_holds_its_split_out(tmp_path):
    folder = tmp_path / "saved"
    splits().save_to_disk(str(folder))
    seen = []
    for rank in (0, 1):
        stream = get_format("hf").stream(hf_cfg(folder, "data.num_workers=2"), 0, rank, 2)
        batches = epoch(stream)
        assert len(batches) == stream.batches_per_epoch
        seen += [i for views, labels, _ in batches for i in ids(views)]
        assert all((labels == torch.tensor(ids(views)) % 3).all() for views, labels, _ in batches)
    assert len(seen) == len(set(seen)) == 48 - stream.left_out and set(seen) <= set(range(48))
    held_out = build_dataset(hf_cfg(folder), 0, "test")
    assert sorted(ids(torch.stack([held_out[i][0] for i in range(len(held_out))]))) == list(range(48, 56))
    assert held_out.classes == ["a", "b", "c"]


@pytest.mark.parametrize("override,said", [
    ("data.image_column=picture", "data.image_column: train of"),
    ("data.split=everything", "data.split: "),
    ("data.eval_split=holdout", "data.eval_split: ")])
def test_a_column_or_split_that_is_not_there_is_refused_naming_the_key(tmp_path, override, said):
    folder = tmp_path / "saved"
    splits().save_to_disk(str(folder))
    with pytest.raises(config.ConfigError, match=said):
        cfg = hf_cfg(folder, override)
        get_format("hf").stream(cfg, 0, 0, 1)
        build_dataset(cfg, 0, "test")
