"""Byte quantities: parsed from user text at the edge, formatted only for display.

Internally every size is an int of bytes. On screen we use GiB (2**30) and say so,
because GPU vendors' "80GB" is not what `torch` or NVML report.
"""

from __future__ import annotations

import re

from planner.errors import FtplanError

GIB = 1 << 30
MIB = 1 << 20

_UNITS = {
    "": GIB,  # a bare number means GiB, the unit we display
    "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": MIB, "mib": MIB, "mb": 10**6,
    "g": GIB, "gib": GIB, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int | float, field: str | None = None, allow_zero: bool = False) -> int:
    """Parse '24GiB', '24 GB', '80G', '512MiB' or a bare number of GiB into bytes.

    'GB' is decimal (10**9) as vendors print it; 'G' and 'GiB' are binary. Errors carry `field`,
    the setting the text was given for.
    """
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        match = _PATTERN.match(text)
        if not match:
            raise FtplanError(f"cannot read {text!r} as a size; write e.g. 24GiB, 80GB or 512MiB", field=field)
        value, unit = float(match.group(1)), match.group(2).lower()
        if unit not in _UNITS:
            raise FtplanError(f"unknown unit {match.group(2)!r} in {text!r}; use B, MiB, GiB, GB or TiB", field=field)
    if value < 0 or (value == 0 and not allow_zero):
        raise FtplanError(f"{text!r} must be positive", field=field)
    return int(value * _UNITS[unit])


def gib(nbytes: int | float) -> float:
    return nbytes / GIB


_LARGER = ("TiB", "PiB", "EiB", "ZiB", "YiB")


def gib_unit(nbytes: int | float) -> tuple[str, int]:
    """The binary unit to show `nbytes` in: GiB, or the next one up while the number would pass 1024
    (a mistyped micro-batch of 10^14 reads '643.57 ZiB', not fifteen digits of GiB)."""
    unit, size = "GiB", GIB
    for larger in _LARGER:
        if abs(nbytes) < size * 1024:
            break
        unit, size = larger, size * 1024
    return unit, size


def fmt_gib(nbytes: int | float, digits: int = 2) -> str:
    unit, size = gib_unit(nbytes)
    return f"{nbytes / size:.{digits}f} {unit}"


def fmt_count(n: int) -> str:
    """Parameter counts the way model cards write them: 6.74B, 124.4M, 8.4K."""
    for scale, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)
