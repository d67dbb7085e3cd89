"""The one exception type for problems a user can cause.

Front ends turn it into a single line on stderr and exit code 2 (or 3 for
`EnvironmentMissing`). When the problem is one setting, the error carries the setting's
field name (`field`) and a reason without any front end's name for it; each front end
words it in its own vocabulary (a CLI flag, a config key, a form label) through
`planner.fields.worded`. Other fields named inside the reason are written `{field}`.
"""

from __future__ import annotations

import difflib
import re
import reprlib


class FtplanError(ValueError):
    """Bad input: the message names the file, flag or key and says what to do."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.reason = message
        self.field = field

    def __str__(self) -> str:
        # Front ends word the setting in their own vocabulary (planner.fields.worded); plain str() is for
        # Python callers, who named settings by their field names.
        text = re.sub(r"\{([a-z_][a-z0-9_]*)\}", r"\1", self.reason)
        return f"{self.field}: {text}" if self.field else text


class EnvironmentMissing(FtplanError):
    """Something the machine lacks (no GPU, no network, a missing library)."""


def validation_error(exc, known: tuple[str, ...] = ()) -> FtplanError:
    """pydantic's first complaint (a `ValidationError`) as an FtplanError on the field concerned; `known` are
    the model's fields, to suggest one for a misspelt name."""
    first = exc.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, FtplanError):
        return cause
    field = str(first["loc"][0]) if first["loc"] else None
    if first["type"] == "extra_forbidden" and field is not None:
        return unknown_setting(field, known)
    return FtplanError(first["msg"], field=field)


def unknown_setting(name: str, known) -> FtplanError:
    """A setting nobody has, with the closest of the `known` names when one is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return FtplanError("is not a setting" + (f"; did you mean {close[0]}?" if close else ""), field=name)


def _short_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 2, 3, 4, 4, 4
    r.maxstring, r.maxlong, r.maxother = 40, 40, 40
    return r


_SHORT = _short_repr()


def shown(value, limit: int = 80) -> str:
    """A value from a user's file as a message quotes it: a 50 MB string or a 1,000-deep list must not become a
    50 MB line or a RecursionError, so strings, numbers and containers are cut (reprlib) and the whole capped."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def shortened(text: str, limit: int = 120) -> str:
    """A name a user typed (a path, a --model) as a message prints it: its start and its end, whatever its length."""
    return text if len(text) <= limit else f"{text[:limit - 43]}...{text[-40:]}"
