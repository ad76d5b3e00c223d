"""Training of replacement modules (and, reused by recovery, of any parameter subset): ``StreamlineTrainer``,
``StreamlineTrainingArguments`` and the objective registry.

The names load on first use (PEP 562): ``hf_streamline.training.checkpoints``, which the command line reads while it
builds its parser, must not pull in transformers' Trainer and peft through this package."""

import importlib as _importlib

_LAZY = {"StreamlineTrainingArguments": "arguments",
         "OBJECTIVES": "objectives", "Objective": "objectives", "get_objective": "objectives",
         "register_objective": "objectives",
         "CHECKPOINT_MANIFEST_NAME": "checkpoints", "TRAINED_WEIGHTS_NAME": "checkpoints",
         "StreamlineTrainer": "trainer", "load_trained_parameters": "trainer", "model_fingerprint": "trainer",
         "save_trained_parameters": "trainer", "select_trainable": "trainer"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
