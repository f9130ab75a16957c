import io
import json
import pickle
import socket
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torchvision.datasets
from PIL import Image

from iwm.cli import main
from iwm.config import ConfigError
from iwm.data import cifar10
from iwm.data.cifar10 import TARBALL, cache_root, find_cifar10, load_cifar10, read_cifar10


def standard_batches(rng: np.random.Generator, train_per_batch: int = 4, test: int = 6) -> dict[str, tuple]:
    """name -> (images (N, 32, 32, 3) uint8, labels, pickle bytes) in the official format:
    Python 2 style dicts with bytes keys, data as (N, 3072) rows of R, G and B planes."""
    out = {}
    for name, n in [*((f"data_batch_{k}", train_per_batch) for k in range(1, 6)), ("test_batch", test)]:
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batch = {b"batch_label": name.encode(), b"labels": labels,
                 b"data": images.transpose(0, 3, 1, 2).reshape(n, 3072),
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        out[name] = (images, labels, pickle.dumps(batch, protocol=2))
    return out


def write_standard(dest: Path, batches: dict[str, tuple], as_tarball: bool = True) -> Path:
    """The standard cifar-10-python.tar.gz (cifar-10-batches-py/ inside) at dest, or that folder."""
    meta = pickle.dumps({b"label_names": [c.encode() for c in cifar10.CIFAR10_CLASSES], b"num_vis": 3072}, protocol=2)
    files = {**{name: b[2] for name, b in batches.items()}, "batches.meta": meta, "readme.html": b"<html></html>"}
    if not as_tarball:
        folder = dest / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return folder
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


@pytest.fixture
def batches():
    return standard_batches(np.random.default_rng(0))


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """Nothing set by the caller's environment: no $IWM_CIFAR10, the cache under tmp_path."""
    monkeypatch.delenv("IWM_CIFAR10", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _expected(batches):
    train = [batches[f"data_batch_{k}"] for k in range(1, 6)]
    return (np.concatenate([b[0] for b in train]), sum((b[1] for b in train), []),
            batches["test_batch"][0], batches["test_batch"][1])


def test_standard_tarball_folder_and_torchvision_root_read_the_same_pixels(tmp_path, batches):
    train_x, train_y, test_x, test_y = _expected(batches)
    tarball = write_standard(tmp_path / "dl" / TARBALL, batches)
    folder = write_standard(tmp_path / "extracted", batches, as_tarball=False)
    for src in (tarball, folder, folder.parent, tarball.parent):  # the last two: torchvision roots
        arrays = read_cifar10(src)
        assert np.array_equal(arrays["train_x"], train_x) and arrays["train_y"].tolist() == train_y
        assert np.array_equal(arrays["test_x"], test_x) and arrays["test_y"].tolist() == test_y


def test_decoded_arrays_are_cached(tmp_path, batches, no_env):
    tarball = write_standard(tmp_path / TARBALL, batches)
    first = load_cifar10(tarball, tmp_path / "cache")
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]
    again = load_cifar10(tarball, tmp_path / "cache")
    assert np.array_equal(again["train_x"], first["train_x"])


def test_a_batch_pickled_by_python2_as_the_official_files_were(tmp_path):
    """Hand-written protocol-2 opcodes as Python 2's cPickle wrote them (str as SHORT_BINSTRING,
    the array through numpy.core.multiarray._reconstruct): what the restricted loader must accept."""
    pixels = bytes(1024) + b"\x01" * 1024 + b"\x02" * 1024  # the R, G and B planes
    batch = (b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00"
             b"\x85U\x01b\x87Rq\x04(K\x01K\x01M\x00\x0c\x86cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06(K\x03U\x01|"
             b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T\x00\x0c\x00\x00" + pixels +
             b"tbU\x06labelsq\x07]q\x08K\x03aU\x0bbatch_labelq\tU\x0dtesting batchq\nu.")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "test_batch"):
        (folder / name).write_bytes(batch)
    arrays = read_cifar10(tmp_path)
    assert arrays["test_y"].tolist() == [3]
    assert arrays["test_x"].shape == (1, 32, 32, 3) and (arrays["test_x"][0] == [0, 1, 2]).all()


def test_a_pickle_that_names_other_code_is_refused(tmp_path, batches, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    batches["test_batch"] = (None, None, pickle.dumps({b"data": Payload(), b"labels": []}, protocol=2))
    folder = write_standard(tmp_path, batches, as_tarball=False)
    with pytest.raises(ConfigError, match=r"test_batch is not a readable CIFAR-10 batch \(it names __builtin__.print"):
        read_cifar10(folder)
    assert "this ran" not in capsys.readouterr().out


def test_class_folder_tree_with_a_val_split(tmp_path):
    for split, cls, color in (("train", "cat", (200, 10, 10)), ("train", "Ship", (10, 10, 200)),
                              ("val", "ship", (10, 10, 200))):
        (tmp_path / "tree" / split / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), color).save(tmp_path / "tree" / split / cls / "0.png")
    arrays = read_cifar10(tmp_path / "tree")
    assert sorted(arrays["train_y"].tolist()) == [3, 8] and arrays["test_y"].tolist() == [8]  # "Ship" too
    assert arrays["test_x"].shape == (1, 32, 32, 3)
    Image.new("RGB", (40, 30)).save(tmp_path / "tree" / "train" / "cat" / "big.png")
    with pytest.raises(ConfigError, match="not a 32x32 CIFAR-10 image"):
        read_cifar10(tmp_path / "tree")


def test_search_order_path_then_env_then_cache_then_download(tmp_path, batches, monkeypatch, no_env):
    cache = tmp_path / "cache"
    in_env = write_standard(tmp_path / "env" / TARBALL, batches)
    given = write_standard(tmp_path / "given" / TARBALL, batches)
    downloads = []
    monkeypatch.setattr(cifar10, "download_cifar10", lambda c, looked="": downloads.append(c) or c / TARBALL)

    assert find_cifar10("", cache) == cache / TARBALL and downloads == [cache]  # nothing anywhere: download
    in_cache = write_standard(cache / TARBALL, batches)
    assert find_cifar10("", cache) == in_cache
    folder = write_standard(cache, batches, as_tarball=False)
    assert find_cifar10("", cache) == folder  # the extracted folder before the tarball
    monkeypatch.setenv("IWM_CIFAR10", str(in_env))
    assert find_cifar10("", cache) == in_env
    assert find_cifar10(str(given), cache) == given
    assert len(downloads) == 1
    monkeypatch.setenv("IWM_CIFAR10", str(tmp_path / "typo.tar.gz"))
    with pytest.raises(FileNotFoundError, match=r"\$IWM_CIFAR10: '.*typo.tar.gz' does not exist"):
        find_cifar10("", cache)


def test_default_cache_is_xdg_cache_home_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "iwm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "iwm"


def torchvision_cifar10(behaviour):
    """Stands in for torchvision.datasets.CIFAR10: same url, ``behaviour(root, train, download)``."""
    class Fake:
        url = torchvision.datasets.CIFAR10.url

        def __init__(self, root, train=True, download=False):
            behaviour(root, train, download)

    return Fake


def _offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    def must_not_run(*args, **kwargs):
        raise AssertionError("downloading while offline")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", torchvision_cifar10(must_not_run))


def test_demo_offline_and_missing_stops_with_one_line(tmp_path, monkeypatch, capsys, no_env):
    _offline(monkeypatch)
    assert main(["demo", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    cache = tmp_path / "xdg" / "iwm"
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"iwm: error: CIFAR-10 not found: $IWM_CIFAR10 is not set and {cache} holds no "
                          f"{TARBALL} or cifar-10-batches-py/, and this machine is offline"), err
    assert f"put {TARBALL} (from https://www.cs.toronto.edu/~kriz/cifar.html) in {cache}" in err
    assert not (tmp_path / "run").exists()  # stopped before training


def test_failed_download_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys, tiny_overrides, no_env):
    class Connection:
        def close(self):
            pass

    def failing(root, train, download):
        (Path(root) / TARBALL).parent.mkdir(parents=True)
        (Path(root) / TARBALL).write_bytes(b"half a tarball")
        raise URLError("[Errno 104] Connection reset by peer")

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Connection())
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", torchvision_cifar10(failing))
    assert main(["pretrain", *tiny_overrides, "data.dataset=cifar10"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"iwm: CIFAR-10 not found ($IWM_CIFAR10 is not set and {tmp_path / 'cache'} holds no")
    assert f"downloading {TARBALL} (about 170 MB)" in err[0]
    assert err[1].startswith("iwm: error: CIFAR-10 not found") and "the download failed (<urlopen error" in err[1]
    assert len(err) == 2
    assert not list((tmp_path / "cache").iterdir())  # no half-downloaded file taken for the data later


def test_download_lands_in_the_cache(tmp_path, batches, monkeypatch, no_env):
    def fake(root, train, download):  # what torchvision leaves: the tarball and its extraction
        assert download and train
        write_standard(Path(root) / TARBALL, batches)
        write_standard(Path(root), batches, as_tarball=False)

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: type("C", (), {"close": lambda self: None})())
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", torchvision_cifar10(fake))
    arrays = load_cifar10("", tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.suffix != ".npz") == [TARBALL]
    assert np.array_equal(arrays["test_x"], batches["test_batch"][0])


def test_standard_tarball_trains_and_evaluates(tmp_path, batches, tiny_overrides, capsys, no_env):
    tarball = write_standard(tmp_path / TARBALL, batches)
    run = tmp_path / "run"
    assert main(["pretrain", "--config", "cifar10_equi", *tiny_overrides, "data.dataset=cifar10",
                 f"data.path={tarball}", "optim.max_steps=2"]) == 0
    assert (run / "checkpoints" / "latest.pt").is_file()
    capsys.readouterr()
    assert main(["eval", "knn", str(run), "eval.knn_train=0"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["bank"] == 20 and res["test"] == 6 and 0 <= res["top1"] <= 1


def test_demo_reports_pixels_random_init_and_the_shipped_reference_model(tmp_path, batches, tiny_overrides, capsys,
                                                                          no_env, monkeypatch):
    from iwm import registry
    from iwm.api import load, pretrained
    from iwm.demo import run_demo
    from iwm.eval import knn_eval

    tarball = write_standard(tmp_path / TARBALL, batches)
    overrides = [o for o in tiny_overrides if not o.startswith("run.out_dir")] + ["data.dataset=cifar10",
                                                                                 "eval.knn_train=0"]
    monkeypatch.setenv(registry.ROOT_ENV, str(tmp_path / "weights"))
    report = run_demo(str(tarball), str(tmp_path / "none"), steps=2, overrides=overrides)
    assert report["reference_model"] is None  # nothing shipped: said, not failed
    assert "not in this install (pretrained:cifar10_equi)" in capsys.readouterr().out

    # a model shipped under the reference name: the demo measures it now, by its own protocol
    registry.ship(load(tmp_path / "none"), "cifar10_equi")
    report = run_demo(str(tarball), str(tmp_path / "fresh"), steps=2, overrides=[*overrides, "run.seed=1"])
    cfg = load(tmp_path / "fresh").config
    expected = knn_eval(pretrained("cifar10_equi").target_encoder, cfg)["top1"]
    assert report["reference_model"] == {"name": "cifar10_equi", "step": 2, "knn_top1": expected}
    out = capsys.readouterr().out
    (run,) = report["runs"]
    assert f"shipped reference model          {100 * expected:.2f} %   (pretrained:cifar10_equi: " in out
    assert f"raw pixels (the bar to beat)     {100 * run['knn_top1_raw_pixels']:.2f} %" in out
    assert json.loads((tmp_path / "fresh" / "demo_report.json").read_text())["knn_top1_pretrained"] == \
        run["knn_top1_pretrained"]


def test_demo_on_two_seeds_writes_a_page_that_the_readme_quotes(tmp_path, batches, tiny_overrides, capsys, no_env,
                                                                 monkeypatch):
    from iwm import registry
    from iwm.api import load
    from iwm.cli import main
    from iwm.demo import PAGE_TABLE, README_QUOTE, demo_table, shortfall
    from iwm.studies.page import marked

    tarball = write_standard(tmp_path / TARBALL, batches)
    overrides = [o for o in tiny_overrides if not o.startswith("run.out_dir")] + ["data.dataset=cifar10",
                                                                                 "eval.knn_train=0"]
    monkeypatch.setenv(registry.ROOT_ENV, str(tmp_path / "weights"))
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_QUOTE[0]}\nstale\n{README_QUOTE[1]}\nafter\n")
    page = tmp_path / "docs" / "demo.md"
    assert main(["demo", "--data", str(tarball), "--out", str(tmp_path / "paged"), "--steps", "2", "--seeds", "2",
                 "--page", str(page), "--readme", str(readme), *overrides]) == 0
    report = json.loads(page.with_suffix(".json").read_text())
    runs = report["runs"]
    # each seed is its own run, trained from its own initialisation
    assert [r["seed"] for r in runs] == [0, 1]
    assert [load(tmp_path / "paged" / f"seed-{s}").config.run.seed for s in (0, 1)] == [0, 1]
    assert runs[0]["knn_top1_random_init"] != runs[1]["knn_top1_random_init"] or \
        runs[0]["final_loss"] != runs[1]["final_loss"]
    text = page.read_text()
    assert marked(text, *PAGE_TABLE) == demo_table(report) == marked(readme.read_text(), *README_QUOTE)
    trained = " / ".join(f"{100 * r['knn_top1_pretrained']:.2f} %" for r in runs)
    assert f"| pretrained, EMA target encoder | {trained} |" in text
    assert "seed 0 / 1)" in text and "| seed 1: 2 steps of" in text
    assert f"- command: `iwm demo --steps 2 --seeds 2 --page {page} {' '.join(overrides)}`" in text
    assert readme.read_text().startswith("before\n") and readme.read_text().endswith("after\n")
    assert shortfall(report) in text
    assert main(["demo", "--seeds", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("--seeds must be at least 1, got 0")


def test_the_demo_page_says_how_far_each_seed_is_from_the_pixels():
    from iwm.demo import shortfall

    def report(*trained):
        return {"runs": [{"knn_top1_pretrained": t, "knn_top1_raw_pixels": 0.39} for t in trained]}

    assert "under the raw pixels, by 8.00 / 9.00 points" in shortfall(report(0.31, 0.30))
    assert "beats the raw pixels, by 2.00 points" in shortfall(report(0.41))
    assert "on some seeds, not on all" in shortfall(report(0.41, 0.30))
