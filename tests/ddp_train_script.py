"""Run by tests/test_trainer_accelerate.py under ``accelerate launch --multi_gpu --num_processes 2`` on a CPU machine (DDP over gloo) (and, as the reference,
in one plain process): train a tiny decoder-layer replacement with StreamlineTrainer and write what each rank saw.

    python tests/ddp_train_script.py OUT_DIR --objective mse|lm --batch-size B --max-steps S [--save-steps K]

Rank r writes OUT_DIR/rank{r}.json (world size, global step, trained-parameter checksum) and rank{r}.pt (the trained
parameters before and after training); the main process also
saves the trained parameters through the trainer (OUT_DIR/final) and, with --save-steps, checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import tiny_model  # noqa: E402

from hf_streamline.replacement import BlockReplacementTask, TokenWindows, build_replacement  # noqa: E402
from hf_streamline.training import StreamlineTrainer, StreamlineTrainingArguments  # noqa: E402
from hf_streamline.utils import end_distributed  # noqa: E402


def build(objective: str):
    """The model to train and the trainable selection: the same tensors in every process (fixed seeds)."""
    if objective == "mse":
        model = tiny_model("llama", num_layers=4, seed=0)
        return BlockReplacementTask(model, build_replacement(model, 1, 2, "decoder_layer"), 1, 2, True), "default"
    model = tiny_model("llama", num_layers=3, seed=2)
    return model, [r"^lm_head\.", r"^model\.layers\.2\."]


def data(n: int) -> TokenWindows:
    g = torch.Generator().manual_seed(0)
    return TokenWindows(torch.randint(3, 128, (n, 12), generator=g))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--objective", default="mse")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=1)
    ap.add_argument("--items", type=int, default=4)
    ap.add_argument("--save-steps", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    model, trainable = build(a.objective)
    teacher = tiny_model("llama", num_layers=3, seed=2) if a.objective == "lm" else None
    args = StreamlineTrainingArguments(
        output_dir=str(out / "trainer"), max_steps=a.max_steps, per_device_train_batch_size=a.batch_size,
        learning_rate=1.0 if a.objective == "mse" else 0.05, use_cpu=True, disable_tqdm=True, logging_steps=1000, seed=0, data_seed=0,
        lr_scheduler_type="constant", optim="sgd", objective=a.objective, kl_weight=0.5 if teacher else 0.0,
        save_strategy="steps" if a.save_steps else "no", save_steps=a.save_steps or 500)
    trainer = StreamlineTrainer(model, args, trainable=trainable, teacher=teacher, train_dataset=data(a.items))
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in trainer.trainable_names}
    trainer.train()
    trainer.save_model(str(out / "final"))
    after = {n: params[n].detach().clone() for n in trainer.trainable_names}
    torch.save({"before": before, "after": after}, out / f"rank{args.process_index}.pt")
    checksum = {n: float(after[n].double().sum()) for n in trainer.trainable_names}
    (out / f"rank{args.process_index}.json").write_text(json.dumps({
        "world_size": args.world_size, "process_index": args.process_index, "global_step": trainer.state.global_step,
        "distributed_type": str(trainer.accelerator.distributed_type), "checksum": checksum,
        "env_world_size": os.environ.get("WORLD_SIZE")}))
    end_distributed()  # a barrier, then teardown: without it the process may abort (SIGABRT) or hang at exit


if __name__ == "__main__":
    main()
