import json

from iwm.cli import main


def test_cli_pretrains_two_steps_and_resumes(tmp_path, tiny_overrides, capsys):
    args = ["pretrain", "--config", "cifar10_equi", *tiny_overrides, "optim.max_steps=2"]
    assert main(args) == 0
    run = tmp_path / "run"
    assert (run / "checkpoints" / "latest.pt").is_file()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]
    # pointing at the same run with a longer schedule resumes from step 2
    assert main(args[:-1] + ["optim.max_steps=3"]) == 0
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["kind"] == "train"] == [1, 2, 3]
    assert [r["step"] for r in recs if r["kind"] == "health"] == [0, 2, 3]  # first, last, last again
    assert "final loss" in capsys.readouterr().out
    # kNN of the run, with the raw pixels by the same protocol beside it
    assert main(["eval", "knn", str(run), "eval.knn_train=32", "eval.knn_test=16"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 <= res["top1"] <= 1 and 0 <= res["pixels_top1"] <= 1 and (res["bank"], res["test"]) == (32, 16)


def test_cli_refuses_bad_config(tmp_path, capsys):
    assert main(["pretrain", "optim.lr=abc", f"run.out_dir={tmp_path}"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert main(["pretrain", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_demo_does_not_import_the_cli():
    # the demo and the command line used to import each other; the demo needs only the config
    import subprocess
    import sys

    code = "import sys, iwm.demo; sys.exit(1 if 'iwm.cli' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
