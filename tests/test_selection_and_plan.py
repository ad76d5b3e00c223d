"""Selection rules, targets, iterative pruning and the plan's JSON round trip / re-application."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_streamline import StreamlineError, StreamlinePlan, Target, apply_plan, prune
from hf_streamline.calibration import CalibrationConfig, CalibrationData
from hf_streamline.scores.base import ScoreResult
from hf_streamline.selection import select_block, select_least_important
from tiny_models import tiny_model

SCORES = ScoreResult("x", per_layer=[5.0, 1.0, 4.0, 0.5, 3.0, 2.0])
LP = [10] * 6


def test_least_important_and_block():
    assert select_least_important(SCORES, Target(layers=2), LP, 100) == [1, 3]
    assert select_least_important(SCORES, Target(ratio=0.5), LP, 100) == [1, 3, 5]
    assert select_block(SCORES, Target(layers=2), LP, 100) == [3, 4]  # 0.5+3 beats 1+4, 4+0.5, 3+2
    assert select_least_important(SCORES, Target(layers=2), LP, 100, protect_last=3) == [1, 2]


def test_similarity_metric_selects_most_similar_block():
    sim = ScoreResult("block_cosine", per_layer=[0.1] * 4, per_block={2: [0.5, 0.9, 0.7]}, higher_is_redundant=True)
    assert select_block(sim, Target(layers=2), [1] * 4, 4) == [1, 2]


def test_param_ratio_target():
    # 6 layers of 10 params out of 100 total: 25% of the parameters -> 3 layers
    assert select_least_important(SCORES, Target(param_ratio=0.25), LP, 100) == [1, 3, 5]


@pytest.mark.parametrize("kw,match", [({"ratio": 1.5}, "strictly between 0 and 1"), ({"ratio": 0.0}, "strictly"),
                                      ({}, "exactly one of layers"), ({"layers": 1, "ratio": 0.5}, "exactly one")])
def test_bad_targets(kw, match):
    with pytest.raises(StreamlineError, match=match):
        Target(**kw)


def test_remove_all_or_none_refused():
    with pytest.raises(StreamlineError, match="at least one must stay"):
        select_least_important(SCORES, Target(layers=6), LP, 100)
    with pytest.raises(StreamlineError, match="remove at least one"):
        select_least_important(SCORES, Target(layers=0), LP, 100)


def _calib(n=4, T=12):
    ids = torch.randint(3, 128, (n, T), generator=torch.Generator().manual_seed(0))
    return CalibrationData(ids, torch.ones_like(ids), CalibrationConfig(source="<t>", n_samples=n, seq_len=T))


def test_iterative_reaches_target_and_records_steps():
    model = tiny_model("llama", num_layers=6)
    model, plan = prune(model, metric="block_influence", target=Target(layers=3), calibration=_calib(),
                        selection="iterative", step=1, progress=False)
    assert model.config.num_hidden_layers == 3
    assert len(plan.steps) == 3 and [s["layers_after"] for s in plan.steps] == [5, 4, 3]
    assert sorted(sum((s["removed"] for s in plan.steps), [])) == plan.removed_layers
    assert all(0 <= i < 6 for i in plan.removed_layers)


def test_plan_json_round_trip_and_apply_reproduces_model(tmp_path):
    base = tiny_model("qwen2", num_layers=6)
    pruned, plan = prune(copy.deepcopy(base), metric="angular", target=Target(layers=2), calibration=_calib(),
                         selection="block", progress=False)
    plan.save(tmp_path)
    loaded = StreamlinePlan.load(tmp_path)
    assert loaded.to_dict() == plan.to_dict()
    again = apply_plan(copy.deepcopy(base), loaded)
    sa, sb = pruned.state_dict(), again.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert again.config.to_dict() == pruned.config.to_dict()


def test_iterative_plan_reapplies(tmp_path):
    base = tiny_model("llama", num_layers=6)
    pruned, plan = prune(copy.deepcopy(base), metric="block_influence", target=Target(layers=3), calibration=_calib(),
                         selection="iterative", step=2, progress=False)
    again = apply_plan(copy.deepcopy(base), StreamlinePlan.from_json(plan.to_json()))
    x = torch.randint(3, 128, (1, 8))
    assert torch.equal(pruned(x).logits, again(x).logits)


def test_plan_for_other_model_refused():
    plan = StreamlinePlan(base_model="x", num_layers_before=8, operations=[{"type": "remove", "layers": [1]}])
    with pytest.raises(StreamlineError, match="plan is for a model with 8 layers"):
        apply_plan(tiny_model("llama", num_layers=4), plan)


def test_library_errors_name_the_python_argument_and_the_command_line_its_flag(tmp_path, capsys):
    """issue 15: `prune(target=Target(layers=0))` says `target.layers=0`, `hf-streamline prune --remove 0` says
    `--remove 0`, from the same error."""
    from hf_streamline.cli import main
    from hf_streamline.selection import check_count

    with pytest.raises(StreamlineError) as exc:
        check_count(0, 4)
    assert str(exc.value) == "target.layers=0: remove at least one layer"
    with pytest.raises(StreamlineError, match=r"^target\.ratio=1\.5: must be strictly between 0 and 1$"):
        Target(ratio=1.5)
    assert main(["prune", "--ratio", "1.5", "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == \
        "hf-streamline prune: error: --ratio 1.5: must be strictly between 0 and 1"
