"""lm-eval-harness' HFLM evaluates a StreamlineForCausalLM folder (MLP replacement) like our own scorer."""

from __future__ import annotations



def test_streamline_model_evaluates_with_lm_eval(stories_dir, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from hf_streamline import StreamlinePlan, load_model_and_tokenizer
    from hf_streamline.evaluation import compare_with_lm_eval, make_hflm
    from hf_streamline.replacement import replace_block
    from hf_streamline.replacement.api import save_replaced

    model, tok = load_model_and_tokenizer(str(stories_dir), dtype="float32")
    model, op = replace_block(model, 1, 2, kind="mlp")
    plan = StreamlinePlan(base_model=str(stories_dir), num_layers_before=5, method="replace",
                          removed_layers=op["layers"], operations=[op])
    folder = save_replaced(model, tok, plan, tmp_path / "replaced", model_card=False)
    import json

    assert json.loads((folder / "config.json").read_text())["model_type"] == "streamline"
    lm = make_hflm(str(folder), batch_size=8, trust_remote_code=True)  # lm-eval loads the folder itself
    assert type(lm.model).__name__ == "StreamlineForCausalLM"
    for task in ("piqa", "lambada_openai"):
        r = compare_with_lm_eval(lm.model, lm.tokenizer, task, limit=5, seed=0, task_dir=str(data_dir / "eval"), lm=lm)
        assert r["n"] == 5
        assert r["max_abs_loglikelihood_diff"] < 1e-3, r
        assert r["acc"] == r["acc_lm_eval"], r
