#!/usr/bin/env python3
"""Boot a Debian kernel under QEMU TCG and save real guest memory dumps with QEMU's own walks.

Re-runnable on a clean Debian 12 machine as root (it installs what it needs
with apt). For each capture (4- and 5-level paging, each with KASLR on and
with ``nokaslr``) it boots a busybox initramfs whose init starts a few user
processes and prints a marker line on the serial console; the script waits
for that line (no sleeps, no timing guesses), stops the guest over QMP and
saves, from the one stopped state:

- ``guest.raw``: ``pmemsave 0 <ram size>`` (physical address 0 = first byte);
- ``guest.elf``: ``dump-guest-memory`` ELF (physical PT_LOADs, QEMU CPU notes);
- ``guest.kdump``: ``dump-guest-memory`` kdump-zlib;
- ``guest-paging.elf`` (one capture only): ``dump-guest-memory -p``;
- ``info-registers.txt`` (``info registers -a``), and for each vCPU N
  ``info-mem.cpuN.txt``, ``info-tlb.cpuN.txt`` and ``gva2gpa.cpuN.txt``
  (one ``ADDRESS<TAB>QEMU's answer`` line per address asked);
- ``console.txt``: the serial console up to the marker;
- ``capture.json``: versions and command lines.

Everything is saved under ``--work``; then :func:`pack` writes
tests/data/dumps: per capture its text files (xz) and capture.json, and one
``dumps.tar.xz`` with every raw image and a skeleton of every other dump
file (tests/data/dumps/dumppack.py: the file less the bytes the raw image
regenerates). tests/data/dumps/README.md says how the committed ones were made.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("capture-dumps")

#: Debian packages the capture needs on the host.
APT_PACKAGES = ("qemu-system-x86", "busybox-static", "cpio", "xz-utils")
#: The kernel package booted (a Debian bookworm security update; override with --kernel-package).
KERNEL_PACKAGE = "linux-image-6.1.0-57-amd64"
#: Guest RAM: small, so the dumps stay small; Linux 6.1 boots a busybox initramfs in it.
RAM_MB = 128
#: The line the guest's init prints once its processes are running.
MARKER = "vmopt-capture: ready"
#: How long the boot may take before the script gives up (TCG on a loaded 2-core host is slow).
BOOT_TIMEOUT_S = 1800.0
#: The capture whose ELF is also written with paging=true.
PAGING_CAPTURE = "x86_64-4level-nokaslr"
#: Addresses asked with gva2gpa per vCPU (about; chosen from the info mem listing).
GVA2GPA_TARGET = 520
#: xz dictionary: spans the four raw images, so the bytes they share are stored once.
XZ_DICT_MIB = 576
#: Raw images in the archive in this order: each next to the one most like it.
PACK_ORDER = ("x86_64-4level-nokaslr", "x86_64-5level-nokaslr", "x86_64-4level-kaslr", "x86_64-5level-kaslr")


@dataclass(frozen=True)
class Capture:
    """One boot: its name, paging mode and whether KASLR is on."""

    name: str
    la57: bool
    kaslr: bool

    @property
    def cpu(self) -> str:
        return "max,+la57" if self.la57 else "max,-la57"

    @property
    def append(self) -> str:
        # init_on_free=1 zeroes freed pages (the unpacked kernel's init sections, the initrd),
        # so free memory compresses to nothing.
        parts = ["console=ttyS0", "panic=-1", "init_on_free=1", "loglevel=4"]
        if not self.kaslr:
            parts.append("nokaslr")
        return " ".join(parts)


CAPTURES = (
    Capture("x86_64-4level-kaslr", la57=False, kaslr=True),
    Capture("x86_64-4level-nokaslr", la57=False, kaslr=False),
    Capture("x86_64-5level-kaslr", la57=True, kaslr=True),
    Capture("x86_64-5level-nokaslr", la57=True, kaslr=False),
)

INIT_SCRIPT = f"""#!/bin/busybox sh
# vmopt capture init: a few user address spaces, then a marker, then wait forever.
/bin/busybox mkdir -p /proc /sys /dev /tmp /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "vmopt-capture: init pid $$, la57 flag in cpuinfo: $(grep -c -w la57 /proc/cpuinfo)"
sleep 2147483647 &
# A shell that fills a buffer (heap pages it wrote), then spins on vCPU 0 so that vCPU 0's CR3
# is a user address space when the guest is stopped. It prints the marker once the buffer is full.
taskset 1 sh -c 'buf=$(head -c 262144 /dev/zero | tr "\\000" "v"); \\
echo "{MARKER}: pid $$ holds ${{#buf}} bytes"; while :; do :; done' &
wait
"""


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    log.info("$ %s", " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def install_packages() -> None:
    """apt-get the host tools (qemu, busybox, cpio, xz)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], env=env)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES], env=env)


def fetch_kernel(work: Path, package: str) -> tuple[Path, str]:
    """Download the kernel package with apt (not installed) and extract its vmlinuz."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{package}_*.deb")):
        run(["apt-get", "download", package], cwd=debs)
    (deb,) = debs.glob(f"{package}_*.deb")
    version = run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True).stdout.decode().strip()
    root = work / "kernel"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        run(["tar", "-x", "-C", str(root), "--wildcards", "./boot/vmlinuz-*"], stdin=p.stdout)
    if p.returncode:
        raise SystemExit(f"dpkg-deb --fsys-tarfile {deb} failed ({p.returncode})")
    (vmlinuz,) = (root / "boot").glob("vmlinuz-*")
    return vmlinuz, version


def build_initramfs(work: Path) -> Path:
    """A newc cpio (gzip) holding busybox-static and the init script."""
    tree = work / "initramfs"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", tree / "bin" / "busybox")
    init = tree / "init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    out = work / "initramfs.cpio.gz"
    cpio = run(
        ["cpio", "-o", "-H", "newc", "--owner=0:0", "--reproducible", "--quiet"],
        cwd=tree,
        input=("\n".join(names) + "\n").encode(),
        capture_output=True,
    ).stdout
    out.write_bytes(run(["gzip", "-9n"], input=cpio, capture_output=True).stdout)
    return out


class Qmp:
    """A minimal QMP client over a unix socket (one command at a time, events skipped)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise SystemExit(f"not a QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self.reader.readline()
        if not line:
            raise SystemExit("QMP connection closed")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, command: str, **arguments: Any) -> Any:
        req: dict[str, Any] = {"execute": command}
        if arguments:
            req["arguments"] = arguments
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        while True:
            msg = self._read()
            if "event" in msg:
                log.debug("event %s", msg)
                continue
            if "error" in msg:
                raise SystemExit(f"QMP {command} {arguments}: {msg['error']}")
            return msg["return"]

    def hmp(self, command_line: str, cpu: int | None = None) -> str:
        args: dict[str, Any] = {"command-line": command_line}
        if cpu is not None:
            args["cpu-index"] = cpu
        text: str = self.execute("human-monitor-command", **args)
        return text


class Console(threading.Thread):
    """Copies the guest's serial console (QEMU's stdout) to a file; sets ``ready`` at the marker."""

    def __init__(self, stream: Any, path: Path) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.path = path
        self.ready = threading.Event()
        self.closed = threading.Event()
        self.lines: list[str] = []

    def run(self) -> None:
        with self.path.open("w", encoding="utf-8") as out:
            for raw in self.stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not self.ready.is_set():
                    out.write(line + "\n")
                    out.flush()
                    self.lines.append(line)
                    if line.startswith(MARKER):
                        self.ready.set()
        self.closed.set()
        self.ready.set()  # wake the waiter: QEMU has exited


def listen_qmp(path: Path) -> socket.socket:
    """A listening unix socket that QEMU connects its QMP monitor to (so we never poll for it)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    s.settimeout(120.0)
    return s


def info_mem_ranges(text: str) -> list[tuple[int, int]]:
    """(start, end) of each ``info mem`` line, canonical addresses as QEMU prints them."""
    out = []
    for line in text.splitlines():
        m = re.fullmatch(r"([0-9a-f]{16})-([0-9a-f]{16}) ([0-9a-f]{16}) [-u]r[-w]", line.strip())
        if m:
            out.append((int(m[1], 16), int(m[2], 16)))
    return out


def info_tlb_ranges(text: str) -> list[tuple[int, int]]:
    """Runs of virtually adjacent leaves from ``info tlb`` (a 'P' leaf counted as 2 MiB).

    Used when ``info mem`` printed nothing: QEMU 7.2's ``info mem`` under LA57
    tests the PDPE and PDE present bits inverted and lists no range at all.
    """
    runs: list[tuple[int, int]] = []
    for line in text.splitlines():
        m = re.fullmatch(r"([0-9a-f]{16}): [0-9a-f]{16} .{2}(.).{6}", line.strip())
        if m is None:
            continue
        va = int(m[1], 16)
        end = va + ((2 << 20) if m[2] == "P" else 4096)
        if runs and runs[-1][1] == va:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((va, end))
    return runs


def choose_addresses(ranges: list[tuple[int, int]], la57: bool, seed: str) -> list[int]:
    """Addresses to ask gva2gpa: range starts, last bytes, random insides, gaps and non-canonical ones."""
    rng = random.Random(seed)
    va_bits = 57 if la57 else 48
    low_top = 1 << (va_bits - 1)
    high_base = (1 << 64) - low_top
    picked: set[int] = set()
    # QEMU prints an end of exactly 1 << va_bits for a range reaching the top (it wraps the flush).
    spans = [(s, e if e > s else 1 << 64) for s, e in ranges]
    # The largest ranges (2 MiB and 1 GiB pages live there) get several addresses each; then a
    # sample of the rest (most are single pages: the espfix stacks alone are ~65,000 ranges).
    by_size = sorted(spans, key=lambda r: r[0] - r[1])
    big, rest = by_size[:40], by_size[40:]
    for start, end in big:
        picked.update({start, end - 1, (start + end) // 2 & ~0xFFF, end})
        picked.update(rng.randrange(start, end) for _ in range(3))
    for start, end in rng.sample(rest, min(60, len(rest))):
        picked.update({start, end - 1, rng.randrange(start, end), end})
    # Unmapped: random addresses in each canonical half and a few in the non-canonical hole.
    for _ in range(40):
        picked.add(rng.randrange(0, low_top))
        picked.add(rng.randrange(high_base, 1 << 64))
    for _ in range(8):
        picked.add(rng.randrange(low_top, high_base))
    picked.update({0, 0xFFF, low_top - 1, low_top, high_base - 1, high_base, (1 << 64) - 1})
    chosen = sorted(a for a in picked if a < 1 << 64)
    if len(chosen) > GVA2GPA_TARGET + 120:
        chosen = sorted(rng.sample(chosen, GVA2GPA_TARGET + 120))
    return chosen


def captured_names(captured: Path) -> list[str]:
    """The captures saved under ``captured``, in PACK_ORDER."""
    return [n for n in PACK_ORDER if (captured / n / "guest.raw").is_file()]


def load_dumppack(repo: Path) -> Any:
    """tests/data/dumps/dumppack.py: the skeleton format the tests unpack (one copy of the code)."""
    path = repo / "tests" / "data" / "dumps" / "dumppack.py"
    spec = importlib.util.spec_from_file_location("dumppack", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pack(captured: Path, out_root: Path, names: list[str], repo: Path) -> None:
    """Write tests/data/dumps: per capture its text files (xz) and capture.json; one dumps.tar.xz.

    The archive holds each capture's guest.raw and a skeleton of every other
    dump file (dumppack.py: the file less the bytes the raw image regenerates),
    raw images first in the order that puts similar ones next to each other,
    compressed as one xz stream whose dictionary spans all of them.
    """
    dp = load_dumppack(repo)
    out_root.mkdir(parents=True, exist_ok=True)
    members: list[tuple[Path, str]] = []
    skeletons: list[tuple[Path, str]] = []
    for name in names:
        src = captured / name
        dst = out_root / name
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir()
        meta = json.loads((src / "capture.json").read_text())
        meta["files"] = {}
        raw = (src / "guest.raw").read_bytes()
        for dump in sorted(src.glob("guest*")):
            data = dump.read_bytes()
            meta["files"][dump.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if dump.name == "guest.raw":
                members.append((dump, f"{name}/guest.raw"))
                continue
            finder = dp.kdump_flat_splices if dump.suffix == ".kdump" else dp.elf_splices
            skel = src / f"{dump.name}{dp.SKELETON}"
            skel.write_bytes(dp.pack(data, finder(data, raw)))
            skeletons.append((skel, f"{name}/{skel.name}"))
        (dst / "capture.json").write_text(json.dumps(meta, indent=2) + "\n")
        for text in sorted(src.glob("*.txt")):
            run(["xz", "-9", "-T1", "-c", str(text)], stdout=(dst / f"{text.name}.xz").open("wb"))
    tar_path = out_root / "dumps.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, arcname in members + skeletons:
            info = tar.gettarinfo(str(path), arcname=arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            info.mode = 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)
    run(["xz", "-f", "-T1", f"--lzma2=preset=9,dict={XZ_DICT_MIB}MiB", str(tar_path)])


def capture(
    cap: Capture, vmlinuz: Path, initrd: Path, out_root: Path, scratch: Path, versions: dict[str, str]
) -> None:
    """Boot, wait for the marker, stop, save everything, quit."""
    out = out_root / cap.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tmp = scratch / cap.name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    qmp_path = tmp / "qmp.sock"
    cmd = [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-machine", "pc",
        "-cpu", cap.cpu,
        "-smp", "2",
        "-m", f"{RAM_MB}M",
        "-kernel", str(vmlinuz),
        "-initrd", str(initrd),
        "-append", cap.append,
        "-nodefaults",
        "-display", "none",
        "-serial", "stdio",
        "-qmp", f"unix:{qmp_path}",
        "-no-reboot",
    ]  # fmt: skip
    log.info("%s: $ %s", cap.name, " ".join(cmd))
    listener = listen_qmp(qmp_path)
    qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert qemu.stdout is not None
        console = Console(qemu.stdout, out / "console.txt")
        console.start()
        conn, _ = listener.accept()
        conn.settimeout(None)
        listener.close()
        qmp = Qmp(conn)
        if not console.ready.wait(BOOT_TIMEOUT_S) or console.closed.is_set():
            tail = "\n".join(console.lines[-20:])
            raise SystemExit(f"{cap.name}: no marker line from the guest; console ends:\n{tail}")
        qmp.execute("stop")
        log.info("%s: guest stopped at the marker", cap.name)
        save_state(cap, qmp, out, tmp)
        qmp.execute("quit")
        qemu.wait(timeout=60)
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
    (out / "capture.json").write_text(
        json.dumps(
            {
                "name": cap.name,
                "la57": cap.la57,
                "kaslr": cap.kaslr,
                "ram_bytes": RAM_MB << 20,
                "qemu_command": cmd,
                "kernel_command_line": cap.append,
                **versions,
            },
            indent=2,
        )
        + "\n"
    )
    shutil.rmtree(tmp, ignore_errors=True)


def save_state(cap: Capture, qmp: Qmp, out: Path, tmp: Path) -> None:
    """Registers, QEMU's walks and the dumps of the stopped guest."""
    regs = qmp.hmp("info registers -a")
    (out / "info-registers.txt").write_text(regs)
    ncpus = len(qmp.execute("query-cpus-fast"))
    for cpu in range(ncpus):
        mem = qmp.hmp("info mem", cpu)
        (out / f"info-mem.cpu{cpu}.txt").write_text(mem)
        tlb = qmp.hmp("info tlb", cpu)
        (out / f"info-tlb.cpu{cpu}.txt").write_text(tlb)
        ranges = info_mem_ranges(mem) or info_tlb_ranges(tlb)
        lines = []
        for va in choose_addresses(ranges, cap.la57, f"{cap.name}/{cpu}"):
            answer = qmp.hmp(f"gva2gpa {va:#x}", cpu).strip()
            lines.append(f"{va:016x}\t{answer}\n")
        (out / f"gva2gpa.cpu{cpu}.txt").write_text("".join(lines))
    dumps = [tmp / "guest.raw", tmp / "guest.elf", tmp / "guest.kdump"]
    qmp.hmp(f'pmemsave 0 {RAM_MB << 20:#x} "{dumps[0]}"')
    qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{dumps[1]}")
    qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{dumps[2]}", format="kdump-zlib")
    if cap.name == PAGING_CAPTURE:
        dumps.append(tmp / "guest-paging.elf")
        qmp.execute("dump-guest-memory", paging=True, protocol=f"file:{dumps[3]}")
    for p in dumps:
        log.info("%s: %s %d bytes", cap.name, p.name, p.stat().st_size)
        shutil.move(p, out / p.name)


def tool_versions(kernel_package: str, kernel_version: str) -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[0]

    def dpkg_version(pkg: str) -> str:
        return first_line(["dpkg-query", "-W", "-f", "${Version}\n", pkg])

    return {
        "qemu": first_line(["qemu-system-x86_64", "--version"]),
        "qemu_package": dpkg_version("qemu-system-x86"),
        "kernel_package": f"{kernel_package} {kernel_version}",
        "busybox_package": f"busybox-static {dpkg_version('busybox-static')}",
    }


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=here.parents[1] / "tests" / "data" / "dumps")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vmopt-capture")
    p.add_argument("--kernel-package", default=KERNEL_PACKAGE)
    p.add_argument("--only", action="append", default=[], help="capture name (repeatable)")
    p.add_argument("--no-install", action="store_true", help="skip apt-get install")
    p.add_argument("--pack-only", action="store_true", help="only pack the captures already in --work")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.pack_only:
        captured = args.work / "captures"
        pack(captured, args.out, captured_names(captured), here.parents[1])
        return 0
    if not args.no_install:
        install_packages()
    args.work.mkdir(parents=True, exist_ok=True)
    vmlinuz, kversion = fetch_kernel(args.work, args.kernel_package)
    initrd = build_initramfs(args.work)
    versions = tool_versions(args.kernel_package, kversion)
    chosen = [c for c in CAPTURES if not args.only or c.name in args.only]
    if args.only and len(chosen) != len(args.only):
        raise SystemExit(f"unknown capture in {args.only}; known: {[c.name for c in CAPTURES]}")
    captured = args.work / "captures"
    for cap in chosen:
        capture(cap, vmlinuz, initrd, captured, args.work / "run", versions)
    pack(captured, args.out, captured_names(captured), here.parents[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
