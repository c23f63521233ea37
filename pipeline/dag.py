"""Builds the stage DAG from the config: per-domain branches, joins, placeholders, fingerprints."""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, StageConfig
from pipeline.fingerprint import code_version, digest, path_state
from pipeline.registry import StageKind, get_kind


@dataclass
class Node:
    """One runnable stage instance (a stage, or one domain's instance of a per-domain stage)."""

    key: str
    name: str
    domain: str | None
    kind: StageKind
    options: Any
    deps: list[str]
    """Keys of the upstream nodes."""
    inputs: dict[str, list[str]]
    """Upstream stage name -> keys of its nodes this node reads."""
    run_dir: Path
    output: Path
    log_path: Path
    overrides: list[str]
    num_cpus: float
    config: dict = field(default_factory=dict)
    """The resolved stage config that enters the fingerprint (and MLflow params)."""
    code_version: str = ""
    input_fingerprints: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""
    validated: bool = False
    """The driver already had the stage's app check its config (at plan time)."""
    phase: str | None = None
    """The training phase this node runs (a stage with `phases`), else None."""


@dataclass
class Graph:
    run_dir: Path
    nodes: dict[str, Node]
    """Nodes in topological order."""

    def dependants(self, key: str) -> set[str]:
        """Keys of every node downstream of `key`."""
        out: set[str] = set()
        for node in self.nodes.values():  # topological order: parents seen first
            if key in node.deps or out.intersection(node.deps):
                out.add(node.key)
        return out


def _check_names(stages: dict[str, StageConfig]) -> None:
    for name, stage in stages.items():
        if not stage.enabled:
            continue
        for up in stage.after:
            if up not in stages:
                raise ValueError(f"stage {name!r}: 'after' names unknown stage {up!r}")
            if not stages[up].enabled:
                raise ValueError(f"stage {name!r} needs stage {up!r}, which is disabled")


def _stage_order(stages: dict[str, StageConfig]) -> list[str]:
    """Stage names in topological order (config order among independent stages)."""
    done: list[str] = []
    pending = list(stages)
    while pending:
        ready = [n for n in pending if all(u in done for u in stages[n].after)]
        if not ready:
            raise ValueError(f"the stages form a cycle: {', '.join(sorted(pending))}")
        done.extend(ready)
        pending = [n for n in pending if n not in ready]
    return done


def _hydra_list(paths: list[str]) -> str:
    return "[" + ",".join("'" + p.replace("'", "\\'") + "'" for p in paths) + "]"


class _Deps(dict):
    def __init__(self, stage: str, values: dict[str, str]):
        super().__init__(values)
        self.stage = stage

    def __missing__(self, name: str) -> str:
        raise ValueError(
            f"stage {self.stage!r}: placeholder {{deps[{name}]}} names a stage that is not in "
            f"its 'after' list ({', '.join(self) or 'empty'})"
        )


def _placeholders(template: str) -> list[tuple[str, str]]:
    """(placeholder, its root name) of each {placeholder} in `template`: `{deps[a]}` -> deps."""
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    return [(f, f.split("[")[0].split(".")[0]) for f in fields]


def render(template: str, stage: str, values: dict[str, Any]) -> str:
    """Fill {placeholders} of one override; ValueError naming the stage on an unknown one."""
    for field_name, root in _placeholders(template):
        if root not in values:
            raise ValueError(
                f"stage {stage!r}: unknown placeholder {{{field_name}}} in {template!r}; "
                f"known: {', '.join('{' + k + '}' for k in sorted(values))} "
                "(write {{ for a brace)"
            )
    return template.format_map(values)


def override_key(override: str) -> str | None:
    """`+train.steps=6` -> `train.steps` (None for a deletion or a malformed override)."""
    if "=" not in override or override.startswith("~"):
        return None
    return override.split("=", 1)[0].lstrip("+")


def with_defaults(defaults: tuple[str, ...], overrides: list[str], values: dict) -> list[str]:
    """A kind's default overrides merged with a stage's own: in the defaults' order, each default
    or, when the stage sets its key, the stage's (first) override of that key; then the stage's
    other overrides in order. A default whose placeholders have no value here is left out."""
    rest, merged = list(overrides), []
    for default in defaults:
        key = override_key(default)
        own = next((o for o in rest if override_key(o) == key), None)
        if own is not None:
            rest.remove(own)
            merged.append(own)
        elif all(root in values for _, root in _placeholders(default)):
            merged.append(default)
    return merged + rest


def _node_keys(
    name: str, stage: StageConfig, domains: list[str]
) -> list[tuple[str, str | None, str | None]]:
    """(key, domain, phase) of each node of a stage."""
    if stage.per_domain:
        return [(f"{name}/{d}", d, None) for d in domains]
    if stage.phases:
        return [(f"{name}/{p}", None, p) for p in stage.phases]
    return [(name, None, None)]


def _upstream(stages, name: str, domain: str | None, domains: list[str]) -> dict[str, list[str]]:
    inputs: dict[str, list[str]] = {}
    for up in stages[name].after:
        if stages[up].per_domain:
            inputs[up] = [f"{up}/{domain}"] if domain else [f"{up}/{d}" for d in domains]
        elif stages[up].phases:  # a phased stage's result is its last phase
            inputs[up] = [f"{up}/{list(stages[up].phases)[-1]}"]
        else:
            inputs[up] = [up]
    return inputs


def _previous_phase(name: str, stage: StageConfig, phase: str | None) -> str | None:
    """Key of the phase before `phase` (None for the first phase or a stage without phases)."""
    names = list(stage.phases)
    at = names.index(phase) if phase in names else 0
    return f"{name}/{names[at - 1]}" if at > 0 else None


def _make_node(
    cfg: PipelineConfig, run_dir: Path, name: str, key: str, domain, nodes, phase=None
) -> Node:
    stage = cfg.stages[name]
    kind = get_kind(stage.kind)
    options = kind.build_options(stage.options)
    inputs = _upstream(cfg.stages, name, domain, list(cfg.domains))
    deps = [k for keys in inputs.values() for k in keys]
    previous = _previous_phase(name, stage, phase)
    if previous:
        deps.append(previous)
    output = run_dir / key
    dep_dirs = {up: [str(nodes[k].output) for k in keys] for up, keys in inputs.items()}
    values: dict[str, Any] = {
        "output": str(output),
        "run_dir": str(run_dir),
        "domain": domain or "",
        "deps": _Deps(
            name, {u: p[0] if len(p) == 1 else _hydra_list(p) for u, p in dep_dirs.items()}
        ),
        "inputs": _hydra_list([p for ps in dep_dirs.values() for p in ps]),
    }
    all_dirs = [p for ps in dep_dirs.values() for p in ps]
    if all_dirs:
        values["input"] = all_dirs[0] if len(all_dirs) == 1 else values["inputs"]
    if previous:
        values["previous"] = str(nodes[previous].output)
    dom = cfg.domains[domain] if domain is not None else None
    own = [*stage.overrides, *(dom.stage_overrides.get(name, []) if dom else [])]
    own += stage.phases[phase] if phase else []
    templates = with_defaults(kind.default_overrides, own, values)
    config: dict[str, Any] = {"kind": stage.kind, "stage": name}
    if phase:
        config["phase"] = phase
    if dom is not None:
        config["domain"] = domain
        if any("{domain_input}" in t for t in templates):
            values["domain_input"] = render(dom.input, name, values)
            config["domain_input"] = dom.input
            if "{" not in dom.input:  # an external input: its files are part of the fingerprint
                config["domain_input_state"] = path_state(values["domain_input"])
    overrides = [render(t, name, values) for t in templates]
    opts = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options)
    config.update(overrides=templates, options=opts)
    return Node(
        key=key,
        name=name,
        domain=domain,
        kind=kind,
        options=options,
        deps=deps,
        inputs=inputs,
        run_dir=run_dir,
        output=output,
        log_path=run_dir / "logs" / f"{key.replace('/', '.')}.log",
        overrides=overrides,
        num_cpus=stage.num_cpus,
        config=config,
        phase=phase,
    )


def build_graph(cfg: PipelineConfig) -> Graph:
    """Expand the configured stages into nodes, in topological order, with fingerprints."""
    stages = {n: s for n, s in cfg.stages.items() if s.enabled}
    if not stages:
        raise ValueError("no stages configured (stages: is empty or all disabled)")
    if any(s.per_domain for s in stages.values()) and not cfg.domains:
        raise ValueError("per-domain stages need at least one entry in 'domains'")
    _check_names(cfg.stages)
    run_dir = Path(cfg.run_dir).expanduser().resolve()
    nodes: dict[str, Node] = {}
    versions: dict[tuple, str] = {}
    for name in _stage_order(stages):
        for key, domain, phase in _node_keys(name, stages[name], list(cfg.domains)):
            node = _make_node(cfg, run_dir, name, key, domain, nodes, phase)
            spec = (node.kind.code_modules(node.options), node.kind.conf)
            if spec not in versions:
                versions[spec] = code_version(*spec)
            node.code_version = versions[spec]
            node.input_fingerprints = {k: nodes[k].fingerprint for k in node.deps}
            node.fingerprint = digest(
                {
                    "config": node.config,
                    "code": node.code_version,
                    "inputs": node.input_fingerprints,
                }
            )
            nodes[key] = node
    return Graph(run_dir=run_dir, nodes=nodes)
