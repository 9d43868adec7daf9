"""Library errors name the parameter a Python caller passed; the CLI writes it as the
flag its user typed (``oocstore.cli.common.with_flags``)."""

from __future__ import annotations

import pytest

from helpers import make_synthetic
from oocstore.cli import build_parser, main
from oocstore.cli.common import flag_names, with_flags
from oocstore.errors import UsageError
from oocstore.gs.recipe import Recipe
from oocstore.plan import check_training_plan
from oocstore.samplers.neighbor import sample_plan
from oocstore.store import Store

FLAGS = {"frames": ("--frames", True), "allow_eval_split": ("--allow-eval-split", False),
         "densify_every": ("--densify-every", True), "video": ("--video", True),
         "world_size": ("--world-size", True)}


@pytest.mark.parametrize("message,expected", [
    ("frames=0 must be at least 1", "--frames 0 must be at least 1"),
    ("or pass allow_eval_split=True to train on it", "or pass --allow-eval-split to train on it"),
    ("densify_every=-3 must be a step count >= 0", "--densify-every -3 must be a step count >= 0"),
    ("video='a b.gif' needs the orbit views", "--video a b.gif needs the orbit views"),
    ("bad (frames=0), stop", "bad (--frames 0), stop"),
    ("ends with frames=2.", "ends with --frames 2."),
    ("allow_eval_split=False cannot be typed", "allow_eval_split=False cannot be typed"),
    ("lower world_size, or pass allow_eval_split",
     "lower --world-size, or pass --allow-eval-split"),
    ("video and frames as words stay", "video and frames as words stay"),
    ("keyframes=3, plan.frames=3 and frames 3 are not the parameter",
     "keyframes=3, plan.frames=3 and frames 3 are not the parameter"),
])
def test_with_flags(message, expected):
    assert with_flags(message, FLAGS) == expected


@pytest.mark.parametrize("message", [
    "cannot read /data/batch_size=3/x: missing",
    "store /tmp/cpu_budget is not a store",
    "model file /runs/save_model/best.pt is damaged",
    "see cpu_budget.md and C:\\runs\\cpu_budget",
    "plan 'cpu_budget' and plan \"name\" are not in the store",
    "plan_name=cpu_budget is a value, not the parameter",
])
def test_with_flags_leaves_paths_and_values(message):
    """A path component, a file name, a quoted name or another parameter's value that
    happens to spell an option is part of what the user typed: left as it is."""
    flags = {**FLAGS, "batch_size": ("--batch-size", True), "cpu_budget": ("--cpu-budget", True),
             "save_model": ("--save-model", True), "name": ("--name", True)}
    assert with_flags(message, flags) == message


def test_with_flags_one_pass():
    """The value just written is not read again as a parameter name."""
    flags = {"name": ("--name", True), "cpu_budget": ("--cpu-budget", True)}
    assert with_flags("name=cpu_budget exists; lower cpu_budget.", flags) == \
        "--name cpu_budget exists; lower --cpu-budget."


def test_flag_names_are_the_commands_long_options():
    args = build_parser().parse_args(["gs-render", "SCENE", "--out", "x"])
    flags = flag_names(args.parser)
    assert flags["frames"] == ("--frames", True)
    assert flags["with_photos"] == ("--with-photos", False)
    assert flags["sh_degree"] == ("--sh-degree", True) and "scene" not in flags  # positional
    args = build_parser().parse_args(["ingest", "synthetic", "OUT"])
    assert flag_names(args.parser)["avg_degree"] == ("--avg-degree", True)


@pytest.mark.parametrize("argv, param, flag", [
    (["gs-train", "SCENE"], "randomness", "--view-randomness"),
    (["gs-render", "SCENE", "--out", "x"], "which", "--views"),
    (["ingest", "synthetic", "OUT"], "split_fractions", "--split"),
    (["ingest", "edgelist", "SRC", "OUT"], "split_fractions", "--split"),
    (["ingest", "hetero-synthetic", "OUT"], "split_fractions", "--split"),
    (["ingest", "hetero-ogb", "DIR", "OUT"], "split_fractions", "--split"),
])
def test_a_parameter_named_unlike_its_flag_is_mapped(argv, param, flag):
    """The library's parameter behind a flag whose dest is spelt otherwise."""
    flags = flag_names(build_parser().parse_args(argv).parser)
    assert flags[param] == (flag, True)
    assert with_flags(f"{param}=0.5 is refused", flags) == f"{flag} 0.5 is refused"


def test_library_messages_name_parameters_not_flags(tmp_path):
    with pytest.raises(UsageError) as err:
        Recipe(densify_every=-1)
    assert "densify_every=-1" in str(err.value) and "--" not in str(err.value)
    path = make_synthetic(tmp_path / "s", nodes=300, avg_degree=4.0)
    sample_plan(path, fanouts="2", batch_size=64, split="val", name="val")
    with Store(path) as store, pytest.raises(UsageError) as err:
        check_training_plan(store, "val")
    assert "allow_eval_split=True" in str(err.value) and "--allow" not in str(err.value)


def test_the_cli_adds_the_flag(tmp_path, capsys):
    path = make_synthetic(tmp_path / "s", nodes=300, avg_degree=4.0)
    sample_plan(path, fanouts="2", batch_size=64, split="val", name="val")
    assert main(["train", str(path), "--plan", "val", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "or pass --allow-eval-split to train on it" in err and err.count("\n") == 1
    assert "allow_eval_split" not in err


def test_every_command_knows_its_flags():
    """Every leaf command carries its parser, so its errors get their flags."""
    import argparse

    def leaves(parser, path):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, parser
        for action in subs:
            for name, sp in action.choices.items():
                yield from leaves(sp, path + [name])

    found = list(leaves(build_parser(), []))
    assert len(found) == 21  # with ingest hetero-ogb, hetero-synthetic and gs-lod build
    for path, parser in found:
        assert parser.get_default("parser") is parser, path
        assert callable(parser.get_default("func")), path
