"""The one exception type for problems a user can cause.

Front ends turn it into a single line on stderr and exit code 2 (or 3 for
`EnvironmentMissing`), so its message must name the offending input and the fix.
"""


class FtplanError(ValueError):
    """Bad input: the message names the file, flag or key and says what to do."""


class EnvironmentMissing(FtplanError):
    """Something the machine lacks (no GPU, no network, a missing library)."""
