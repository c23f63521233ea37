"""DAG construction, placeholders, fingerprints and run/skip decisions (no Ray needed)."""

from __future__ import annotations

import pytest
from pipeline_testlib import compose

from pipeline import state
from pipeline.dag import build_graph, with_defaults
from pipeline.engine import load_plugins, plan, print_plan


@pytest.fixture(autouse=True)
def _plugins():
    load_plugins(["pipeline_fakes"])


def _complete_all(graph) -> None:
    """Pretend every stage finished (markers with the current fingerprints)."""
    for node in graph.nodes.values():
        node.output.mkdir(parents=True, exist_ok=True)
        state.write_marker(node, {}, 0.0, None)


def test_per_domain_branches_join_and_placeholders(tmp_path):
    graph = build_graph(compose(tmp_path / "run"))
    assert list(graph.nodes) == ["source/en", "source/zh", "clean/en", "clean/zh", "join", "train"]
    assert graph.nodes["clean/zh"].deps == ["source/zh"]
    assert graph.nodes["join"].deps == ["clean/en", "clean/zh"]
    train = graph.nodes["train"]
    assert f"checkpoint.dir={tmp_path / 'run' / 'train'}/checkpoints" in train.overrides
    assert f"data={tmp_path / 'run' / 'join'}" in train.overrides
    assert graph.dependants("clean/en") == {"join", "train"}


def test_phases_chain_the_stage_and_a_changed_phase_reruns_the_later_ones(tmp_path):
    run = tmp_path / "run"
    graph = build_graph(compose(run, "+recipe=fake_phases"))  # tests/pipeline/conf/recipe/
    assert list(graph.nodes)[-2:] == ["train/short", "train/long"]
    short, long = graph.nodes["train/short"], graph.nodes["train/long"]
    assert (short.phase, short.deps, long.deps) == ("short", ["join"], ["join", "train/short"])
    assert long.overrides[-3:] == [
        f"checkpoint.init_from={run / 'train/short'}/checkpoints",  # {previous}
        "train.steps=6",
        "sleep_s=0.4",
    ]
    assert graph.dependants("train/short") == {"train/long"}
    changed = build_graph(compose(run, "+recipe=fake_phases", "stages.train.phases.short=['x=1']"))
    assert changed.nodes["train/long"].fingerprint != long.fingerprint
    with pytest.raises(ValueError, match="unknown placeholder {previous}"):
        build_graph(compose(run, "+stages.train.phases.a=['checkpoint.init_from={previous}']"))


def test_kind_default_overrides_give_way_to_the_stage_own_in_their_place():
    defaults, values = ("input={input}", "output={output}"), {"input": "i", "output": "o"}
    assert with_defaults(defaults, ["x=1"], values) == ["input={input}", "output={output}", "x=1"]
    own = ["x=1", "++output=b", "input=a", "input=c"]  # Hydra: the last input= still wins
    assert with_defaults(defaults, own, values) == ["input=a", "++output=b", "x=1", "input=c"]
    # no upstream stage, so no {input}: the default is left out (the app reports the missing key)
    assert with_defaults(defaults, [], {"output": "o"}) == ["output={output}"]


def test_join_placeholder_is_a_hydra_list(tmp_path):
    cfg = compose(tmp_path / "run", "stages.join.overrides=['in={deps[clean]}']")
    (override,) = build_graph(cfg).nodes["join"].overrides
    run = tmp_path / "run"
    assert override == f"in=['{run}/clean/en','{run}/clean/zh']"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.join.kind=nope", "unknown stage kind 'nope'"),
        ("stages.join.after=[ghost]", "unknown stage 'ghost'"),
        ("stages.source.after=[train]", "cycle"),
        ("stages.join.overrides=['x={bogus}']", "unknown placeholder {bogus}"),
        ("stages.join.overrides=['x={deps[source]}']", "not in its 'after' list"),
        ("+stages.join.options.bogus=1", "bad options for stage kind 'fake_map'"),
        ("stages.clean.enabled=false", "needs stage 'clean', which is disabled"),
    ],
)
def test_bad_dag_config_is_a_clear_error(tmp_path, override, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("(", r"\(")):
        build_graph(compose(tmp_path / "run", override))


def test_change_one_option_reruns_only_that_subgraph(tmp_path):
    _complete_all(build_graph(compose(tmp_path / "run")))
    assert not any(d.run for d in plan(build_graph(compose(tmp_path / "run"))).values())
    changed = build_graph(
        compose(tmp_path / "run", "+domains.en.stage_overrides.clean=['sleep_s=0']")
    )
    decisions = plan(changed)
    assert sorted(k for k, d in decisions.items() if d.run) == ["clean/en", "join", "train"]
    assert decisions["clean/en"].reason == (
        "config changed (overrides: sleep_s); restart (previous outputs moved aside to .trash/)"
    )
    assert decisions["clean/en"].action == "restart"
    assert "input changed (clean/en)" in decisions["join"].reason


def test_code_change_reruns_the_kind(tmp_path, monkeypatch):
    graph = build_graph(compose(tmp_path / "run"))
    _complete_all(graph)
    monkeypatch.setattr("pipeline.dag.code_version", lambda modules, conf: "edited" + str(modules))
    decisions = plan(build_graph(compose(tmp_path / "run")))
    assert "code changed (pipeline_fakes)" in decisions["source/en"].reason
    assert "code changed (pipeline_fake_trainer" in decisions["train"].reason


def test_interrupted_stage_is_cleaned_but_training_resumes(tmp_path):
    graph = build_graph(compose(tmp_path / "run"))
    for key in ("clean/en", "train"):
        state.prepare_output(graph.nodes[key])
        (graph.nodes[key].output / "partial.txt").write_text("half")
    decisions = plan(graph)
    assert "rerun from scratch" in decisions["clean/en"].reason
    assert "resumes from its checkpoint" in decisions["train"].reason
    state.prepare_output(graph.nodes["clean/en"])
    state.prepare_output(graph.nodes["train"])
    assert not (graph.nodes["clean/en"].output / "partial.txt").exists()
    assert (graph.nodes["train"].output / "partial.txt").exists()


def test_dry_run_lists_run_and_skip_with_reasons(tmp_path):
    from rich.console import Console

    graph = build_graph(compose(tmp_path / "run"))
    _complete_all(graph)
    graph = build_graph(compose(tmp_path / "run", "stages.train.overrides=['train.steps=3']"))
    console = Console(record=True, width=200)
    print_plan(graph, plan(graph), console)
    text = console.export_text()
    assert "SKIP join [fake_map] <- clean/en, clean/zh: up to date" in text
    assert "RESTART train [train] <- join: config changed (overrides: " in text
    assert "1 to run (1 restart), 5 up to date" in text


def test_removed_domain_folders_are_moved_aside_so_globs_see_current_domains(tmp_path):
    from pipeline.engine import remove_orphans

    graph = build_graph(compose(tmp_path / "run"))
    stale = tmp_path / "run/clean/fr"
    stale.mkdir(parents=True)
    (stale / state.MARKER).write_text("{}")
    foreign = tmp_path / "run/clean/notes"  # not a stage folder of ours: left alone
    foreign.mkdir()
    (moved,) = remove_orphans(graph)
    assert moved.parent == tmp_path / "run" / state.TRASH and moved.name.startswith("clean.fr.")
    assert (moved / state.MARKER).read_text() == "{}"
    assert not stale.exists() and foreign.exists()


def test_one_driver_per_run_dir(tmp_path):
    from pipeline.engine import run_lock

    with run_lock(tmp_path / "run"):
        with pytest.raises(ValueError, match="another pipeline run is using"):
            with run_lock(tmp_path / "run"):
                pass
    with run_lock(tmp_path / "run"):  # released again
        pass
