#!/usr/bin/env python3
"""Benchmark ckptfix's batch mode against a shell loop, and --jobs 2 against --jobs 1.

    .venv/bin/python benchmarks/batch.py            # 200 small files; 12 conv-heavy files; 3 reps
    .venv/bin/python benchmarks/batch.py --quick    # 40 small files; 4 conv-heavy; 1 rep

Cases, run side by side (interleaved per repetition), wall time by ``/usr/bin/time -v`` with peak
RSS, medians reported:
  small/loop      a shell loop calling ``ckptfix apply`` once per file (a new process each time)
  small/batch     one ``ckptfix apply DIR --recursive --out-dir`` call (one worker: torch imported once)
  conv/jobs1      conv-heavy files (HWIO kernels, transposed to OIHW) with --jobs 1
  conv/jobs2      the same with --jobs 2
Targets (issue 6): small/batch at least 10x faster than small/loop; conv/jobs2 at least 1.6x
faster than conv/jobs1 on 2 cores. The table goes to benchmarks/results-batch.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

BENCH = Path(__file__).resolve().parent
CKPTFIX = str(Path(sys.executable).parent / "ckptfix")
TRANSPOSE = "ckptfix: 1\nrules:\n  - rename: {pattern: '/', replace: '.'}\n  - transpose: {keys: 'kernel$', layout: HWIO->OIHW}\n"


def make_small(d: Path, n: int) -> None:
    """``n`` DDP-wrapped state dicts of about 1 MB each (a small CNN)."""
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        p = d / f"run{i:03d}.pt"
        if not p.exists():
            torch.save({"module.conv1.weight": torch.randn(128, 64, 3, 3, generator=g),
                        "module.conv2.weight": torch.randn(128, 128, 3, 3, generator=g),
                        "module.fc.weight": torch.randn(10, 4096, generator=g),
                        "module.fc.bias": torch.randn(10, generator=g)}, p)


def make_conv(d: Path, n: int, mib: int) -> None:
    """``n`` safetensors files of about ``mib`` MiB of TF-layout 3x3 kernels."""
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    per = 3 * 3 * 256 * 512 * 4
    for i in range(n):
        p = d / f"tf{i:02d}.safetensors"
        if not p.exists():
            save_file({f"block{j}/conv/kernel": torch.randn(3, 3, 256, 512, generator=g)
                       for j in range(max(1, mib * 2**20 // per))}, p)


def timed(cmd: str, log: Path) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB, the largest process) and CPU use (% of one core) of a command."""
    subprocess.run(["sync"], check=True)
    r = subprocess.run(["/usr/bin/time", "-v", "-o", str(log), "bash", "-c", cmd],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {cmd}\n{r.stderr[-2000:]}")
    text = log.read_text()
    wall = text.split("Elapsed (wall clock) time (h:mm:ss or m:ss):")[1].split()[0]
    secs = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
    cpu = float(re.search(r"Percent of CPU this job got: (\d+)%", text).group(1))
    return secs, rss, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--conv", type=int, default=12, help="conv-heavy files")
    ap.add_argument("--conv-mib", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--loop-reps", type=int, default=1, help="repetitions of the (slow) shell loop (0: skip it)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--output", type=Path, help="markdown report (default benchmarks/results-batch.md)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ckptfix-bench-batch")
    a = ap.parse_args()
    if a.quick:
        a.small, a.conv, a.conv_mib, a.reps = 40, 4, 32, 1
    work = a.workdir
    small, conv, out = work / f"small{a.small}", work / f"conv{a.conv}x{a.conv_mib}", work / "out"
    make_small(small, a.small)
    make_conv(conv, a.conv, a.conv_mib)
    rules = work / "transpose.yaml"
    rules.write_text(TRANSPOSE)
    cases = {
        "small/loop": f"mkdir -p {out} && for f in {small}/*.pt; do {CKPTFIX} apply \"$f\" -r strip-ddp-prefix "
                      f"-o {out}/$(basename \"$f\") -q || exit 1; done",
        "small/batch": f"{CKPTFIX} apply {small} --recursive -r strip-ddp-prefix --out-dir {out} -q",
        "conv/jobs1": f"{CKPTFIX} apply {conv} --recursive -r {rules} --out-dir {out} -q --jobs 1",
        "conv/jobs2": f"{CKPTFIX} apply {conv} --recursive -r {rules} --out-dir {out} -q --jobs 2",
    }
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in cases}
    load = os.getloadavg()[0]
    for rep in range(a.reps):
        for name, cmd in cases.items():
            if name == "small/loop" and rep >= a.loop_reps:
                continue
            shutil.rmtree(out, ignore_errors=True)
            results[name].append(timed(cmd, work / "time.log"))
            print(f"rep {rep + 1} {name}: {results[name][-1][0]:.2f} s", file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    results = {k: v for k, v in results.items() if v}
    cases = {k: v for k, v in cases.items() if k in results}
    med = {k: statistics.median(w for w, _, _ in v) for k, v in results.items()}
    rss = {k: max(r for _, r, _ in v) for k, v in results.items()}
    cpu = {k: statistics.median(c for _, _, c in v) for k, v in results.items()}
    loop_x = med["small/loop"] / med["small/batch"] if "small/loop" in med else float("nan")
    jobs_x = med["conv/jobs1"] / med["conv/jobs2"]
    conv_bytes = sum(p.stat().st_size for p in conv.glob("*.safetensors"))
    lines = [
        f"# ckptfix batch benchmark ({datetime.date.today()})",
        "",
        f"- command: `{' '.join(sys.argv)}`; {a.reps} repetition(s) ({a.loop_reps} of the shell loop), medians",
        f"- machine: {os.cpu_count()} CPUs, {platform.platform()}, torch {torch.__version__}; "
        f"load average before: {load:.2f}",
        f"- small: {a.small} DDP-wrapped `.pt` files of {small.glob('*.pt').__next__().stat().st_size / 1e6:.1f} MB, "
        "rules `strip-ddp-prefix`",
        f"- conv: {a.conv} safetensors files, {conv_bytes / 2**30:.2f} GiB in all, HWIO->OIHW on every kernel",
        "",
        "| case | median wall s | peak RSS MiB (largest process) | CPU (% of one core) |",
        "|---|---:|---:|---:|",
        *[f"| {k} | {med[k]:.2f} | {rss[k]:.0f} | {cpu[k]:.0f} |" for k in cases],
        "",
        f"- one batch call vs a shell loop: **{loop_x:.1f}x** faster (target >= 10x)",
        f"- `--jobs 2` vs `--jobs 1`: **{jobs_x:.2f}x** faster (target >= 1.6x)",
    ]
    text = "\n".join(lines) + "\n"
    dest = a.output or BENCH / ("results-batch-quick.md" if a.quick else "results-batch.md")
    dest.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
