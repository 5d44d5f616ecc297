"""An API that guides: a keyword a function does not take is named with the one it does; one string or one int where
a sequence is expected is ONE element; progress bars draw only on a terminal; ``--out`` creates its missing parents
(never inside an input model directory, never leaving half-written output) — on the tiny model."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.cli_helpers import run_cli, tree_digest
from unpact_mech import InputError, load_model
from unpact_mech.utils import one_or_many, progress_bar

ROOT = Path(__file__).resolve().parents[2]


# -- keywords a function does not take ----------------------------------------------------------------------------
def test_unlearn_names_the_keyword_that_takes_a_hyperparameter(synthetic_items):
    from unpact_mech.unlearning import unlearn

    model = load_model("tiny")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(InputError) as err:
        unlearn(model, synthetic_items, "npo_gdr", alpha=2, progress=False)
    assert "hyperparameters={'alpha': 2}" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match=r"alpha: not a hyperparameter of ga \(it takes: none\)"):
        unlearn(model, synthetic_items, "ga", alpha=2, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # refused before any update
    # the keyword it names works
    res = unlearn(model, synthetic_items, "npo_gdr", hyperparameters={"alpha": 2}, steps=1, lr=1e-5, evaluate=False)
    assert res.method.hp["alpha"] == 2


# -- one value is one element -------------------------------------------------------------------------------------
def test_one_or_many():
    assert one_or_many(None) is None
    assert one_or_many("focus") == ("focus",) and one_or_many(b"ab") == (b"ab",)
    assert one_or_many(3) == (3,) and one_or_many(2.5) == (2.5,)
    assert one_or_many([1, 2]) == (1, 2) and one_or_many(range(3)) == (0, 1, 2) and one_or_many(()) == ()
    obj = object()
    assert one_or_many(obj) == (obj,)


def test_recovery_and_attack_options_take_one_value(original):
    from unpact_mech.attacks import get_attack, resolve_attacks
    from unpact_mech.attacks.activation import Pasta, Scale
    from unpact_mech.recovery import RecoveryConfig

    cfg = RecoveryConfig(attacks="focus")
    assert cfg.attacks == ("focus",)
    assert [a.label for a in resolve_attacks(cfg.attacks, original)] == ["focus"]
    one = get_attack("scale").configure(layers=1).resolve(original)
    assert one.layers == (1,) and one.label == "scale[1]x2.0"
    assert one == get_attack("scale:layers=1").resolve(original)  # the spec string says the same
    assert Scale(layers=0).resolve(original).layers == (0,)
    pasta = Pasta(layers=1, heads=0).resolve(original)
    assert pasta.layers == (1,) and pasta.heads == (0,)
    with pytest.raises(InputError, match="layer 7 out of range"):
        get_attack("patch").configure(layers=7).resolve(original)


def test_sweep_config_takes_one_value(original, ga_unlearned, synthetic_items):
    from unpact_mech.attacks.keywords import data_keywords
    from unpact_mech.recovery.ablation import SweepConfig, layer_sweep
    from unpact_mech.scoring.tokens import encode_item

    cfg = SweepConfig(interventions="patch", groups="keywords", modes="single", layers=1)
    assert (cfg.interventions, cfg.groups, cfg.modes, cfg.layers) == (("patch",), ("keywords",), ("single",), (1,))
    forget = [it for it in synthetic_items if it.split == "forget"][:3]
    kws = [data_keywords(it, encode_item(original, it)) for it in forget]
    sweep = layer_sweep(original, ga_unlearned, forget, kws, cfg, progress=False)
    assert len(sweep) == 1 and sweep.iloc[0][["intervention", "group", "mode", "layer"]].tolist() == [
        "patch",
        "keywords",
        "single",
        1,
    ]


def test_demo_config_takes_one_value():
    from unpact_mech.demo import DemoConfig

    cfg = DemoConfig(model="tiny", methods="ga_gdr", strategies="focus", interventions="patch:layers=1")
    assert (cfg.methods, cfg.strategies, cfg.interventions) == (("ga_gdr",), ("focus",), ("patch:layers=1",))
    cfg.validate()  # a name, not its letters


def test_attribution_options_take_one_value(original, synthetic_items):
    from unpact_mech.attribution.run import AttributionConfig, attribute_items

    item = synthetic_items[:1]
    att = attribute_items(original, item, AttributionConfig(method="attention", options={"layers": 1}))
    assert att.config.method_object().layers == (1,)
    assert set(att.frame["layer"].dropna().astype(int)) == {1}
    hook = "blocks.0.hook_resid_post"
    gxi = attribute_items(original, item, AttributionConfig(method="grad_x_input", options={"hooks": hook}))
    assert list(gxi.extras[0].scores) == [hook]
    with pytest.raises(InputError, match="layers must be a list of layer indices"):
        AttributionConfig(method="attention", options={"layers": ["a"]}).validate()


def test_forward_caches_one_hook_name(original):
    ids = original.to_tokens("What is the capital of Zorblat?")
    out = original.forward(ids, cache="blocks.0.hook_resid_post")
    assert list(out.cache) == ["blocks.0.hook_resid_post"]


# -- progress bars ------------------------------------------------------------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_draw_only_on_a_terminal():
    assert progress_bar(range(3), file=io.StringIO()).disable  # a pipe or a log file: no \r frames
    assert not progress_bar(range(3), file=_Terminal()).disable
    assert progress_bar(range(3), enabled=False, file=_Terminal()).disable  # --quiet


def test_every_bar_goes_through_the_one_helper():
    """No ``tqdm(`` outside unpact_mech/utils.py: every bar follows the terminal rule."""
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("unpact_mech", "experiments", "scripts")
        for p in (ROOT / folder).rglob("*.py")
        if p.name != "utils.py" and re.search(r"\btqdm\(", p.read_text())
    ]
    assert offenders == []


def test_a_command_without_quiet_writes_no_carriage_returns_to_a_pipe(tmp_path, capsys):
    code, stdout, err = run_cli(
        ["evaluate", "--model", "tiny", "--data", "builtin:synthetic_facts", "--out", tmp_path / "ev"], capsys
    )
    assert code == 0, err
    assert "\r" not in err and "\r" not in stdout


# -- --out ----------------------------------------------------------------------------------------------------------
def test_out_creates_missing_parents(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(
        ["evaluate", "--model", "tiny", "--data", "builtin:synthetic_facts", "--quiet", "--out", "a/b/c"], capsys
    )
    assert code == 0, err
    assert (tmp_path / "a/b/c/summary.json").is_file() and sorted(p.name for p in (tmp_path / "a/b").iterdir()) == ["c"]
    # bad input: nothing is created, not even the parents
    code, _, err = run_cli(["evaluate", "--model", "tiny", "--data", "nope.jsonl", "--quiet", "--out", "x/y/z"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    # a file in the way: one line, exit 2
    (tmp_path / "f").write_text("")
    code, _, err = run_cli(
        ["evaluate", "--model", "tiny", "--data", "builtin:synthetic_facts", "--quiet", "--out", "f/g/h"], capsys
    )
    assert code == 2 and "is not a directory" in err and len(err.strip().splitlines()) == 1


def test_a_failed_write_leaves_no_parents_behind(tmp_path):
    from unpact_mech.io import atomic_output_dir

    (tmp_path / "keep").mkdir()
    with pytest.raises(RuntimeError), atomic_output_dir(tmp_path / "keep" / "new" / "deeper" / "out") as tmp:
        (tmp / "half.txt").write_text("half-written")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep"]  # the existing parent stays, nothing else


def test_out_never_goes_inside_an_input_model_directory(tmp_path, capsys):
    from unpact_mech.models.loading import resolve_spec

    model_dir = tmp_path / "model"
    shutil.copytree(resolve_spec("tiny").path, model_dir)
    before = tree_digest(model_dir)
    for argv in (
        ["evaluate", "--model", model_dir, "--data", "builtin:synthetic_facts"],
        ["attribute", "--model", model_dir, "--data", "builtin:synthetic_facts", "--method", "occlusion"],
    ):
        code, _, err = run_cli([*argv, "--quiet", "--out", model_dir / "sub" / "out"], capsys)
        assert code == 2 and "inside the input model directory" in err and len(err.strip().splitlines()) == 1
    assert tree_digest(model_dir) == before and not (model_dir / "sub").exists()


def test_the_demo_creates_its_missing_parents(tiny_demo):
    """The shared tiny demo run's --out lay under two directories that did not exist (tests/unit/conftest.py)."""
    out = tiny_demo.out
    assert out.parent.name == "yet" and out.parent.parent.name == "not"
    assert (out / "report.html").is_file() and sorted(p.name for p in out.parent.iterdir()) == ["run"]
