"""Rollout backends: sample `n_per_prompt` responses per prompt from the current policy.

    backend = ROLLOUT_BACKENDS["megatron"](model, eod_id=0, context=64, tp_group=group)
    out = backend.generate([[5, 9, 2], ...], n_per_prompt=4, max_new_tokens=32,
                           temperature=1.0, top_p=1.0, seeds=[11, 12, ...])
    out.tokens  # [num_prompts * n, L]: prompt, response, padding (the EOD id) per row

- `megatron` (the CPU backend): a sampling loop over the policy's own GPTModel forward, the
  whole sequence recomputed at each new token (no KV cache: megatron-core 0.16's inference
  engines call torch.cuda unconditionally). It holds the policy module itself, so it is always
  refitted: after an update its logits are the trained policy's.
- `vllm`: selectable for GPU clusters; refuses in one line where vllm is not installed.

Sampling is Gumbel-max over temperature-scaled, nucleus-filtered logits with noise from one
generator per prompt (`seeds`, one per prompt): a prompt's samples do not depend on which other
prompts share its batch, so DP2 draws what a single process draws. Under tensor parallelism
each rank's vocabulary slice of the last positions is all-gathered, every TP rank samples, and
TP rank 0's tokens are broadcast so that all of them continue with the same ones.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class Rollout:
    """Generated sequences, `n_per_prompt` consecutive rows per prompt."""

    tokens: Tensor
    """[rows, length] int64: prompt, then response, then padding (the EOD id)."""
    prompt_lengths: Tensor
    """[rows] tokens of each row's prompt."""
    response_lengths: Tensor
    """[rows] generated tokens (the EOD that ended a response included)."""
    finished: Tensor
    """[rows] bool: the response ended with EOD (else it hit max_new_tokens or the context)."""

    def response_mask(self) -> Tensor:
        """[rows, length - 1] bool over next-token targets: true where the target token
        `tokens[:, t + 1]` belongs to the response."""
        positions = torch.arange(1, self.tokens.shape[1]).unsqueeze(0)
        start = self.prompt_lengths.unsqueeze(1)
        return (positions >= start) & (positions < start + self.response_lengths.unsqueeze(1))

    def responses(self) -> list[list[int]]:
        """Each row's response token ids."""
        starts, lengths = self.prompt_lengths.tolist(), self.response_lengths.tolist()
        return [
            self.tokens[i, p : p + n].tolist()
            for i, (p, n) in enumerate(zip(starts, lengths, strict=True))
        ]


def nucleus_filter(logits: Tensor, top_p: float) -> Tensor:
    """`logits` [rows, V] with every token outside the smallest set of probability >= top_p
    set to -inf (the most likely token always stays)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop = cumulative - sorted_logits.softmax(-1) >= top_p
    drop[:, 0] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def sample_tokens(logits: Tensor, temperature: float, top_p: float, noise: Tensor) -> Tensor:
    """Next token per row by Gumbel-max: argmax(logits / T + g), g = -log(-log(noise)); greedy
    at temperature 0. `noise` [rows, V] uniform in (0, 1)."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    scaled = nucleus_filter(logits / temperature, top_p)
    gumbel = -torch.log(-torch.log(noise.clamp(1e-20, 1 - 1e-7)))
    return (scaled + gumbel).argmax(-1)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module") and not hasattr(model, "decoder"):
        model = model.module
    return model


class MegatronRollout:
    """The CPU rollout backend: a sampling loop over the policy's GPTModel forward."""

    def __init__(self, model: torch.nn.Module, eod_id: int, context: int, tp_group: Any = None):
        self.model = _unwrap(model)
        self.eod_id, self.context, self.tp_group = eod_id, context, tp_group
        self.tp = 1 if tp_group is None else dist.get_world_size(tp_group)

    def refit(self, model: torch.nn.Module) -> None:
        """Take the policy's current weights: it holds the policy module itself."""
        self.model = _unwrap(model)

    @torch.no_grad()
    def logits(self, tokens: Tensor) -> Tensor:
        """Full-vocabulary next-token logits [rows, length, V] (gathered under TP)."""
        from trainer.model import lm_logits

        width = tokens.shape[1]
        padded = _pad_columns(tokens, -(-width // self.tp) * self.tp, self.eod_id)
        was_training = self.model.training
        self.model.eval()
        try:
            out = lm_logits(self.model, padded)[:, :width]
        finally:
            self.model.train(was_training)
        return self._gather_vocab(out)

    def _gather_vocab(self, logits: Tensor) -> Tensor:
        if self.tp == 1:
            return logits
        parts = [torch.empty_like(logits) for _ in range(self.tp)]
        dist.all_gather(parts, logits.contiguous(), group=self.tp_group)
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        n_per_prompt: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seeds: list[int],
    ) -> Rollout:
        """`n_per_prompt` samples of each prompt (one seed per prompt); responses end at EOD,
        after `max_new_tokens`, or at the context length."""
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        state = _State.start(prompts, n_per_prompt, max_new_tokens, self.context, self.eod_id)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        vocab = None
        for _ in range(max_new_tokens):
            active = state.active()
            if not bool(active.any()):
                break
            rows = active.nonzero().squeeze(1)
            last = self._last_logits(state, rows)
            vocab = vocab or last.shape[-1]
            noise = torch.cat([torch.rand(n_per_prompt, vocab, generator=g) for g in generators])
            chosen = sample_tokens(last, temperature, top_p, noise[rows])
            state.append(rows, self._same_on_tp_ranks(chosen))
        return state.rollout()

    def _last_logits(self, state: _State, rows: Tensor) -> Tensor:
        """Full-vocabulary logits at the last filled position of `rows`."""
        from trainer.model import lm_logits

        width = int(state.lengths[rows].max())
        width = -(-width // self.tp) * self.tp
        tokens = state.tokens[rows, :width]
        tokens = _pad_columns(tokens, width, self.eod_id)
        out = lm_logits(self.model, tokens)
        last = out[torch.arange(len(rows)), state.lengths[rows] - 1]
        return self._gather_vocab(last)

    def _same_on_tp_ranks(self, tokens: Tensor) -> Tensor:
        if self.tp > 1:
            from megatron.core import parallel_state as ps

            dist.broadcast(tokens, ps.get_tensor_model_parallel_src_rank(), group=self.tp_group)
        return tokens


def _pad_columns(tokens: Tensor, width: int, pad: int) -> Tensor:
    if tokens.shape[1] >= width:
        return tokens
    extra = tokens.new_full((tokens.shape[0], width - tokens.shape[1]), pad)
    return torch.cat([tokens, extra], dim=1)


@dataclass
class _State:
    """The sequences being generated."""

    tokens: Tensor
    lengths: Tensor
    prompt_lengths: Tensor
    finished: Tensor
    limit: int
    max_new: int
    eod_id: int

    @classmethod
    def start(
        cls, prompts: list[list[int]], n: int, max_new: int, context: int, eod: int
    ) -> _State:
        rows = [p for p in prompts for _ in range(n)]
        lengths = torch.tensor([len(r) for r in rows])
        if int(lengths.max()) >= context:
            raise ValueError(f"a prompt of {int(lengths.max())} tokens leaves no room in {context}")
        limit = min(context, int(lengths.max()) + max_new)
        tokens = torch.full((len(rows), limit), eod, dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = torch.tensor(row)
        done = torch.zeros(len(rows), dtype=torch.bool)
        return cls(tokens, lengths.clone(), lengths, done, limit, max_new, eod)

    def active(self) -> Tensor:
        budget = self.lengths - self.prompt_lengths < self.max_new
        return ~self.finished & (self.lengths < self.limit) & budget

    def append(self, rows: Tensor, chosen: Tensor) -> None:
        self.tokens[rows, self.lengths[rows]] = chosen
        self.lengths[rows] += 1
        self.finished[rows] |= chosen == self.eod_id

    def rollout(self) -> Rollout:
        return Rollout(
            self.tokens, self.prompt_lengths, self.lengths - self.prompt_lengths, self.finished
        )


class VLLMRollout:
    """Rollouts from a vLLM engine on GPUs (weights refitted from the policy after each step)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise ValueError(
                "rollout.backend=vllm needs the vllm package and CUDA GPUs (pip install vllm); "
                "on CPU use rollout.backend=megatron"
            )
        raise ValueError(
            "rollout.backend=vllm: the vLLM engine and its weight refit are not implemented yet; "
            "use rollout.backend=megatron"
        )


ROLLOUT_BACKENDS: dict[str, Callable[..., Any]] = {
    "megatron": MegatronRollout,
    "vllm": VLLMRollout,
}
"""Rollout backends by the name `rollout.backend` gives."""
