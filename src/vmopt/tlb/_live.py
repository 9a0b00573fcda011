"""Counter objects that read the Rust core: live ``TlbStats``, ``PrefetchStats`` and ``MmuStats``.

They are the dataclasses of :mod:`vmopt.tlb.stats` (same fields, ratios,
``as_dict`` and equality), but every counter is read from the core when it
is accessed, so an object kept across translations shows the current
values, as the pure-Python objects did. :meth:`freeze` pins the values (what
``reset_stats`` does to the objects it replaces).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, Final

from vmopt.tlb.stats import MmuStats, PrefetchStats, TlbStats

__all__ = ["MMU_FIELDS", "PREFETCH_FIELDS", "TLB_FIELDS", "LiveMmuStats", "LivePrefetchStats", "LiveTlbStats"]

Source = Callable[[], Sequence[int]]

#: Index of each counter in the core's tuples (the dataclasses' field order).
TLB_FIELDS: Final = {f.name: i - 1 for i, f in enumerate(fields(TlbStats)) if f.name != "name"}
PREFETCH_FIELDS: Final = {f.name: i for i, f in enumerate(fields(PrefetchStats))}
MMU_FIELDS: Final = {f.name: i for i, f in enumerate(fields(MmuStats)) if f.name != "prefetch"}
_TLB, _PREFETCH, _MMU = TLB_FIELDS, PREFETCH_FIELDS, MMU_FIELDS


def _frozen(values: Sequence[int]) -> Source:
    kept = tuple(values)
    return lambda: kept


class LiveTlbStats(TlbStats):
    """A :class:`TlbStats` whose counters are those of a core TLB level."""

    def __init__(self, name: str, source: Source) -> None:  # not the dataclass __init__
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "name", name)

    def __getattribute__(self, attr: str) -> Any:
        index = _TLB.get(attr)
        if index is not None:
            return object.__getattribute__(self, "_source")()[index]
        return object.__getattribute__(self, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr in _TLB:
            raise AttributeError(f"TLB counter {attr!r} is kept by the MMU and cannot be set")
        object.__setattr__(self, attr, value)

    def freeze(self) -> None:
        """Keep the current values from now on."""
        object.__setattr__(self, "_source", _frozen(object.__getattribute__(self, "_source")()))


class LivePrefetchStats(PrefetchStats):
    """A :class:`PrefetchStats` whose counters are those of a core MMU."""

    def __init__(self, source: Source) -> None:
        object.__setattr__(self, "_source", source)

    def __getattribute__(self, attr: str) -> Any:
        index = _PREFETCH.get(attr)
        if index is not None:
            return object.__getattribute__(self, "_source")()[index]
        return object.__getattribute__(self, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr in _PREFETCH:
            raise AttributeError(f"prefetch counter {attr!r} is kept by the MMU and cannot be set")
        object.__setattr__(self, attr, value)

    def freeze(self) -> None:
        """Keep the current values from now on."""
        object.__setattr__(self, "_source", _frozen(object.__getattribute__(self, "_source")()))


class LiveMmuStats(MmuStats):
    """An :class:`MmuStats` whose counters (and ``prefetch``) are those of a core MMU.

    ``source()`` returns ``(mmu counters, prefetch counters)``.
    """

    def __init__(self, source: Callable[[], tuple[Sequence[int], Sequence[int]]]) -> None:
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "prefetch", LivePrefetchStats(lambda: source()[1]))

    def __getattribute__(self, attr: str) -> Any:
        index = _MMU.get(attr)
        if index is not None:
            return object.__getattribute__(self, "_source")()[0][index]
        return object.__getattribute__(self, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr in _MMU or attr == "prefetch":
            raise AttributeError(f"MMU counter {attr!r} is kept by the MMU and cannot be set")
        object.__setattr__(self, attr, value)

    def freeze(self) -> None:
        """Keep the current values (of ``prefetch`` too) from now on."""
        values = object.__getattribute__(self, "_source")()
        kept = (tuple(values[0]), tuple(values[1]))
        object.__setattr__(self, "_source", lambda: kept)
        object.__getattribute__(self, "prefetch").freeze()


# Print as the plain dataclasses do (``TlbStats(name=..., lookups=...)``).
for _cls, _base in ((LiveTlbStats, TlbStats), (LivePrefetchStats, PrefetchStats), (LiveMmuStats, MmuStats)):
    _cls.__repr__ = _base.__repr__  # type: ignore[method-assign]
    _cls.__qualname__ = _base.__qualname__
