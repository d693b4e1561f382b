"""Streaming execution (issue 5): bytes as save_file would write them, every tensor read once and
never the whole file, byte copies where nothing is computed, truncation caught mid-stream,
bounded memory in the writer thread, progress, and no torch import where none is needed."""

import json
import os
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptfix import api
from ckptfix.execute import _WriterThread
from ckptfix.formats import fileio, safetensors_io, torch_io
from ckptfix.progress import Bar

RULES = """ckptfix: 1
rules:
  - rename: {pattern: '/', replace: '.'}
  - rename: {pattern: 'kernel$', replace: 'weight'}
  - transpose: {keys: 'conv\\d\\.weight$', layout: HWIO->OIHW}
  - slice: {keys: '^head\\.weight$', axis: 0, stop: 3}
  - pad: {keys: '^emb$', axis: 1, size: 6, fill: zeros}
"""


def source_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "conv1/kernel": torch.randn(3, 3, 4, 8, generator=g),
        "conv1/bias": torch.randn(8, generator=g),
        "conv2/kernel": torch.randn(1, 1, 8, 2, generator=g).half(),
        "head/weight": torch.randn(5, 7, generator=g),        # a row range: copied as bytes
        "emb": torch.randn(4, 5, generator=g).to(torch.bfloat16),
        "steps": torch.tensor(7, dtype=torch.int64),           # renamed only: copied as bytes
        "mask": torch.tensor([True, False, True]),
    }


def expected_tensors(src):
    out = {}
    for k, v in src.items():
        k = k.replace("/", ".")
        k = k[: -len("kernel")] + "weight" if k.endswith("kernel") else k
        if k in ("conv1.weight", "conv2.weight"):
            v = v.permute(3, 2, 0, 1).contiguous()
        if k == "head.weight":
            v = v[:3].clone()
        if k == "emb":
            v = torch.cat([v, torch.zeros(4, 1, dtype=v.dtype)], dim=1)
        out[k] = v
    return out


@pytest.fixture
def rules(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text(RULES)
    return p


@pytest.fixture(params=["safetensors", "pt"])
def source(request, tmp_path):
    src = source_tensors()
    if request.param == "safetensors":
        p = tmp_path / "in.safetensors"
        save_file(src, p)
    else:
        p = tmp_path / "in.pt"
        torch.save(src, p)
    return p


def test_streamed_output_is_what_save_file_writes(cli, source, rules, tmp_path):
    out = tmp_path / "out.safetensors"
    r = cli("apply", source, "-r", rules, "-o", out)
    assert r.exit_code == 0, r.stderr
    ref = tmp_path / "ref.safetensors"
    save_file(expected_tensors(source_tensors()), ref, metadata={"format": "pt"})
    assert out.read_bytes() == ref.read_bytes()


class Recorder:
    """Wraps the two byte primitives to record every range of tensor data touched."""

    def __init__(self, monkeypatch):
        self.reads: list[tuple[str, int, int]] = []
        real_read, real_copy = fileio.read_range, fileio.copy_range

        def read_range(path, begin, end, buf=None):
            self.reads.append((Path(str(path)).name, begin, end))
            return real_read(path, begin, end, buf)

        def copy_range(path, begin, length, out, on_chunk=None, crc=None):
            self.reads.append((Path(str(path)).name, begin, begin + length))
            return real_copy(path, begin, length, out, on_chunk, crc)

        for mod in (safetensors_io, torch_io):
            monkeypatch.setattr(mod, "read_range", read_range, raising=False)
        monkeypatch.setattr(safetensors_io, "copy_range", copy_range)


def test_each_tensor_read_once_never_the_whole_file(monkeypatch, source, rules, tmp_path):
    rec = Recorder(monkeypatch)
    res = api.apply_file(source, [rules], tmp_path / "out.safetensors")
    assert res.ok, res.error
    with api.Options().open(source) as r:
        spans = {n: r.locate(n)[1:] for n in r.metas()}
    file_size = source.stat().st_size
    touched = {n: [rd for rd in rec.reads if rd[1] < e and rd[2] > b] for n, (b, e) in spans.items()}
    for name, reads in touched.items():
        assert len(reads) == 1, f"{name} read {len(reads)} times: {reads}"
        (_, b, e), = reads
        sb, se = spans[name]
        assert sb <= b and e <= se, f"{name}: read {b}..{e} outside its bytes {sb}..{se}"
    assert len(rec.reads) == len(spans)  # nothing else: no whole-file read, no second pass
    assert sum(e - b for _, b, e in rec.reads) < file_size
    # the row range of head.weight is copied, its 3 rows only
    hb, he = spans["head/weight"]
    assert (source.name, hb, hb + 3 * 7 * 4) in rec.reads


def test_renamed_tensors_are_copied_without_being_read(monkeypatch, source, tmp_path):
    """Rename-only output goes through copy_range: no tensor object is made for any of them."""
    rules = tmp_path / "r.yaml"
    rules.write_text("ckptfix: 1\nrules:\n  - rename: {pattern: '/', replace: '.'}\n")

    def no_reads(*a, **k):
        raise AssertionError("a tensor was read into memory")

    monkeypatch.setattr(type(api.Options().open(source)), "read", no_reads)
    out = tmp_path / "out.safetensors"
    res = api.apply_file(source, [rules], out)
    assert res.ok, res.error
    got = load_file(out)
    assert all(torch.equal(got[k.replace("/", ".")], v) for k, v in source_tensors().items())


@pytest.mark.parametrize("rule", ["rename", "transpose"])
def test_input_truncated_mid_stream(cli, monkeypatch, source, tmp_path, rule):
    """Cut short after planning (another process truncating it): exit 2, named, no output."""
    rules = tmp_path / "r.yaml"
    extra = "  - transpose: {keys: 'kernel$', layout: HWIO->OIHW}\n" if rule == "transpose" else ""
    rules.write_text("ckptfix: 1\nrules:\n  - rename: {pattern: '/', replace: '.'}\n" + extra)
    real_plan = api.plan_file

    def plan_then_truncate(*a, **k):
        plan, reader = real_plan(*a, **k)
        os.truncate(source, source.stat().st_size * 2 // 3)
        return plan, reader

    monkeypatch.setattr(api, "plan_file", plan_then_truncate)
    out = tmp_path / "out.safetensors"
    r = cli("apply", source, "-r", rules, "-o", out)
    assert r.exit_code == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(source) in lines[0] and "truncated" in lines[0], r.stderr
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".ckptfix")] == []


def test_copy_falls_back_when_the_kernel_cannot(monkeypatch, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 1000)

    def refuse(*a, **k):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    monkeypatch.setattr(fileio, "CHUNK", 1000)  # several chunks
    chunks = []
    with open(tmp_path / "dst.bin", "wb") as f:
        f.write(b"HEAD")
        fileio.copy_range(src, 300, 5500, f, chunks.append)
        f.write(b"TAIL")
    assert (tmp_path / "dst.bin").read_bytes() == b"HEAD" + src.read_bytes()[300:5800] + b"TAIL"
    assert sum(chunks) == 5500 and len(chunks) == 6
    with open(tmp_path / "dst2.bin", "wb") as f, pytest.raises(fileio.InputError, match="truncated"):
        fileio.copy_range(src, 255_000, 5000, f)


def test_sharded_output_round_trip(cli, source, rules, tmp_path):
    out = tmp_path / "sharded"
    r = cli("apply", source, "-r", rules, "-o", out, "--shard-size", "200B")
    assert r.exit_code == 0, r.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all((out / f).is_file() for f in files)
    want = expected_tensors(source_tensors())
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in want.values())
    got = {}
    for f in files:
        shard = load_file(out / f)
        assert all(index["weight_map"][k] == f for k in shard)
        size = sum(v.numel() * v.element_size() for v in shard.values())
        assert size <= 200 or len(shard) == 1
        got.update(shard)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    # and the sharded checkpoint reads back as an input, shard by shard
    back = tmp_path / "back.safetensors"
    assert cli("apply", out, "-o", back).exit_code == 0
    assert all(torch.equal(load_file(back)[k], want[k]) for k in want)


def test_writer_thread_bounds_what_waits_in_memory(monkeypatch):
    monkeypatch.setattr(_WriterThread, "BUDGET", 100)
    w = _WriterThread()
    release, log = threading.Event(), []
    w.put(80, lambda: (release.wait(5), log.append("wrote 80")))
    w.wait_room(10)  # 80 + 10 fits: no wait
    blocked = threading.Thread(target=lambda: (w.wait_room(30), log.append("room for 30")))
    blocked.start()
    time.sleep(0.2)
    assert log == []  # 80 + 30 > 100: waits for the writer
    release.set()
    blocked.join(5)
    assert log == ["wrote 80", "room for 30"]
    w.put(500, lambda: None)  # bigger than the budget: allowed once the queue is empty
    w.close()


def test_writer_thread_error_reaches_the_producer():
    w = _WriterThread()
    w.put(1, lambda: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space"):
        for _ in range(100):
            time.sleep(0.01)
            w.put(0, lambda: None)
    w.close(abort=True)


class Tty(StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal():
    assert Bar.wanted(quiet=False, json=False, stream=Tty())
    assert not Bar.wanted(quiet=True, json=False, stream=Tty())
    assert not Bar.wanted(quiet=False, json=True, stream=Tty())
    assert not Bar.wanted(quiet=False, json=False, stream=StringIO())


def test_progress_bar_shows_bytes_and_tensors_after_the_delay(source, rules, tmp_path):
    stream = Tty()
    bar = Bar(stream=stream, delay=0)
    res = api.apply_file(source, [rules], tmp_path / "o.safetensors", progress=bar)
    assert res.ok
    shown = stream.getvalue()
    assert "o.safetensors" in shown and "tensors" in shown, shown
    quick = Tty()
    res = api.apply_file(source, [rules], tmp_path / "o2.safetensors", progress=Bar(stream=quick))
    assert res.ok and quick.getvalue() == ""  # quick work prints nothing


def test_cli_progress_is_off_when_not_a_terminal(cli, source, rules, tmp_path):
    r = cli("apply", source, "-r", rules, "-o", tmp_path / "o.safetensors", "--quiet")
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""


IMPORT_CHECK = """
import runpy, sys
sys.argv = ["ckptfix", *sys.argv[1:]]
try:
    runpy.run_module("ckptfix", run_name="__main__")
except SystemExit as e:
    code = e.code
print("TORCH" if "torch" in sys.modules else "NO-TORCH", code, file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["inspect", "{st}"], ["apply", "{st}", "-r", "{rules}", "--dry-run"],
                                  ["diff", "{st}", "-t", "{st}"], ["apply", "--help"]])
def test_no_torch_import_for_metadata_commands(args, rules, tmp_path):
    st = tmp_path / "in.safetensors"
    save_file(source_tensors(), st)
    argv = [a.format(st=st, rules=rules) for a in args]
    r = subprocess.run([sys.executable, "-c", IMPORT_CHECK, *argv], capture_output=True, text=True, timeout=60)
    last = r.stderr.strip().splitlines()[-1]
    assert last.split()[0] == "NO-TORCH" and last.split()[1] in ("0", "None"), r.stderr


@pytest.mark.parametrize("rules_text", ["ckptfix: 1\nrules:\n  - rename: {pattern: '/', replace: '.'}\n",
                                        "ckptfix: 1\nrules:\n  - transpose: {keys: 'conv1/kernel', layout: HWIO->OIHW}\n"])
def test_a_flipped_byte_in_a_pt_storage_is_caught_copied_or_read(cli, tmp_path, rules_text):
    """Zip records carry a CRC-32: copies are checked on the way through (bytes read once), reads too."""
    src = tmp_path / "in.pt"
    torch.save(source_tensors(), src)
    with api.Options().open(src) as r:
        _, begin, _ = r.locate("conv1/kernel")
    data = bytearray(src.read_bytes())
    data[begin + 5] ^= 0x40
    src.write_bytes(bytes(data))
    rules = tmp_path / "r.yaml"
    rules.write_text(rules_text)
    out = tmp_path / "out.safetensors"
    r = cli("apply", src, "-r", rules, "-o", out)
    assert r.exit_code == 2 and "CRC" in r.stderr and str(src) in r.stderr, r.stderr
    assert not out.exists()
