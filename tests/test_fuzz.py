"""Mutation fuzzing of every reader (issue 6), seeded and deterministic.

Each case mutates a small real checkpoint (tests/fuzz.py builds the corpus) and runs the whole
library path on it: open_checkpoint -> metas -> read every tensor -> inspect -> apply_file to a
temporary output -> read that back. Every outcome must be a result or a ckptfix error; a stray
exception, a hang, values that do not match the declared metadata, an output that differs from
what read() returns, or (for formats that checksum their data) changed values accepted, is a
failure that names the case and the command that replays it.

Long runs, in worker subprocesses that also catch crashes and hangs:
``.venv/bin/python tests/fuzz.py --format all --seconds 600 --seed 1``.
"""

from __future__ import annotations

import faulthandler
import io
import json
import random
import re
import struct
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import fuzz
from ckptfix import api
from ckptfix.errors import CkptfixError, InputError
from ckptfix.formats.detect import open_checkpoint

# numpy parses .npy headers with ast.literal_eval: mutated headers trigger syntax warnings
pytestmark = pytest.mark.filterwarnings("ignore:invalid escape sequence")

SEED = 20240601
CASES = 80          # per format: 80 cases each (a few seconds)
BUDGET = 10.0       # seconds per case; a C-level hang is caught by the faulthandler backstop


@pytest.fixture(scope="module")
def corpus():
    return fuzz.build_corpus()


@pytest.fixture(scope="module")
def references(corpus, tmp_path_factory):
    """Values read from each unmutated seed (compared where the format checksums its data)."""
    root = tmp_path_factory.mktemp("seeds")
    refs = {}
    for seeds in corpus.values():
        for s in seeds:
            d = root / s.name.replace("/", "__")
            s.write(d)
            status, values, message = fuzz.read_all(d / s.entry)
            assert status == "ok", f"seed {s.name} does not read: {message}"
            refs[s.name] = values
    return refs


@pytest.fixture
def backstop():
    """A hang inside C code (HDF5 has infinite loops on crafted files) ignores SIGALRM: dump
    every thread's traceback and exit rather than hang CI forever."""
    faulthandler.dump_traceback_later(BUDGET * 20, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# ---------------------------------------------------------------------------------------------
# the seeded cases


@pytest.mark.parametrize("fmt", fuzz.FORMATS)
def test_mutations(fmt, corpus, references, tmp_path, backstop):
    t0 = time.process_time()  # CPU time, not wall time: a busy machine must not fail this
    outcomes = {"ok": 0, "error": 0, "known": 0}  # known: fuzz.KNOWN_ISSUES (each pinned by an xfail)
    findings = []
    for i in range(CASES):
        case = fuzz.make_case(corpus, fmt, SEED, i)
        try:
            outcomes[fuzz.run_case_inprocess(case, tmp_path, reference=references[case.seed_name],
                                             budget=BUDGET)] += 1
        except fuzz.Finding as e:
            findings.append(str(e))
    assert not findings, f"{len(findings)} of {CASES} {fmt} cases failed:\n\n" + "\n\n".join(findings)
    # not vacuous: the mutations both break files and leave some readable
    assert outcomes["error"] >= CASES // 10, outcomes
    assert outcomes["ok"] >= 1, outcomes
    assert time.process_time() - t0 < 30


def test_every_seed_reads_and_applies(corpus, tmp_path):
    for seeds in corpus.values():
        for s in seeds:
            d = tmp_path / s.name.replace("/", "__")
            s.write(d)
            out = d / "out"
            out.mkdir()
            assert fuzz.exercise(d / s.entry, out) == "ok", s.name


def test_corpus_and_cases_are_deterministic(corpus):
    assert fuzz.corpus_digest(fuzz.build_corpus()) == fuzz.corpus_digest(corpus)
    for fmt in fuzz.FORMATS:
        a, b = fuzz.make_case(corpus, fmt, SEED, 7), fuzz.make_case(corpus, fmt, SEED, 7)
        assert a.files == b.files and a.steps == b.steps


def test_mutations_change_bytes(corpus):
    """Every case differs from its seed, and every mutator (on a seed it applies to) changes
    bytes — a mutator that silently does nothing would make the whole run vacuous."""
    for fmt in fuzz.FORMATS:
        for i in range(CASES):
            case = fuzz.make_case(corpus, fmt, SEED, i)
            seed = next(s for s in corpus[fmt] if s.name == case.seed_name)
            assert case.changed and case.files != seed.files and case.steps, case.describe()
    rng = random.Random(1)
    kinds = {}
    for seeds in corpus.values():
        for s in seeds:
            for name in s.mutable:
                kinds.setdefault(s.kind[name], (s, name))
    single = [(m, None) for m in fuzz.RAW] + [(m, k) for k, opts in fuzz.STRUCTURED.items()
                                              for _, m, _ in opts]
    for mutator, kind in single:
        s, name = kinds[kind] if kind else kinds["safetensors"]
        changed = tried = 0
        for _ in range(40):
            try:
                new, desc = mutator(rng, s.files[name])
            except fuzz.Skip:
                continue
            tried += 1
            changed += new != s.files[name]
            assert desc
        assert tried >= 10 and changed >= 0.9 * tried, (mutator.__name__, kind, changed, tried)
    tf = next(s for s in corpus["tf-bundle"] if s.name.endswith("conv1d_tf2"))
    for mutator in (m for _, m in fuzz.TF_STRUCTURED):
        results = []
        for _ in range(20):
            try:
                results.append(mutator(rng, tf.files, "ckpt.index")[0] != tf.files)
            except fuzz.Skip:
                pass
        assert len(results) >= 5 and all(results), mutator.__name__


def test_structure_aware_mutations_stay_parseable(corpus):
    """The structure-aware mutators reach past the checksums and parsers they target."""
    rng = random.Random(2)
    st = corpus["safetensors"][0].files["m.safetensors"]
    ok = 0
    for _ in range(30):
        new, _ = fuzz.m_st_header(rng, st)
        n = int.from_bytes(new[:8], "little")
        try:
            json.loads(new[8:8 + n])
            ok += 1
        except ValueError:
            pass  # a deliberate duplicate key still parses; anything else must be JSON
    assert ok == 30
    npz = corpus["npz"][0].files["a.npz"]
    for _ in range(20):
        new, _ = fuzz.m_npz_member(rng, npz)
        with zipfile.ZipFile(io.BytesIO(new)) as z:
            assert z.testzip() is None  # CRCs stay valid: the npy parser sees the change


def test_value_oracle_catches_wrong_values(corpus, references, tmp_path):
    """A reader that returned changed values for a checksummed format would be caught."""
    s = next(x for x in corpus["npz"] if x.name.endswith("stored"))
    d = tmp_path / "in"
    d.mkdir()
    p = d / s.entry
    arrays = {k: np.array(v) for k, v in np.load(io.BytesIO(s.files[s.entry])).items()}
    arrays["w"] = arrays["w"] + 1
    np.savez(p, **arrays)
    (tmp_path / "out").mkdir()
    with pytest.raises(fuzz.Finding, match="wrong values accepted.*'w'"):
        fuzz.exercise(p, tmp_path / "out", reference=references[s.name])


def test_inprocess_budget_turns_a_hang_into_a_finding(tmp_path, monkeypatch):
    monkeypatch.setattr(fuzz, "exercise", lambda *a, **k: time.sleep(30))
    case = fuzz.Case("npy", 0, 0, "npy/x", {"a.npy": b"x"}, "a.npy", ["none"], False, True)
    t0 = time.perf_counter()
    with pytest.raises(fuzz.Finding, match=r"hang.*\n.*replay: python tests/fuzz.py --format npy"):
        fuzz.run_case_inprocess(case, tmp_path, budget=0.5)
    assert time.perf_counter() - t0 < 20  # the budget cut the 30 s sleep (slack for a busy machine)


def test_a_stray_exception_is_a_finding_with_the_case(corpus, tmp_path, monkeypatch):
    import ckptfix.formats.numpy_io as numpy_io

    def broken(self, name):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(numpy_io.NpyReader, "read_array", broken)
    case = fuzz.make_case(corpus, "npy", SEED, 0)
    case.files = dict(corpus["npy"][0].files)  # a readable file: the read is reached
    with pytest.raises(fuzz.Finding) as e:
        fuzz.run_case_inprocess(case, tmp_path)
    assert "ZeroDivisionError: boom" in str(e.value)
    assert f"--seed {SEED} --case 0" in str(e.value)


# ---------------------------------------------------------------------------------------------
# the subprocess harness (long runs) must see crashes and hangs


@pytest.mark.parametrize("target, status, detail", [
    ("selftest_abort", "crash", "SIGABRT"),
    ("selftest_segfault", "crash", "SIGSEGV"),
    ("selftest_exit", "crash", "status 3"),
    ("selftest_hang", "hang", "no result within"),
    ("selftest_raise", "bug", "ValueError"),
    ("selftest_ok", "ok", None),
])
def test_subprocess_harness_detects(target, status, detail):
    # a short timeout only where the target really hangs: on a busy machine a 1 s limit could call
    # a slow answer of the others a hang
    with fuzz.Worker(f"fuzz:{target}", timeout=1.0 if status == "hang" else 60.0, memory_mb=0) as w:
        res = w.run({})
        assert res["status"] == status, res
        if detail:
            assert detail in res["detail"], res
        if status in ("crash", "hang"):  # the worker is replaced and runs the next request
            assert w.run({})["status"] == status


def _torch_zip_with_alignment(tmp_path, value: bytes) -> Path:
    bio = io.BytesIO()
    torch.save({"a": torch.ones(2), "b": torch.ones(3)}, bio)
    archive, recs = fuzz._torch_records(bio.getvalue())
    p = tmp_path / "align.pt"
    p.write_bytes(fuzz._torch_zip([(n, value if n == ".storage_alignment" else d) for n, d in recs],
                                  archive))
    return p


def test_subprocess_harness_runs_real_cases_and_reports_crashes(corpus, tmp_path):
    """One worker, the real target: a seed reads fine, a broken case is an 'error', a case
    whose read crashes the process is a 'crash' (SIGSEGV injected into the reader); and the
    regression for a real crash fuzzing found runs here, where a regression cannot kill pytest:
    a torch zip whose .storage_alignment record is "0" made torch's meta load divide by zero
    (SIGFPE, `ckptfix inspect` died with "Floating point exception")."""
    s = corpus["safetensors"][0]
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    (seed_dir / s.entry).write_bytes(s.files[s.entry])
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(s.files[s.entry][:100])
    crash = tmp_path / "crash.safetensors"
    crash.write_bytes(s.files[s.entry])
    sigfpe = _torch_zip_with_alignment(tmp_path, b"0")
    with fuzz.Worker(timeout=60) as w:
        assert w.run({"path": str(seed_dir / s.entry), "out_dir": str(tmp_path / "o1")})["status"] == "ok"
        assert w.run({"path": str(broken), "out_dir": str(tmp_path / "o2")})["status"] == "error"
        res = w.run({"path": str(crash), "out_dir": str(tmp_path / "o3"), "inject": "segfault"})
        assert res["status"] == "crash" and "SIGSEGV" in res["detail"], res
        res = w.run({"path": str(sigfpe), "out_dir": str(tmp_path / "o4")})
        assert res["status"] == "error", res
    with pytest.raises(InputError, match=r"storage alignment b'0' is invalid"):
        open_checkpoint(sigfpe)  # (in-process only now that the worker said it is safe)


def test_regression_torch_zip_entry_marked_as_directory(tmp_path):
    # zip external attributes with the DOS directory bit (fuzz: central ext_attr 0xfffffff0):
    # torch's miniz reader then returns an unfilled buffer, i.e. uninitialized heap memory, as
    # the record (data.pkl, .storage_alignment, or a storage's values when read eagerly)
    p = tmp_path / "dir.pt"
    torch.save({"a": torch.arange(64, dtype=torch.float32)}, p)
    data = bytearray(p.read_bytes())
    for m in re.finditer(b"PK\x01\x02", bytes(data)):
        n = int.from_bytes(data[m.start() + 28:m.start() + 30], "little")
        if data[m.start() + 46:m.start() + 46 + n].endswith(b"data/0"):
            struct.pack_into("<I", data, m.start() + 38, 0x10)
    p.write_bytes(bytes(data))
    _clean_error(p, r"'dir/data/0' is marked as a directory", tmp_path)


def test_long_run_script_end_to_end(tmp_path):
    """The script's loop: a few seconds of real fuzzing through the worker; exit 0, counts."""
    import subprocess

    r = subprocess.run([sys.executable, str(Path(fuzz.__file__)), "--format", "npy,safetensors",
                        "--seconds", "3", "--seed", "3", "--skip-self-test",
                        "--findings", str(tmp_path / "f")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"done: \d+ cases", r.stdout) and "npy: {" in r.stdout, r.stdout


# ---------------------------------------------------------------------------------------------
# bugs fuzzing found, each pinned by its reproducer


def _clean_error(path: Path, pattern: str, tmp_path: Path) -> None:
    """The reader refuses ``path`` with a ckptfix error matching ``pattern``, and apply exits 2
    with the same kind of message, not an internal error."""
    with pytest.raises(CkptfixError, match=pattern):
        with open_checkpoint(path) as r:
            for n in r.metas():
                r.read(n)
    res = api.apply_file(path, [], tmp_path / "out.safetensors")
    assert not res.ok and res.exit_code == 2 and "internal error" not in res.error, res.error
    res.error.encode("utf-8")


def _keras3_weights(tmp_path: Path, edit) -> Path:
    import h5py

    s = next(x for x in fuzz.build_corpus()["keras-weights"] if x.name.endswith("small"))
    p = tmp_path / "m.weights.h5"
    p.write_bytes(s.files["m.weights.h5"])
    with h5py.File(p, "r+") as f:
        edit(f)
    return p


def test_regression_sparse_hdf5_dataset_is_refused_not_allocated(tmp_path):
    # a 10 KB .weights.h5 declaring an unwritten (1<<31,) float32 dataset: reading it used to
    # allocate and fill 8 GiB (OOM); (1<<20, 1<<20) raised MemoryError
    def edit(f):
        del f["layers/dense/vars/0"]
        f.create_dataset("layers/dense/vars/0", shape=(1 << 31,), dtype="f4", chunks=(1,))

    p = _keras3_weights(tmp_path, edit)
    assert p.stat().st_size < 50_000
    _clean_error(p, r"declares 8,589,934,592 bytes.*stores 0.*sparse", tmp_path)


def test_regression_written_but_compressed_hdf5_dataset_still_reads(tmp_path):
    def edit(f):
        del f["layers/dense/vars/0"]
        f.create_dataset("layers/dense/vars/0", data=np.zeros((6, 4), "f4"), compression="gzip")

    with open_checkpoint(_keras3_weights(tmp_path, edit)) as r:
        assert r.read("fc1/kernel").abs().sum() == 0


@pytest.mark.parametrize("make", ["h5-attr", "safetensors-json", "safetensors-metadata", "pt-pickle"])
def test_regression_names_with_lone_surrogates_are_refused(make, tmp_path):
    # a weight name with a lone surrogate (an HDF5 name attribute of non-UTF-8 bytes, a JSON
    # "\ud800" escape, a pickle string) made apply/inspect fail with "internal error:
    # UnicodeEncodeError" when writing the safetensors header or printing
    if make == "h5-attr":
        p = _keras3_weights(tmp_path, lambda f: f["layers/dense/vars"].attrs.__setitem__("name", b"\xff\xfe"))
    elif make.startswith("safetensors"):
        name, meta = ("\ud800w", "pt") if make.endswith("json") else ("w", "\ud800")
        raw = json.dumps({"__metadata__": {"format": meta},
                          name: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
        p = tmp_path / "m.safetensors"
        p.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 4)
    else:
        bio = io.BytesIO()
        torch.save({"abc": torch.ones(1)}, bio)
        b = bio.getvalue().replace(b"X\x03\x00\x00\x00abc", b"X\x03\x00\x00\x00\xed\xa0\x80")
        p = tmp_path / "m.pt"
        p.write_bytes(fuzz._patch_crc(b, next(n for n in zipfile.ZipFile(io.BytesIO(b)).namelist()
                                               if n.endswith("data.pkl"))))
    _clean_error(p, r"not valid Unicode|invalid Unicode", tmp_path)


def test_regression_non_string_tensor_name(tmp_path):
    p = tmp_path / "m.pt"
    torch.save({0: torch.ones(2), "epoch": 5}, p)
    _clean_error(p, r"tensor name 0 is not a string", tmp_path)


@pytest.mark.parametrize("field, value, member, cause", [
    ("method", 93, 0, "compression method is not supported"),  # zstd: NotImplementedError
    ("method", 14, 2, "LZMAError"),                    # weights.h5 as LZMA: LZMAError
    ("version", 0x3FC, 0, "zip file version 25.2"),    # NotImplementedError when opening
    ("flags", 0x41, 1, "strong encryption"),           # NotImplementedError when reading
])
def test_regression_zip_fields_in_a_keras_archive(field, value, member, cause, corpus, tmp_path):
    # zip central-directory fields set by the fuzzer; zipfile raises NotImplementedError or
    # LZMAError, which escaped as internal errors
    s = next(x for x in corpus["keras-archive"] if x.name.endswith("conv1d"))
    data = bytearray(s.files["m.keras"])
    at = [m.start() for m in re.finditer(b"PK\x01\x02", data)][member]
    struct.pack_into("<H", data, at + {"version": 6, "flags": 8, "method": 10}[field], value)
    p = tmp_path / "m.keras"
    p.write_bytes(bytes(data))
    _clean_error(p, cause, tmp_path)


def _keras_archive_with_config(corpus, tmp_path, config: bytes) -> Path:
    s = next(x for x in corpus["keras-archive"] if x.name.endswith("small"))
    items = [(i.filename, config if i.filename == "config.json" else d, i.compress_type)
             for i, d in fuzz._zip_members(s.files["m.keras"])]
    p = tmp_path / "m.keras"
    p.write_bytes(fuzz._rezip(items))
    return p


def test_regression_keras_config_nested_too_deeply(corpus, tmp_path):
    # json.loads raised RecursionError (an internal error) on a 400-model-deep config.json
    deep = b'{"class_name": "Functional", "config": {"name": "m", "layers": [' * 400 + b"]}}" * 400
    _clean_error(_keras_archive_with_config(corpus, tmp_path, deep), r"config.json is nested", tmp_path)


@pytest.mark.parametrize("where", ["legacy-model_config", "keras-config.json"])
def test_regression_keras_config_with_lone_surrogates(where, corpus, tmp_path):
    # fuzz: one byte of a legacy .h5's model_config set to 0x80 made a layer class "\udc80onv2D"
    # (h5py decodes with surrogateescape; a JSON "\ud800" escape does the same), which
    # `ckptfix inspect` cannot print in a UTF-8 locale
    if where == "legacy-model_config":
        s = next(x for x in corpus["keras-h5"] if x.name.endswith("weights-only"))
        assert s.files["m.h5"].count(b'"Conv2D"') == 1
        p = tmp_path / "m.h5"
        p.write_bytes(s.files["m.h5"].replace(b'"Conv2D"', b'"\x80onv2D"'))
    else:
        cfg = json.dumps(fuzz.KERAS3_CONFIG).replace('"fc1"', '"\\ud800"').encode()
        p = _keras_archive_with_config(corpus, tmp_path, cfg)
    _clean_error(p, r"invalid Unicode \(lone surrogates\)", tmp_path)


def test_regression_deflated_keras_weights_with_an_address_past_2_63(corpus, tmp_path):
    # the weights member deflated (read through BytesIO) and a superblock address of 2**63:
    # h5py's file-object driver raised OverflowError, an internal error
    s = next(x for x in corpus["keras-archive"] if x.name.endswith("small"))
    items = []
    for info, data in fuzz._zip_members(s.files["m.keras"]):
        if info.filename.endswith(".h5"):
            data = bytearray(data)
            struct.pack_into("<Q", data, 48, 1 << 63)  # superblock v0: the driver info address
            items.append((info.filename, bytes(data), zipfile.ZIP_DEFLATED))
        else:
            items.append((info.filename, data, info.compress_type))
    p = tmp_path / "m.keras"
    p.write_bytes(fuzz._rezip(items))
    _clean_error(p, r"OverflowError|offset-sized integer", tmp_path)  # BytesIO | a temporary file


def test_regression_npy_header_that_breaks_numpys_tokenizer(tmp_path):
    # fuzz case "npy/fortran-f64: insert 512 x 0xff at 12; delete [45:46]": an unterminated
    # string in the header made numpy's tokenize raise TokenError
    b = fuzz._npy_bytes(np.asfortranarray(np.arange(6.0).reshape(2, 3)))
    b = b[:12] + b"\xff" * 512 + b[12:]
    p = tmp_path / "a.npy"
    p.write_bytes(b[:45] + b[46:])
    _clean_error(p, r"invalid \.npy header", tmp_path)


def _legacy(obj) -> bytes:
    blob, _ = fuzz._pt_legacy_bytes(obj)
    return blob


def test_legacy_bytes_do_not_depend_on_where_torch_allocated():
    """Legacy storage keys are memory addresses: 14 digits in the main heap, 15 in a thread's
    arena. The renumbered bytes must not care (the next test failed when run after others)."""
    import threading

    def obj():  # storages allocated by the thread that calls it
        return {"a": torch.ones(3), "b": torch.arange(4)}

    made = {}
    t = threading.Thread(target=lambda: made.update(blob=_legacy(obj())))
    t.start()
    t.join()
    assert made["blob"] == _legacy(obj())


def test_regression_legacy_storage_missing_from_the_key_list(tmp_path):
    # one flipped bit in a storage key: torch returned that tensor as uninitialized memory
    base = torch.arange(24, dtype=torch.float32)
    blob = _legacy({"model": {"a": base.view(4, 6), "a_row": base[6:12], "b": torch.ones(3)}})
    key = b"X\x0e\x00\x00\x0000000000000000"
    assert blob.count(key) == 3  # a's and a_row's references, and the key list
    i = blob.find(key, blob.find(key) + 1)  # a_row's: it then names a storage nobody lists
    p = tmp_path / "m.pt"
    p.write_bytes(blob[:i + 18] + b"7" + blob[i + 19:])
    _clean_error(p, r"missing from its storage list.*uninitialized", tmp_path)


def test_regression_legacy_pickle_string_length_of_4_gib(tmp_path):
    # BINUNICODE with length 0xffffffff in the sys-info pickle: MemoryError under a memory cap
    blob = bytearray(_legacy({"a": torch.ones(2)}))
    i = blob.find(b"X\x10\x00\x00\x00protocol_version")
    struct.pack_into("<I", blob, i + 1, 0xFFFFFFFF)
    p = tmp_path / "m.pt"
    p.write_bytes(bytes(blob))
    with fuzz.Budget(60, memory=1 << 30):
        _clean_error(p, r"out of memory|truncated|corrupt|cannot load", tmp_path)


def test_regression_eager_torch_reads_are_contiguous(tmp_path):
    # a zip not laid out by torch (read eagerly) or a legacy file: a transposed view came back
    # non-contiguous from read(), which promises contiguous tensors
    base = torch.arange(24, dtype=torch.float32).view(4, 6)
    for name, data in (("legacy.pt", _legacy({"w_t": base.t()})),
                       ("repacked.pt", None)):
        p = tmp_path / name
        if data is None:
            torch.save({"w_t": base.t()}, p)
            archive, recs = fuzz._torch_records(p.read_bytes())
            p.write_bytes(fuzz._torch_zip(recs, archive, align=0))
        else:
            p.write_bytes(data)
        with open_checkpoint(p) as r:
            t = r.read("w_t")
            assert t.is_contiguous() and torch.equal(t, base.t())


def _corrupt_torch_storage(tmp_path) -> Path:
    p = tmp_path / "m.pt"
    torch.save({"w": torch.arange(64, dtype=torch.float32)}, p)
    data = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data/0"))
    n, m = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + n + m + 5] ^= 0x10
    p.write_bytes(bytes(data))
    return p


def test_regression_corrupt_torch_storage_fails_read(tmp_path):
    # a flipped byte in tensor data loaded silently (torch checks no CRC); read() now checks it
    p = _corrupt_torch_storage(tmp_path)
    with pytest.raises(InputError, match="fails its CRC check"):
        with open_checkpoint(p) as r:
            r.read("w")


def test_regression_corrupt_torch_storage_fails_apply_like_read(tmp_path):
    # apply copied the record's bytes (copy_file_range) without that check: found by the
    # fuzzer's read-vs-apply oracle
    p = _corrupt_torch_storage(tmp_path)
    res = api.apply_file(p, [], tmp_path / "out.safetensors")
    assert not res.ok and res.exit_code == 2 and "fails its CRC check" in res.error, res


def test_regression_tf_prefix_path_opens(tmp_path, corpus):
    # `ckptfix inspect dir/model.ckpt` (the prefix TF itself prints) said "no such file"
    s = next(x for x in corpus["tf-bundle"] if x.name.endswith("conv1d_tf1"))
    for n, b in s.files.items():
        (tmp_path / n).write_bytes(b)
    with open_checkpoint(tmp_path / "model.ckpt") as r:
        assert "conv1d/weights" in r.metas()
    with pytest.raises(InputError, match="no such file"):
        open_checkpoint(tmp_path / "nope")

