"""Rollout backends: sample `n_per_prompt` responses per prompt from the current policy.

    backend = ROLLOUT_BACKENDS["megatron"](model, eod_id=0, context=64, tp_group=group)
    out = backend.generate([[5, 9, 2], ...], n_per_prompt=4, max_new_tokens=32,
                           temperature=1.0, top_p=1.0, seeds=[11, 12, ...])
    out.tokens  # [num_prompts * n, L]: prompt, response, padding (the EOD id) per row

- `megatron` (the CPU backend): a sampling loop over the policy's own GPTModel forward, the
  whole sequence recomputed at each new token (no KV cache: megatron-core 0.16's inference
  engines call torch.cuda unconditionally). It holds the policy module itself, so it is always
  refitted: after an update its logits are the trained policy's.
- `vllm` (GPU clusters; NeMo-RL / verl style): a `vllm.LLM` built once from the starting
  policy written as a Hugging Face folder by the exporter (`checkpoint.dir/vllm_policy`), one
  request per prompt (`SamplingParams(n=group_size, seed=the prompt's seed, stop at EOD)`), and
  `refit` after each step loads the policy's weights into the engine in memory, HF-named by
  the exporter's mapping. Refused in one line where vllm cannot be imported; TP = EP = 1 only.
  GRPO itself still refuses CUDA machines (posttrain.grpo.check_cpu_only), so this backend is
  wired and tested against a stand-in module, not yet run against a real engine.

Sampling is Gumbel-max over temperature-scaled, nucleus-filtered logits with noise from one
generator per prompt (`seeds`, one per prompt): a prompt's samples do not depend on which other
prompts share its batch, so DP2 draws what a single process draws. Under tensor parallelism
each rank's vocabulary slice of the last positions is all-gathered, every TP rank samples, and
TP rank 0's tokens are broadcast so that all of them continue with the same ones.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
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

    def put(self, row: int, response: list[int]) -> None:
        """Set `row`'s whole response (finished when it ends with EOD)."""
        start = int(self.lengths[row])
        room = min(self.max_new, self.limit - start)
        if len(response) > room:
            raise ValueError(f"a response of {len(response)} tokens exceeds its room {room}")
        self.tokens[row, start : start + len(response)] = torch.tensor(response, dtype=torch.long)
        self.lengths[row] += len(response)
        self.finished[row] = bool(response) and response[-1] == self.eod_id

    def rollout(self) -> Rollout:
        return Rollout(
            self.tokens, self.prompt_lengths, self.lengths - self.prompt_lengths, self.finished
        )


def fill_rollout(
    prompts: list[list[int]],
    n_per_prompt: int,
    responses: list[list[int]],
    max_new_tokens: int,
    context: int,
    eod_id: int,
) -> Rollout:
    """The Rollout of given responses (`n_per_prompt` consecutive per prompt), laid out as
    `MegatronRollout.generate` lays out its own: same width, EOD padding, lengths, finished."""
    state = _State.start(prompts, n_per_prompt, max_new_tokens, context, eod_id)
    for row, response in enumerate(responses):
        state.put(row, response)
    return state.rollout()


# ---- vLLM --------------------------------------------------------------------------------------
# The engine API used here, and where it was read: vLLM's vllm/entrypoints/llm.py at commit
# 0012cf69 (0.9-era: `LLM(model, seed, gpu_memory_utilization, **EngineArgs)`, `generate(prompts,
# sampling_params=list, use_tqdm=)` with TokensPrompt dicts), the V1 engine of later releases
# (v1/engine/llm_engine.py `collective_rpc(method: str | Callable, timeout, args, kwargs)`,
# v1/serial_utils.py encoding CPU tensors in RPC arguments) and NeMo-RL's
# nemo_rl/models/generation/vllm/vllm_backend.py at 000cd248 (a `worker_extension_cls` whose
# method calls `self.model_runner.model.load_weights(weights=...)`; it targets vLLM 0.25-0.29,
# where some fused kernels (FP8, TRT-LLM MoE) also need vLLM's layerwise reload: not done here,
# bf16 unquantized models only). Not run here (no GPU, no vllm): tests drive it through a
# stand-in `vllm` module.

VLLM_ENGINE_OPTIONS: dict[str, Any] = {
    "dtype": "bfloat16",
    "skip_tokenizer_init": True,  # token ids in, token ids out
    "enable_prefix_caching": True,  # a group's n samples share their prompt's KV cache
    "distributed_executor_backend": "external_launcher",  # engine inside each torchrun rank
    "tensor_parallel_size": 1,
    "worker_extension_cls": "posttrain.rollout.VLLMRefitExtension",
}
"""`vllm.LLM` arguments besides the model folder, context, seed and memory share (verl's SPMD
rollout layout: one engine per training rank, on its device)."""
REFIT_BUCKET_BYTES = 512 * 1024**2
"""Weights sent to the engine per `collective_rpc` call (bounds the CPU copy in flight)."""


class VLLMRefitExtension:
    """Mixed into each vLLM worker (`worker_extension_cls`): `self` is the worker."""

    def load_policy_weights(self, weights: list[tuple[str, Tensor]]) -> None:
        """Load HF-named tensors into the engine's model; MLA attention then recomputes the
        absorbed up-projections it derived from kv_b_proj at load time."""
        model = self.model_runner.model  # type: ignore[attr-defined]
        model.load_weights(weights=[(name, tensor) for name, tensor in weights])
        dtype = self.model_runner.model_config.dtype  # type: ignore[attr-defined]
        for module in model.modules():
            mla = type(module).__name__ == "MLAAttention" or getattr(module, "use_mla", False)
            if mla and hasattr(module, "process_weights_after_loading"):
                module.process_weights_after_loading(dtype)


@dataclass
class VLLMSetup:
    """What the vLLM backend needs besides the policy: the exporter's inputs and a folder."""

    model_cfg: Any
    """The policy's ModelConfig (trainer.config.model)."""
    folder: str
    """Where the starting policy is written as a Hugging Face folder for the engine to load."""
    tokenizer: str
    """tokenizer.json (copied into the folder)."""
    eod_token: str
    gpu_memory_utilization: float = 0.3
    """Share of GPU memory the engine takes (weights + KV cache) beside the training state."""


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            "rollout.backend=vllm needs the vllm package and CUDA GPUs (pip install vllm); "
            f"on CPU use rollout.backend=megatron ({reason})"
        ) from None
    return vllm


class VLLMRollout:
    """Rollouts from a vLLM engine built once from the starting policy exported as a Hugging
    Face folder; `refit` loads the policy's current weights into it (in memory, HF-named by the
    exporter's own mapping) after each update. Needs a one-process model per rank (TP = EP = 1:
    GRPOConfig refuses more with this backend)."""

    def __init__(
        self,
        model: torch.nn.Module,
        eod_id: int,
        context: int,
        tp_group: Any = None,
        setup: VLLMSetup | None = None,
    ) -> None:
        self.vllm = _import_vllm()
        if setup is None or tp_group is not None:
            raise ValueError("rollout.backend=vllm: needs a VLLMSetup and a policy without TP")
        from trainer.hf.stream import weight_entries

        self.eod_id, self.context, self.setup = eod_id, context, setup
        self.names = list(weight_entries(setup.model_cfg))
        folder = self._write_folder(model)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # external_launcher needs it
        self.llm = self.vllm.LLM(
            model=str(folder),
            max_model_len=context,
            gpu_memory_utilization=setup.gpu_memory_utilization,
            seed=0,
            **VLLM_ENGINE_OPTIONS,
        )

    def hf_weights(self, model: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
        """The policy's weights as `trainer.export` names and splits them (MTP included)."""
        from trainer.export import hf_tensors
        from trainer.hf.stream import ModuleTensors

        return hf_tensors(self.setup.model_cfg, ModuleTensors(_unwrap(model), self.names))

    def _write_folder(self, model: torch.nn.Module) -> Path:
        """Rank 0 writes the starting policy as an HF folder (bf16, the engine's dtype; any
        earlier one removed: it is derived), then every rank reads it."""
        from trainer.export import TokenizerFiles, write_folder

        folder = Path(self.setup.folder)
        if not dist.is_initialized() or dist.get_rank() == 0:
            shutil.rmtree(folder, ignore_errors=True)
            tok = TokenizerFiles(Path(self.setup.tokenizer), self.eod_id, self.setup.eod_token)
            write_folder(folder, self.setup.model_cfg, self.hf_weights(model), tok, "bfloat16")
        if dist.is_initialized():
            dist.barrier()
        return folder

    @torch.no_grad()
    def refit(self, model: torch.nn.Module) -> None:
        """Load the policy's current weights into the engine, in buckets, and drop the prefix
        cache (its KV entries came from the old weights)."""
        for bucket in _buckets(self.hf_weights(model), REFIT_BUCKET_BYTES):
            self.llm.collective_rpc("load_policy_weights", args=(bucket,))
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()

    def generate(
        self,
        prompts: list[list[int]],
        n_per_prompt: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seeds: list[int],
    ) -> Rollout:
        """As `MegatronRollout.generate`: one vLLM request per prompt (n samples, its seed)."""
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        params = [
            self.vllm.SamplingParams(
                n=n_per_prompt,
                temperature=temperature,
                top_p=top_p,
                max_tokens=min(max_new_tokens, self.context - len(p)),
                seed=int(seed),
                stop_token_ids=[self.eod_id],
                detokenize=False,
            )
            for p, seed in zip(prompts, seeds, strict=True)
        ]
        requests = [{"prompt_token_ids": list(p)} for p in prompts]  # vllm.inputs.TokensPrompt
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        responses = [list(c.token_ids) for out in outputs for c in out.outputs]
        return fill_rollout(
            prompts, n_per_prompt, responses, max_new_tokens, self.context, self.eod_id
        )


def _buckets(
    weights: Iterable[tuple[str, Tensor]], max_bytes: int
) -> Iterator[list[tuple[str, Tensor]]]:
    """(name, contiguous CPU tensor) lists of at most `max_bytes` (or one tensor)."""
    bucket: list[tuple[str, Tensor]] = []
    size = 0
    for name, tensor in weights:
        tensor = tensor.detach().to("cpu").contiguous()
        if bucket and size + tensor.nbytes > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += tensor.nbytes
    if bucket:
        yield bucket


ROLLOUT_BACKENDS: dict[str, Callable[..., Any]] = {
    "megatron": MegatronRollout,
    "vllm": VLLMRollout,
}
"""Rollout backends by the name `rollout.backend` gives."""
