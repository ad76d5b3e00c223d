"""Plans written by the previous release (format 1, tests/fixtures/plans_v1: made by hf-streamline 0.1.0 on
stories260K with `prune`, `prune --iterative`, `merge`, `replace --replacement none|linear`, `prune --unit attention`)
load and apply to the same logits as the model that release saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_streamline import StreamlinePlan, apply_plan, load_model_and_tokenizer

PLANS = Path(__file__).resolve().parent / "fixtures" / "plans_v1"


@pytest.mark.parametrize("name", sorted(p.name for p in PLANS.iterdir() if p.is_dir()))
def test_a_v1_plan_applies_as_it_did(name, stories_dir):
    plan = StreamlinePlan.load(PLANS / name)
    model, _ = load_model_and_tokenizer(str(stories_dir))
    model = apply_plan(model.eval(), plan)
    with torch.no_grad():
        logits = model(torch.arange(1, 17).unsqueeze(0)).logits[0].float()
    torch.testing.assert_close(logits, load_file(PLANS / name / "expected_logits.safetensors")["logits"],
                               rtol=1e-5, atol=1e-5)


def test_v1_plans_read_as_typed_operations_and_save_as_format_2(tmp_path):
    from hf_streamline.operations import MergeOp, RemoveSublayerOp, ReplaceLinearOp
    from hf_streamline.plan import PLAN_FORMAT_VERSION

    merge = StreamlinePlan.load(PLANS / "merge")
    assert all(isinstance(op, MergeOp) for op in merge.operations) and merge.removed_layers == [1, 3]
    assert merge.num_layers_after == 3 and merge.operations[0]["rule"] == "average"
    linear = StreamlinePlan.load(PLANS / "replace_linear")
    op = linear.operations[0]
    assert isinstance(op, ReplaceLinearOp) and op.folded and op.fold_into == 1 and "residual" in op.extra
    sub = StreamlinePlan.load(PLANS / "sublayer")
    assert isinstance(sub.operations[0], RemoveSublayerOp) and sub.removed_layers == [] and sub.num_layers_after == 5
    text = merge.to_json()
    back = StreamlinePlan.from_json(text)
    assert back.format_version == PLAN_FORMAT_VERSION == 2 and back.to_json() == text  # extra keys kept too
    assert '"removed_layers": [\n    1,\n    3\n  ]' in text  # still written, for readers of the JSON


def test_removed_layers_and_layer_count_follow_from_the_operations():
    from hf_streamline import StreamlineError
    from hf_streamline.operations import RemoveOp, ReplaceOp

    plan = StreamlinePlan(base_model="m", num_layers_before=8)
    plan.operations.append({"type": "replace", "kind": "mlp", "layers": [2, 3, 4]})  # a JSON object is typed
    assert isinstance(plan.operations[0], ReplaceOp)
    assert plan.operations[0] == {"type": "replace", "kind": "mlp", "layers": [2, 3, 4]}
    plan.operations.append(RemoveOp(layers=[6]))
    assert plan.removed_layers == [2, 3, 4, 6] and plan.num_layers_after == 5  # 8 - 4 + one module
    none = StreamlinePlan(base_model="m", num_layers_before=8, operations=[ReplaceOp(layers=[2, 3], kind="none")])
    assert none.num_layers_after == 6
    with pytest.raises(StreamlineError, match=r"removed_layers \[1\] disagree with its operations, which remove "
                                              r"\[2, 3, 4, 6\]"):
        plan.removed_layers = [1]
    d = plan.to_dict()
    d["removed_layers"] = [2, 3]
    with pytest.raises(StreamlineError, match="disagree with its operations"):
        StreamlinePlan.from_dict(d)
    old = StreamlinePlan.from_dict({"base_model": "m", "num_layers_before": 8, "removed_layers": [5, 1]})
    assert old.operations == [{"type": "remove", "layers": [1, 5]}]  # format 1 without operations: one remove
    with pytest.raises(StreamlineError, match=r"plan operation 'shuffle' is unknown; known: \['merge', 'remove'"):
        StreamlinePlan.from_dict({"base_model": "m", "num_layers_before": 8,
                                  "operations": [{"type": "shuffle", "layers": [1]}]})


def test_each_operation_describes_itself_and_names_its_papers():
    from hf_streamline.operations import OPERATION_TYPES, MergeOp, ReplaceOp

    plan = StreamlinePlan(base_model="m", num_layers_before=8, metric="block_influence", selection="sliding_window")
    assert set(OPERATION_TYPES) == {"remove", "merge", "replace", "replace_linear", "remove_sublayer"}
    merge = MergeOp(layers=[3, 4, 5], rule="rdsc")
    assert merge.describe(plan).startswith("Merged layers 3–5 into one layer at position 3 with the `rdsc` rule")
    assert merge.fates(plan) == {3: "absorbs 4–5 (`rdsc`)", 4: "merged into 3", 5: "merged into 3"}
    assert [k for k, _ in merge.citations(plan)][0] == "ding2025slm" and len(merge.citations(plan)) == 2
    replace = ReplaceOp(layers=[2, 3], kind="decoder_layer", trained=True)
    assert replace.describe(plan) == "Replaced block 2–3 by one trained `decoder_layer` module."
    assert replace.citations(plan) and replace.added() == 1


def test_a_plan_without_operations_stays_empty_through_json():
    plan = StreamlinePlan(base_model="m", num_layers_before=5, method="heal")
    back = StreamlinePlan.from_json(plan.to_json())
    assert back.operations == [] and back.removed_layers == [] and back.to_json() == plan.to_json()
