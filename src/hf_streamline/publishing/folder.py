"""What a saved model folder holds, read without loading any weight: its plan, evaluation report and config, every
tensor's shape (``safetensors.safe_open``), parameter counts, the base model's licence and how the folder relates to
its base (the Hub's ``base_model_relation``)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from safetensors import safe_open

from ..errors import StreamlineError
from ..plan import PLAN_FILENAME, StreamlinePlan

CARD_FILENAME = "README.md"
REPORT_CANDIDATES = ("report/report.json", "report.json")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")

# Licenses of base models we ship or know offline (read from their own metadata; the bundled GGUF says apache-2.0).
KNOWN_BASE_LICENSES: dict[str, str] = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0"}

# The Hub's `base_model_relation` values (https://huggingface.co/docs/hub/model-cards#specifying-a-base-model).
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
# A folder staged by ``utils.atomic_output_dir`` before it is moved into place: ``.NAME.tmp-XXXX``.
STAGING_NAME_RE = re.compile(r"^\.(?P<name>.+)\.tmp-[^.]+$")


# ----------------------------------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------------------------------
def check_hub_id(repo_id: str, argument: str = "base_model") -> str:
    """``repo_id`` if it is a Hub model id (``ORG/NAME``), else a StreamlineError naming ``argument``."""
    if not isinstance(repo_id, str) or not HUB_ID_RE.match(repo_id):
        raise StreamlineError("not a Hub model id; give ORG/NAME as on huggingface.co "
                              "(e.g. HuggingFaceTB/SmolLM2-135M)", argument=argument, value=repo_id)
    return repo_id


# ----------------------------------------------------------------------------------------------------------------------
# Inputs: plan, report, config, weights
# ----------------------------------------------------------------------------------------------------------------------
def load_plan(folder: Path, plan: StreamlinePlan | dict | str | os.PathLike | None) -> StreamlinePlan:
    if isinstance(plan, StreamlinePlan):
        return plan
    if isinstance(plan, dict):
        return StreamlinePlan.from_dict(plan)
    if plan is not None:
        return StreamlinePlan.load(plan)
    path = folder / PLAN_FILENAME
    if not path.exists():
        raise StreamlineError(f"{str(folder)!r} has no {PLAN_FILENAME}: the card describes a plan; save the model with "
                              "hf-streamline (prune / apply / merge / replace) or pass plan=")
    return StreamlinePlan.load(path)


def load_report(folder: Path, report: dict | str | os.PathLike | None, base_label: str | None = None,
                model_label: str | None = None) -> dict | None:
    """The evaluation report: the given dict / path, else ``report/report.json`` or ``report.json`` in the folder;
    its labels renamed so that the base model is ``dense`` and this model ``pruned`` (see ``normalize_report``)."""
    if isinstance(report, dict):
        return normalize_report(report, base_label, model_label)
    if report is not None:
        p = Path(report)
        if p.is_dir():
            p = p / "report.json"
        if not p.exists():
            raise StreamlineError("does not exist; give the report.json written by `hf-streamline evaluate` "
                                  "(write_report)", argument="report", value=str(report))
        return normalize_report(_read_json(p, "report"), base_label, model_label)
    for name in REPORT_CANDIDATES:
        p = Path(folder) / name
        if p.exists():
            return normalize_report(_read_json(p, "report"), base_label, model_label)
    return None


def normalize_report(report: dict, base_label: str | None = None, model_label: str | None = None) -> dict:
    """A copy of ``report`` whose base-model label is ``dense`` and this model's ``pruned``.

    Defaults: ``dense`` / ``pruned`` where the report has them, else its first model is the base and its last one
    this model.  The pair ``<model>_vs_<base>`` becomes ``pruned_vs_dense``; other labels are dropped.
    """
    labels = list(report.get("models") or {})
    for section in ("perplexity", "tasks"):
        for by_label in (report.get(section) or {}).values():
            labels += [k for k in (by_label or {}) if k not in labels]
    labels += [k for k in (report.get("speed") or {}) if k not in labels]
    if not labels:
        return dict(report)
    base = base_label or ("dense" if "dense" in labels else labels[0])
    model = model_label or ("pruned" if "pruned" in labels else next((k for k in reversed(labels) if k != base), base))
    for name, label in (("base", base), ("model", model)):
        if label not in labels:
            raise StreamlineError(f"the report has no model labelled {label!r} (labels: {labels}); pass the right "
                                  f"{name} label")
    rename = {base: "dense", model: "pruned"}

    def relabel(d: dict | None) -> dict:
        return {rename[k]: v for k, v in (d or {}).items() if k in rename}

    out = dict(report)
    out["models"] = relabel(report.get("models"))
    out["speed"] = relabel(report.get("speed"))
    out["perplexity"] = {t: relabel(v) for t, v in (report.get("perplexity") or {}).items()}
    out["perplexity_units"] = {t: relabel(v) for t, v in (report.get("perplexity_units") or {}).items()}
    out["tasks"] = {t: relabel(v) for t, v in (report.get("tasks") or {}).items()}
    pairs = report.get("pairs") or {}
    pair = pairs.get(f"{model}_vs_{base}")
    out["pairs"] = {"pruned_vs_dense": pair} if pair is not None else {}
    return out


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StreamlineError(f"{what} {str(path)!r} is not valid JSON ({exc})") from None


def read_config(folder: Path) -> dict:
    p = folder / "config.json"
    return _read_json(p, "config") if p.exists() else {}


def is_remote_code_model(config: dict) -> bool:
    """A ``StreamlineForCausalLM`` (or any model with ``auto_map``): loading needs its code."""
    return config.get("model_type") == "streamline" or bool(config.get("auto_map"))


def weight_shapes(folder: Path) -> dict[str, list[int]]:
    """Every tensor's shape from the safetensors headers (no weights are read)."""
    shapes: dict[str, list[int]] = {}
    for p in sorted(folder.glob("*.safetensors")):
        with safe_open(p, framework="np") as f:  # the header only: no tensor is read
            shapes.update({k: list(f.get_slice(k).get_shape()) for k in f.keys()})
    return shapes


LAYER_INDEX_RE = re.compile(r"\.(?:layers|h|layer|blocks)\.(\d+)\.")


def layer_sizes(folder: Path) -> dict[int, int]:
    """Parameters of each saved decoder layer (by its index in the saved model)."""
    out: dict[int, int] = {}
    for name, shape in weight_shapes(folder).items():
        m = LAYER_INDEX_RE.search(name)
        if m:
            out[int(m.group(1))] = out.get(int(m.group(1)), 0) + (math.prod(shape) if shape else 1)
    return out


# the weights of ``nn.Embedding`` modules (token and learned position embeddings), by their names in a checkpoint: the
# rule of transformers' ``num_parameters(exclude_embeddings=True)``, which the evaluation report uses too
# (evaluation.speed.parameter_counts).  An untied output head (``lm_head``, GPT-NeoX's ``embed_out``) is a Linear and
# counts as non-embedding; a tied one is saved once, as the input embedding.
EMBEDDING_PATTERNS = ("embed_tokens.", "wte.", "wpe.", "embed_in.", "word_embeddings.", "embed_positions.")


def count_parameters(folder: Path) -> dict[str, int] | None:
    """``params`` and ``non_embedding_params`` of the saved weights, as ``evaluation.speed.parameter_counts`` counts
    the loaded model."""
    shapes = weight_shapes(folder)
    if not shapes:
        return None
    total = non_emb = 0
    for name, shape in shapes.items():
        n = math.prod(shape) if shape else 1
        total += n
        if not any(p in name for p in EMBEDDING_PATTERNS):
            non_emb += n
    return {"params": total, "non_embedding_params": non_emb}


# ----------------------------------------------------------------------------------------------------------------------
# License
# ----------------------------------------------------------------------------------------------------------------------
def base_model_license(base_model: str) -> dict[str, str] | None:
    """``{"license": ..., ("license_name", "license_link")}`` of the base model, from what is available offline: its
    local folder's README.md, the Hugging Face cache, or the table of known models.  ``None`` if unknown."""
    from huggingface_hub import ModelCard

    candidates: list[Path] = []
    p = Path(base_model)
    if p.is_dir():
        candidates.append(p / CARD_FILENAME)
        marker = p / "BASE_MODEL"
        if marker.exists():
            found = base_model_license(marker.read_text().strip())
            if found:
                return found
    elif HUB_ID_RE.match(base_model):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(base_model, CARD_FILENAME)
            if isinstance(cached, str):
                candidates.append(Path(cached))
        except Exception:  # noqa: BLE001 - the cache is a best effort
            pass
    for c in candidates:
        if c.is_file():
            try:
                data = ModelCard.load(c, ignore_metadata_errors=True).data
            except Exception:  # noqa: BLE001 - a broken base card does not stop ours
                continue
            if getattr(data, "license", None):
                out = {"license": data.license}
                for key in ("license_name", "license_link"):
                    if getattr(data, key, None):
                        out[key] = getattr(data, key)
                return out
    if base_model in KNOWN_BASE_LICENSES:
        return {"license": KNOWN_BASE_LICENSES[base_model]}
    return None


def is_structural(plan: StreamlinePlan) -> bool:
    """Whether the plan changed the architecture (removed, merged or replaced layers); a ``heal``-only plan has no
    operation."""
    return bool(plan.removed_layers) or bool(plan.operations)


def base_model_relation(plan: StreamlinePlan, folder: Path, config: dict | None = None) -> str:
    """The Hub's ``base_model_relation`` of the model in ``folder`` to ``plan.base_model`` (one of
    ``BASE_MODEL_RELATIONS``), chosen for what the folder really is:

    - ``adapter``: an unmerged LoRA adapter folder (``adapter_config.json``) trained on the base model itself (the
      plan removed, merged and replaced nothing), so the adapter loads onto the base model.
    - ``quantized``: a quantized export (``quanto_qmap.json`` or a ``quantization_config``) of the base model's
      unchanged architecture.
    - ``finetune`` for everything else: a pruned (``remove``), layer-merged (``merge``), block-replaced
      (``replace``) or healed model is the weights of one base model, changed; on the Hub that is the relation of a
      model derived from one parent.  Not ``merge``, which on the Hub means several parent models combined into one
      (SLM merges layers *within* one model).  Not ``quantized``, which promises the same weights at a lower
      precision.  An adapter trained on a *pruned* model is ``finetune`` too: ``adapter`` would tell the Hub (and
      ``AutoPeftModelForCausalLM`` users) that it loads onto the base model, which has more layers, where it would
      silently attach to the wrong ones; it belongs on the pruned model the plan rebuilds.
    """
    config = read_config(folder) if config is None else config
    structural = is_structural(plan)
    if (folder / "adapter_config.json").is_file():
        return "finetune" if structural else "adapter"
    if not structural and ((folder / "quanto_qmap.json").is_file() or config.get("quantization_config")):
        return "quantized"
    return "finetune"


def card_folder_name(folder: str | os.PathLike) -> str:
    """The name a card gives the model in ``folder``: the folder's own name, or, for a staging folder of
    ``utils.atomic_output_dir`` (``.NAME.tmp-XXXX``) that a caller forgot to name, the final ``NAME``."""
    name = Path(os.path.abspath(folder)).name
    m = STAGING_NAME_RE.match(name)
    return m.group("name") if m else name
