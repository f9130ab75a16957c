"""Dotted key=value overrides are taken wherever they stand on the command line, after flags too."""

import json

import pytest

from conftest import train_tiny
from iwm.cli import build_parser, main, parse_args


@pytest.mark.parametrize("argv,overrides", [
    (["pretrain", "a.b=1", "--config", "cifar10_equi", "c.d=2", "e.f=3"], ["a.b=1", "c.d=2", "e.f=3"]),
    (["eval", "knn", "RUN", "--no-pixels", "eval.knn_train=500"], ["eval.knn_train=500"]),
    (["eval", "knn", "RUN", "eval.knn_k=5", "--device", "cpu", "eval.knn_train=500", "--no-pixels", "eval.knn_k=7"],
     ["eval.knn_k=5", "eval.knn_train=500", "eval.knn_k=7"]),  # in command-line order: the last one wins
    (["demo", "--steps", "3", "a.b=1", "--out", "somewhere", "c.d=2"], ["a.b=1", "c.d=2"]),
    (["study", "recipe", "--steps", "3", "a.b=1", "--only", "x", "c.d=2"], ["a.b=1", "c.d=2"]),
])
def test_overrides_after_flags_are_collected_in_order(argv, overrides):
    assert parse_args(build_parser(), argv).overrides == overrides


@pytest.mark.parametrize("argv,unknown", [
    (["eval", "knn", "RUN", "--no-pixles", "eval.knn_k=5"], "--no-pixles"),  # a mistyped flag
    (["export", "RUN", "OUT", "a.b=1"], "a.b=1"),  # a command without overrides takes none
])
def test_other_extra_words_are_still_refused(argv, unknown, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(build_parser(), argv)
    assert stop.value.code == 2
    assert f"iwm: error: unrecognized arguments: {unknown}" in capsys.readouterr().err


def test_knn_takes_overrides_after_no_pixels(tmp_path, capsys):
    run = train_tiny(tmp_path)
    assert main(["eval", "knn", str(run), "--no-pixels", "eval.knn_train=32", "--device", "cpu",
                 "eval.knn_test=16"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["bank"], res["test"]) == (32, 16) and "pixels_top1" not in res
