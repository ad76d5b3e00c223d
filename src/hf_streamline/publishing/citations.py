"""BibTeX of the methods a plan used: one table, keyed by citation key, and the rules that pick entries from a plan.

Register a new method's paper with ``register_citation``; the plug-in that implements it names it in its ``citation``
class attribute (metrics, merge rules, replacement kinds, healing methods).
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

# what a plan does beyond its plug-ins: (citation key, why)
SLIDING_WINDOW = ("ding2025slm", "sliding-window layer merging")


def _plugin_citation(registry: Any, name: Any) -> tuple[str, str] | None:
    """The ``citation`` a plug-in declares (its class attribute), None for a name no table knows."""
    if not isinstance(name, str) or name not in registry:
        return None
    return getattr(registry[name], "citation", None)


def citations_for_plan(plan: Any) -> list[dict[str, str]]:
    """The papers whose methods ``plan`` used, each ``{"key", "title", "why", "bibtex"}``, without duplicates: each
    metric, merge rule, replacement kind and healing method says which paper it is (its ``citation``)."""
    from ..plugins import HEALING_METHODS, SCORERS

    picked: dict[str, list[str]] = {}

    def add(cite: tuple[str, str] | None) -> None:
        if cite and cite[0] in CITATIONS:
            picked.setdefault(cite[0], [])
            if cite[1] not in picked[cite[0]]:
                picked[cite[0]].append(cite[1])

    if plan is None:
        return []
    add(_plugin_citation(SCORERS, plan.metric))
    for name in plan.scores or {}:
        add(_plugin_citation(SCORERS, name))
    for op in plan.operations or []:
        for cite in op.citations(plan):  # each operation names its papers (hf_streamline.operations)
            add(cite)
    for h in plan.healing or []:
        if isinstance(h, dict):
            add(_plugin_citation(HEALING_METHODS, h.get("type")))
    return [{"key": k, "title": CITATIONS[k].title, "why": "; ".join(w), "bibtex": CITATIONS[k].bibtex}
            for k, w in picked.items()]
