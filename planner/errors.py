"""The one exception type for problems a user can cause.

Front ends turn it into a single line on stderr and exit code 2 (or 3 for
`EnvironmentMissing`). When the problem is one setting, the error carries the setting's
field name (`field`) and a reason without any front end's name for it; each front end
words it in its own vocabulary (a CLI flag, a config key, a form label) through
`planner.fields.worded`. Other fields named inside the reason are written `{field}`.
"""

from __future__ import annotations


class FtplanError(ValueError):
    """Bad input: the message names the file, flag or key and says what to do."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.reason = message
        self.field = field

    def __str__(self) -> str:
        # the bare reason: front ends say which setting, in their own words (planner.fields.worded)
        return self.reason


class EnvironmentMissing(FtplanError):
    """Something the machine lacks (no GPU, no network, a missing library)."""


def validation_error(exc) -> FtplanError:
    """pydantic's first complaint (a `ValidationError`) as an FtplanError on the field concerned."""
    first = exc.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, FtplanError):
        return cause
    field = str(first["loc"][0]) if first["loc"] else None
    return FtplanError(first["msg"], field=field)
