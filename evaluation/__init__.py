"""Evaluation suites that run offline; `sandbox` executes untrusted generated code, `humaneval`
scores completions on the bundled HumanEval problems. A leaf: imports no app package."""
