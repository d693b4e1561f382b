#!/usr/bin/env python3
"""Benchmark ckptfix on big, conv-heavy TensorFlow-style checkpoints, side by side with baselines.

    .venv/bin/python benchmarks/large.py                 # 2 and 8 GiB, 3 repetitions
    .venv/bin/python benchmarks/large.py --quick         # 0.25 GiB, 2 repetitions (smoke test)
    .venv/bin/python benchmarks/large.py --sizes 2 --reps 5 --workdir /mnt/scratch

For each size it generates (once, cached in --workdir) a safetensors checkpoint with TF names and
HWIO kernels and a .pt copy of it, writes two rules files, validates them with --dry-run, runs
every case once untimed (warm-up, and the outputs are checked tensor by tensor against the naive
script's), then runs the cases interleaved for --reps repetitions, each under /usr/bin/time -v,
and reports medians as a markdown table (printed, and written to benchmarks/results.md).
See benchmarks/README.md for the cases and the targets.

Only the standard library, numpy, torch and safetensors are used.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import zlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BENCH_DIR = Path(__file__).resolve().parent
TIME = "/usr/bin/time"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "ckptfix-bench"  # inputs cached here between runs

# RSS budget for ckptfix: a fixed allowance (interpreter, torch, ...) plus two copies of the largest
# tensor (the tensor as read, and its permuted copy).
RSS_BASE_MIB = 400
# Time targets (see README.md).
RENAME_MAX_RATIO = 1.3
TRANSPOSE_MAX_RATIO = 2.5
STARTUP_MAX_S = 0.5
STARTUP_TARGET_UP_TO_GIB = 2  # the start-up target is stated for the 2 GiB checkpoint (and smaller)

# ---------------------------------------------------------------------------------------------
# The checkpoint: a ResNet-ish stack of 3x3 convs with TensorFlow names and HWIO kernels


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    fill: str = "normal"  # "normal" (N(0, 1)) or "positive" (U[0.5, 1.5), for variances)

    @property
    def nbytes(self) -> int:
        return 4 * int(np.prod(self.shape, dtype=np.int64))  # float32


CHANNELS = (256, 512, 1024, 768)  # per block, cycled; 1024 comes early so small sizes have it too
CONVS_PER_BLOCK = 3
NUM_CLASSES = 1000


def conv_layer(prefix: str, conv: str, bn: str, cin: int, cout: int) -> list[TensorSpec]:
    """A Keras Conv2D (with bias) followed by a BatchNormalization."""
    return [
        TensorSpec(f"{prefix}/{conv}/kernel", (3, 3, cin, cout)),
        TensorSpec(f"{prefix}/{conv}/bias", (cout,)),
        TensorSpec(f"{prefix}/{bn}/gamma", (cout,)),
        TensorSpec(f"{prefix}/{bn}/beta", (cout,)),
        TensorSpec(f"{prefix}/{bn}/moving_mean", (cout,)),
        TensorSpec(f"{prefix}/{bn}/moving_variance", (cout,), "positive"),
    ]


def dense_head(cin: int) -> list[TensorSpec]:
    return [TensorSpec("model/dense/kernel", (cin, NUM_CLASSES)),
            TensorSpec("model/dense/bias", (NUM_CLASSES,))]


def total_bytes(specs: list[TensorSpec]) -> int:
    return sum(t.nbytes for t in specs)


def conv_net(target_bytes: int) -> list[TensorSpec]:
    """A stem, blocks of CONVS_PER_BLOCK convs (widths cycling through CHANNELS) while they fit in
    ``target_bytes`` (at least one block), and a dense head; in sorted-name order."""
    width = CHANNELS[0]
    specs = conv_layer("model/stem", "conv1", "bn1", 3, width)
    for block in itertools.count(1):
        new_width = CHANNELS[(block - 1) % len(CHANNELS)]
        layers = []
        for i, cin in enumerate([width] + [new_width] * (CONVS_PER_BLOCK - 1), start=1):
            layers += conv_layer(f"model/block{block}", f"conv{i}", f"bn{i}", cin, new_width)
        if block > 1 and total_bytes(specs + layers + dense_head(new_width)) > target_bytes:
            break
        specs += layers
        width = new_width
    return sorted(specs + dense_head(width), key=lambda t: t.name)


def safetensors_header(specs: list[TensorSpec]) -> bytes:
    """8-byte little-endian length + JSON header (padded with spaces to a multiple of 8)."""
    header, pos = {}, 0
    for t in specs:
        header[t.name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [pos, pos + t.nbytes]}
        pos += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def file_size(specs: list[TensorSpec]) -> int:
    return len(safetensors_header(specs)) + sum(t.nbytes for t in specs)


def write_tensor_data(f, spec: TensorSpec, chunk: int = 16 * MiB // 4) -> None:
    """Random float32 values, seeded by the name, generated and written in chunks."""
    rng = np.random.default_rng(zlib.crc32(spec.name.encode()))
    left = spec.nbytes // 4
    while left:
        n = min(chunk, left)
        if spec.fill == "positive":
            data = rng.random(n, dtype=np.float32) + np.float32(0.5)
        else:
            data = rng.standard_normal(n, dtype=np.float32)
        f.write(memoryview(data))
        left -= n


def write_safetensors(path: Path, specs: list[TensorSpec]) -> None:
    """Stream the file: nothing but one chunk of one tensor is ever in memory."""
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(safetensors_header(specs))
        for spec in specs:
            write_tensor_data(f, spec)
    os.replace(tmp, path)


def write_pt(src: Path, dst: Path) -> None:
    """torch.save of the same tensors. torch.save needs the whole dict, so this holds the
    checkpoint in memory once (mmap-backed by safetensors where it can)."""
    import torch
    from safetensors import safe_open

    with safe_open(src, framework="pt") as f:
        state = {name: f.get_tensor(name) for name in sorted(f.keys())}
    tmp = dst.with_name(dst.name + ".partial")
    torch.save(state, tmp)
    del state
    os.replace(tmp, dst)


@dataclass
class Checkpoint:
    label: str                 # "2GiB"
    size_gib: float
    safetensors: Path
    pt: Path
    specs: list[TensorSpec]

    @property
    def largest(self) -> TensorSpec:
        return max(self.specs, key=lambda t: t.nbytes)

    @property
    def rss_budget_mib(self) -> float:
        return RSS_BASE_MIB + 2 * self.largest.nbytes / MiB


def size_label(size_gib: float) -> str:
    return f"{size_gib:g}GiB"


def checkpoint_paths(workdir: Path, size_gib: float) -> tuple[Path, Path]:
    stem = f"tf-conv-{size_label(size_gib)}"
    return workdir / f"{stem}.safetensors", workdir / f"{stem}.pt"


def ensure_checkpoint(workdir: Path, size_gib: float, regen: bool) -> Checkpoint:
    """Generate the checkpoint and its .pt copy unless they are cached (and the right size)."""
    st, pt = checkpoint_paths(workdir, size_gib)
    ck = Checkpoint(size_label(size_gib), size_gib, st, pt, conv_net(int(size_gib * GiB)))
    if regen or not st.is_file() or st.stat().st_size != file_size(ck.specs):
        log(f"generating {st} ({file_size(ck.specs) / GiB:.2f} GiB, streamed)")
        write_safetensors(st, ck.specs)
    if regen or not pt.is_file() or pt.stat().st_mtime < st.stat().st_mtime:
        log(f"generating {pt} (torch.save: holds the {ck.label} checkpoint in memory once)")
        write_pt(st, pt)
    big = ck.largest
    log(f"{ck.label}: {len(ck.specs)} tensors, {st.stat().st_size / GiB:.2f} GiB; largest tensor "
        f"{big.name} {list(big.shape)} = {big.nbytes / MiB:.1f} MiB; "
        f"RSS budget {ck.rss_budget_mib:.0f} MiB")
    return ck


# ---------------------------------------------------------------------------------------------
# Rules, and the naive script doing the same by hand

RENAMES = [  # (pattern, replacement) applied in order with re.sub, by ckptfix and by the naive script
    (r"/kernel$", "/weight"),
    (r"/gamma$", "/weight"),
    (r"/beta$", "/bias"),
    (r"/moving_mean$", "/running_mean"),
    (r"/moving_variance$", "/running_var"),
    (r"/", "."),
]
CONV_KERNELS = r"/conv\d+/kernel$"  # the rank-4 kernels (TF names: the transpose runs first)


def rename(name: str) -> str:
    for pattern, replace in RENAMES:
        name = re.sub(pattern, replace, name)
    return name


def yaml_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def rules_yaml(transpose: bool) -> str:
    lines = ["# generated by benchmarks/large.py", "ckptfix: 1", "rules:"]
    if transpose:
        lines.append(f"  - transpose: {{keys: {yaml_str(CONV_KERNELS)}, layout: HWIO->OIHW}}")
    for pattern, replace in RENAMES:
        lines.append(f"  - rename: {{pattern: {yaml_str(pattern)}, replace: {yaml_str(replace)}}}")
    return "\n".join(lines) + "\n"


NAIVE_SCRIPT = '''\
"""The usual one-off conversion script: load it all, rename, permute the conv kernels, save it all."""
import re
import sys

from safetensors.torch import load_file, save_file

RENAMES = {renames!r}


def rename(name):
    for pattern, replace in RENAMES:
        name = re.sub(pattern, replace, name)
    return name


state = load_file(sys.argv[1])
out = {{rename(k): v.permute(3, 2, 0, 1).contiguous() if v.dim() == 4 else v for k, v in state.items()}}
save_file(out, sys.argv[2])
'''


@dataclass
class Scripts:
    rename: Path
    rename_transpose: Path
    naive: Path


def write_scripts(workdir: Path) -> Scripts:
    d = workdir / "scripts"
    d.mkdir(exist_ok=True)
    s = Scripts(d / "rename.yaml", d / "rename-transpose.yaml", d / "naive_convert.py")
    s.rename.write_text(rules_yaml(transpose=False))
    s.rename_transpose.write_text(rules_yaml(transpose=True))
    s.naive.write_text(NAIVE_SCRIPT.format(renames=RENAMES))
    return s


# ---------------------------------------------------------------------------------------------
# Cases

# what a case's output is checked against, once, in the warm-up pass
REFERENCE = "reference"            # the naive script's output: the reference for the others
SAME_AS_REFERENCE = "same-as-reference"
RENAMED_INPUT = "renamed-input"    # the input's tensors under the renamed names


@dataclass
class Case:
    key: str
    label: str
    argv: list[str]
    output: Path | None = None
    ckptfix: bool = False          # the RSS budget applies
    max_ratio_cp: float | None = None
    max_wall_s: float | None = None
    check: str | None = None
    runs: list["Run"] = field(default_factory=list)
    verdict: str = "–"             # the output check's result


def make_cases(ck: Checkpoint, scripts: Scripts, ckptfix: str, out: Path,
               quiet: dict[str, list[str]]) -> list[Case]:
    st, pt = str(ck.safetensors), str(ck.pt)
    dst = {key: out / f"{key}.safetensors" for key in ("cp", "cp-sync", "naive", "rename", "transpose", "pt")}
    apply = [ckptfix, "apply", *quiet["apply"]]
    rename_only, rename_transpose = ["-r", str(scripts.rename)], ["-r", str(scripts.rename_transpose)]
    startup_s = STARTUP_MAX_S if ck.size_gib <= STARTUP_TARGET_UP_TO_GIB else None
    return [
        Case("cp", "cp IN OUT", ["cp", st, str(dst["cp"])], dst["cp"]),
        Case("cp+sync", "cp IN OUT && sync",
             ["sh", "-c", 'cp "$1" "$2" && sync', "sh", st, str(dst["cp-sync"])], dst["cp-sync"]),
        Case("naive", "naive script (load all, rename, permute 4-D, save)",
             [sys.executable, str(scripts.naive), st, str(dst["naive"])], dst["naive"], check=REFERENCE),
        Case("rename", "ckptfix apply: rename",
             [*apply, st, *rename_only, "-o", str(dst["rename"])], dst["rename"],
             ckptfix=True, max_ratio_cp=RENAME_MAX_RATIO, check=RENAMED_INPUT),
        Case("transpose", "ckptfix apply: rename + HWIO->OIHW",
             [*apply, st, *rename_transpose, "-o", str(dst["transpose"])], dst["transpose"],
             ckptfix=True, max_ratio_cp=TRANSPOSE_MAX_RATIO, check=SAME_AS_REFERENCE),
        Case("pt", "ckptfix apply: .pt -> safetensors, rename + HWIO->OIHW",
             [*apply, pt, *rename_transpose, "-o", str(dst["pt"])], dst["pt"],
             ckptfix=True, max_ratio_cp=TRANSPOSE_MAX_RATIO, check=SAME_AS_REFERENCE),
        Case("inspect", "ckptfix inspect IN", [ckptfix, "inspect", *quiet["inspect"], st],
             ckptfix=True, max_wall_s=startup_s),
        Case("dry-run", "ckptfix apply --dry-run (rename + transpose)",
             [*apply, st, *rename_transpose, "--dry-run"], ckptfix=True, max_wall_s=startup_s),
    ]


# ---------------------------------------------------------------------------------------------
# Running under /usr/bin/time -v


@dataclass
class Run:
    wall_s: float
    max_rss_mib: float
    exit_code: int
    signal: int | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.signal is None


def parse_time_v(text: str) -> Run:
    """Wall time, peak RSS and exit status from GNU time's -v report."""
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    status = re.search(r"Exit status: (\d+)", text)
    sig = re.search(r"Command terminated by signal (\d+)", text)
    if not (wall and rss):
        raise RuntimeError(f"cannot parse {TIME} -v output:\n{text}")
    seconds = 0.0
    for part in wall.group(1).split(":"):  # h:mm:ss or m:ss.ss
        seconds = seconds * 60 + float(part)
    return Run(seconds, int(rss.group(1)) * KiB / MiB, int(status.group(1)) if status else -1,
               int(sig.group(1)) if sig else None)


def timed(argv: list[str], logdir: Path, key: str) -> Run:
    """Run ``argv`` under ``time -v``; its output goes to LOGDIR/KEY.log."""
    report = logdir / f"{key}.time"
    with open(logdir / f"{key}.log", "wb") as out:
        subprocess.run([TIME, "-v", "-o", str(report), *argv], stdout=out, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, check=False)
    return parse_time_v(report.read_text())


def clear_dir(d: Path) -> None:
    """Remove the (benchmark-owned) outputs, including temporary files a failed run left."""
    for p in d.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def run_case(case: Case, out: Path, logdir: Path) -> Run:
    clear_dir(out)  # untimed
    os.sync()       # so that earlier dirty pages are not billed to this case
    run = timed(case.argv, logdir, case.key)
    if not run.ok:
        tail = (logdir / f"{case.key}.log").read_text(errors="replace")[-2000:]
        log(f"  {case.key} FAILED (exit {run.exit_code}, signal {run.signal}):\n"
            + textwrap.indent(tail, "    | "))
    return run


# ---------------------------------------------------------------------------------------------
# Checking outputs (untimed, once)


def compare(got: Path, want: Path, names: dict[str, str]) -> str:
    """Compare ``got`` with ``want`` tensor by tensor (one pair in memory at a time);
    ``names`` maps got's names to want's."""
    import torch
    from safetensors import safe_open

    with safe_open(got, framework="pt") as g, safe_open(want, framework="pt") as w:
        if set(g.keys()) != set(names):
            extra, missing = set(g.keys()) - set(names), set(names) - set(g.keys())
            return f"MISMATCH: names differ (extra {sorted(extra)[:3]}, missing {sorted(missing)[:3]})"
        for gname, wname in names.items():
            a, b = g.get_tensor(gname), w.get_tensor(wname)
            if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
                return f"MISMATCH: {gname} {a.dtype} {list(a.shape)} vs {b.dtype} {list(b.shape)}"
    return f"ok ({len(names)} tensors equal)"


def check_output(case: Case, ck: Checkpoint, reference: Path) -> str:
    if case.check == REFERENCE:
        os.replace(case.output, reference)  # kept until the other outputs are checked
        return "reference"
    if case.check == RENAMED_INPUT:
        return compare(case.output, ck.safetensors, {rename(t.name): t.name for t in ck.specs})
    if case.check == SAME_AS_REFERENCE:
        if not reference.exists():
            return "not checked (no reference: the naive script failed)"
        return compare(case.output, reference, {rename(t.name): rename(t.name) for t in ck.specs})
    return "–"


def warm_up_and_check(cases: list[Case], ck: Checkpoint, out: Path, logdir: Path, workdir: Path) -> None:
    """Run every case once, untimed, and check the outputs against the naive script's."""
    reference = workdir / "reference.safetensors"
    try:
        for case in cases:
            log(f"[{ck.label} warm-up] {case.label}")
            run = run_case(case, out, logdir)
            if not run.ok:
                case.verdict = f"FAILED (exit {run.exit_code})"
            elif case.check:
                case.verdict = check_output(case, ck, reference)
                log(f"  output check: {case.verdict}")
    finally:
        reference.unlink(missing_ok=True)
        clear_dir(out)


def validate_rules(ck: Checkpoint, scripts: Scripts, ckptfix: str, out: Path) -> None:
    for rules in (scripts.rename, scripts.rename_transpose):
        argv = [ckptfix, "apply", str(ck.safetensors), "-r", str(rules), "-o", str(out / "x.safetensors"),
                "--dry-run"]
        p = subprocess.run(argv, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"large.py: the rules {rules} do not validate (exit {p.returncode}):\n"
                     f"{p.stdout}{p.stderr}")


# ---------------------------------------------------------------------------------------------
# Report


def median_wall(case: Case) -> float | None:
    ok = [r.wall_s for r in case.runs if r.ok]
    return statistics.median(ok) if ok else None


def time_target(case: Case, wall: float | None, cp: float | None) -> str:
    if wall is None:
        return "–"
    if case.max_ratio_cp is not None and cp:
        ratio = wall / cp
        return f"{'pass' if ratio <= case.max_ratio_cp else 'FAIL'} (<= {case.max_ratio_cp}x cp)"
    if case.max_wall_s is not None:
        return f"{'pass' if wall <= case.max_wall_s else 'FAIL'} (<= {case.max_wall_s} s)"
    return "–"


def rss_check(case: Case, rss: float, budget: float) -> str:
    if not case.ckptfix:
        return "(baseline)"
    if not any(r.ok for r in case.runs):
        return "–"
    return "pass" if rss <= budget else "FAIL"


def table(cases: list[Case], ck: Checkpoint) -> str:
    by_key = {c.key: c for c in cases}
    cp, cp_sync = median_wall(by_key["cp"]), median_wall(by_key["cp+sync"])
    budget = ck.rss_budget_mib
    rows = [f"| case | median wall s | ratio to cp | ratio to cp+sync | peak RSS MiB | "
            f"RSS <= {budget:.0f} MiB | time target | output check | wall min–max s |",
            "|---|---:|---:|---:|---:|---|---|---|---:|"]
    for c in cases:
        wall = median_wall(c)
        failed = [r for r in c.runs if not r.ok]
        rss = max((r.max_rss_mib for r in c.runs), default=0.0)
        walls = [r.wall_s for r in c.runs if r.ok]
        cells = [
            c.label,
            f"{wall:.2f}" if wall is not None else "FAILED",
            f"{wall / cp:.2f}x" if wall and cp else "–",
            f"{wall / cp_sync:.2f}x" if wall and cp_sync else "–",
            f"{rss:.0f}",
            rss_check(c, rss, budget),
            time_target(c, wall, cp),
            c.verdict + (f"; {len(failed)} run(s) failed" if failed else ""),
            f"{min(walls):.2f}–{max(walls):.2f}" if walls else "–",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def size_section(ck: Checkpoint, cases: list[Case], reps: int) -> str:
    big = ck.largest
    return "\n".join([
        f"## {ck.label}",
        "",
        f"`{ck.safetensors.name}`: {len(ck.specs)} tensors, {ck.safetensors.stat().st_size / GiB:.2f} GiB "
        f"(`.pt` copy {ck.pt.stat().st_size / GiB:.2f} GiB); largest tensor `{big.name}` "
        f"{list(big.shape)} = {big.nbytes / MiB:.1f} MiB, so the RSS budget is "
        f"{RSS_BASE_MIB} + 2 x {big.nbytes / MiB:.1f} = {ck.rss_budget_mib:.0f} MiB. "
        f"Medians of {reps} interleaved repetitions; peak RSS is the maximum over them.",
        "",
        table(cases, ck),
        "",
    ])


def machine_info(workdir: Path, quiet: dict[str, list[str]], load: str) -> str:
    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "?"

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    mem = meminfo()
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    return "\n".join([
        "# ckptfix large-checkpoint benchmark",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- command: `{cmd}`",
        f"- machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}; "
        f"RAM {mem.get('MemTotal', 0) / GiB:.1f} GiB; Linux {platform.release()}",
        f"- workdir: `{workdir}` ({filesystem(workdir)})",
        f"- versions: Python {platform.python_version()}, torch {version('torch')}, "
        f"safetensors {version('safetensors')}, numpy {np.__version__}, ckptfix {version('ckptfix')}",
        "- ckptfix --quiet: " + ", ".join(f"{cmd} {'yes' if flag else 'no (not available)'}"
                                          for cmd, flag in quiet.items()),
        f"- load average (1 min): {load}",
        "- page cache: not dropped between runs (inputs are usually warm); outputs removed and "
        "`sync` run before each timed run",
        "",
    ])


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) * KiB
    return out


def filesystem(path: Path) -> str:
    p = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True)
    lines = p.stdout.splitlines()
    return lines[-1].split()[1] if p.returncode == 0 and len(lines) > 1 else "?"


# ---------------------------------------------------------------------------------------------
# Set-up checks


def check_disk(workdir: Path, sizes: list[float], regen: bool) -> None:
    """Inputs (safetensors + .pt) for every size stay cached; at most two outputs of the largest
    size exist at once (the naive script's reference and the output checked against it)."""
    need = 0
    for size in sizes:
        for p in checkpoint_paths(workdir, size):
            if regen or not p.is_file():
                need += int(size * GiB * 1.01)
    need += 2 * int(max(sizes) * GiB) + GiB  # outputs + 1 GiB slack
    free = shutil.disk_usage(workdir).free
    if free < need:
        sys.exit(f"large.py: not enough free disk space in {workdir}: need about {need / GiB:.1f} GiB "
                 f"(inputs .safetensors + .pt per size, two outputs, slack), have {free / GiB:.1f} GiB. "
                 "Use --workdir on a bigger disk, or smaller --sizes.")


def check_memory(sizes: list[float]) -> None:
    total = meminfo().get("MemTotal", 0)
    if total and total < 2.2 * max(sizes) * GiB:
        log(f"warning: {total / GiB:.1f} GiB of RAM; the naive script (and building the .pt copy) hold "
            f"the whole {max(sizes):g} GiB checkpoint plus its transposed kernels in memory")


def quiet_flag(ckptfix: str, command: str) -> list[str]:
    """``--quiet`` if this ckptfix's COMMAND has it (it is being added: detect it)."""
    p = subprocess.run([ckptfix, command, "--help"], capture_output=True, text=True)
    return ["--quiet"] if "--quiet" in p.stdout else []


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", help="checkpoint sizes in GiB, comma-separated (default 2,8)")
    ap.add_argument("--reps", type=int, help="timed repetitions per case (default 3)")
    ap.add_argument("--quick", action="store_true", help="smoke test: defaults --sizes 0.25 --reps 2, "
                    "results to benchmarks/results-quick.md")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                    help="a directory of its own where checkpoints are generated and cached, and "
                    f"outputs written; its out/ is emptied before every run (default {DEFAULT_WORKDIR})")
    ap.add_argument("--regen", action="store_true", help="regenerate the checkpoints even if cached")
    ap.add_argument("--ckptfix", default=str(Path(sys.executable).parent / "ckptfix"),
                    help="the ckptfix executable (default: beside this Python)")
    ap.add_argument("--output", type=Path, help="markdown report (default benchmarks/results.md)")
    args = ap.parse_args(argv)
    args.sizes = [float(s) for s in (args.sizes or ("0.25" if args.quick else "2,8")).split(",")]
    if args.reps is None:
        args.reps = 2 if args.quick else 3
    args.output = args.output or BENCH_DIR / ("results-quick.md" if args.quick else "results.md")
    if args.reps < 1 or any(s <= 0 for s in args.sizes):
        ap.error("--reps and --sizes must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not Path(TIME).exists():
        sys.exit(f"large.py: {TIME} not found (GNU time: apt-get install time)")
    if not Path(args.ckptfix).exists() and not shutil.which(args.ckptfix):
        sys.exit(f"large.py: ckptfix not found at {args.ckptfix} (give --ckptfix)")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    check_disk(workdir, args.sizes, args.regen)
    check_memory(args.sizes)
    out, logdir = workdir / "out", workdir / "logs"
    out.mkdir(exist_ok=True)
    logdir.mkdir(exist_ok=True)
    scripts = write_scripts(workdir)
    quiet = {cmd: quiet_flag(args.ckptfix, cmd) for cmd in ("apply", "inspect")}
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        log(f"warning: load average {load_before[0]:.2f}: something else is running; timings will be noisy")

    sections = []
    for size in args.sizes:
        ck = ensure_checkpoint(workdir, size, args.regen)
        validate_rules(ck, scripts, args.ckptfix, out)
        cases = make_cases(ck, scripts, args.ckptfix, out, quiet)
        warm_up_and_check(cases, ck, out, logdir, workdir)
        for rep in range(args.reps):
            for case in cases:
                run = run_case(case, out, logdir)
                case.runs.append(run)
                log(f"[{ck.label} rep {rep + 1}/{args.reps}] {case.label}: {run.wall_s:.2f} s, "
                    f"{run.max_rss_mib:.0f} MiB" + ("" if run.ok else f" (FAILED, exit {run.exit_code})"))
        clear_dir(out)
        sections.append(size_section(ck, cases, args.reps))

    load = f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    report = machine_info(workdir, quiet, load) + "\n" + "\n".join(sections)
    args.output.write_text(report)
    print(report)
    log(f"written to {args.output}")


if __name__ == "__main__":
    main()
