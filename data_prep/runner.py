"""Run one stage: compose config, skip if already done, run its phases, write stats.json.

`run_stage(stage, overrides)` is the Python API the pipeline uses; `python -m data_prep` calls
`run_config` on the config Hydra composed from the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from data_prep.accounting import merge_ledgers
from data_prep.config import STAGE_TABLE, DataPrepConfig, register_configs
from data_prep.errors import DataPrepError, InputError
from data_prep.output import LOCK, OutputLock, check_output
from data_prep.reader import SUFFIXES, WARC_SUFFIXES, resolve_inputs, write_paths_file
from data_prep.stages import Phase, StageContext, build_phases

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
DONE = "done.json"
_OUTPUT_GLOBS = (
    "*.jsonl.gz",
    "*.bin",
    "*.idx",
    "stats.json",
    "manifest.json",
    "rejects",
    "removed_samples",
    "holdout",
    "index",
    "model",
)


def compose_config(overrides: list[str], validate: bool = True) -> DataPrepConfig:
    """Compose `conf/data_prep.yaml` with overrides (as the CLI does) and validate it.

    With validate=False only the composition is checked (unknown keys, bad override syntax)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    gh = GlobalHydra.instance()
    saved = gh.hydra if gh.is_initialized() else None
    gh.clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="data_prep", overrides=list(overrides))
        return to_config(cfg) if validate else check_keys(cfg)
    except DataPrepError:
        raise
    except Exception as e:  # hydra/omegaconf errors: unknown key, bad override syntax
        from appconf.strict import from_hydra_error

        if (unknown := from_hydra_error(e, DataPrepConfig, "data_prep")) is not None:
            raise InputError(str(unknown)) from None
        cause = f" ({one_line(e.__cause__).split(' full_key:')[0]})" if e.__cause__ else ""
        raise InputError(one_line(e) + cause) from None
    finally:
        gh.clear()
        if saved is not None:
            gh.initialize(saved)


def one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg or type(e).__name__


def check_keys(cfg):
    """Refuse keys the schema lacks, even added with `+`/`++` (remix.weights is free-form)."""
    from appconf.strict import UnknownKeyError, check_keys

    try:
        check_keys(cfg, DataPrepConfig, "data_prep")
    except UnknownKeyError as e:
        raise InputError(str(e)) from None
    return cfg


def to_config(cfg) -> DataPrepConfig:
    """DictConfig -> validated DataPrepConfig (runs every __post_init__); unknown keys fail."""
    check_keys(cfg)
    try:
        return OmegaConf.to_object(cfg)
    except Exception as e:
        raise InputError(one_line(e)) from None


def run_stage(stage: str, overrides: list[str]) -> dict:
    """Run `stage` with Hydra overrides (e.g. ["input=raw/", "output=out/read"]); return stats.

    Raises a DataPrepError subclass with a one-line message on failure."""
    cfg = compose_config([f"stage={stage}", *overrides])
    return run_config(cfg)


def fingerprint(cfg: DataPrepConfig, files: list[str]) -> str:
    """Hash of the resolved config (minus run-only flags) and the input files' size/mtime."""
    conf = asdict(cfg)
    keep = {
        "stage",
        "input",
        "output",
        "removed_samples",
        "executor",
        "read",
        STAGE_TABLE[cfg.stage].section,
    }
    conf = {k: v for k, v in conf.items() if k in keep}
    h = hashlib.sha256(json.dumps(conf, sort_keys=True, default=str).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if cfg.stage in ("tokenize", "chat_tokenize"):
        tok = Path(getattr(cfg, STAGE_TABLE[cfg.stage].section).tokenizer)
        st = os.stat(tok)
        h.update(f"tok\0{st.st_size}\0{st.st_mtime_ns}".encode())
        if cfg.stage == "chat_tokenize":  # the template may come from these files
            h.update(_template_sources(tok, cfg.chat_tokenize.chat_template))
    return h.hexdigest()


def _template_sources(tokenizer: Path, template: str) -> bytes:
    """Bytes of the files a chat template may be read from (tokenizer_config.json, a file)."""
    out = b""
    for path in (tokenizer.parent / "tokenizer_config.json", Path(template)):
        try:
            out += path.read_bytes() if path.is_file() else b""
        except OSError:  # Jinja text, not a path (e.g. "file name too long")
            pass
    return out


def _prepare_output(out: Path, work: Path, fp: str, force: bool) -> None:
    """Keep a matching unfinished run (to resume its completed tasks); else start clean.

    Called under the output lock. The completion marker goes first, so a run killed while
    cleaning never leaves a marker next to half-deleted data; the lock file stays."""
    fp_file = work / "fingerprint"
    if not force and fp_file.exists() and fp_file.read_text() == fp:
        return
    (work / DONE).unlink(missing_ok=True)
    for pattern in _OUTPUT_GLOBS:
        for p in out.glob(pattern):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for p in work.iterdir():
        if p.name != LOCK:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    _write_atomic(fp_file, fp)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _output_state(out: Path) -> dict[str, list[int]]:
    """Size and mtime of every top-level output file (docs, shards, stats, manifest, ...)."""
    return {
        p.name: [p.stat().st_size, p.stat().st_mtime_ns]
        for p in sorted(out.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


def finished_stats(out: Path, fp: str) -> dict | None:
    """The stats of a finished run with fingerprint `fp` in `out`, or None.

    The completion marker names the fingerprint and the exact output files (sizes, mtimes) of
    the run that wrote them under the output lock; data, stats.json or marker from any other
    run (or a partial cleanup) do not match, and the stage runs again from a clean folder."""
    try:
        done = json.loads((out / ".work" / DONE).read_text())
        if done.get("fingerprint") != fp or done.get("outputs") != _output_state(out):
            return None
        return json.loads((out / "stats.json").read_text())
    except (OSError, ValueError):
        return None


def run_config(cfg: DataPrepConfig) -> dict:
    """Run a validated config; a finished stage with the same fingerprint is not rerun.

    Only one run at a time writes an output folder (`OutputLock`); a second one fails at once."""
    suffixes = WARC_SUFFIXES if cfg.stage == "warc" else SUFFIXES
    files = resolve_inputs(cfg.input, cfg.read.glob, suffixes)
    out = Path(cfg.output).expanduser().resolve()
    check_output(out, cfg.output)
    try:
        fp = fingerprint(cfg, files)
    except FileNotFoundError as e:
        raise InputError(f"file not found: {e.filename}") from None
    with OutputLock(out) as lock:
        stats = None if cfg.force else finished_stats(out, fp)
        if stats is not None:
            return stats | {"skipped": True}
        lock.record_pid()
        return _run_locked(cfg, files, out, fp) | {"skipped": False}


def _run_locked(cfg: DataPrepConfig, files: list[str], out: Path, fp: str) -> dict:
    work = out / ".work"
    _prepare_output(out, work, fp, cfg.force)
    ctx = StageContext(cfg, out, work, write_paths_file(files, work / "inputs.txt"))
    start = time.perf_counter()
    try:
        phases = build_phases(ctx)
        extras = _run_phases(cfg, phases, work)
    except ValueError as e:
        raise InputError(one_line(e)) from None
    stats = _write_stats(cfg, out, work, len(files), time.perf_counter() - start, extras)
    marker = {"fingerprint": fp, "finished": time.time(), "outputs": _output_state(out)}
    _write_atomic(work / DONE, json.dumps(marker))
    return stats


def _run_phases(cfg: DataPrepConfig, phases: list[Phase], work: Path) -> dict:
    from data_prep.executors import make_executor, run_and_check

    extras: dict = {}
    prev = None
    for phase in phases:
        executor = make_executor(
            cfg.executor,
            phase.build(),
            phase.tasks,
            str(work / "logs" / phase.name),
            prev,
            f"{cfg.stage}_{phase.name}",
        )
        run_and_check(executor, f"{cfg.stage}/{phase.name}", cfg.executor)
        prev = executor
        if phase.after:
            extras |= phase.after()
    return extras


def _write_stats(
    cfg: DataPrepConfig, out: Path, work: Path, num_files: int, elapsed: float, extras: dict
) -> dict:
    merged = merge_ledgers(work / "ledger", cfg.executor.tasks)
    samples = merged.pop("samples")
    stats = {
        "stage": cfg.stage,
        "documents_in": merged["documents_in"],
        "documents_kept": merged["documents_kept"],
        "removed": merged["removed"],
        "rejected": merged["rejected"],
        **({"counts": merged["counts"]} if "counts" in merged else {}),
        **({"added": merged["added"]} if cfg.stage == "remix" else {}),
        "input_files": num_files,
        "bytes_in": merged["bytes_in"],
        "elapsed_s": round(elapsed, 3),
        "docs_per_s": round(merged["documents_in"] / max(elapsed, 1e-9), 1),
        "mb_per_s": round(merged["bytes_in"] / 1e6 / max(elapsed, 1e-9), 3),
        **extras,
    }
    _check_identity(stats)
    if samples:
        sdir = out / "removed_samples"
        sdir.mkdir(exist_ok=True)
        for reason, docs in samples.items():
            with open(sdir / f"{reason.replace(':', '__')}.jsonl", "w") as f:
                f.writelines(json.dumps(d, ensure_ascii=False, default=str) + "\n" for d in docs)
    _write_atomic(out / "stats.json", json.dumps(stats, indent=2, ensure_ascii=False))
    return stats


def _check_identity(stats: dict) -> None:
    lost = stats["documents_in"] - stats["documents_kept"] - sum(stats["removed"].values())
    if lost:
        raise DataPrepError(
            f"stage {stats['stage']}: accounting mismatch, {lost} documents unaccounted for"
        )
