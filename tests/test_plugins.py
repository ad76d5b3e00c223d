"""The plug-in tables (hf_streamline.plugins): names known without importing the plug-ins, each line true to its
module, extensions registered at run time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hf_streamline.errors import StreamlineError
from hf_streamline.plugins import EXPORTERS, REGISTRIES, SCORERS
from hf_streamline.registry import Registry


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.what)
def test_every_line_names_the_module_whose_class_registers_that_name(registry):
    assert registry.modules, "a table without built-in plug-ins"
    for name, module in registry.modules.items():
        cls = registry[name]
        assert cls.name == name
        assert cls.__module__ == module


def test_names_are_listed_and_tested_without_importing_the_plugins():
    code = ("import json, sys\n"
            "from hf_streamline.plugins import REGISTRIES, SCORERS\n"
            "names = {r.what: sorted(r) for r in REGISTRIES}\n"
            "assert 'taylor' in SCORERS and 'nope' not in SCORERS and len(SCORERS) == 8\n"
            "print(json.dumps([names, sorted(m for m in sys.modules if m.startswith('hf_streamline.scores')"
            " or m.split('.')[0] in ('torch', 'transformers', 'peft'))]))")
    # the package import registers the model classes (transformers): read the tables the way the CLI does
    done = subprocess.run([sys.executable, "-c", "import sys; sys.modules['hf_streamline_entry'] = type(sys)('e'); "
                           "sys.modules['hf_streamline_entry'].DEFER_REGISTRATION = True\n" + code],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names, loaded = json.loads(done.stdout)
    assert names["metric"] == sorted(SCORERS.modules) and "distill" in names["healing method"]
    assert loaded == []


def test_reading_a_name_loads_its_plugin_and_an_unknown_name_lists_the_known_ones():
    code = ("import sys\n"
            "from hf_streamline.plugins import SCORERS\n"
            "assert 'hf_streamline.scores.taylor' not in sys.modules\n"
            "cls = SCORERS['taylor']\n"
            "assert cls.__module__ == 'hf_streamline.scores.taylor' and cls.name == 'taylor'\n"
            "assert 'hf_streamline.scores.taylor' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with pytest.raises(StreamlineError, match=r"unknown metric 'tayler'; choose from \['angular'"):
        SCORERS.lookup("tayler")


def test_a_table_line_whose_module_registers_nothing_is_a_clear_error():
    registry = Registry("metric", {"ghost": "hf_streamline.options"})
    with pytest.raises(LookupError, match="hf_streamline.options did not register the metric 'ghost'"):
        registry["ghost"]


def test_an_extension_registers_at_run_time_and_is_listed_after_the_built_ins(monkeypatch):
    class Mine:
        name = "mine"

    SCORERS.register(Mine)
    try:
        assert list(SCORERS)[-1] == "mine" and "mine" in SCORERS and SCORERS.lookup("mine") is Mine
        assert len(SCORERS) == len(SCORERS.modules) + 1
    finally:
        del SCORERS["mine"]
    assert "mine" not in SCORERS and len(SCORERS) == len(SCORERS.modules)


@pytest.mark.parametrize("registry", [r for r in REGISTRIES if r.what in
                                      ("metric", "merge rule", "replacement kind", "healing method")],
                         ids=lambda r: r.what)
def test_every_method_plugin_says_which_paper_it_is(registry):
    """The model card cites from the plug-ins' own metadata (no string matching on plan fields)."""
    from hf_streamline.publishing.citations import CITATIONS

    for name in registry:
        cls = registry[name]
        assert any("citation" in vars(k) for k in cls.__mro__ if k.__module__ == cls.__module__), name
        if cls.citation is not None:
            key, why = cls.citation
            assert key in CITATIONS and why, name


def test_the_card_cites_the_healing_method_and_the_replacement_kind_from_their_metadata():
    from hf_streamline.plan import StreamlinePlan
    from hf_streamline.publishing import citations_for_plan

    plan = StreamlinePlan(base_model="x/y", num_layers_before=6, method="replace",
                          operations=[{"type": "replace", "layers": [2, 3], "kind": "mlp"}],
                          healing=[{"type": "partial", "method": "partial:2"}, {"type": "lora", "method": "lora"}])
    assert [c["key"] for c in citations_for_plan(plan)] == ["chen2024streamline", "lu2024reassessing"]
    plan.operations = [{"type": "replace", "layers": [2, 3], "kind": "none"}]
    plan.healing = [{"type": "distill", "method": "distill"}]
    assert citations_for_plan(plan) == []


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.what)
def test_a_declared_attribute_read_from_source_is_the_class_attribute(registry):
    """``declared`` reads a literal class attribute without importing the module (export --help's descriptions); it
    agrees with the class for every built-in plug-in (run in a fresh process, so that nothing is registered yet)."""
    code = ("import json, sys\n"
            "sys.modules['hf_streamline_entry'] = type(sys)('e'); sys.modules['hf_streamline_entry'].DEFER_REGISTRATION = True\n"
            "from hf_streamline.plugins import REGISTRIES\n"
            f"r = next(r for r in REGISTRIES if r.what == {registry.what!r})\n"
            "out = {n: [r.declared(n, 'name'), r.declared(n, 'description') if r.what == 'export format' else None]\n"
            "       for n in r.modules}\n"
            "print(json.dumps([out, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'peft'))]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    declared, loaded = json.loads(done.stdout)
    for name, (own, description) in declared.items():
        assert own == name
        if registry is EXPORTERS:
            assert description == registry[name].description and description
    if registry is EXPORTERS:
        assert loaded == []  # every exporter's description is a literal: read without torch
