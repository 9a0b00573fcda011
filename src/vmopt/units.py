"""Human-readable sizes, for messages and reports."""

from __future__ import annotations

__all__ = ["format_size", "parse_size"]

_UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def format_size(n: int) -> str:
    """``4096 -> '4 KiB'``, ``3 << 20 -> '3 MiB'``, ``1536 -> '1.5 KiB'``."""
    for name, unit in _UNITS:
        if n >= unit:
            value = n / unit
            text = f"{value:.0f}" if n % unit == 0 else f"{value:.1f}"
            return f"{text} {name}"
    return f"{n} B"


def parse_size(text: str | int) -> int:
    """Parse ``'4K'``, ``'2MiB'``, ``'1G'``, ``'4096'`` or an int into bytes."""
    if isinstance(text, int):
        return text
    s = text.strip().replace("_", "")
    multipliers = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    lower = s.lower().removesuffix("ib").removesuffix("b")
    if lower and lower[-1] in multipliers:
        return int(float(lower[:-1]) * multipliers[lower[-1]])
    return int(lower, 0)
