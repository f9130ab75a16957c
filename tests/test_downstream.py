"""The downstream protocols (iwm.downstream) on a tiny run and synthetic data, on the CPU."""

import argparse
import copy
import json
import tarfile

import pytest
import torch
import torch.nn.functional as F

import iwm
from conftest import train_tiny, make_seg_folder
from iwm import config
from iwm.commands import leverage as leverage_cli
from iwm.downstream.data import eval_set, num_classes, train_set
from iwm.downstream.feeding import encoder_input, predict_all
from iwm.downstream.finetune import PREDICTOR_LR_RATIO, PROTOCOLS, build_protocol, run_protocols, train_classifier
from iwm.downstream.heads import AttentiveClassifier, PooledHead
from iwm.downstream import loop
from iwm.downstream.loop import count_trainable, fit
from iwm.downstream.metrics import confusion, iou_per_class, mean_iou, pixel_accuracy
from iwm.downstream.multitask import (CIFAR10_TASKS, MultiTaskModel, compare_multitask, default_tasks,
                                      parse_tasks)
from iwm.downstream.probes import TokenSet, knn_probe, linear_probe, run_probes
from iwm.downstream.segdata import IGNORE, SegFolder, seg_root
from iwm.downstream.segmentation import SOURCES, build_segmenter, run_segmentation, seg_loss
from iwm.models import Predictor
from iwm.schedules import learning_rate


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    """One tiny two-step run shared by the module's tests (they only read it)."""
    return train_tiny(tmp_path_factory.mktemp("leverage"))


@pytest.fixture
def run(run_path):
    return iwm.load(run_path)


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# feeding and the training loop


@pytest.mark.parametrize("conditioning", ["none", "sequence", "feature"])
def test_prefix_path_matches_predictor_forward(conditioning):
    torch.manual_seed(0)
    pred = Predictor(grid=3, enc_dim=16, width=16, depth=1, num_heads=2, conditioning=conditioning).eval()
    tokens = torch.randn(2, 9, 16)
    idx = torch.arange(9).expand(2, 9)
    action = None if conditioning == "none" else torch.zeros(2, pred.action_dim)
    want = pred(tokens, idx, idx, action)
    assert torch.allclose(predict_all(pred, tokens), want)
    assert torch.allclose(predict_all(pred, tokens, prefix=torch.zeros(2, 0, 16)), want, atol=1e-6)
    assert not torch.allclose(predict_all(pred, tokens, prefix=torch.randn(2, 1, 16)), want, atol=1e-4)
    with pytest.raises(ValueError, match="every patch"):
        predict_all(pred, tokens[:, :5])


def record_lrs(monkeypatch) -> list[dict[int, float]]:
    """Patch the downstream optimizer so that each of its steps records {id(parameter): lr}."""
    steps: list[dict[int, float]] = []
    make = loop.make_optimizer

    def recording(*args, **kwargs):
        opt = make(*args, **kwargs)
        step = opt.step

        def recorded_step(*a, **k):
            steps.append({id(p): g["lr"] for g in opt.param_groups for p in g["params"]})
            return step(*a, **k)

        opt.step = recorded_step
        return opt

    monkeypatch.setattr(loop, "make_optimizer", recording)
    return steps


def test_downstream_schedule_is_the_pretraining_schedule(monkeypatch):
    steps = record_lrs(monkeypatch)
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    fit(head, lambda i: F.cross_entropy(head(x[i]), y[i]), lambda e: [torch.arange(4), torch.arange(4, 8)] * 2,
        epochs=5, steps_per_epoch=4, lr=0.3, weight_decay=0.0, warmup=0.25)
    o = config.OptimConfig(lr=0.3, start_lr=0.0, final_lr=0.0, warmup=0.25)
    want = [learning_rate(o, s, 20) for s in range(20)]
    assert [s[id(head.weight)] for s in steps] == want  # the same function, to the bit
    assert want[0] == 0.0 and max(want) == 0.3 and want[5] == 0.3 and want[-1] < 0.01


# ----------------------------------------------------------------------------------------------
# probes


def blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[6.0, 0, 0, 0], [0, 6.0, 0, 0], [0, 0, 6.0, 0]]).repeat(1, 4)  # 16-d
    y = torch.randint(0, 3, (n,), generator=g)
    return centers[y] + torch.randn(n, 16, generator=g) + 3.0, y  # offset: standardising matters


def test_linear_probe_separates_separable_features():
    train_f, train_y = blobs(300, 0)
    test_f, test_y = blobs(150, 1)
    res = linear_probe(train_f, train_y, test_f, test_y, epochs=30, batch_size=4096, seed=0)
    assert res["top1"] >= 0.98
    assert res["trainable_params"] == 16 * 3 + 3
    assert len(res["settings"]["sweep"]) == 9 and res["seconds"] > 0
    assert (res["settings"]["lr"], res["settings"]["weight_decay"]) in {
        (r["lr"], r["weight_decay"]) for r in res["settings"]["sweep"]}
    fixed = linear_probe(train_f, train_y, test_f, test_y, epochs=30, batch_size=64, lr=1e-2, weight_decay=0.0)
    assert fixed["settings"]["sweep"] == [] and fixed["top1"] >= 0.98  # mini-batch path, no sweep
    again = linear_probe(train_f, train_y, test_f, test_y, epochs=30, batch_size=64, lr=1e-2, weight_decay=0.0)
    assert again["top1"] == fixed["top1"]  # seeded
    knn = knn_probe(train_f, train_y, test_f, test_y, k=5)
    assert knn["top1"] >= 0.98 and knn["trainable_params"] == 0


def test_probes_run_on_a_run(run):
    train, test = train_set(run, size=32, augment=False), eval_set(run, size=16)
    rows = run_probes(run, ["linear", "attentive", "knn"], train, test, epochs=2, batch_size=16)
    assert [r["kind"] for r in rows] == ["linear", "attentive", "knn"]
    d, c = run.target_encoder.embed_dim, num_classes(train, test)
    for r in rows:
        assert set(r) == {"kind", "features", "top1", "trainable_params", "seconds", "settings"}
        assert 0.0 <= r["top1"] <= 1.0 and r["features"] == "target encoder"
    assert rows[0]["trainable_params"] == d * c + c
    assert rows[1]["trainable_params"] > d * c and rows[1]["settings"]["cached_tokens"]
    assert rows[2]["trainable_params"] == 0


def test_probes_put_the_raw_pixels_beside_the_encoder(run):
    train, test = train_set(run, size=32, augment=False), eval_set(run, size=16)
    rows = run_probes(run, ["linear", "attentive", "knn"], train, test, epochs=2, batch_size=16, pixels=True)
    assert [(r["kind"], r["features"]) for r in rows] == [
        (k, f) for k in ("linear", "attentive", "knn") for f in ("target encoder", "raw pixels")]
    s, c = run.config.data.image_size, num_classes(train, test)
    assert rows[1]["trainable_params"] == 3 * s * s * c + c  # the linear probe reads the whole image
    assert rows[3]["settings"]["num_heads"] >= 1  # attentive: pixel patches as tokens
    # kNN on the pixels is the same protocol on the flattened, normalised images
    views = lambda ds: torch.stack([ds[i][0] for i in range(len(ds))])  # noqa: E731
    labels = lambda ds: torch.tensor([ds[i][1] for i in range(len(ds))])  # noqa: E731
    flat = lambda ds: encoder_input(views(ds)).flatten(1)  # noqa: E731
    e = run.config.eval
    assert rows[5]["top1"] == knn_probe(flat(train), labels(train), flat(test), labels(test), e.knn_k,
                                        e.knn_temperature)["top1"]


def test_token_set_streams_what_it_caches(run):
    ds = eval_set(run, size=12)
    enc = run.target_encoder
    cached, streamed = TokenSet(enc, ds, cache_bytes=1e9), TokenSet(enc, ds, cache_bytes=0)
    assert cached.cached and not streamed.cached
    a = list(cached.batches(5, shuffle=False))
    b = list(streamed.batches(5, shuffle=False))
    assert [len(y) for _, y in a] == [5, 5, 2]
    for (ta, ya), (tb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.allclose(ta, tb, atol=2e-2)  # the cache is float16


# ----------------------------------------------------------------------------------------------
# finetuning protocols


def test_frozen_encoder_gets_no_gradient_and_does_not_change(run):
    model = build_protocol(run, "predictor", num_classes=4)
    enc0, pred0 = state(model.encoder), state(model.predictor)
    views = torch.stack([eval_set(run, size=4)[i][0] for i in range(4)])
    model.train()
    assert not model.encoder.training and model.predictor.training
    F.cross_entropy(model(encoder_input(views)), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())
    model.zero_grad(set_to_none=True)
    train_classifier(model, train_set(run, size=32), epochs=1, batch_size=16, lr=1e-3, weight_decay=0.05, seed=0,
                     device="cpu")
    assert same_state(enc0, state(model.encoder))
    assert not same_state(pred0, state(model.predictor))


def test_encoder_protocol_trains_the_encoder_but_not_its_positions(run):
    model = build_protocol(run, "encoder", num_classes=4)
    assert model.predictor is None and not model.encoder.pos_embed.requires_grad
    enc0 = state(model.encoder)
    train_classifier(model, train_set(run, size=32), epochs=1, batch_size=16, lr=1e-3, weight_decay=0.05, seed=0,
                     device="cpu")
    enc1 = state(model.encoder)
    assert torch.equal(enc0["pos_embed"], enc1["pos_embed"])
    assert not torch.equal(enc0["blocks.0.attn.qkv.weight"], enc1["blocks.0.attn.qkv.weight"])


def test_protocol_parameter_counts_and_control(run):
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    d, c = run.target_encoder.embed_dim, 4
    pooled = 2 * d + d * c + c  # LayerNorm + linear
    attentive = n(AttentiveClassifier(d, config.encoder_dims(run.config.model)[2], c))
    enc = n(run.target_encoder) - run.target_encoder.pos_embed.numel()
    counts = {p: count_trainable(build_protocol(run, p, c)) for p in PROTOCOLS}
    assert counts == {"predictor": n(run.predictor) + attentive, "encoder": enc + pooled,
                      "end2end": enc + n(run.predictor) + pooled, "random_predictor": n(run.predictor) + attentive}
    pretrained, control = build_protocol(run, "predictor", c), build_protocol(run, "random_predictor", c)
    w = "blocks.0.attn.qkv.weight"
    assert not torch.equal(pretrained.predictor.state_dict()[w], control.predictor.state_dict()[w])
    assert same_state(pretrained.head.state_dict(), control.head.state_dict())  # only the predictor differs
    with pytest.raises(ValueError, match="unknown protocol"):
        build_protocol(run, "linear", c)
    with pytest.raises(ValueError, match="predictor_lr_ratio"):
        build_protocol(run, "predictor", c, predictor_lr_ratio=0.0)


def test_predictor_finetuning_heads_are_attentive_over_the_predictor_tokens(run):
    x = encoder_input(torch.stack([eval_set(run, size=2)[i][0] for i in range(2)]))
    for p in ("predictor", "random_predictor"):
        model = build_protocol(run, p, num_classes=4).eval()
        assert isinstance(model.head, AttentiveClassifier)
        with torch.no_grad():
            tokens = predict_all(model.predictor, model.encoder.tokens(x))
            assert torch.equal(model(x), model.head(tokens))
    assert all(isinstance(build_protocol(run, p, 4).head, PooledHead) for p in ("encoder", "end2end"))


def test_pretrained_predictor_trains_at_a_tenth_of_the_random_predictors_lr(run, monkeypatch):
    assert PREDICTOR_LR_RATIO == 0.1  # the paper's value is the default
    steps = record_lrs(monkeypatch)
    lrs = {}
    for p in ("predictor", "random_predictor"):
        model = build_protocol(run, p, num_classes=4)
        steps.clear()
        train_classifier(model, train_set(run, size=32), epochs=3, batch_size=8, lr=1e-3, weight_decay=0.05,
                         seed=0, device="cpu")
        part = lambda m: [sorted({s[id(q)] for q in m.parameters()}) for s in steps]  # noqa: E731
        lrs[p] = {"predictor": part(model.predictor), "head": part(model.head)}
    total = 3 * 4
    assert len(lrs["predictor"]["head"]) == total
    schedule = [s[0] for s in lrs["random_predictor"]["predictor"]]
    assert len(set(schedule)) > total // 2 and max(schedule) == pytest.approx(1e-3)  # warm-up and decay
    for k in range(total):  # one lr per part and step; the pretrained predictor's at a tenth
        assert lrs["random_predictor"]["predictor"][k] == lrs["random_predictor"]["head"][k] == [schedule[k]]
        assert lrs["predictor"]["head"][k] == [schedule[k]]
        assert lrs["predictor"]["predictor"][k] == [0.1 * schedule[k]]


def test_all_protocols_run_side_by_side_and_leave_the_run_alone(run):
    before = [state(m) for m in (run.encoder, run.target_encoder, run.predictor)]
    rows = run_protocols(run, list(PROTOCOLS), train_set(run, size=32), eval_set(run, size=16), epochs=1,
                         batch_size=16, seed=0)
    assert [r["protocol"] for r in rows] == list(PROTOCOLS)
    for r in rows:
        assert 0.0 <= r["top1"] <= 1.0 and r["seconds_per_epoch"] > 0 and r["trainable_params"] > 0
        assert r["settings"]["steps"] == 2
    assert [r["settings"]["head"] for r in rows] == ["attentive", "pooled", "pooled", "attentive"]
    lr = rows[0]["settings"]["lr"]
    assert [r["settings"]["predictor_lr"] for r in rows] == [pytest.approx(0.1 * lr), None, lr, lr]
    assert all(same_state(b, state(m)) for b, m in zip(before, (run.encoder, run.target_encoder, run.predictor)))
    again = run_protocols(run, ["predictor"], train_set(run, size=32), eval_set(run, size=16), epochs=1,
                          batch_size=16, seed=0)
    assert again[0]["final_loss"] == pytest.approx(rows[0]["final_loss"])  # seeded


# ----------------------------------------------------------------------------------------------
# multi-task tuning


def test_tasks_are_data_and_checked():
    tasks = parse_tasks(CIFAR10_TASKS, 10)
    assert [t.num_classes for t in tasks] == [10, 2]
    y = torch.arange(10)  # airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck
    assert tasks[1].targets(y).tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    assert torch.equal(tasks[0].targets(y), y)
    with pytest.raises(ValueError, match=r"tasks\[1\].labels"):
        parse_tasks([{"name": "a"}, {"name": "b", "labels": [0, 1]}], 10)
    with pytest.raises(ValueError, match="used twice"):
        parse_tasks([{"name": "a"}, {"name": "a"}], 10)
    with pytest.raises(ValueError, match="unknown key"):
        parse_tasks([{"name": "a", "label": [0]}], 10)


def test_task_tokens_route_each_task_to_its_head(run):
    tasks = parse_tasks(default_tasks(4, "synthetic"), 4)
    torch.manual_seed(0)
    model = MultiTaskModel(copy.deepcopy(run.target_encoder), copy.deepcopy(run.predictor), tasks).eval()
    tokens = torch.randn(3, run.target_encoder.num_patches, run.target_encoder.embed_dim)
    out0, out1 = model.logits(tokens, 0), model.logits(tokens, 1)
    assert out0.shape == (3, 4) and out1.shape == (3, 2)
    with torch.no_grad():
        model.heads[0].fc.weight.add_(torch.randn_like(model.heads[0].fc.weight))
    assert not torch.allclose(model.logits(tokens, 0), out0) and torch.equal(model.logits(tokens, 1), out1)
    with torch.no_grad():
        # random, not constant: a constant shift of a token vanishes in the blocks' LayerNorm
        model.task_tokens[0].add_(torch.randn_like(model.task_tokens[0]))
    assert torch.equal(model.logits(tokens, 1), out1)
    with torch.no_grad():
        model.task_tokens[1].add_(torch.randn_like(model.task_tokens[1]))
    assert not torch.allclose(model.logits(tokens, 1), out1)
    # gradients of a task-1 loss reach task 1's token and head only
    model.logits(tokens, 1).sum().backward()
    assert all(p.grad is None for p in model.heads[0].parameters())
    assert all(p.grad is not None for p in model.heads[1].parameters())
    assert model.task_tokens.grad[0].abs().sum() == 0 and model.task_tokens.grad[1].abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())


def test_multitask_loss_splits_the_batch_evenly(run):
    tasks = parse_tasks(default_tasks(4, "synthetic"), 4)
    model = MultiTaskModel(copy.deepcopy(run.target_encoder), copy.deepcopy(run.predictor), tasks).eval()
    tokens = torch.randn(5, run.target_encoder.num_patches, run.target_encoder.embed_dim)
    y = torch.tensor([0, 1, 2, 3, 3])
    with torch.no_grad():  # 5 samples, 2 tasks: the first 3 to task 0, the last 2 to task 1
        want = (F.cross_entropy(model.logits(tokens[:3], 0), y[:3])
                + F.cross_entropy(model.logits(tokens[3:], 1), torch.tensor([1, 1])))
        assert model.loss(tokens, y).item() == pytest.approx(want.item(), rel=1e-5)


def test_multitask_vs_single_task_runs(run):
    enc0 = state(run.target_encoder)
    tasks = parse_tasks(default_tasks(4, "synthetic"), 4)
    res = compare_multitask(run, tasks, train_set(run, size=32), eval_set(run, size=16), epochs=1, batch_size=16)
    assert [r["task"] for r in res["rows"]] == ["classes", "first_half_vs_rest"]
    assert all(0 <= r["multi_top1"] <= 1 and 0 <= r["single_top1"] <= 1 for r in res["rows"])
    one = res["multi"]["trainable_params"]
    assert res["single_total"]["trainable_params"] > one  # one predictor per task
    assert same_state(enc0, state(run.target_encoder))


# ----------------------------------------------------------------------------------------------
# segmentation: metrics


def test_miou_and_pixel_accuracy_by_hand():
    # classes 0..3; class 3 appears in neither truth nor prediction -> left out of the mean
    truth = torch.tensor([[0, 0, 1, 1],
                          [0, 2, 1, IGNORE],
                          [2, 2, IGNORE, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 1],
                         [0, 2, 2, 3],  # under an ignore pixel: class 3 still counts as absent
                         [2, 0, 1, 1]])
    # labelled pixels: 9. class 0: truth {a,b,e}, pred {a,e,j} -> TP 2 (a,e), FN 1 (b), FP 1 (j): 2/4
    # class 1: truth {c,d,g}, pred {b,c,d} -> TP 2, FN 1 (g), FP 1 (b): 2/4
    # class 2: truth {f,i,j}, pred {f,g,i} -> TP 2, FN 1 (j), FP 1 (g): 2/4
    cm = confusion(pred, truth, 4)
    assert cm.sum() == 9
    iou = iou_per_class(cm)
    assert iou[:3].tolist() == [0.5, 0.5, 0.5] and torch.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx(0.5)
    assert pixel_accuracy(cm) == pytest.approx(6 / 9)
    # a class only predicted (never true) counts with IoU 0
    cm2 = confusion(torch.tensor([0, 3]), torch.tensor([0, 0]), 4)
    assert mean_iou(cm2) == pytest.approx((0.5 + 0.0) / 2) and pixel_accuracy(cm2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="outside"):
        confusion(torch.tensor([0]), torch.tensor([7]), 4)


def test_seg_loss_ignores_void_pixels():
    logits = torch.randn(1, 3, 2, 2)
    mask = torch.full((1, 2, 2), IGNORE)
    assert seg_loss(logits, mask).item() == 0.0
    mask[0, 0, 0] = 1
    assert seg_loss(logits, mask).item() == pytest.approx(F.cross_entropy(logits[:, :, 0, 0], torch.tensor([1])).item())


# ----------------------------------------------------------------------------------------------
# segmentation: data and protocol


def test_segmentation_without_data_says_how_to_give_it():
    with pytest.raises(FileNotFoundError, match=r"none given; pass --seg-data or set \$IWM_CAMVID"):
        seg_root("")


def test_seg_reader_extracts_a_tarball_once_and_crops_jointly(tmp_path):
    folder = make_seg_folder(tmp_path / "wrap" / "tiny-seg")
    tgz = tmp_path / "tiny-seg.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname="tiny-seg")
    root = seg_root(tgz, tmp_path / "cache")
    assert (root / "images" / "training").is_dir() and root.parent.parent == tmp_path / "cache"
    stamp = (root / "images" / "training" / "training_0000.jpg").stat().st_mtime_ns
    assert seg_root(tgz, tmp_path / "cache") == root  # second call: the extraction is reused
    assert (root / "images" / "training" / "training_0000.jpg").stat().st_mtime_ns == stamp
    assert seg_root(folder) == folder and seg_root(folder.parent) == folder  # a folder, or its only child

    train = SegFolder(root, "training", 16, train=True, scale=(0.3, 1.0), seed=0)
    assert len(train) == 3 and train.num_classes() == 3
    agree = total = 0
    for epoch in range(4):
        train.set_epoch(epoch)
        for i in range(len(train)):
            img, mask = train[i]
            assert img.shape == (3, 16, 16) and img.dtype == torch.uint8 and mask.shape == (16, 16)
            assert set(mask.unique().tolist()) <= {0, 1, 2, IGNORE}  # nearest: no blended ids
            r, b = img[0].int(), img[2].int()
            agree += ((mask == 0) & (r > b)).sum().item() + ((mask == 1) & (b > r)).sum().item()
            total += ((mask == 0) | (mask == 1)).sum().item()
    assert agree / total > 0.9  # the mask followed the image through crop and flip

    val = SegFolder(root, "validation", 16, train=False)
    img, mask = val[0]
    assert img.shape == (3, 16, 16) and mask.shape == (12, 16) and (mask[0] == IGNORE).all()
    with pytest.raises(FileNotFoundError, match="test"):
        SegFolder(root, "test", 16)


def test_seg_reader_refuses_images_without_labels(tmp_path):
    folder = make_seg_folder(tmp_path / "d", counts=(("training", 2),))
    (folder / "annotations" / "training" / "training_0001.png").unlink()
    with pytest.raises(FileNotFoundError, match="no label PNG"):
        SegFolder(folder, "training", 16)


def test_segmentation_runs_on_every_token_source(run, tmp_path):
    folder = make_seg_folder(tmp_path / "seg")
    train, val = SegFolder(folder, "training", 16, seed=0), SegFolder(folder, "validation", 16, train=False)
    pred0 = state(run.predictor)
    rows = run_segmentation(run, list(SOURCES), train, val, num_classes=3, epochs=1, batch_size=2, kernel_size=3)
    assert [r["source"] for r in rows] == list(SOURCES)
    for r in rows:
        assert 0.0 <= r["miou"] <= 1.0 and 0.0 <= r["pixel_acc"] <= 1.0
        assert sum(map(sum, r["confusion"])) == 2 * 11 * 16  # original-size labels, void row left out
    head = lambda m: count_trainable(m.head)  # noqa: E731
    frozen = build_segmenter(run, "frozen_predictor", 3)
    assert count_trainable(frozen) == head(frozen)
    tuned = build_segmenter(run, "predictor", 3)
    assert count_trainable(tuned) == head(tuned) + sum(p.numel() for p in run.predictor.parameters())
    assert same_state(pred0, state(run.predictor))


# ----------------------------------------------------------------------------------------------
# command line


def leverage(argv):
    ap = argparse.ArgumentParser(prog="iwm")
    leverage_cli.add_cli(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(["leverage", *argv])
    return args.fn(args)


def test_cli_commands_print_tables_and_write_json(run_path, tmp_path, capsys):
    small = ["--epochs", "1", "--batch-size", "16", "--train-size", "32", "--test-size", "16", "--device", "cpu",
             "--no-progress"]
    assert leverage(["probe", str(run_path), "--kind", "linear", "--kind", "knn", *small]) == 0
    assert leverage(["finetune", str(run_path), "--protocol", "predictor", "--protocol", "random_predictor",
                     *small]) == 0
    assert leverage(["multitask", str(run_path), *small]) == 0
    folder = make_seg_folder(tmp_path / "seg")
    assert leverage(["segment", str(run_path), "--seg-data", str(folder), "--source", "encoder",
                     *small[:2], "--batch-size", "2", "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| probe" in out and "| protocol" in out and "multi-task top-1" in out and "mIoU" in out
    probe = json.loads((run_path / "leverage_probe.json").read_text())
    assert [(r["kind"], r["features"]) for r in probe["rows"]] == [
        ("linear", "target encoder"), ("linear", "raw pixels"), ("knn", "target encoder"), ("knn", "raw pixels")]
    fin = json.loads((run_path / "leverage_finetune.json").read_text())
    assert [r["protocol"] for r in fin["rows"]] == ["predictor", "random_predictor"]
    assert fin["rows"][0]["settings"]["predictor_lr"] == pytest.approx(0.1 * fin["rows"][0]["settings"]["lr"])
    assert json.loads((run_path / "leverage_multitask.json").read_text())["rows"]
    seg = json.loads((run_path / "leverage_segment.json").read_text())
    assert seg["rows"][0]["settings"]["num_classes"] == 3
    assert leverage(["finetune", str(run_path), "--epochs", "0", "--device", "cpu", "--no-progress"]) == 2
    assert "epochs" in capsys.readouterr().err
    assert leverage(["finetune", str(run_path), "--predictor-lr-ratio", "-1", *small]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "iwm: error: --predictor-lr-ratio must be > 0 (the paper's is 0.1), got -1"
