"""One GRPO step on the megatron-core policy (what `python -m posttrain.grpo` repeats).

`GRPO` owns the policy (trainer.loop.Trainer: megatron DDP + optimizer + checkpoints), the
frozen reference (the starting weights), the rollout backend and the reward plugins. `step()`:
this DP rank's prompts -> `rollout.group_size` samples each -> rewards -> group advantages ->
reference (and, with several updates per rollout, old) log-probs -> `train.updates_per_step`
optimizer steps through megatron's forward-backward schedule on the clipped loss + k3 KL,
normalised by the response tokens of the global batch -> the rollout backend refitted with the
updated weights -> metrics reduced over DP ranks.
"""

from __future__ import annotations

import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from posttrain.grpo_config import GRPOConfig
from posttrain.grpo_loss import clipped_policy_loss, group_advantages, token_logprobs
from posttrain.prompts import Prompt, PromptSet
from posttrain.rewards import Sample
from posttrain.rollout import ROLLOUT_BACKENDS, Rollout, VLLMSetup, _unwrap

REPORT = ("loss", "clip_fraction", "kl", "entropy", "ratio_mean", "tokens")
"""Per micro-batch report: the loss share, then token-weighted sums of the metrics."""


class without_mtp:  # noqa: N801 - a context manager used like a function
    """Run a GPTModel without its MTP block (GRPO scores the main head only)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = _unwrap(model)

    def __enter__(self) -> None:
        self.saved = self.model.config.mtp_num_layers, getattr(self.model, "mtp_process", False)
        self.model.config.mtp_num_layers, self.model.mtp_process = None, False

    def __exit__(self, *exc: object) -> None:
        self.model.config.mtp_num_layers, self.model.mtp_process = self.saved


def _tp_group() -> Any:
    return (
        ps.get_tensor_model_parallel_group()
        if ps.get_tensor_model_parallel_world_size() > 1
        else None
    )


def sampling_seed(seed: int, step: int, slot: int) -> int:
    """The noise seed of the prompt in global `slot` of `step` (independent of the layout)."""
    return (seed * 1_000_003 + step * 10_007 + slot) % (2**63)


class GRPO:
    """The policy, its frozen reference, the rollout backend and the step."""

    def __init__(self, cfg: GRPOConfig, tokenizer: Any, prompts: PromptSet) -> None:
        from trainer.loop import Trainer
        from trainer.parallel import seed_everything
        from trainer.run import resume

        self.cfg, self.tokenizer, self.prompts = cfg, tokenizer, prompts
        self.tcfg = cfg.trainer_config()
        self.dp, self.dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        cfg.check_layout(self.dp)
        self.eod = tokenizer.token_to_id(cfg.prompts.eod_token)
        if self.eod is None:
            raise ValueError(f"prompts.tokenizer has no token {cfg.prompts.eod_token!r}")
        self.reference = self._build_reference() if cfg.loss.kl_coef > 0 else None
        seed_everything(cfg.train.seed)  # the policy starts from the reference's weights
        self.trainer = Trainer(self.tcfg, [], None)
        self.resumed_from = resume(self.tcfg, self.trainer)
        self._init_reference()
        self.tp_group = _tp_group()
        self.backend = self._build_backend()
        self.rewards = cfg.rewards.build()
        self._new_errors: Counter = Counter()
        """Reward plugin failures of the current step (this rank)."""
        self.history = self.trainer.history
        self.history.setdefault("reward_errors", {})

    def _build_backend(self) -> Any:
        """The rollout backend; vllm also gets what the exporter needs and its folder."""
        cfg, extra = self.cfg, {}
        if cfg.rollout.backend == "vllm":
            setup = VLLMSetup(
                cfg.model,
                str(Path(cfg.checkpoint.dir) / "vllm_policy"),
                cfg.prompts.tokenizer,
                cfg.prompts.eod_token,
                cfg.rollout.vllm_gpu_memory_utilization,
            )
            extra = {"setup": setup}
        return ROLLOUT_BACKENDS[cfg.rollout.backend](
            self.trainer.model[0], self.eod, cfg.prompts.context, self.tp_group, **extra
        )

    # ---- reference -------------------------------------------------------------------------
    def _build_reference(self) -> torch.nn.Module:
        from trainer.model import build_model, build_transformer_config
        from trainer.parallel import seed_everything
        from trainer.precision import megatron_precision_kwargs

        seed_everything(self.cfg.train.seed)
        tconfig = build_transformer_config(
            self.cfg.model, self.cfg.parallel, megatron_precision_kwargs(self.cfg.precision)
        )
        model = build_model(self.cfg.model, tconfig)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def _init_reference(self) -> None:
        """The reference holds the starting weights: init_from's, else the seeded init (it was
        built from the policy's seed)."""
        from types import SimpleNamespace

        from trainer.checkpoint import load_checkpoint
        from trainer.checkpoint_store import checkpoint_at

        source = self.cfg.checkpoint.init_from
        if self.reference is None or not source:
            return
        fresh = self.resumed_from == "scratch" or self.resumed_from.startswith("weights of")
        if fresh:
            state = _unwrap(self.trainer.model[0]).state_dict()
            self.reference.load_state_dict(state)
            return
        if source.startswith("hf:"):
            source = str(Path(self.cfg.checkpoint.dir) / "hf_import")
        wrapper = [SimpleNamespace(module=self.reference)]
        load_checkpoint(checkpoint_at(source), wrapper, None, self.trainer.model_identity())

    # ---- one step --------------------------------------------------------------------------
    def my_prompts(self) -> tuple[list[Prompt], list[int]]:
        """This DP rank's prompts of the current step and their sampling seeds."""
        r, step = self.cfg.rollout, self.trainer.step
        everything = self.prompts.for_step(step, r.prompts_per_step, self.cfg.train.seed)
        share = r.prompts_per_step // self.dp
        first = self.dp_rank * share
        slots = range(first, first + share)
        seeds = [
            sampling_seed(self.cfg.train.seed, step, step * r.prompts_per_step + s) for s in slots
        ]
        return everything[first : first + share], seeds

    def step(self) -> dict[str, float]:
        """One GRPO step: rollouts, rewards, advantages, optimizer update(s); global metrics."""
        r = self.cfg.rollout
        prompts, seeds = self.my_prompts()
        self.trainer.metrics.clear_trackers()  # MoE aux-loss trackers: not read by GRPO
        start = time.perf_counter()
        rollout = self.backend.generate(
            [p.token_ids for p in prompts],
            r.group_size,
            r.max_new_tokens,
            r.temperature,
            r.top_p,
            seeds,
        )
        gen_s = time.perf_counter() - start
        scores, parts = self._score(prompts, rollout)
        adv = group_advantages(
            scores.view(len(prompts), r.group_size),
            self.cfg.loss.eps,
            self.cfg.loss.leave_one_out,
            self.cfg.loss.scale_by_std,
        ).view(-1)
        start = time.perf_counter()
        train = self._update(rollout, adv)
        train_s = time.perf_counter() - start
        self.backend.refit(self.trainer.model[0])  # the next rollout samples the new weights
        self.trainer.step += 1
        return self._metrics(rollout, scores, parts, train, gen_s, train_s)

    def _score(self, prompts: list[Prompt], rollout: Rollout) -> tuple[torch.Tensor, dict]:
        g = self.cfg.rollout.group_size
        texts = [
            self.tokenizer.decode([t for t in ids if t != self.eod]) for ids in rollout.responses()
        ]
        samples = [
            Sample(prompts[i // g].user, text, prompts[i // g].answer, prompts[i // g].lang)
            for i, text in enumerate(texts)
        ]
        before = Counter(self.rewards.errors)
        scored = self.rewards(samples)
        self._new_errors = self.rewards.errors - before
        parts = {
            name: torch.tensor([s.parts.get(name, float("nan")) for s in scored])
            for name in ("accuracy", "exact_match", "format")
            if name in self.rewards.weights
        }
        return torch.tensor([s.total for s in scored]), parts

    # ---- the update ------------------------------------------------------------------------
    def _micro_batches(self, rollout: Rollout, adv: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        tp = ps.get_tensor_model_parallel_world_size()
        length = rollout.tokens.shape[1]
        width = -(-length // tp) * tp  # sequence parallelism splits the sequence over TP
        tokens = torch.full((rollout.tokens.shape[0], width), self.eod, dtype=torch.long)
        tokens[:, :length] = rollout.tokens
        mask = torch.zeros(tokens.shape[0], width - 1, dtype=torch.bool)
        mask[:, : length - 1] = rollout.response_mask()
        mbs = self.cfg.train.micro_batch_size
        out = []
        for i in range(0, tokens.shape[0], mbs):
            t = tokens[i : i + mbs]
            out.append(
                {
                    "tokens": t,
                    "position_ids": torch.arange(t.shape[1]).unsqueeze(0).expand_as(t),
                    "targets": t[:, 1:],
                    "mask": mask[i : i + mbs],
                    "advantages": adv[i : i + mbs],
                }
            )
        return out

    @torch.no_grad()
    def _logprobs(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        from trainer.model import lm_logits

        logits = lm_logits(_unwrap(model), batch["tokens"])[:, :-1]
        return token_logprobs(logits, batch["targets"], self.tp_group)

    def _update(self, rollout: Rollout, adv: torch.Tensor) -> dict[str, Any]:
        batches = self._micro_batches(rollout, adv)
        for b in batches:
            if self.reference is not None:
                b["ref_logp"] = self._logprobs(self.reference, b)
            if self.cfg.train.updates_per_step > 1:
                b["old_logp"] = self._logprobs(self.trainer.model[0], b)
        per_update = len(batches) // self.cfg.train.updates_per_step
        totals, grad_norms = torch.zeros(len(REPORT)), []
        for u in range(self.cfg.train.updates_per_step):
            report, grad_norm = self._optimizer_step(batches[u * per_update : (u + 1) * per_update])
            totals += report
            grad_norms.append(grad_norm)
        tokens = int((rollout.prompt_lengths + rollout.response_lengths).sum())
        return {"report": totals, "grad_norm": max(grad_norms), "tokens": tokens}

    def _optimizer_step(self, batches: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, float]:
        trainer = self.trainer
        for chunk in trainer.model:
            chunk.zero_grad_buffer()
        trainer.optimizer.zero_grad()
        for group in trainer.optimizer.param_groups:
            group["lr"] = trainer.current_lr()
        num_tokens = torch.tensor(float(sum(int(b["mask"].sum()) for b in batches)))
        dist.all_reduce(num_tokens, group=ps.get_data_parallel_group())
        for b in batches:
            b["num_tokens"] = num_tokens
        scale = len(batches) * self.dp  # undo megatron's 1/micro-batches and DDP's 1/DP
        with without_mtp(trainer.model[0]):
            reports = get_forward_backward_func()(
                forward_step_func=partial(self._forward_step, scale=scale),
                data_iterator=iter(batches),
                model=trainer.model,
                num_microbatches=len(batches),
                seq_length=batches[0]["tokens"].shape[1],
                micro_batch_size=self.cfg.train.micro_batch_size,
                forward_only=False,
            )
        ok, grad_norm, _ = trainer.optimizer.step()
        if not ok:
            raise RuntimeError(f"GRPO step {trainer.step}: optimizer step failed (inf/nan grads)")
        total = torch.stack([r["grpo"] for r in reports]).sum(0)
        dist.all_reduce(total, group=ps.get_data_parallel_group())
        return total, float(grad_norm or 0.0)

    def _forward_step(self, data_iterator: Any, model: torch.nn.Module, scale: int) -> tuple:
        batch = next(data_iterator)
        logits = model(batch["tokens"], batch["position_ids"], None)
        return logits, partial(self._loss, batch, scale)

    def _loss(self, batch: dict[str, torch.Tensor], scale: int, logits: torch.Tensor) -> tuple:
        loss_cfg = self.cfg.loss
        logits = logits[:, :-1]
        logp = token_logprobs(logits, batch["targets"], self.tp_group)
        loss, m = clipped_policy_loss(
            logp,
            batch.get("old_logp", logp.detach()),
            batch["advantages"],
            batch["mask"],
            loss_cfg.clip_eps_low,
            loss_cfg.clip_eps_high,
            loss_cfg.kl_coef,
            ref_logp=batch.get("ref_logp"),
            num_tokens=batch["num_tokens"],
            logits=logits.detach(),
            tp_group=self.tp_group,
        )
        n = m["response_tokens"]
        report = torch.tensor(
            [
                m["loss"],
                m["clip_fraction"] * n,
                m["kl"] * n,
                m["entropy"] * n,
                m["ratio_mean"] * n,
                n,
            ]
        )
        return loss * scale, {"grpo": report}

    # ---- metrics ---------------------------------------------------------------------------
    def _gather(self, values: torch.Tensor) -> torch.Tensor:
        """`values` of every DP rank, concatenated in rank order."""
        if self.dp == 1:
            return values
        parts = [torch.empty_like(values) for _ in range(self.dp)]
        dist.all_gather(parts, values.contiguous(), group=ps.get_data_parallel_group())
        return torch.cat(parts)

    def _metrics(
        self,
        rollout: Rollout,
        scores: torch.Tensor,
        parts: dict[str, torch.Tensor],
        train: dict[str, Any],
        gen_s: float,
        train_s: float,
    ) -> dict[str, float]:
        rewards = self._gather(scores.float())
        lengths = self._gather(rollout.response_lengths.float())
        times = torch.tensor([gen_s, train_s])
        counts = torch.tensor([float(train["tokens"])])
        if self.dp > 1:
            dist.all_reduce(times, op=dist.ReduceOp.MAX, group=ps.get_data_parallel_group())
            dist.all_reduce(counts, group=ps.get_data_parallel_group())
        report = dict(zip(REPORT, train["report"].tolist(), strict=True))
        n = max(report["tokens"], 1.0)
        metrics = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()),
            "loss": report["loss"],
            "kl": report["kl"] / n,
            "clip_fraction": report["clip_fraction"] / n,
            "entropy": report["entropy"] / n,
            "ratio_mean": report["ratio_mean"] / n,
            "grad_norm": train["grad_norm"],
            "lr": self.trainer.current_lr(),
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "gen_tokens_per_s": float(lengths.sum()) / max(float(times[0]), 1e-9),
            "train_tokens_per_s": float(counts[0]) / max(float(times[1]), 1e-9),
        }
        for name, values in parts.items():
            metrics[name] = float(self._gather(values.float()).mean())
        metrics.update(self._error_metrics())
        metrics.update({f"prompts_skipped/{k}": float(v) for k, v in self.prompts.skipped.items()})
        return metrics

    def _error_metrics(self) -> dict[str, float]:
        """Reward plugin failures so far (all DP ranks, kept across resumes), per reason."""
        new = [dict(self._new_errors)]
        if self.dp > 1:
            gathered: list[Any] = [None] * self.dp
            dist.all_gather_object(gathered, new[0], group=ps.get_data_parallel_group())
            new = gathered
        totals = Counter(self.history["reward_errors"])
        for errors in new:
            totals.update(errors)
        self.history["reward_errors"] = dict(totals)
        out = {f"reward_errors/{k}": float(v) for k, v in totals.items()}
        out["reward_errors"] = float(sum(totals.values()))
        return out
