"""Run by tests/test_trl.py under `accelerate launch --multi_gpu --num_processes 2` on a machine without a GPU
(two CPU processes, gloo): two steps of VStarGRPOTrainer (GRPO, groups of 4) on the tiny world with 6 rows per
process, so that the middle group of each step spans the two processes. Writes one JSON object per process: its
rank, per step each row's user, completion and first-token advantage, and a checksum of the weights after
training, into OUT/rank<r>.json."""

import json
import os
import sys

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from vstar_toy.config import RLConfig, presets  # noqa: E402
from vstar_toy.integrations.trl_grpo import sid_tokenizer, vstar_trainer, vstar_trainer_class  # noqa: E402
from vstar_toy.pipeline import build_world  # noqa: E402
from vstar_toy.policy.qwen import BACKBONES  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_trl import tiny_config  # noqa: E402


def main() -> None:
    out = sys.argv[1]
    tok = sid_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM._from_config(Qwen2Config(**BACKBONES["tiny-qwen"]), attn_implementation="sdpa")
    rl = RLConfig(objective="grpo", lr=1e-3, negatives="drop")
    seen = []

    class Recording(vstar_trainer_class()):
        def _generate_and_score_completions(self, inputs):
            batch = super()._generate_and_score_completions(inputs)
            seen.append({"users": [x["user"] for x in inputs], "completions": batch["completion_ids"].tolist(),
                         "advantages": batch["advantages"][:, 0].tolist(), "shape": list(batch["advantages"].shape)})
            return batch

    trainer, _, _ = vstar_trainer(build_world(presets.tiny().world), model, tok, tiny_config(rl, 2, 2), out=out,
                                  n_users=32, trainer_class=Recording, disable_tqdm=True, per_device_train_batch_size=6)
    trainer.train()
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    rank = trainer.accelerator.process_index
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:  # a file each: two processes' prints interleave
        json.dump({"rank": rank, "world_size": trainer.accelerator.num_processes, "seen": seen,
                   "checksum": checksum}, f)


if __name__ == "__main__":
    main()
