"""The one table of data_prep stages (data_prep.config.STAGE_TABLE) agrees with the phase
builders (data_prep.stages.BUILDERS) and the config sections (DataPrepConfig fields)."""

from __future__ import annotations

import dataclasses
import typing

from data_prep.config import (
    INDEX_FILES,
    STAGE_SECTIONS,
    STAGE_TABLE,
    STAGES,
    TEXT_STAGES,
    WEB_STAGES,
    DataPrepConfig,
)
from data_prep.stages import BUILDERS

NOT_A_STAGE_SECTION = {"executor"}  # where a stage runs, not what it does


def _sections() -> set[str]:
    """DataPrepConfig fields that are sections (dataclasses), not scalars like `input`."""
    hints = typing.get_type_hints(DataPrepConfig)
    return {name for name, hint in hints.items() if dataclasses.is_dataclass(hint)}


def test_every_table_stage_has_a_phase_builder_and_every_builder_a_table_entry():
    assert set(STAGE_TABLE) - set(BUILDERS) == set(), "stages without a phase builder"
    assert set(BUILDERS) - set(STAGE_TABLE) == set(), "phase builders of no table stage"


def test_every_table_section_is_a_config_section_and_every_section_is_read():
    sections = _sections()
    for name, spec in STAGE_TABLE.items():
        assert spec.section in sections, f"{name}: no DataPrepConfig section {spec.section!r}"
    read = {spec.section for spec in STAGE_TABLE.values()}
    assert sections - NOT_A_STAGE_SECTION - read == set(), "config sections no stage reads"


def test_the_exported_names_are_views_of_the_table():
    assert STAGES == tuple(STAGE_TABLE)
    assert STAGE_SECTIONS == {n: s.section for n, s in STAGE_TABLE.items()}
    assert WEB_STAGES == ("warc", "url_filter")
    assert set(WEB_STAGES) | set(TEXT_STAGES) == set(STAGES)
    assert not set(WEB_STAGES) & set(TEXT_STAGES)
    assert TEXT_STAGES == tuple(s for s in STAGES if s not in WEB_STAGES)  # chain order kept
    assert set(INDEX_FILES) <= set(STAGES)
