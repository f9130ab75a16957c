"""The command line's manners: --version, defaults in every help, study pages away from docs/,
a start line that names the config, overrides and --no-progress everywhere, hf-hub: run arguments."""

import argparse
import logging

import pytest

from conftest import train_tiny
from iwm import __version__
from iwm.api import hub_repo, locate
from iwm.cli import build_parser, main, parse_args
from iwm.commands.options import DefaultsFormatter


def _commands(parser: argparse.ArgumentParser, path=()):
    """Every (command words, parser) of the command line, the groups included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    """One tiny two-step run, read by the tests that load a run."""
    return train_tiny(tmp_path_factory.mktemp("manners"))


COMMANDS = list(_commands(build_parser()))
LEAVES = [words for words, p in COMMANDS if "fn" in p._defaults]
STUDIES = [words for words in LEAVES if words[0] == "study"]


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"iwm {__version__}"


@pytest.mark.parametrize("words", [w for w, _ in COMMANDS], ids=lambda w: " ".join(w) or "iwm")
def test_every_option_help_says_its_default(words):
    parser = dict(COMMANDS)[words]
    assert parser.formatter_class is DefaultsFormatter
    formatter = parser._get_formatter()
    for action in parser._actions:
        flags = (argparse._HelpAction, argparse._VersionAction, argparse._StoreTrueAction)
        if not action.option_strings or action.required or isinstance(action, flags):
            continue
        shown = formatter._get_help_string(action) % {**vars(action), "prog": parser.prog}
        assert "default" in shown, f"iwm {' '.join(words)} {action.option_strings[0]}: {shown!r}"


def test_help_shows_defaults_and_device_help(capsys):
    with pytest.raises(SystemExit):
        main(["leverage", "probe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 2.0)" in text  # --cache-gb, whose help did not say it
    assert "--device DEVICE auto (a CUDA GPU when present" in text


@pytest.mark.parametrize("words", STUDIES, ids=" ".join)
def test_a_study_writes_no_page_into_docs_by_default(words):
    args = parse_args(build_parser(), list(words))
    assert not str(args.out).startswith("docs"), args.out
    assert not getattr(args, "readme", ""), "a study refreshes a README only when told"


def test_world_model_page_goes_under_runs(monkeypatch, tmp_path, capsys):
    from iwm.studies import world_model

    seen = {}
    monkeypatch.setattr(world_model, "run_study", lambda out, *a, **k: seen.setdefault("out", out))
    monkeypatch.chdir(tmp_path)
    assert main(["study", "world-model"]) == 0
    assert str(seen["out"]) == "runs/results/world_model.md"


def test_pretrain_without_config_says_it_uses_the_defaults(monkeypatch, caplog):
    import iwm.cli as cli

    def stop(*args):  # the start line is said before anything is built
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_setup_distributed", stop)
    with caplog.at_level(logging.INFO, logger="iwm.cli"), pytest.raises(SystemExit):
        main(["pretrain"])
    assert "config from the built-in defaults (no --config" in caplog.text
    assert "run folder runs/iwm" in caplog.text


def _run(words):
    return ["RUN"] if words[0] in ("eval", "viz", "leverage") else []


# export, ship and import-ijepa copy weights as they are, data pack copies images: no config to override
CONFIGURED = [w for w in LEAVES if w[0] not in ("export", "ship", "import-ijepa", "data")]
PROGRESS = [w for w in CONFIGURED if w[0] != "viz"]  # viz draws no bars


@pytest.mark.parametrize("words", CONFIGURED, ids=" ".join)
def test_every_command_that_reads_a_config_takes_overrides(words):
    assert parse_args(build_parser(), [*words, *_run(words), "a.b=1"]).overrides == ["a.b=1"]


@pytest.mark.parametrize("words", PROGRESS, ids=" ".join)
def test_no_progress_and_run_progress_false_say_the_same(words):
    flag = parse_args(build_parser(), [*words, *_run(words), "--no-progress"])
    assert flag.no_progress and flag.overrides[-1] == "run.progress=false"
    assert parse_args(build_parser(), [*words, *_run(words), "run.progress=false"]).no_progress


def test_leverage_probe_applies_overrides_to_the_runs_config(run_path, monkeypatch):
    from iwm.downstream import probes

    seen = {}

    def probe(run, *args, **kwargs):
        seen["config"] = run.config
        return []

    monkeypatch.setattr(probes, "run_probes", probe)
    assert main(["leverage", "probe", str(run_path), "--train-size", "8", "--test-size", "4", "--device", "cpu",
                 "eval.knn_k=3", "--no-progress"]) == 0
    assert seen["config"].eval.knn_k == 3 and seen["config"].run.progress is False


def test_an_override_of_a_trained_architecture_is_refused(run_path, capsys):
    assert main(["leverage", "probe", str(run_path), "--device", "cpu", "model.depth=12"]) == 2
    assert capsys.readouterr().err.strip().startswith("iwm: error: model.depth=12: a trained run's architecture")


@pytest.mark.parametrize("ref", ["hf:user/repo", "hf-hub:user/repo"])
def test_hf_hub_is_taken_where_hf_is(ref, monkeypatch, tmp_path):
    from iwm import sharing

    monkeypatch.setattr(sharing, "download", lambda repo: tmp_path / repo)
    assert hub_repo(ref) == "user/repo"
    assert locate(ref) == (tmp_path / "user/repo", locate("hf:user/repo")[1])


@pytest.mark.parametrize("words,online", [(["eval", "knn", "hf-hub:user/repo"], True),
                                          (["pretrain", "run.init_from=hf-hub:user/repo"], True),
                                          (["pretrain", "run.init_from=hf:user/repo"], True),
                                          (["eval", "knn", "runs/demo"], False)])
def test_the_hub_stays_reachable_only_when_a_run_comes_from_it(words, online):
    from iwm.cli import _from_hub

    assert _from_hub(words) is online
