"""Memory estimator vs what megatron-core really allocates.

    .venv/bin/python benchmarks/memory_estimator.py              # CPU: tiny configs
    .venv/bin/python benchmarks/memory_estimator.py --models tiny_v3 --steps 3

CPU (always): for every tiny model x {fp32, bf16} x {DDP, distributed optimizer}, builds the
model through the trainer (world size 1), runs one optimizer step and compares
`trainer.memory.estimate_memory`'s weights / gradients / optimizer-state bytes with the
storages the run holds (`allocated_static_bytes`, the named baseline). Expected ratio: 1.000.

GPU (only with CUDA; skipped otherwise): the full estimate (static + activations) against
`torch.cuda.max_memory_allocated()` over a few bf16 training steps; target within 10%.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from trainer.config.data import DataConfig  # noqa: E402
from trainer.config.model import ModelConfig  # noqa: E402
from trainer.config.parallel import ParallelConfig  # noqa: E402
from trainer.config.precision import PrecisionConfig  # noqa: E402
from trainer.memory import estimate_memory  # noqa: E402
from trainer.memory_measure import allocated_static_bytes  # noqa: E402

TINY = ["tiny_v3", "tiny_v2_lite", "tiny_dense", "tiny_moe"]
SEQ, MICRO, GLOBAL = 32, 1, 2


def load_model(name: str) -> ModelConfig:
    path = ROOT / "conf" / "model" / f"{name}.yaml"
    return OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))
    )


def make_trainer(model: ModelConfig, dtype: str, distopt: bool, seq: int, micro: int, batch: int):
    from trainer.batches import SyntheticDataset
    from trainer.config.trainer import TrainerConfig
    from trainer.loop import Trainer
    from trainer.parallel import initialize_parallel

    par = ParallelConfig(use_distributed_optimizer=distopt)
    cfg = TrainerConfig(
        model=model,
        parallel=par,
        precision=PrecisionConfig(name=dtype, params_dtype=dtype),
        data=DataConfig(seq_length=seq),
    )
    cfg.train.global_batch_size, cfg.train.micro_batch_size = batch, micro
    initialize_parallel(model, par, seed=1)
    return cfg, Trainer(cfg, SyntheticDataset(batch * 8, seq, model.vocab_size))


def cpu_rows(models: list[str]) -> list[tuple]:
    from trainer.parallel import destroy_parallel

    rows = []
    for name in models:
        model = load_model(name)
        for dtype in ("fp32", "bf16"):
            for distopt in (False, True):
                try:
                    cfg, trainer = make_trainer(model, dtype, distopt, SEQ, MICRO, GLOBAL)
                    trainer.train_step()
                    got = allocated_static_bytes(trainer.model, trainer.optimizer)
                except Exception as err:  # noqa: BLE001 - reported in the table
                    got = f"{type(err).__name__}: {str(err).splitlines()[0][:90]}"
                finally:
                    destroy_parallel()
                est = estimate_memory(
                    model,
                    ParallelConfig(),
                    PrecisionConfig(name=dtype, params_dtype=dtype),
                    MICRO,
                    SEQ,
                    GLOBAL // MICRO,
                    use_distributed_optimizer=distopt,
                )
                rows.append((name, dtype, distopt, est, got))
    return rows


def print_cpu(rows: list[tuple]) -> bool:
    print(
        f"{'model':14s} {'prec':5s} {'optim':7s} {'kind':10s} {'estimated':>12s} "
        f"{'allocated':>12s} {'diff':>8s} {'ratio':>8s}"
    )
    exact = True
    for name, dtype, distopt, est, got in rows:
        if isinstance(got, str):
            exact = False
            print(f"{name:14s} {dtype:5s} {'dist' if distopt else 'ddp':7s} run failed: {got}")
            continue
        for kind in ("weights", "grads", "optimizer"):
            e, a = getattr(est, kind), getattr(got, kind)
            exact &= e == a
            print(
                f"{name:14s} {dtype:5s} {'dist' if distopt else 'ddp':7s} {kind:10s} "
                f"{e:12,d} {a:12,d} {e - a:8,d} {e / a:8.5f}"
            )
    print(f"static bytes: estimate == allocated for all {len(rows)} runs: {exact}")
    return exact


def _saved_bytes(model_cfg: ModelConfig, seq: int, mb: int) -> int | str:
    """Bytes autograd saves in one forward of the model trainer.model builds (or the error)."""
    from functools import partial

    from trainer.memory_measure import saved_activation_bytes
    from trainer.model import build_model, build_transformer_config
    from trainer.parallel import destroy_parallel, initialize_parallel

    par = ParallelConfig()
    try:
        initialize_parallel(model_cfg, par, seed=1)
        model = build_model(model_cfg, build_transformer_config(model_cfg, par))
        tokens = torch.randint(0, model_cfg.vocab_size, (mb, seq))
        pos = torch.arange(seq).unsqueeze(0).expand(mb, -1)
        fwd = partial(model, tokens, pos, None, labels=tokens, loss_mask=torch.ones(mb, seq))
        return saved_activation_bytes(model, fwd)[0]
    except Exception as err:  # noqa: BLE001 - reported in the table
        return f"{type(err).__name__}: {str(err).splitlines()[0][:90]}"
    finally:
        destroy_parallel()


def activation_rows(models: list[str]) -> None:
    """Activation estimate vs the tensors autograd saves for one micro-batch (fp32, CPU local
    attention, so flash_attention=False)."""
    print(f"{'model':14s} {'seq x mb':9s} {'estimated':>12s} {'saved':>12s} {'ratio':>7s}")
    fp32 = PrecisionConfig(name="fp32", params_dtype="fp32")
    for name in models:
        model_cfg = load_model(name)
        for seq, mb in ((64, 1), (128, 2)):
            saved = _saved_bytes(model_cfg, seq, mb)
            est = estimate_memory(
                model_cfg, ParallelConfig(), fp32, mb, seq, 1, flash_attention=False
            ).activations
            if isinstance(saved, str):
                print(f"{name:14s} {f'{seq}x{mb}':9s} {est:12,d} run failed: {saved}")
            else:
                print(f"{name:14s} {f'{seq}x{mb}':9s} {est:12,d} {saved:12,d} {est / saved:7.3f}")


def gpu_check(name: str, steps: int) -> None:
    """Full estimate vs peak allocated memory on one GPU (bf16, distributed optimizer off)."""
    from trainer.model import have_transformer_engine
    from trainer.parallel import destroy_parallel

    model = load_model(name)
    seq, micro, batch = min(1024, model.max_position_embeddings), 4, 8
    cfg, trainer = make_trainer(model, "bf16", False, seq, micro, batch)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        trainer.train_step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    est = estimate_memory(
        model,
        cfg.parallel,
        cfg.precision,
        micro,
        seq,
        batch // micro,
        flash_attention=have_transformer_engine(),
    )
    print(
        f"GPU {torch.cuda.get_device_name()} {name} bf16 seq {seq} micro {micro}: "
        f"estimate {est.total / 2**20:.1f} MiB (static {est.static / 2**20:.1f}, activations "
        f"{est.activations / 2**20:.1f}) vs max_memory_allocated {peak / 2**20:.1f} MiB, "
        f"ratio {est.total / peak:.3f}"
    )
    destroy_parallel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(TINY), help="comma-separated conf/model names")
    parser.add_argument("--gpu-model", default="tiny_v3", help="model for the GPU comparison")
    parser.add_argument("--steps", type=int, default=3, help="training steps of the GPU check")
    args = parser.parse_args()
    exact = print_cpu(cpu_rows(args.models.split(",")))
    activation_rows(args.models.split(","))
    if torch.cuda.is_available():
        gpu_check(args.gpu_model, args.steps)
    else:
        print("GPU check skipped: no CUDA device")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
