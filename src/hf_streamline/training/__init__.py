"""Training of replacement modules (and, reused by recovery, of any parameter subset): ``StreamlineTrainer``,
``StreamlineTrainingArguments`` and the objective registry.

The names load on first use (PEP 562): ``hf_streamline.training.checkpoints``, which the command line reads while it
builds its parser, must not pull in transformers' Trainer and peft through this package."""

from ..lazy import lazy_namespace

_LAZY = {"StreamlineTrainingArguments": "arguments",
         "OBJECTIVES": "objectives", "Objective": "objectives", "get_objective": "objectives",
         "register_objective": "objectives",
         "CHECKPOINT_MANIFEST_NAME": "checkpoints", "TRAINED_WEIGHTS_NAME": "checkpoints",
         "StreamlineTrainer": "trainer", "load_trained_parameters": "trainer", "model_fingerprint": "trainer",
         "save_trained_parameters": "trainer", "select_trainable": "trainer"}


__getattr__, __dir__ = lazy_namespace(__name__, _LAZY, globals(), submodules=True)

__all__ = sorted(_LAZY)
