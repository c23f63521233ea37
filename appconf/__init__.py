"""Helpers shared by the apps (data_prep, trainer, pipeline): strict config keys (`strict`) and
process lifetime (`lifetime`: no orphans after the parent dies).

A leaf package: it imports only the standard library and omegaconf, never the project, so every
app may use it without importing another app or the launch layer.
"""

from appconf.strict import (
    UnknownKeyError,
    check_keys,
    compose_checked,
    from_hydra_error,
    unknown_key,
)

__all__ = ["UnknownKeyError", "check_keys", "compose_checked", "from_hydra_error", "unknown_key"]
