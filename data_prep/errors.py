"""Errors raised by data_prep; each carries a one-line message meant for the user."""


class DataPrepError(Exception):
    """Base class: a stage could not run or did not finish."""


class InputError(DataPrepError, ValueError):
    """Bad user input: missing/empty input path, unknown stage or option, bad config value."""


class IncompleteRanksError(DataPrepError):
    """Some datatrove tasks of a stage did not complete."""

    def __init__(self, phase: str, ranks: list[int], logs: list[str]):
        self.ranks = ranks
        self.logs = logs
        shown = ", ".join(logs[:5]) + (" ..." if len(logs) > 5 else "")
        super().__init__(
            f"stage phase '{phase}': {len(ranks)} task(s) did not complete, ranks {ranks}; "
            f"see logs: {shown}"
        )


class OutputBusyError(DataPrepError):
    """Another run holds the lock of the output folder (it is writing there now)."""
