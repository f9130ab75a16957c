import json

from iwm.cli import main


def test_cli_pretrains_two_steps_and_resumes(tmp_path, tiny_overrides, capsys):
    args = ["pretrain", "--config", "cifar10_equi", *tiny_overrides, "optim.max_steps=2"]
    assert main(args) == 0
    run = tmp_path / "run"
    assert (run / "checkpoints" / "latest.pt").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # pointing at the same run with a longer schedule resumes from step 2
    assert main(args[:-1] + ["optim.max_steps=3"]) == 0
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert "final loss" in capsys.readouterr().out


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
