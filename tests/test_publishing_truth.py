"""Cards and pushes that tell the truth (issue 18, section 4).

- every card writer (demo, run, heal, replace) names the model after its output folder, never the staging folder;
- `push --repo-id R` makes the uploaded card's title and snippet use R (no `your-username/...` placeholder);
- `--base-model ORG/NAME` records the Hub id of a locally loaded base: `base_model` + `base_model_relation`;
- no local absolute path reaches a card, plan or recipe in an output folder (and `apply` still works);
- stability is described as what it computes, with its effective-question count;
- `heal` defaults keep a tied model no larger than its base and use the chat template; a recipe loads the teacher
  only for distillation.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hf_streamline.cli import main
from hf_streamline.publishing import render_model_card

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import DEFAULT_TOKEN, HubServer  # noqa: E402

HUB_BASE = "karpathy/stories260K"
TINY_HEAL = ["--seq-len", "32", "--batch-size", "2", "--max-steps", "1", "--eval-size", "0"]


def _meta(card_text: str) -> dict:
    m = re.match(r"^---\n(.*?)\n---\n", card_text, re.S)
    assert m, "the card starts with its metadata block"
    return yaml.safe_load(m.group(1))


def _name(meta: dict) -> str:
    """The model's name in card metadata: ``model_name``, or the ``model-index`` entry's where there are results."""
    return meta.get("model_name") or meta["model-index"][0]["name"]


def _title(card_text: str) -> str:
    return next(line[2:].strip() for line in card_text.splitlines() if line.startswith("# "))


def _no_local_path(text: str, *roots: Path) -> None:
    for root in roots:
        assert str(root) not in text, f"{root} leaked into:\n{text[:3000]}"
    assert not re.search(r"(?<![\w.])/(?:tmp|home|work|root|Users|var)/", text), text[:3000]


@pytest.fixture(scope="module")
def runs(stories_dir, data_dir, tmp_path_factory):
    """One small run of each card writer on stories260K, each into its own output folder."""
    root = tmp_path_factory.mktemp("writers")
    text = data_dir / "text" / "stories260k_samples.txt"
    users = root / "my data"  # a user's own file, outside the package: recorded by its name only
    users.mkdir()
    shutil.copy(text, users / "stories.txt")
    out: dict[str, Path] = {}

    out["heal"] = root / "healed-stories"
    assert main(["heal", "--model", str(stories_dir), "--data", str(users / "stories.txt"), *TINY_HEAL,
                 "--output", str(out["heal"])]) == 0

    out["replace"] = root / "replaced-stories"
    assert main(["replace", "--model", str(stories_dir), "--block-size", "2", "--block-start", "2",
                 "--replacement", "mlp", "--train-data", str(users / "stories.txt"), "--train-seq-len", "32",
                 "--batch-size", "2", "--max-steps", "1", "--output", str(out["replace"])]) == 0

    out["run"] = root / "recipe-stories"
    recipe = {"model": str(stories_dir), "dtype": "float32",
              "calibration": {"source": str(users / "stories.txt"), "samples": 2, "seq_len": 32},
              "method": "remove", "remove": {"layers": "1", "eval_text": str(text)},
              "heal": {"method": "partial", "last_k": 1, "data": str(text), "seq_len": 32, "batch_size": 2,
                       "max_steps": 1, "eval_size": 0},
              "output": str(out["run"])}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(root / "recipe.yaml")]) == 0

    out["prune"] = root / "pruned-stories"  # prune writes no card: `card` and `push` render it
    assert main(["prune", "--model", str(stories_dir), "--calibration", str(users / "stories.txt"), "--samples", "2",
                 "--seq-len", "32", "--layers", "1,3", "--output", str(out["prune"])]) == 0
    return root, out


@pytest.mark.parametrize("writer", ["heal", "replace", "run"])
def test_card_is_named_after_the_output_folder_not_the_staging_folder(runs, writer):
    """Today every card written by heal / replace / run (and demo) is titled `.NAME.tmp-xxxx`."""
    _, out = runs
    folder = out[writer]
    card = (folder / "README.md").read_text()
    assert ".tmp-" not in card, card[:2000]
    assert _title(card) == folder.name
    assert _name(_meta(card)) == folder.name
    assert f'from_pretrained("your-username/{folder.name}")' in card  # the local card: a placeholder until push
    assert f"--output {folder.name}" in card  # the reproduce snippet names the same folder


def test_demo_card_is_named_after_its_output(stories_dir, data_dir, tmp_path):
    out = tmp_path / "my-demo"
    assert main(["demo", "--model", str(stories_dir), "--output", str(out), "--data-dir", str(data_dir),
                 "--samples", "2", "--seq-len", "32", "--heal-steps", "1", "--limit", "2", "--ppl-tokens", "256",
                 "--no-speed"]) == 0
    card = (out / "README.md").read_text()
    assert ".tmp-" not in card and _title(card) == "my-demo" and _name(_meta(card)) == "my-demo"
    # the bundled data is named as bundled:NAME, never by its path on this machine
    for name in ("README.md", "streamline_plan.json", "streamline_recipe.yaml"):
        _no_local_path((out / name).read_text(), tmp_path, data_dir)
    plan = json.loads((out / "streamline_plan.json").read_text())
    assert plan["calibration"]["source"] == "bundled:train/wikipedia_30_articles.txt"
    recipe = yaml.safe_load((out / "streamline_recipe.yaml").read_text())
    assert recipe["evaluate"]["task_dir"] == "bundled:eval"


def test_base_model_flag_records_the_hub_id(runs, capsys):
    """`card --base-model` adds the Hub id of a base that the plan records as a local folder."""
    _, out = runs
    # without --base-model a local base is recorded by its folder name, and the card claims no Hub base
    for writer in ("heal", "replace", "run"):
        plan = json.loads((out[writer] / "streamline_plan.json").read_text())
        assert plan["base_model"] == "stories260K", writer
        assert "base_model" not in _meta((out[writer] / "README.md").read_text()), writer
    # `card --base-model` adds it afterwards
    folder = out["prune"]
    assert main(["card", str(folder), "--base-model", HUB_BASE, "--output", "-"]) == 0
    card = capsys.readouterr().out
    meta = _meta(card)
    assert meta["base_model"] == HUB_BASE and meta["base_model_relation"] == "finetune"
    assert f"hf-streamline apply streamline_plan.json --model {HUB_BASE}" in card
    # a value that is no Hub id is one argparse error line
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", "x", "--base-model", "/some/folder", "--remove", "1", "--output", "y"])
    assert e.value.code == 2
    assert "argument --base-model: '/some/folder' is not a Hub model id" in capsys.readouterr().err


def test_prune_replace_merge_and_heal_take_base_model(stories_dir, data_dir, tmp_path):
    """Today none of them accepts `--base-model`: a base loaded from a folder can never be named by its Hub id."""
    text = str(data_dir / "text" / "stories260k_samples.txt")
    model = ["--model", str(stories_dir), "--base-model", HUB_BASE]
    assert main(["prune", *model, "--layers", "2", "--output", str(tmp_path / "prune")]) == 0
    assert main(["merge", *model, "--calibration", text, "--samples", "2", "--seq-len", "32", "--remove", "1",
                 "--no-eval", "--output", str(tmp_path / "merge")]) == 0
    assert main(["replace", *model, "--block-size", "2", "--block-start", "2", "--replacement", "none",
                 "--output", str(tmp_path / "replace")]) == 0
    assert main(["heal", *model, "--data", text, *TINY_HEAL, "--output", str(tmp_path / "heal")]) == 0
    for cmd in ("prune", "merge", "replace", "heal"):
        assert json.loads((tmp_path / cmd / "streamline_plan.json").read_text())["base_model"] == HUB_BASE, cmd
        card = render_model_card(tmp_path / cmd)
        assert card.data.base_model == HUB_BASE and card.data.base_model_relation == "finetune", cmd
    meta = _meta((tmp_path / "heal" / "README.md").read_text())  # the card heal wrote
    assert meta["base_model"] == HUB_BASE and meta["base_model_relation"] == "finetune"
    # heal on a pruned folder: --base-model names the dense base of its plan
    assert main(["heal", "--model", str(tmp_path / "prune"), "--base-model", "someone/stories-base", "--data", text,
                 *TINY_HEAL, "--output", str(tmp_path / "heal2")]) == 0
    assert _meta((tmp_path / "heal2" / "README.md").read_text())["base_model"] == "someone/stories-base"


def test_base_model_relation_follows_what_the_folder_is(runs, tmp_path):
    from hf_streamline.plan import StreamlinePlan
    from hf_streamline.publishing.folder import BASE_MODEL_RELATIONS, base_model_relation

    _, out = runs
    pruned = StreamlinePlan.load(out["prune"])
    healed_only = StreamlinePlan(base_model=HUB_BASE, num_layers_before=5, method="heal")
    plain, adapter, quanto = (tmp_path / n for n in ("plain", "adapter", "quanto"))
    for d in (plain, adapter, quanto):
        d.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (quanto / "quanto_qmap.json").write_text("{}")
    assert base_model_relation(pruned, plain, {}) == "finetune"
    assert base_model_relation(healed_only, plain, {}) == "finetune"
    assert base_model_relation(healed_only, adapter, {}) == "adapter"  # a LoRA adapter on the Hub base itself
    assert base_model_relation(pruned, adapter, {}) == "finetune"  # it loads onto the pruned model, not the base
    assert base_model_relation(healed_only, quanto, {}) == "quantized"
    assert base_model_relation(pruned, quanto, {}) == "finetune"
    assert set(BASE_MODEL_RELATIONS) == {"adapter", "merge", "quantized", "finetune"}


def test_no_local_absolute_path_in_card_plan_or_recipe(runs, stories_dir, data_dir, tmp_path):
    """Today the plan records `/abs/.../stories260K`, `/abs/.../stories.txt`; the recipe and card copy them."""
    root, out = runs
    for writer in ("heal", "replace", "run", "prune"):
        for name in ("README.md", "streamline_plan.json", "streamline_recipe.yaml"):
            if (out[writer] / name).exists():
                _no_local_path((out[writer] / name).read_text(), root, stories_dir, data_dir)
    plan = json.loads((out["run"] / "streamline_plan.json").read_text())
    assert plan["calibration"]["source"] == "stories.txt"  # the user's file: its name
    assert plan["evaluation"]["perplexity"]["text"] == "bundled:text/stories260k_samples.txt"  # package data
    assert plan["healing"][0]["data"]["source"] == "bundled:text/stories260k_samples.txt"
    recipe = yaml.safe_load((out["run"] / "streamline_recipe.yaml").read_text())
    assert recipe["model"] == "stories260K" and recipe["calibration"]["source"] == "stories.txt"
    assert recipe["heal"]["data"] == ["bundled:text/stories260k_samples.txt"]  # validated: --data takes a list
    healed = json.loads((out["heal"] / "streamline_plan.json").read_text())
    assert healed["healing"][0]["data"]["source"] == "stories.txt"
    # the portable plan still applies: the base model comes from --model
    assert main(["apply", str(out["prune"] / "streamline_plan.json"), "--model", str(stories_dir),
                 "--output", str(tmp_path / "again")]) == 0
    from safetensors.torch import load_file

    a, b = load_file(str(out["prune"] / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_portable_names():
    from hf_streamline.data import ROOT
    from hf_streamline.portable import portable_model_name, portable_spec, portable_value

    assert portable_spec("/home/me/corpus/train.txt") == "train.txt"
    assert portable_spec(str(ROOT / "eval")) == "bundled:eval"
    assert portable_spec("wikitext2=/home/me/wiki.raw") == "wikitext2=wiki.raw"
    for kept in ("HuggingFaceTB/SmolLM2-135M", "dataset:wikitext:wikitext-2-raw-v1:test", "bundled:eval",
                 "calibration"):
        assert portable_spec(kept) == kept and portable_value(kept) == kept
    assert portable_model_name("/home/me/models/my-base") == "my-base"
    assert portable_model_name("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert portable_value({"a": ["/x/y/z.txt", "tokens/s", 3], "cmd": "--model /home/me/m --x 1"}) == \
        {"a": ["z.txt", "tokens/s", 3], "cmd": "--model m --x 1"}
    assert portable_value({"/home/me/corpus/a.txt": 3, "tokens/s": 1}) == {"a.txt": 3, "tokens/s": 1}  # keys too


# ---- push: the repo id at push time -------------------------------------------------------------------------------

@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubServer(lifetime=300) as server:
        yield server


def test_push_names_the_card_after_the_repo_id(hub, runs, tmp_path):
    """Today a card written by heal/run is uploaded as it is: titled after the folder, loading `your-username/...`."""
    from hf_streamline.publishing import push_to_hub

    _, out = runs
    folder = out["heal"]
    before = (folder / "README.md").read_text()
    push_to_hub(folder, "tester/stories-healed-v2", token=DEFAULT_TOKEN, endpoint=hub.url, base_model=HUB_BASE)
    card = hub.files("tester/stories-healed-v2")["README.md"].decode()
    assert (folder / "README.md").read_text() == before  # the folder is not modified
    assert "your-username" not in card
    assert 'from_pretrained("tester/stories-healed-v2")' in card
    assert _title(card) == "stories-healed-v2" and _name(_meta(card)) == "stories-healed-v2"
    assert _meta(card)["base_model"] == HUB_BASE and _meta(card)["base_model_relation"] == "finetune"
    assert f"hf-streamline apply streamline_plan.json --model {HUB_BASE}" in card  # unedited: rendered again

    # an edited card keeps the edits; only the title, the metadata name and the placeholders change
    work = tmp_path / "edited"
    shutil.copytree(out["run"], work)
    text = (work / "README.md").read_text().replace("## How to use", "## How to use\n\nMy own words.", 1)
    (work / "README.md").write_text(text)
    push_to_hub(work, "tester/edited", token=DEFAULT_TOKEN, endpoint=hub.url, base_model=HUB_BASE)
    card = hub.files("tester/edited")["README.md"].decode()
    assert "My own words." in card and "your-username" not in card
    assert 'from_pretrained("tester/edited")' in card and _title(card) == "edited"
    meta = _meta(card)
    assert meta["base_model"] == HUB_BASE and meta["base_model_relation"] == "finetune"

    # a card rendered at push time (no README.md) uses the repo id and --base-model too
    work = tmp_path / "nocard"
    shutil.copytree(out["prune"], work)
    push_to_hub(work, "tester/nocard", token=DEFAULT_TOKEN, endpoint=hub.url, base_model=HUB_BASE)
    card = hub.files("tester/nocard")["README.md"].decode()
    assert _meta(card)["base_model"] == HUB_BASE and _title(card) == "nocard"
    assert not hub.unknown, hub.unknown


# ---- stability ----------------------------------------------------------------------------------------------------

def test_stability_is_described_as_what_it_computes(runs):
    from hf_streamline.evaluation.report import render_markdown

    _, out = runs
    report = {
        "models": {"dense": {"params": 260_000}, "pruned": {"params": 200_000}},
        "tasks": {"arc_easy": {"dense": {"acc": 0.6, "n": 50}, "pruned": {"acc": 0.5, "n": 50}}},
        "pairs": {"pruned_vs_dense": {"stability": {"arc_easy": 0.83}, "same_prediction_rate": {"arc_easy": 0.7},
                                      "stability_effective_questions": {"arc_easy": 2.4}}},
    }
    text = render_model_card(out["prune"], report=report).text
    assert "fraction of items on which this model picks the same answer" not in text
    assert "| stability (effective questions) |" in text and "| 0.83 (2.4) |" in text
    assert "summed weight of the questions" in text and "both right or both wrong" in text
    assert "standard" in text and "1/Σw²" in text
    md = render_markdown({**report, "baseline": "dense"})
    assert "summed weight of the questions" in md and "1/Σw²" in md


# ---- heal defaults ------------------------------------------------------------------------------------------------

def _tied_llama(layers=4):
    """Tied llama whose vocabulary x hidden matrix (16K) is larger than one decoder layer (9K), as in SmolLM2."""
    from transformers import AutoModelForCausalLM

    from tiny_models import tiny_config

    cfg = tiny_config("llama", layers)
    cfg.tie_word_embeddings, cfg.vocab_size = True, 512
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _toy_data():
    from test_healing import _data

    return _data()


def test_heal_default_keeps_a_tied_model_no_larger_than_its_base():
    """Today the default `--tied-policy untie` gives lm_head its own matrix: +28M parameters on SmolLM2."""
    from hf_streamline.healing import HealingConfig, embeddings_tied, heal
    from hf_streamline.healing.base import count_parameters, estimate_base_parameters
    from hf_streamline.pruning import remove_layers
    from test_healing import ToyTokenizer

    assert HealingConfig().tied_policy == "auto"
    dense = _tied_llama()
    base = count_parameters(dense)
    remove_layers(dense, [3])  # one small layer is far less than the vocabulary x hidden copy untying adds
    assert estimate_base_parameters(dense, 4) == base
    fast = dict(max_steps=1, learning_rate=1e-2, batch_size=4, progress=False)
    result = heal(dense, ToyTokenizer(), _toy_data(), "partial:1", base_parameters=base, **fast)
    assert embeddings_tied(result.model) and result.record["tied_policy"] == "train-shared"
    assert result.record["tied_policy_requested"] == "auto"
    assert "untying would add" in result.record["tied_policy_reason"]
    assert result.record["parameters_after"] <= base
    # where the untied model still fits in the base model's size, auto unties (the input embedding is kept)
    m = _tied_llama()
    remove_layers(m, [1, 2, 3])
    result = heal(m, ToyTokenizer(), _toy_data(), "partial:1", base_parameters=10 * base, **fast)
    assert not embeddings_tied(result.model) and result.record["tied_policy"] == "untie"
    # the size of the base model unknown: never untie
    result = heal(_tied_llama(), ToyTokenizer(), _toy_data(), "partial:1", **fast)
    assert embeddings_tied(result.model)


def test_heal_cli_default_on_a_tied_pruned_model(tmp_path, data_dir):
    """The CLI knows the base model's size from the plan of a pruned folder: a healed model is never bigger."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_streamline.healing.base import count_parameters

    dense = _tied_llama(layers=4)
    base = count_parameters(dense)
    d = tmp_path / "dense"
    dense.save_pretrained(d)
    AutoTokenizer.from_pretrained(Path(__file__).parent / "fixtures" / "models" / "stories260K").save_pretrained(d)
    assert main(["prune", "--model", str(d), "--layers", "3", "--output", str(tmp_path / "p")]) == 0
    assert main(["heal", "--model", str(tmp_path / "p"), "--data", str(data_dir / "text" / "stories260k_samples.txt"),
                 "--last-k", "1", *TINY_HEAL, "--output", str(tmp_path / "h")]) == 0
    healed = AutoModelForCausalLM.from_pretrained(tmp_path / "h")
    assert count_parameters(healed) <= base and healed.config.tie_word_embeddings
    rec = json.loads((tmp_path / "h" / "streamline_plan.json").read_text())["healing"][0]
    assert rec["tied_policy"] == "train-shared" and rec["tied_policy_requested"] == "auto"


def test_heal_default_uses_the_chat_template_of_an_instruct_tokenizer(stories_dir, tmp_path):
    """Today instruction data is always formatted with the Alpaca template, even for a model with a chat template."""
    from transformers import AutoTokenizer

    from hf_streamline.healing import HealingDataConfig, load_healing_data
    from hf_streamline.healing.data import ALPACA_PROMPT_NO_INPUT

    tok = AutoTokenizer.from_pretrained(stories_dir)
    rows = [{"instruction": f"Tell story {i}", "input": "", "output": "Once upon a time."} for i in range(10)]
    path = tmp_path / "inst.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    plain = load_healing_data(tok, HealingDataConfig(source=str(path), seq_len=128, eval_size=0))
    assert plain.describe()["template"] == "alpaca"  # no chat template: Alpaca
    alpaca_ids = tok(ALPACA_PROMPT_NO_INPUT.format(instruction="Tell story 0")).input_ids
    assert torch.as_tensor(plain.train[0]["input_ids"])[:len(alpaca_ids)].tolist() == alpaca_ids
    tok.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}<|assistant|>"
    chat = load_healing_data(tok, HealingDataConfig(source=str(path), seq_len=128, eval_size=0))
    assert chat.describe()["template"] == "chat"
    chat_ids = tok("<|user|>Tell story 0<|assistant|>", add_special_tokens=False).input_ids
    assert torch.as_tensor(chat.train[0]["input_ids"])[:len(chat_ids)].tolist() == chat_ids


def test_recipe_loads_the_teacher_only_for_distillation(stories_dir, data_dir, tmp_path, monkeypatch):
    """Today a recipe with a `heal` stage passes `--teacher BASE` to every method: partial loads the dense model too."""
    import hf_streamline.loading as loading
    from hf_streamline.recipes import run_recipe, validate_recipe

    loads: list[str] = []
    real = loading.load_model_and_tokenizer

    def counting(spec=None, **kw):
        loads.append(str(spec))
        return real(spec, **kw)

    monkeypatch.setattr(loading, "load_model_and_tokenizer", counting)
    text = str(data_dir / "text" / "stories260k_samples.txt")
    heal = {"data": text, "seq_len": 32, "batch_size": 2, "max_steps": 1, "eval_size": 0, "last_k": 1}
    for method, expected in (("partial", 2), ("distill", 3)):
        loads.clear()
        recipe = validate_recipe({"model": str(stories_dir), "method": "remove", "remove": {"layers": "1"},
                                  "heal": {**heal, "method": method}, "output": str(tmp_path / method)})
        run_recipe(recipe)
        assert len(loads) == expected, (method, loads)  # prune + heal (+ the teacher, for distill only)
