"""V-STAR's pieces inside TRL's ``GRPOTrainer`` (tested with trl 1.16.0): the toolkit's constrained candidates as
each prompt's group, and Sibling-GRPO's per-token advantages in place of GRPO's per-sequence ones.

TRL trains a Hugging Face causal LM on groups of ``num_generations`` completions per prompt, each completion
weighted by one advantage (Eq. 2). Four pieces put the toolkit in that loop:

- ``sid_tokenizer`` and ``sid_prompts``: prompts written in SID tokens (``<sid><a_4><b_0><c_7><sid> .. <sid>``,
  ``QwenPolicy``'s layout), a tokenizer of those tokens built locally (nothing downloaded), and a dataset of a
  world's users with the columns the reward reads (``user``, ``target``);
- ``SIDRollout``: TRL's ``rollout_func``. Each prompt's group is the toolkit's decoder (``DecodeConfig``:
  constrained beam search, VED, ...) run on the very model TRL trains, wrapped as a ``QwenPolicy``; VED's value
  head learns by TD on every batch (``learn_value``), as in the toolkit's own loop; ``reward`` scores the items;
- ``token_advantages``: a pure function from TRL-shaped inputs (completion SIDs, rewards, group size) to
  (N, L) per-token advantages of GRPO, Sibling-GRPO (Eq. 18) or the joint objective, with the update options
  of claim 9 (negatives dropped or tapered), built from ``rl/advantages.py`` and ``rl/updates.py``;
- ``VStarGRPOTrainer``: ``GRPOTrainer`` with those advantages in place of its own.

What carries over from the toolkit's loop, and what does not:

- The loss. With ``loss_type="bnpo"`` (or "grpo": every completion has L tokens), ``epsilon`` = ``clip_eps``,
  ``beta`` = ``kl_coef`` with ``use_bias_correction_kl=False``, and ``importance_sampling_level="token"``,
  TRL's loss on a batch equals ``losses.policy_loss`` on the same per-token log-probs for objective "grpo" and
  "sibling" (``sibling_norm`` either way); for "joint" when no ratio leaves the clip range (the first pass over a
  batch, ``num_iterations=1``, where every ratio is 1): TRL clips the sum of the two advantages, the toolkit
  each term (``tests/test_trl.py``).
- The log-probs. TRL normalises each token over the whole vocabulary; the toolkit over the valid children of
  its prefix (``QwenPolicy(normalize="valid")``). The tokens and the candidates are the same, the gradients
  are not: TRL also pushes down every token outside the trie. A model that has learned the trie puts almost
  no mass there, and the two agree.
- Not carried over: the beam baseline, the value as a critic, distillation and the mixed group (each needs a
  second decode or a second term inside the loss); ``token_advantages`` refuses them with a clear error.
- Several processes (``accelerate launch``): every process decodes the groups of its rows; a group that spans
  two processes is decoded on both (the same set: synchronised weights, seeded decoders) and each keeps its
  rows' candidates; the advantages are computed on the gathered groups and each process keeps its rows. VED's
  value head is not synchronised: each process's learns from its own groups, so with a value decoder the
  per-device batch must hold whole groups (a clear error says so).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..config import DecodeConfig, RLConfig, ValueConfig
from ..decoding import beam_search, decode
from ..policy.base import SEP
from ..policy.qwen import QwenPolicy, sid_token_names
from ..rl.advantages import sibling_node_advantages
from ..rl.updates import group_advantages, negative_weights, own_prefixes, taper_negatives
from ..world import Queries, World
from ..world.rewards import rewards as world_rewards

TESTED_WITH = "1.16.0"
"""The TRL version this module is tested with; ``VStarGRPOTrainer`` relies on two of its private methods."""

NOT_IN_TRL = {"baseline": "group", "critic": "none", "distill": "none", "group": "decoder", "baseline_shift": 0.0}
"""The RLConfig fields ``token_advantages`` supports only at these values (the module docstring says why)."""


# ----------------------------------------------------------------------------------------------
# the advantages (pure)


def token_advantages(sids: torch.Tensor, rewards: torch.Tensor, num_generations: int, rl: RLConfig,
                     valid: torch.Tensor | None = None, own: torch.Tensor | None = None,
                     token_logp: torch.Tensor | None = None) -> torch.Tensor:
    """(N, L) the advantage of every token of N = B * G completions in TRL's order (each prompt's G completions
    consecutive), for ``rl.objective``:

    - "grpo": A(x, y) of Eq. 2 (``updates.group_advantages``) on every token of y;
    - "sibling": on token y_l, A_node of the node y_<=l among its parent's child nodes (Eq. 18), on the first
      candidate through that node only (Eq. 19 counts a node once; ``losses.sibling_loss``), times L when
      ``rl.sibling_norm`` is "candidates" (Eq. 19 divides by |C(x)|, TRL by the token count |C(x)| L);
    - "joint": grpo_weight * the first + sibling_weight * the second.

    ``rl.negatives`` "drop" needs ``own`` (N, L) bool: the candidate's prefix is in the policy's own beam set
    (``updates.own_prefixes``); "topr" needs ``token_logp`` (N, L), the behaviour policy's log pi(y_l | x, y_<l).
    ``valid`` (N,) False marks a padding completion: 0, and left out of every group statistic.

    >>> sids = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    >>> token_advantages(sids, torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, RLConfig(objective="grpo", adv_ddof=0))
    tensor([[ 1.7317,  1.7317],
            [-0.5772, -0.5772],
            [-0.5772, -0.5772],
            [-0.5772, -0.5772]])
    """
    refused = {k: getattr(rl, k) for k, v in NOT_IN_TRL.items() if getattr(rl, k) != v}
    if refused:
        raise ValueError(f"RLConfig {refused} is not supported inside TRL's loss: expected "
                         + ", ".join(f"{k} = {NOT_IN_TRL[k]!r}" for k in refused))
    n, L = sids.shape
    if num_generations < 1 or n % num_generations:
        raise ValueError(f"num_generations = {num_generations} is invalid: {n} completions do not make whole groups")
    g = num_generations
    s = sids.reshape(-1, g, L).long()
    r = rewards.reshape(-1, g).float()
    v = torch.ones(r.shape, dtype=torch.bool) if valid is None else valid.reshape(-1, g).bool()
    weights = negative_weights(rl.negatives, s, None if token_logp is None else token_logp.reshape(-1, g, L).float(),
                               v, None if own is None else own.reshape(-1, g, L))
    grpo_neg, sibling_neg = weights if weights is not None else (None, None)
    out = torch.zeros(s.shape, dtype=torch.float32)
    joint = rl.objective == "joint"
    if rl.objective in ("grpo", "joint"):
        adv = group_advantages(r, rl.adv_eps, v, rl.adv_ddof, None, grpo_neg)  # Eq. 2, (B, G)
        out += (rl.grpo_weight if joint else 1.0) * adv[..., None]
    if rl.objective in ("sibling", "joint"):
        adv, first = sibling_node_advantages(s.clamp_min(0), r, rl.adv_eps, v, rl.adv_ddof)  # Eq. 18, (B, G, L)
        if sibling_neg is not None:
            adv = taper_negatives(adv, sibling_neg)
        scale = L if rl.sibling_norm == "candidates" else 1.0
        out += (rl.sibling_weight if joint else 1.0) * scale * adv * first
    return torch.where(v[..., None], out, 0.0).reshape(n, L)


# ----------------------------------------------------------------------------------------------
# prompts and tokens


def sid_tokenizer(policy: QwenPolicy | None = None):
    """A Hugging Face tokenizer of the SID vocabulary, built here (nothing downloaded): ``<pad>``, ``<eos>``,
    ``<unk>``, and, for a ``policy`` that holds its SID tokens already (an SFT-trained ``QwenPolicy`` built without
    a tokenizer, e.g. ``pipeline.sft_policy(..., backbone="tiny-qwen")``), ``<sid>`` and its codes at that
    policy's ids; without one, ``wrap_model`` adds them. A prompt string of those tokens splits at them exactly."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    if policy is not None:
        names = sid_token_names(policy.catalog.codebook_sizes)
        ids = policy.hf_token.tolist()  # [PAD, <sid>, codes ..] as the backbone numbers them
        free = [i for i in range(len(ids) + 3) if i not in set(ids)][:2]
        vocab = {"<pad>": ids[0], "<eos>": free[0], "<unk>": free[1], **dict(zip(names, ids[1:]))}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                  padding_side="left")
    if policy is not None:  # the SID tokens split as whole words, as added tokens do
        tok.add_tokens(sid_token_names(policy.catalog.codebook_sizes), special_tokens=True)
    return tok


def wrap_model(world: World, model, tokenizer) -> QwenPolicy:
    """The Qwen2 ``model`` TRL trains as a toolkit policy over ``world``'s SIDs (the same module, the same
    weights): its SID tokens added to ``tokenizer`` (kept where ``sid_tokenizer(policy)`` placed them) and its
    embeddings resized where needed. Call it before the trainer is built (its optimiser must see the resized
    embeddings)."""
    return QwenPolicy(world.catalog, model, tokenizer).train(model.training)


def prompt_text(policy: QwenPolicy, history: np.ndarray, tokenizer) -> str:
    """A history (H,) of item ids (-1 padding) as a prompt string of SID tokens ending in the start ``<sid>``."""
    ids, mask = policy._prompt_ids(np.asarray(history)[None])
    return "".join(tokenizer.convert_ids_to_tokens(ids[0][mask[0].bool()].tolist()))


def sid_prompts(world: World, policy: QwenPolicy, tokenizer, split: str = "train", n: int | None = None):
    """A ``datasets.Dataset`` of ``split``'s users: ``prompt`` (``prompt_text``), ``user`` and ``target`` (the
    columns ``SIDRollout.reward`` reads)."""
    from datasets import Dataset

    q = world.queries(split, n=n)
    return Dataset.from_dict({"prompt": [prompt_text(policy, h, tokenizer) for h in q.histories],
                              "user": q.users.tolist(), "target": q.targets.tolist()})


def histories_of(policy: QwenPolicy, token_ids: list[list[int]], length: int) -> np.ndarray:
    """(B, length) item ids, left-padded with -1, of prompts given as backbone token ids (``prompt_text``'s
    layout): each ``<sid>`` followed by L code tokens is one item; the closing ``<sid>`` starts generation."""
    ours = {int(b): i for i, b in enumerate(policy.hf_token.tolist())}  # backbone id -> our token id
    offsets = policy.code_offset.tolist()
    out = np.full((len(token_ids), length), -1, dtype=np.int64)
    for row, ids in enumerate(token_ids):
        toks = [ours[int(t)] for t in ids]
        starts = [i for i, t in enumerate(toks) if t == SEP][:-1]  # the last <sid> opens the completion
        codes = [[toks[s + 1 + lv] - 2 - offsets[lv] for lv in range(policy.levels)] for s in starts]
        items = policy.catalog.item_of(np.asarray(codes, dtype=np.int64).reshape(-1, policy.levels))[-length:]
        out[row, length - len(items):] = items
    return out


# ----------------------------------------------------------------------------------------------
# the rollout


@dataclasses.dataclass
class Batch:
    """What ``SIDRollout`` decoded for one call, kept for the trainer: per row of the call (n, L) SIDs, (n,) valid,
    (n, L) own-set prefixes and behaviour log-probs where the update needs them; per group decoded, the candidate
    sets and histories, and ``head_rows``, the first row of each group in the call (for TD)."""

    sids: torch.Tensor
    valid: torch.Tensor
    own: torch.Tensor | None
    token_logp: torch.Tensor | None
    cands: object
    histories: np.ndarray
    head_rows: np.ndarray


class SIDRollout:
    """TRL's ``rollout_func``: each prompt's group of ``num_generations`` completions is ``decode``'s candidate
    set on ``policy`` (the model TRL trains, ``wrap_model``), guided by ``value_head`` for value decoders; and
    ``reward``, the world's reward of the decoded items. ``negatives``: ``RLConfig.negatives``, for what the
    rollout must keep (the own beam set for "drop", the behaviour log-probs for "topr")."""

    def __init__(self, world: World, policy: QwenPolicy, decode_cfg: DecodeConfig, value_head=None,
                 value_cfg: ValueConfig | None = None, reward: str = "semantic", negatives: str = "keep"):
        self.world, self.policy, self.decode_cfg, self.reward_kind = world, policy, decode_cfg, reward
        self.value_head, self.value_cfg, self.negatives = value_head, value_cfg or ValueConfig(), negatives
        self.value_opt = (torch.optim.Adam(value_head.parameters(), lr=self.value_cfg.lr)
                          if value_head is not None else None)
        self.last: Batch | None = None

    def __call__(self, prompts: list[str], trainer) -> dict:
        g, tok, pol = trainer.num_generations, trainer.processing_class, self.policy
        # TRL repeats each prompt num_generations times, consecutively, and hands each process a contiguous
        # slice of the generation batch: a group may begin on one process and end on the next. Each process
        # decodes every group it holds a row of (the same set on both sides: the weights are synchronised and
        # the decoders seeded) and keeps the candidates of its rows.
        rows = trainer.accelerator.process_index * len(prompts) + np.arange(len(prompts))  # in the whole batch
        member = rows % g
        group = rows // g
        head_rows = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        which = np.searchsorted(head_rows, np.arange(len(prompts)), side="right") - 1  # each row's group here
        if self.value_head is not None and (member[0] != 0 or member[-1] != g - 1):
            raise ValueError("a group spans two processes, and each process's value head learns apart: set "
                             "per_device_train_batch_size to a multiple of num_generations for a value decoder")
        prompt_ids = [tok(prompts[i], add_special_tokens=False)["input_ids"] for i in head_rows]
        histories = histories_of(pol, prompt_ids, self.world.histories.shape[1])
        q = Queries(np.full(len(head_rows), -1), histories, np.full(len(head_rows), -1))  # no target to see
        training = pol.model.training  # TRL reads the mode after the rollout ("train" or "eval" metrics, buffering)
        pol.eval()
        with torch.no_grad():
            value_fn = self.value_head.bind(q) if self.value_head is not None else None
            cands = decode(pol, histories, self.decode_cfg.with_candidates(g), value_fn)
            own = token_logp = None
            if self.negatives == "drop":
                mine = beam_search(pol, histories, g, 1.0)
                own = own_prefixes(cands.sids.clamp_min(0), mine.sids, cands.valid, mine.valid)
            if self.negatives == "topr":
                token_logp = torch.where(cands.valid[..., None], pol.logprobs(histories, cands.sids.clamp_min(0)), 0.0)
        pol.train(training)
        pick = (torch.as_tensor(which), torch.as_tensor(member))  # each row's (group, candidate)
        sids, valid = cands.sids.cpu()[pick], cands.valid.cpu()[pick]  # (n, L), (n,)
        top = cands.sids.cpu()[:, 0][torch.as_tensor(which)]
        filled = torch.where(valid[:, None], sids, top)  # a padding row repeats its group's top candidate
        lv = torch.arange(pol.levels)
        completion = pol.hf_token[pol.code_token(lv, filled.to(pol.device))].cpu()  # (n, L) backbone ids
        self.last = Batch(sids, valid, None if own is None else own.cpu()[pick],
                          None if token_logp is None else token_logp.cpu()[pick], cands, histories, head_rows)
        return {"prompt_ids": [prompt_ids[k] for k in which], "completion_ids": completion.tolist(), "logprobs": None,
                "item": self.world.catalog.item_of(filled.numpy()).tolist(),
                "env_mask": valid[:, None].expand(-1, pol.levels).int().tolist()}  # padding: no loss

    def reward(self, prompts, completions, item, user, target, **kwargs) -> list[float]:
        """TRL's reward function: the world's reward (``RLConfig.reward``) of each completion's item for its
        user (the dataset's ``user`` and ``target`` columns; ``item`` comes from the rollout)."""
        r = world_rewards(self.world, self.reward_kind, np.asarray(user), np.asarray(target),
                          np.asarray(item)[:, None])
        return np.asarray(r, dtype=float)[:, 0].tolist()

    def learn_value(self, users: np.ndarray, targets: np.ndarray) -> float:
        """One TD step of the value head (Eq. 9) on the last decoded batch, as the toolkit's loop takes; NaN
        without a head."""
        from ..rl.value_learning import td_update

        if self.value_head is None or self.last is None:
            return float("nan")
        q = Queries(np.asarray(users), self.last.histories, np.asarray(targets))
        return td_update(self.policy, self.value_head, self.value_opt, self.world, q, self.last.cands, self.value_cfg)


# ----------------------------------------------------------------------------------------------
# the trainer


def vstar_trainer_class():
    """``VStarGRPOTrainer``, defined when TRL is imported (the extra ``trl``)."""
    from trl import GRPOTrainer

    class VStarGRPOTrainer(GRPOTrainer):
        """TRL's ``GRPOTrainer`` with the toolkit's per-token advantages (``token_advantages`` of ``vstar``, an
        ``RLConfig``) in place of its per-sequence ones, and the rollout's value head trained by TD each batch.

        Pinned to trl 1.16 (``TESTED_WITH``); relies on two private methods: ``_calculate_rewards`` (its gathered
        (N, n_funcs) rewards are kept) and ``_generate_and_score_completions`` (run, then its "advantages"
        replaced by an (n, L) tensor, which ``_compute_loss`` accepts: it unsqueezes only 1-D advantages)."""

        def __init__(self, *args, rollout: SIDRollout, vstar: RLConfig, **kwargs):
            super().__init__(*args, rollout_func=rollout, **kwargs)
            self.sid_rollout, self.vstar = rollout, vstar
            self._gathered_rewards = None

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            self._gathered_rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            return self._gathered_rewards

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            device, gather = out["completion_ids"].device, self.accelerator.gather
            rewards = (self._gathered_rewards * self.reward_weights.to(device)[None]).nansum(1)
            last = self.sid_rollout.last
            parts = {"sids": last.sids, "valid": last.valid, "own": last.own, "token_logp": last.token_logp}
            every = {k: None if v is None else gather(v.to(device)).cpu() for k, v in parts.items()}
            adv = token_advantages(every["sids"], rewards.cpu(), self.num_generations, self.vstar, every["valid"],
                                   every["own"], every["token_logp"])
            n = out["completion_ids"].shape[0]
            mine = slice(self.accelerator.process_index * n, (self.accelerator.process_index + 1) * n)
            out["advantages"] = adv[mine].to(device)
            heads = [inputs[i] for i in last.head_rows]
            self.sid_rollout.learn_value([x["user"] for x in heads], [x["target"] for x in heads])
            return out

    return VStarGRPOTrainer


def trl_config(rl: RLConfig, num_generations: int, out: str, steps: int, batch_prompts: int, **overrides):
    """A ``trl.GRPOConfig`` whose loss is the toolkit's ``policy_loss`` under ``rl`` (the module docstring):
    token-level ratios clipped at ``clip_eps``, the token-mean normalisation ("bnpo"), the learning rate; the k3
    KL without TRL's bias correction, at beta = 0: TRL builds its reference model from the model's path, which a
    model built from a config lacks (set ``beta=rl.kl_coef`` in ``overrides`` for a saved one). On a CPU, float32
    and no gradient checkpointing. ``batch_prompts`` prompts per step, each with ``num_generations`` completions."""
    from trl import GRPOConfig

    cpu = not torch.cuda.is_available()
    kw = dict(output_dir=out, max_steps=steps, num_generations=num_generations,
              per_device_train_batch_size=batch_prompts * num_generations, learning_rate=rl.lr,
              epsilon=rl.clip_eps if rl.clip_eps > 0 else 1e6, beta=0.0, use_bias_correction_kl=False,
              loss_type="bnpo", importance_sampling_level="token", scale_rewards="group", num_iterations=1,
              max_grad_norm=rl.max_grad_norm, lr_scheduler_type="constant", warmup_steps=rl.warmup_steps,
              logging_steps=1, report_to="none", save_strategy="no", seed=rl.seed, bf16=not cpu,
              gradient_checkpointing=False, use_cpu=cpu, disable_dropout=True, max_completion_length=16)
    return GRPOConfig(**{**kw, **overrides})


def vstar_trainer(world: World, model, tokenizer, cfg, value_head=None, out: str = "runs/trl",
                  n_users: int | None = None, trainer_class=None, **trl_overrides):
    """(trainer, policy, rollout): TRL's trainer for the Qwen2 ``model`` (``tokenizer``: ``sid_tokenizer``) on
    ``world``'s training users (the first ``n_users``), with the toolkit's candidates (``cfg.decode``, |C| the
    group size; VED guided by ``value_head``, trained by TD as it goes), reward (``cfg.rl.reward``) and per-token
    advantages (``cfg.rl``), ``cfg.rl.batch_queries`` prompts and ``cfg.rl.steps`` steps (``trl_config``).
    ``trainer_class``: a subclass of ``vstar_trainer_class()`` to build instead. The model is wrapped first
    (``wrap_model``), before TRL's optimiser sees its embeddings."""
    policy = wrap_model(world, model, tokenizer)
    rollout = SIDRollout(world, policy, cfg.decode, value_head, cfg.value, reward=cfg.rl.reward,
                         negatives=cfg.rl.negatives)
    args = trl_config(cfg.rl, cfg.decode.n_candidates, out, cfg.rl.steps, cfg.rl.batch_queries, **trl_overrides)
    dataset = sid_prompts(world, policy, tokenizer, "train", n=n_users)
    trainer = (trainer_class or vstar_trainer_class())(model=model, reward_funcs=[rollout.reward], args=args,
                                                       processing_class=tokenizer, train_dataset=dataset,
                                                       rollout=rollout, vstar=cfg.rl)
    return trainer, policy, rollout


def train_with_trl(world: World, sft: QwenPolicy, cfg, value_head=None, out: str = "runs/trl",
                   n_users: int | None = None, **trl_overrides) -> tuple[QwenPolicy, list[dict]]:
    """``cfg.rl.steps`` steps of TRL's GRPOTrainer (``vstar_trainer``) from a copy of the SFT ``QwenPolicy``
    (``pipeline.sft_policy(..., backbone=...)``) and a copy of ``value_head``: the toolkit's loop
    (``rl.train.train``) run inside TRL. Returns the trained policy and TRL's log (``trainer.state.log_history``)."""
    import copy

    head = copy.deepcopy(value_head) if value_head is not None else None
    trainer, policy, _ = vstar_trainer(world, copy.deepcopy(sft.model).train(), sid_tokenizer(sft), cfg, head, out,
                                       n_users, **trl_overrides)
    trainer.train()
    return policy.eval(), trainer.state.log_history


__all__ = ["NOT_IN_TRL", "SIDRollout", "TESTED_WITH", "histories_of", "prompt_text", "sid_prompts", "sid_tokenizer",
           "token_advantages", "train_with_trl", "trl_config", "vstar_trainer", "vstar_trainer_class", "wrap_model"]
