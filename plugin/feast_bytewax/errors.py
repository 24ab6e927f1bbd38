"""The package's exceptions: each one is a problem a user can fix, with a message that says how.

Commands catch `FeastBytewaxError` at the edge and print its message as one line (no
traceback): a bad feature definition (`SpecError`), a bad setting or an unreachable
dependency found before the dataflow starts (`ConfigError`), a Kafka error the live run must
not run past (`SourceError`), a store that stayed down longer than the run may wait
(`StoreUnavailable`).
"""

from __future__ import annotations


class FeastBytewaxError(Exception):
    """Base class: the message is meant for the person running the command."""


class SpecError(FeastBytewaxError, ValueError):
    """A feature definition the engine cannot execute; the message names the view and field."""


class ConfigError(FeastBytewaxError, ValueError):
    """A setting, path or connection that is wrong; the message says what to change."""


class SourceError(FeastBytewaxError, RuntimeError):
    """An input error the run must not run past (unreachable broker, deleted topic...)."""


class StoreUnavailable(FeastBytewaxError, RuntimeError):
    """A Feast store kept failing for longer than the run's outage limit."""
