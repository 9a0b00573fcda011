"""The README's promise: every error the public API raises derives from VmoptError.

The walk covers ``vmopt.__all__``: every class's constructor, class and
static methods, and the public methods of one live instance of each, called
with hostile arguments (None, floats, strings, negative and huge ints,
lists, dicts, bytes, numpy arrays of the wrong dtype) drawn by hypothesis, at
every arity the signature allows. Only VmoptError subclasses may escape.

Left out, each for a reason: ``close``/``destroy`` only end an
object's life; coroutine functions are checked by the stores' own tests
(their argument checks run when awaited); ``MemPolicy.order`` and
``MemPolicy.target`` are the allocator's hot-path hooks, called by
``NumaMemory`` with values it computed.
"""

from __future__ import annotations

import enum
import inspect
import itertools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmopt
from vmopt.errors import InputError, VmoptError

EXCLUDED_CLASSES: set[str] = set()
EXCLUDED_METHODS = {"close", "destroy", "order", "target"}

HOSTILE: list[Any] = [
    None,
    1.5,
    math.nan,
    "x",
    "",
    "4096",
    -1,
    0,
    1,
    4096,
    1 << 64,
    1 << 70,
    True,
    [1],
    [],
    (),
    {},
    b"ab",
    object(),
    np.zeros(2, dtype=np.float32),
    np.zeros(3, dtype=np.int8),
    np.uint64(4096),
]


def _classes() -> list[tuple[str, type]]:
    out = []
    for name in vmopt.__all__:
        obj = getattr(vmopt, name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException) and name not in EXCLUDED_CLASSES:
            out.append((name, obj))
    return out


def _instances(tmp: Path) -> Iterator[tuple[str, Any]]:
    """One live object of each class whose methods are walked."""
    mem = vmopt.PhysicalMemory(64 << 20)
    pt = vmopt.PageTable(mem)
    pt.map(0x1000, mem.alloc(), 4096, "rw", user=True)
    snapshot = tmp / "snap.bin"
    snapshot.write_bytes(bytes(8192))
    yield "PhysicalMemory", mem
    yield "PageTable", pt
    host = vmopt.PageTable(vmopt.PhysicalMemory(16 << 20, base=64 << 20), "ept")
    host.map_range(0, 72 << 20, 1 << 20, perms="rw", user=True)
    yield "HostPageTable", host
    gm = host.guest_memory()
    yield "GuestMemory", gm
    yield "PageTableOnGuestMemory", vmopt.PageTable(gm)
    yield "Mmu", vmopt.Mmu(pt)
    yield "Tlb", vmopt.Tlb(vmopt.TlbConfig(16, 4))
    yield "NumaConfig", vmopt.NumaConfig(2, 8 << 20)
    yield "NumaMemory", vmopt.NumaMemory(vmopt.NumaConfig(2, 8 << 20))
    yield "MemPolicy", vmopt.MemPolicy.parse("interleave:0,1")
    yield "FileStore", vmopt.FileStore(snapshot)
    yield "LatencyStore", vmopt.LatencyStore(0.0, num_pages=4)
    opt = vmopt.MemoryOptimizer(vmopt.NumaConfig(2, 8 << 20), cpus=2)
    opt.allocate(1 << 20, policy=vmopt.MemPolicy.parse("interleave:0,1"))
    yield "MemoryOptimizer", opt


def _arities(f: Callable[..., Any]) -> tuple[int, int] | None:
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):
        return None
    pos = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and not p.name.startswith("_")
    ]
    required = sum(p.default is p.empty for p in pos)
    return required, len(pos)


def _targets(tmp: Path) -> list[tuple[str, Callable[..., Any], int, int]]:
    targets = []
    for name, cls in _classes():
        for attr, f in [("__init__", cls), *inspect.getmembers(cls)]:
            if attr.startswith("_") and f is not cls:
                continue
            if f is not cls and not isinstance(
                inspect.getattr_static(cls, attr, None), classmethod | staticmethod
            ):
                continue
            if attr in EXCLUDED_METHODS or inspect.iscoroutinefunction(f):
                continue
            ar = _arities(f)
            if ar is not None and f is cls and issubclass(cls, enum.Enum):
                ar = (1, 1)  # Perm(value, names) is the functional API that makes a new enum
            if ar is not None:
                targets.append((f"{name}.{attr}", f, *ar))
    for name, obj in _instances(tmp):
        for attr in dir(obj):
            if attr.startswith("_") or attr in EXCLUDED_METHODS:
                continue
            if isinstance(
                inspect.getattr_static(type(obj), attr, None), property | classmethod | staticmethod
            ):
                continue
            f = getattr(obj, attr)
            if not callable(f) or inspect.iscoroutinefunction(f) or inspect.isclass(f):
                continue
            ar = _arities(f)
            if ar is not None:
                targets.append((f"{name}().{attr}", f, *ar))
    return targets


def _call(f: Callable[..., Any], args: list[Any]) -> None:
    try:
        result = f(*args)
        if inspect.iscoroutine(result):
            result.close()
        elif isinstance(result, Iterator):
            for _ in itertools.islice(result, 3):
                pass
    except VmoptError:
        pass


TARGETS = _targets(Path(__import__("tempfile").mkdtemp(prefix="vmopt-api-")))


def test_the_walk_covers_the_public_api() -> None:
    names = {t[0] for t in TARGETS}
    for expected in (
        "Mmu().translate",
        "Mmu.__init__",
        "PhysicalMemory().write_u64",
        "PhysicalMemory.from_file",
        "PageTable.__init__",
        "PhysicalMemory().contains",
        "NumaConfig.__init__",
        "TlbConfig.__init__",
        "PageTable().map",
        "Tlb().lookup",
        "HostPageTable().guest_memory",
        "GuestMemory().read",
        "GuestMemory().write",
        "GuestMemory().read_u64",
        "GuestMemory().write_u64",
        "GuestMemory().translate",
        "PageTableOnGuestMemory().map",
    ):
        assert expected in names
    assert len(names) > 80


@pytest.mark.parametrize(("name", "f", "required", "most"), TARGETS, ids=[t[0] for t in TARGETS])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_arguments_raise_only_vmopt_errors(
    name: str, f: Callable[..., Any], required: int, most: int, data: st.DataObject, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # a path-like argument lands here, never in the checkout
    n = data.draw(st.integers(required, min(most, required + 3)), label="arity")
    args = data.draw(st.lists(st.sampled_from(HOSTILE), min_size=n, max_size=n), label="args")
    _call(f, args)


# -- the cases issue 12 (item 11) names, each with its class and the value in the message ----------


@pytest.fixture
def space() -> tuple[vmopt.PhysicalMemory, vmopt.PageTable, vmopt.Mmu]:
    mem = vmopt.PhysicalMemory(64 << 20)
    pt = vmopt.PageTable(mem)
    pt.map(0x1000, mem.alloc(), 4096, "rw", user=True)
    return mem, pt, vmopt.Mmu(pt)


@pytest.mark.parametrize("va", [None, 4096.0, "4096"])
def test_translate_of_a_non_int_names_it(space: Any, va: Any) -> None:
    with pytest.raises(vmopt.AddressError, match=repr(va).replace(".", r"\.")):
        space[2].translate(va)


@pytest.mark.parametrize("user", ["yes", None, 2, "1"])
def test_user_flags_that_are_not_bools_are_refused(space: Any, user: Any) -> None:
    mem, pt, mmu = space
    with pytest.raises(VmoptError, match=repr(user)):
        mmu.translate(0x1000, "r", user)
    with pytest.raises(VmoptError, match=repr(user)):
        pt.map(0x2000, mem.alloc(), 4096, "rw", user=user)
    assert pt.lookup(0x2000) is None
    with pytest.raises(VmoptError, match=repr(user)):
        pt.walk(0x1000, "r", user)


def test_the_named_constructors_and_calls(space: Any, tmp_path: Path) -> None:
    mem, pt, _ = space
    with pytest.raises(InputError, match=r"tlb=\[5\]"):
        vmopt.Mmu(pt, tlb=[5])
    with pytest.raises(vmopt.ConfigError, match="at least one TLB level"):
        vmopt.Mmu(pt, tlb=[])
    with pytest.raises(InputError, match="page_table=None"):
        vmopt.Mmu(None)  # type: ignore[arg-type]
    with pytest.raises(vmopt.AddressError, match="-1"):
        mem.write_u64(0, -1)
    with pytest.raises(vmopt.ConfigError, match="is a directory"):
        vmopt.PhysicalMemory.from_file(tmp_path)
    with pytest.raises(vmopt.ConfigError, match=r"1\.5"):
        vmopt.NumaConfig(2, 1.5)  # type: ignore[arg-type]
    with pytest.raises(vmopt.ConfigError, match=r"page_sizes.*None"):
        vmopt.TlbConfig(16, 4, page_sizes=None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="mem=None"):
        vmopt.PageTable(None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="'a'"):
        mem.contains("a")  # type: ignore[arg-type]
    assert issubclass(InputError, TypeError)


# -- issue 12 item 3: every byte of a buffer is written ----------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        np.array([1, 2, 3], dtype=np.uint64),
        np.arange(12, dtype=np.uint16)[::3],  # not contiguous
        memoryview(np.array([7, 8], dtype=np.uint32)),
        __import__("array").array("I", [0xDEADBEEF, 5]),
        bytearray(b"xyz"),
    ],
    ids=["uint64", "strided", "memoryview", "array", "bytearray"],
)
def test_physical_write_writes_the_byte_size_of_any_buffer(data: Any) -> None:
    mem = vmopt.PhysicalMemory(1 << 20)
    want = np.asarray(data).tobytes() if not isinstance(data, bytearray) else bytes(data)
    mem.write(0x100, data)
    assert mem.read(0x100, len(want)) == want
    assert mem.read(0x100 + len(want), 8) == bytes(8)
    with pytest.raises(vmopt.PhysicalAccessError, match=f"{(1 << 20) - 2 + len(want):#x}"):
        mem.write((1 << 20) - 2, data)
    with pytest.raises(InputError, match="'text'"):
        mem.write(0, "text")  # type: ignore[arg-type]
