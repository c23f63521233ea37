"""The vLLM rollout backend (posttrain.rollout.VLLMRollout) against a stand-in `vllm` module
(vLLM needs CUDA and is not installed here): sampling parameters, the Rollout it returns next to
the megatron backend's for the same tokens, the starting folder and the refit after a GRPO step
equal to what trainer.export writes for the policy, and the one-line refusal without vllm.

The GRPO part runs in one spawned gloo process (megatron's parallel state), the fake module put
into that process's sys.modules; the refusal runs here with monkeypatch.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.distributed import run_distributed

EOD = 0
CONTEXT = 64
PROMPTS = [[5, 6, 7], [5, 5, 5, 5], [3] * 60]
SCRIPT = {
    (5, 6, 7): [8, 9, EOD, 4, 4, 4, 4, 4],  # ends with EOD
    (5, 5, 5, 5): [11] * 20,  # runs to max_new_tokens
    (3,) * 60: [12] * 20,  # runs to the context
}
"""Canned responses per prompt (the same for every sample: the megatron side is greedy)."""
SEEDS = [11, 12, 13]


# ---- the stand-in vllm module -------------------------------------------------------------
class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class MLAAttention(torch.nn.Module):
    """Named as vLLM's MLA layer: records the post-load hook."""

    def __init__(self) -> None:
        super().__init__()
        self.processed: list[torch.dtype] = []

    def process_weights_after_loading(self, dtype: torch.dtype) -> None:
        self.processed.append(dtype)


class FakeModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = MLAAttention()
        self.loaded: list[tuple[str, torch.Tensor]] = []

    def load_weights(self, weights: Any) -> None:
        self.loaded.extend(weights)


class FakeLLM:
    """Records its arguments; generate answers from SCRIPT (else seeded filler); the worker is
    an instance of the configured worker extension, called as vLLM's collective_rpc calls it."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs, self.calls, self.prefix_resets = kwargs, [], 0
        module, name = kwargs["worker_extension_cls"].rsplit(".", 1)
        worker_cls = type("Worker", (getattr(importlib.import_module(module), name),), {})
        self.worker = worker_cls()
        self.worker.model_runner = types.SimpleNamespace(
            model=FakeModel(), model_config=types.SimpleNamespace(dtype=torch.bfloat16)
        )

    def generate(self, prompts: list[dict], sampling_params: list, use_tqdm: bool) -> list:
        self.calls.append((prompts, [p.kwargs for p in sampling_params]))
        return [
            types.SimpleNamespace(outputs=[_sample(r, p.kwargs, j) for j in range(p.kwargs["n"])])
            for r, p in zip(prompts, sampling_params, strict=True)
        ]

    def collective_rpc(self, method: str, args: tuple = (), kwargs: dict | None = None) -> list:
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]

    def reset_prefix_cache(self) -> None:
        self.prefix_resets += 1


def _sample(request: dict, params: dict, j: int) -> Any:
    prompt = tuple(request["prompt_token_ids"])
    filler = [(params["seed"] + 7 * j + k) % 400 + 2 for k in range(3 + j)] + [EOD]
    ids = SCRIPT.get(prompt, filler)[: params["max_tokens"]]
    if EOD in ids:  # a stop token ends the sample and is kept, as vLLM does
        ids = ids[: ids.index(EOD) + 1]
    finish = "stop" if ids and ids[-1] == EOD else "length"
    return types.SimpleNamespace(token_ids=tuple(ids), finish_reason=finish)


def fake_vllm() -> types.ModuleType:
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    return module


# ---- the GRPO process ---------------------------------------------------------------------
def _exported(cfg: Any, step: int) -> dict[str, torch.Tensor]:
    """What trainer.export converts for checkpoint `step` (before its dtype cast)."""
    from trainer.export import find_checkpoint, hf_tensors
    from trainer.hf.stream import CheckpointReader

    ckpt = find_checkpoint(cfg.checkpoint.dir, step)
    return dict(hf_tensors(cfg.model, CheckpointReader(ckpt.path, cfg.model)))


def _megatron_rollout() -> Any:
    """MegatronRollout (greedy) over a stand-in forward that continues each prefix by SCRIPT."""
    import trainer.model
    from posttrain.rollout import MegatronRollout

    table = {tuple(p) + tuple(s[:k]): s[k] for p, s in SCRIPT.items() for k in range(len(s))}

    def logits(model: Any, tokens: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*tokens.shape, 512)
        for r, row in enumerate(tokens.tolist()):
            for t in range(len(row)):
                out[r, t, table.get(tuple(row[: t + 1]), 1)] = 10.0
        return out

    trainer.model.lm_logits = logits
    backend = MegatronRollout(torch.nn.Linear(1, 1), EOD, CONTEXT)
    return backend.generate(PROMPTS, 2, 6, 0.0, 1.0, SEEDS)


def _lists(rollout: Any) -> dict[str, list]:
    """A Rollout as plain lists (tensors do not outlive the spawned process on the queue)."""
    fields = ("tokens", "prompt_lengths", "response_lengths", "finished")
    out = {f: getattr(rollout, f).tolist() for f in fields}
    return {**out, "response_mask": rollout.response_mask().tolist()}


def _grpo_with_fake_vllm(root: Path, files: dict[str, str]) -> dict[str, Any]:
    from tokenizers import Tokenizer

    from posttrain.grpo_step import GRPO
    from posttrain.prompts import load_prompts
    from tests.posttrain.grpo_setup import grpo_config
    from trainer.hf.folder import FolderWeights
    from trainer.parallel import initialize_parallel

    sys.modules["vllm"] = fake_vllm()
    cfg = grpo_config(files, str(root / "run"), rollout={"backend": "vllm"}, train={"steps": 1})
    tok = Tokenizer.from_file(cfg.prompts.tokenizer)
    initialize_parallel(cfg.model, cfg.parallel, cfg.train.seed)
    grpo = GRPO(cfg, tok, load_prompts(cfg.prompts.path, tok, cfg.prompts.context))
    llm = grpo.backend.llm
    grpo.trainer.save(cfg.checkpoint.dir, 3)
    start, folder = _exported(cfg, 0), FolderWeights(llm.kwargs["model"])
    bf16 = {n: t if n.endswith("correction_bias") else t.bfloat16() for n, t in start.items()}
    out: dict[str, Any] = {
        "llm_kwargs": llm.kwargs,
        "folder_names": sorted(folder.names()),
        "start_names": sorted(start),
        "folder_equal": all(torch.equal(folder.take(n), t) for n, t in bf16.items()),
        "vllm": _lists(grpo.backend.generate(PROMPTS, 2, 6, 0.7, 0.9, SEEDS)),
        "call": llm.calls[-1],
        "megatron": _lists(_megatron_rollout()),
    }
    grpo.step()
    grpo.trainer.save(cfg.checkpoint.dir, 3)
    after, model = _exported(cfg, 1), llm.worker.model_runner.model
    loaded = dict(model.loaded)
    out.update(
        loaded_names=[n for n, _ in model.loaded],
        after_names=list(after),
        loaded_equal=all(torch.equal(loaded[n], t) for n, t in after.items() if n in loaded),
        moved=any(not torch.equal(after[n], start[n]) for n in after),
        prefix_resets=llm.prefix_resets,
        mla_hook=model.attn.processed,
    )
    return out


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.posttrain.grpo_setup import write_task

    root = tmp_path_factory.mktemp("grpo_vllm")
    return run_distributed(_grpo_with_fake_vllm, 1, root, write_task(root, n_train=16))[0]


def test_engine_is_built_from_the_exported_starting_policy(result: dict[str, Any]) -> None:
    kwargs = result["llm_kwargs"]
    assert Path(kwargs["model"]).name == "vllm_policy"
    assert kwargs["max_model_len"] == CONTEXT and kwargs["skip_tokenizer_init"]
    assert kwargs["worker_extension_cls"] == "posttrain.rollout.VLLMRefitExtension"
    assert result["folder_names"] == result["start_names"]
    assert result["folder_equal"]  # the exporter's tensors at step 0, in bf16


def test_sampling_params_carry_group_size_limits_stop_and_per_prompt_seeds(
    result: dict[str, Any],
) -> None:
    requests, params = result["call"]
    assert requests == [{"prompt_token_ids": p} for p in PROMPTS]
    for p, seed, kw in zip(PROMPTS, SEEDS, params, strict=True):
        assert kw["n"] == 2 and kw["temperature"] == 0.7 and kw["top_p"] == 0.9
        assert kw["max_tokens"] == min(6, CONTEXT - len(p)) and kw["seed"] == seed
        assert kw["stop_token_ids"] == [EOD] and kw["detokenize"] is False


def test_rollout_equals_the_megatron_backends_for_the_same_tokens(result: dict[str, Any]) -> None:
    ours, theirs = result["vllm"], result["megatron"]
    assert ours == theirs  # tokens, EOD padding, lengths, finished, response mask
    assert ours["finished"] == [True, True, False, False, False, False]
    assert ours["response_lengths"] == [3, 3, 6, 6, 4, 4]
    assert len(ours["tokens"][0]) == CONTEXT


def test_refit_loads_exactly_the_exporters_tensors_of_the_updated_policy(
    result: dict[str, Any],
) -> None:
    assert result["moved"]  # the step changed the policy
    assert result["loaded_names"] == result["after_names"]  # each once, none missing
    assert result["loaded_equal"]
    assert result["prefix_resets"] == 1
    assert result["mla_hook"] == [torch.bfloat16]


def test_missing_vllm_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from posttrain.rollout import ROLLOUT_BACKENDS

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(ValueError, match="needs the vllm package") as err:
        ROLLOUT_BACKENDS["vllm"](None, 0, 64)
    assert "\n" not in str(err.value)


def test_config_refuses_vllm_with_tensor_or_expert_parallelism(tmp_path: Path) -> None:
    from tests.posttrain.grpo_setup import grpo_config

    files = {"prompts": "p.jsonl", "tokenizer": "t.json"}
    with pytest.raises(ValueError, match="tensor_parallel and expert_parallel must be 1"):
        grpo_config(files, str(tmp_path), {"tensor_parallel": 2}, rollout={"backend": "vllm"})
