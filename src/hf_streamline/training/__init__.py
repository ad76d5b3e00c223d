"""Training of replacement modules (and, reused by recovery, of any parameter subset): ``StreamlineTrainer``,
``StreamlineTrainingArguments`` and the objective registry."""

from .arguments import StreamlineTrainingArguments
from .objectives import OBJECTIVES, Objective, get_objective, register_objective
from .trainer import (CHECKPOINT_MANIFEST_NAME, TRAINED_WEIGHTS_NAME, StreamlineTrainer, load_trained_parameters,
                      model_fingerprint, save_trained_parameters, select_trainable)

__all__ = ["CHECKPOINT_MANIFEST_NAME", "OBJECTIVES", "Objective", "StreamlineTrainer", "StreamlineTrainingArguments",
           "TRAINED_WEIGHTS_NAME", "get_objective", "load_trained_parameters", "model_fingerprint", "register_objective",
           "save_trained_parameters", "select_trainable"]
