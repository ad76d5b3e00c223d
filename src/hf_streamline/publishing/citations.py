"""BibTeX of the methods a plan used: one table, keyed by citation key, and the rules that pick entries from a plan.

Register a new method's paper with ``register_citation`` and say which plans use it in ``CITED_BY``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Citation:
    key: str
    title: str
    bibtex: str


CITATIONS: dict[str, Citation] = {}


def register_citation(key: str, title: str, bibtex: str) -> Citation:
    c = Citation(key=key, title=title, bibtex=bibtex.strip())
    CITATIONS[key] = c
    return c


register_citation("men2024shortgpt", "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect", """
@article{men2024shortgpt,
  title={ShortGPT: Layers in Large Language Models are More Redundant Than You Expect},
  author={Men, Xin and Xu, Mingyu and Zhang, Qingyu and Wang, Bingning and Lin, Hongyu and Lu, Yaojie and Han, Xianpei and Chen, Weipeng},
  journal={arXiv preprint arXiv:2403.03853},
  year={2024}
}""")

register_citation("gromov2024unreasonable", "The Unreasonable Ineffectiveness of the Deeper Layers", """
@article{gromov2024unreasonable,
  title={The Unreasonable Ineffectiveness of the Deeper Layers},
  author={Gromov, Andrey and Tirumala, Kushal and Shapourian, Hassan and Glorioso, Paolo and Roberts, Daniel A.},
  journal={arXiv preprint arXiv:2403.17887},
  year={2024}
}""")

register_citation("chen2024streamline", "Compressing Large Language Models by Streamlining the Unimportant Layer (LLM-Streamline)", """
@article{chen2024streamline,
  title={Compressing Large Language Models by Streamlining the Unimportant Layer},
  author={Chen, Xiaodong and Hu, Yuxuan and Zhang, Jing},
  journal={arXiv preprint arXiv:2403.19135},
  year={2024}
}""")

register_citation("lu2024reassessing", "Reassessing Layer Pruning in LLMs: New Insights and Methods", """
@article{lu2024reassessing,
  title={Reassessing Layer Pruning in LLMs: New Insights and Methods},
  author={Lu, Yao and Cheng, Hao and Fang, Yujie and Wang, Zeyu and Wei, Jiaheng and Xu, Dongwei and Xuan, Qi and Yang, Xiaoniu and Zhu, Zhaowei},
  journal={arXiv preprint arXiv:2411.15558},
  year={2024}
}""")

register_citation("yang2024laco", "LaCo: Large Language Model Pruning via Layer Collapse", """
@article{yang2024laco,
  title={LaCo: Large Language Model Pruning via Layer Collapse},
  author={Yang, Yifei and Cao, Zouying and Zhao, Hai},
  journal={arXiv preprint arXiv:2402.11187},
  year={2024}
}""")

register_citation("ding2025slm", "A Sliding Layer Merging Method for Efficient Depth-Wise Pruning in LLMs (SLM)", """
@article{ding2025slm,
  title={A Sliding Layer Merging Method for Efficient Depth-Wise Pruning in LLMs},
  author={Ding, Xuan and Sun, Rui and Zhang, Yunjian and Yan, Xiu and Zhou, Yueqi and Huang, Kaihao and Fu, Suzhong and Aviles-Rivero, Angelica I. and Xie, Chuanlong and Zhu, Yao},
  journal={arXiv preprint arXiv:2502.19159},
  year={2025}
}""")

register_citation("kim2024shortened", "Shortened LLaMA: Depth Pruning for Large Language Models with Comparison of Retraining Methods", """
@article{kim2024shortened,
  title={Shortened LLaMA: Depth Pruning for Large Language Models with Comparison of Retraining Methods},
  author={Kim, Bo-Kyeong and Kim, Geonmin and Kim, Tae-Ho and Castells, Thibault and Choi, Shinkook and Shin, Junho and Song, Hyoung-Kyu},
  journal={arXiv preprint arXiv:2402.02834},
  year={2024}
}""")

register_citation("shopkhoev2025replaceme", "ReplaceMe: Network Simplification via Layer Pruning and Linear Transformations", """
@article{shopkhoev2025replaceme,
  title={ReplaceMe: Network Simplification via Layer Pruning and Linear Transformations},
  author={Shopkhoev, Dmitriy and Ali, Ammar and Zhussip, Magauiya and Malykh, Valentin and Lefkimmiatis, Stamatios and Komodakis, Nikos and Zagoruyko, Sergey},
  journal={arXiv preprint arXiv:2505.02819},
  year={2025}
}""")

# metric name -> (citation key, why it is cited)
METRIC_CITATIONS: dict[str, tuple[str, str]] = {
    "block_influence": ("men2024shortgpt", "Block Influence layer score"),
    "angular": ("gromov2024unreasonable", "angular distance between a block's input and output"),
    "block_cosine": ("chen2024streamline", "cosine similarity of a block's input and output"),
    "reverse_order": ("lu2024reassessing", "reverse-order pruning of the last layers"),
    "taylor": ("kim2024shortened", "Taylor+ importance"),
    "perplexity": ("kim2024shortened", "perplexity-based layer importance"),
}

# operation (type, and for merges the rule / for replacements the kind) -> (citation key, why)
OPERATION_CITATIONS: dict[str, tuple[str, str]] = {
    "replace": ("chen2024streamline", "replacing a pruned block by a lightweight trained module"),
    "merge:sliding_window": ("ding2025slm", "sliding-window layer merging"),
    "merge:rdsc": ("yang2024laco", "merge rule that adds parameter differences (Reserving-Differences-while-Seeking-Common)"),
    "merge:top_weights": ("yang2024laco", "merge rule as in the LaCo authors' released code"),
    "replace_linear": ("shopkhoev2025replaceme", "training-free replacement of a block by a linear map fitted on "
                                                 "calibration activations and folded into the preceding layer"),
}


def citations_for_plan(plan: Any) -> list[dict[str, str]]:
    """The papers whose methods ``plan`` used, each ``{"key", "title", "why", "bibtex"}``, without duplicates."""
    picked: dict[str, list[str]] = {}

    def add(key: str, why: str) -> None:
        if key in CITATIONS:
            picked.setdefault(key, [])
            if why not in picked[key]:
                picked[key].append(why)

    if plan is None:
        return []
    if plan.metric in METRIC_CITATIONS:
        add(*METRIC_CITATIONS[plan.metric])
    for name in plan.scores or {}:
        if name in METRIC_CITATIONS and name != plan.metric:
            add(*METRIC_CITATIONS[name])
    for op in plan.operations or []:
        kind = op.get("type")
        if kind == "merge":
            if plan.selection == "sliding_window":
                add(*OPERATION_CITATIONS["merge:sliding_window"])
            rule = f"merge:{op.get('rule')}"
            if rule in OPERATION_CITATIONS:
                add(*OPERATION_CITATIONS[rule])
        elif kind == "replace" and op.get("kind") not in (None, "none"):
            add(*OPERATION_CITATIONS["replace"])
        elif kind == "replace_linear":
            add(*OPERATION_CITATIONS["replace_linear"])
    for h in plan.healing or []:
        text = " ".join(str(v) for v in (h.values() if isinstance(h, dict) else [h])).lower()
        if "lm_head" in text or "last_layers" in text or "partial" in text:
            add("lu2024reassessing", "partial fine-tuning of lm_head and the last layers after pruning")
    return [{"key": k, "title": CITATIONS[k].title, "why": "; ".join(w), "bibtex": CITATIONS[k].bibtex}
            for k, w in picked.items()]
