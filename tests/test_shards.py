"""Training from WebDataset shards: packed by `iwm data pack`, streamed by every process and loader
worker without a sample read twice, resumed exactly after a kill, and bad input met with a count
or one line. Each image is one solid colour that encodes its index, so a view (any crop of it)
says which sample it is."""

import json
import signal
import sys
import tarfile

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import TINY
from iwm import config
from iwm.cli import main
from iwm.data import build_dataset, get_format
from iwm.train import Trainer
from test_reliability import _cli, _losses, _wait_for

pytestmark = pytest.mark.usefixtures("one_thread")
wds = pytest.importorskip("webdataset")


def solid_folder(root, train=48, val=8, classes=3):
    """train/ and val/ of class folders; image i is the colour (i % 256, i // 256, 9)."""
    for split, n, first in (("train", train, 0), ("val", val, train)):
        for i in range(first, first + n):
            d = root / split / f"class{i % classes}"
            d.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (i % 256, i // 256, 9)).save(d / f"{i:05d}.png")
    return root


def ids(views):
    return (views[:, 0, 0, 0].long() + 256 * views[:, 1, 0, 0].long()).tolist()


def pack(tmp_path, shard_size=4, **kw):
    out = tmp_path / "shards"
    assert main(["data", "pack", str(solid_folder(tmp_path / "images", **kw)), "--out", str(out), "--shard-size",
                 str(shard_size), "--no-progress"]) == 0
    return out


def data_cfg(path, *more):
    return config.from_dict(None, TINY + ["data.dataset=webdataset", f"data.path={path}", *more]).data


def epoch(stream, epoch_=0, start=0):
    stream.set_epoch(epoch_, start)
    workers = stream.per_rank if stream.per_rank > 1 else 0
    # a worker that never answers fails the test, not the whole suite
    loader = DataLoader(stream, batch_size=None, num_workers=workers, timeout=300 if workers else 0)
    return [b for b in loader]


def test_pack_writes_each_split_as_shards_with_an_index(tmp_path):
    out = pack(tmp_path, shard_size=5)
    index = json.loads((out / "index.json").read_text())
    assert index["splits"] == {"train": 48, "val": 8} and index["classes"] == ["class0", "class1", "class2"]
    assert sorted(p.name for p in out.glob("*.tar")) == [*(f"train-{i:06d}.tar" for i in range(10)),
                                                         "val-000000.tar", "val-000001.tar"]
    assert index["shards"]["train-000009.tar"] == 3 and sum(index["shards"].values()) == 56
    with tarfile.open(out / "train-000000.tar") as tar:
        names = tar.getnames()
    assert names[:2] == ["00000000.cls", "00000000.png"]  # webdataset's layout, written in a seeded order
    held_out = build_dataset(data_cfg(out), 0, "test")
    assert sorted(ids(torch.stack([held_out[i][0] for i in range(len(held_out))]))) == list(range(48, 56))
    assert sorted(held_out.labels.tolist()) == sorted(i % 3 for i in range(48, 56))


@pytest.mark.parametrize("world,workers", [(2, 2), (1, 3)])
def test_processes_and_workers_read_each_sample_at_most_once_an_epoch(tmp_path, world, workers):
    out = pack(tmp_path, shard_size=4)  # 12 train shards
    seen, steps = [], set()
    for rank in range(world):
        stream = get_format("webdataset").stream(data_cfg(out, f"data.num_workers={workers}"), 0, rank, world)
        batches = epoch(stream)
        assert len(batches) == stream.batches_per_epoch
        steps.add(len(batches))
        seen += [i for views, labels, bad in batches for i in ids(views)]
        assert all(bad == 0 for _, _, bad in batches)
        assert all((labels == torch.tensor(ids(views)) % 3).all() for views, labels, _ in batches)
    assert len(steps) == 1  # every process makes the same number of steps
    assert len(seen) == len(set(seen)) == 48 - stream.left_out
    assert set(seen) <= set(range(48))
    nxt = [i for views, _, _ in epoch(stream, 1) for i in ids(views)]
    assert nxt != seen[-len(nxt):]  # a new order every epoch


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_a_stream_started_mid_epoch_gives_the_batches_an_uninterrupted_one_gives(tmp_path, workers):
    out = pack(tmp_path, shard_size=4)
    stream = get_format("webdataset").stream(data_cfg(out, f"data.num_workers={workers}", "data.batch_size=2"), 0, 0,
                                             1)
    whole = epoch(stream, 1)
    for start in (1, 2, 5):
        later = epoch(stream, 1, start)
        assert len(later) == len(whole) - start
        assert all(torch.equal(a[0], b[0]) for a, b in zip(later, whole[start:]))


def test_sigkill_then_resume_from_shards_is_bitwise_identical(tmp_path, tiny_overrides):
    out = pack(tmp_path, shard_size=4)
    base = [o for o in tiny_overrides if not o.startswith("run.out_dir")]
    # 8 steps an epoch: the kill lands mid-epoch, at a step that is not a multiple of the workers
    base += ["data.dataset=webdataset", f"data.path={out}", "data.num_workers=2", "data.batch_size=4"]
    killed_and_resumed_matches_straight(tmp_path, base)


def killed_and_resumed_matches_straight(tmp_path, base, steps=20, kill_after=9):
    """Train ``base`` straight, and again killed with SIGKILL after the checkpoint of step
    ``kill_after`` (mid-epoch) and started again: the losses must be the same floats."""
    base = [*base, f"optim.max_steps={steps}", "run.ckpt_every=3"]
    straight = tmp_path / "straight"
    assert _cli(base + [f"run.out_dir={straight}"]).wait() == 0
    killed = tmp_path / "killed"
    proc = _cli(base + [f"run.out_dir={killed}"])
    _wait_for((killed / "checkpoints" / f"step-{kill_after:08d}.pt").exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(_losses(killed)) < steps, "the run finished before it was killed; the test proves nothing"
    again = _cli(base + [f"run.out_dir={killed}"])
    assert again.wait() == 0, again.stderr.read()[-2000:]
    assert _losses(killed) == _losses(straight)


# ----------------------------------------------------------------------------------------------
# bad input


def write_shard(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)


def png(i):
    import io

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (i, 0, 9)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_samples_are_skipped_and_counted_in_the_log_and_metrics(tmp_path, caplog):
    shards = tmp_path / "bad"
    shards.mkdir()
    good = [{"__key__": f"{i:04d}", "png": png(i), "cls": b"1"} for i in range(13)]
    bad = [{"__key__": "b1", "jpg": b"not an image"}, {"__key__": "b2", "cls": b"0"},
           {"__key__": "b3", "png": png(200), "cls": b"cat"}]
    write_shard(shards / "train-000000.tar", good[:6] + bad + good[6:])
    write_shard(shards / "val-000000.tar", good[:4])
    cfg = config.from_dict(None, TINY + ["data.dataset=webdataset", f"data.path={shards}", "data.batch_size=4",
                                         "optim.max_steps=4", f"run.out_dir={tmp_path / 'run'}",
                                         "eval.health_bank=4", "eval.health_test=4",
                                         "eval.health_loss_batch=4", "eval.health_mrr_bank=4"])
    Trainer(cfg).fit()  # no crash
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["bad_samples"] for r in records if r["kind"] == "train"][-1] == 3  # 16 samples, one epoch, 4 steps
    said = caplog.text
    assert "b1" in said and "UnidentifiedImageError" in said
    assert "b2" in said and "no image" in said
    assert "b3" in said and "not a whole number" in said


def truncated(tmp_path, where):
    """Shards with train-000001.tar cut inside a member's bytes, or at the end of a member."""
    out = pack(tmp_path, shard_size=8, train=24)
    shard = out / "train-000001.tar"
    with tarfile.open(shard) as tar:
        third = tar.getmembers()[5]  # the image of the third sample
    cut = third.offset_data + third.size // 2 if where == "inside a member" else third.offset
    shard.write_bytes(shard.read_bytes()[:cut])
    return out, third.offset


@pytest.mark.parametrize("where", ["inside a member", "between members"])
def test_a_corrupt_shard_stops_the_run_in_one_line_naming_it_and_its_byte(tmp_path, tiny_overrides, where):
    out, header = truncated(tmp_path, where)
    proc = _cli([*tiny_overrides, "data.dataset=webdataset", f"data.path={out}", "data.batch_size=4",
                 "data.num_workers=2", "optim.max_steps=6"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("iwm: error: data.path: shard ") and "train-000001.tar is corrupt at byte " in line
    # the byte: where the broken member's header starts, or where the file ends (the same place here)
    assert int(line.split("corrupt at byte ")[1].split()[0].rstrip(":")) == header, line
    assert "Traceback" not in err and "data.bad_shards=skip" in line


def test_a_corrupt_shard_is_skipped_with_a_log_line_when_asked(tmp_path, tiny_overrides):
    out, _ = truncated(tmp_path, "inside a member")
    proc = _cli([*tiny_overrides, "data.dataset=webdataset", f"data.path={out}", "data.batch_size=4",
                 "data.bad_shards=skip", "optim.max_steps=6"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "train-000001.tar is corrupt at byte" in err and "skipped (data.bad_shards=skip)" in err
    # the one stream, short of its 24 samples, reads its shards again to fill the epoch
    assert "reads its shards again (read 2) to fill its quota" in err


@pytest.mark.parametrize("path,said", [("{here}/none-{{000..003}}.tar", "4 of its 4 shards do not exist"),
                                       ("{here}/*.tar", "names no .tar file"),
                                       ("{here}", "names no .tar file")])
def test_a_missing_or_empty_shard_pattern_is_one_line_before_any_work(tmp_path, tiny_overrides, path, said):
    run = tmp_path / "run"
    proc = _cli([*tiny_overrides, "data.dataset=webdataset", f"data.path={path.format(here=tmp_path)}"])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and said in err and len(err.strip().splitlines()) <= 2, err
    assert not (run / "checkpoints").exists()


def test_a_missing_extra_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "webdataset", None)  # as if not installed: importing it fails
    assert main(["data", "pack", str(solid_folder(tmp_path / "images", 3, 3)), "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip() == ("iwm: error: iwm data pack needs the webdataset package: "
                                               "pip install 'iwm[scale]' (or pip install webdataset)")


# trains the run of the overrides given, then reads epoch 0 again through the run's own loader and
# writes the samples each process saw (argv[1]/rank<r>.json)
READ_BACK = """
import json
import logging
import sys
from iwm import config
from iwm.cli import _leave_distributed, _setup_distributed
from iwm.train import Trainer
logging.basicConfig(level=logging.INFO)
cfg = config.load(None, sys.argv[2:])
_setup_distributed(cfg)
trainer = Trainer(cfg)
trainer.fit()
trainer.sampler.set_epoch(0, 0)
seen = [(v[:, 0, 0, 0].long() + 256 * v[:, 1, 0, 0].long()).tolist() for v, _, _ in trainer.loader]
with open(f"{sys.argv[1]}/rank{trainer.rank}.json", "w") as f:
    json.dump({"batches": seen, "steps_per_epoch": trainer.steps_per_epoch, "left_out": trainer.sampler.left_out}, f)
_leave_distributed(finished=True)
"""


def test_two_processes_under_torchrun_pretrain_from_shards_reading_disjoint_samples(tmp_path, tiny_overrides):
    from test_distributed import _torchrun, needs_gloo

    if needs_gloo.args[0]:
        pytest.skip("needs gloo")
    out = pack(tmp_path, shard_size=4)
    script = tmp_path / "read_back.py"
    script.write_text(READ_BACK)
    log = _torchrun(str(script), str(tmp_path), *tiny_overrides, "data.dataset=webdataset", f"data.path={out}",
                    "data.num_workers=2", "data.batch_size=2", "optim.max_steps=8")
    assert "DDP over 2 processes" in log and "4 streams (2 per process)" in log
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == ranks[0]["steps_per_epoch"]
    seen = [[i for b in r["batches"] for i in b] for r in ranks]
    assert not set(seen[0]) & set(seen[1])  # the ranks read disjoint samples
    assert len(seen[0] + seen[1]) == len(set(seen[0] + seen[1])) == 48 - ranks[0]["left_out"]
