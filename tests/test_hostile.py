"""Hostile input (issue 6): a malicious-file corpus and a malformed-file corpus, through the CLI.

Malicious files carry a real payload: if anything ever unpickled (or, for Keras, deserialized)
them unsafely, the payload would create a sentinel file ``pwned-<case>`` beside them. Each one
must be refused (exit 2, one stderr line naming the file and the offending global) by both
``inspect`` and ``apply``, and the sentinel must not exist afterwards. ``test_payloads_are_real``
loads the same files the unsafe way in a child process and checks that every sentinel appears,
so the corpus cannot pass vacuously. Keras files with a ``Lambda`` layer must be inert: reading
them works (their config is data), and no code runs.

Malformed files extend tests/test_bad_input.py (whose BROKEN corpus is not repeated here) to
every format: each gives exit 2 and exactly one stderr line naming the file and the cause; no
output or temporary file is left; the input is byte-identical afterwards.

Everything is built here, in tmp_path, from the real fixtures in tests/data.
"""

from __future__ import annotations

import base64
import builtins
import io
import json
import marshal
import os
import pickle
import runpy
import struct
import subprocess
import sys
import time
import warnings
import webbrowser
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

import tf_bundle_writer as tw
from test_bad_input import assert_bad, leftovers, one_line, sha, st_join, st_split

DATA = Path(__file__).parent / "data"
SEED = DATA / "torch" / "seed_conv10.pt"
PT = SEED.read_bytes()
SD = torch.load(SEED, weights_only=True)          # {'weight': [10, 3, 5, 5], 'bias': [10]}
ST = st_save(SD)                                   # the same tensors as safetensors bytes
KERAS_ARCHIVE = DATA / "keras" / "tiny_cnn.keras"


@pytest.fixture(autouse=True)
def _browser_is_touch(monkeypatch):
    """webbrowser.open(path) would run `touch path`: a webbrowser payload then leaves a sentinel."""
    monkeypatch.setenv("BROWSER", "touch")


def no_sentinels(d: Path) -> list[str]:
    return sorted(str(p) for p in d.rglob("pwned-*"))


# =============================================================================================
# payloads


class Call:
    """Pickles as ``func(*args)``. ``func`` may itself be a Call, so gadget chains nest:
    ``Call(Call(getattr, Call(__import__, 'os'), 'system'), cmd)`` is
    ``getattr(__import__('os'), 'system')(cmd)``."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)

    def __call__(self, *args):  # pickle insists that a reduce function be callable
        raise AssertionError("a payload is never called while building the corpus")


def touch_code(s: Path) -> str:
    return f"import pathlib; pathlib.Path({str(s)!r}).touch()"


PAYLOADS: dict[str, Callable[[Path, Path], Call]] = {
    # name -> (sentinel, scratch dir) -> payload;  pickled global(s) in GLOBALS below
    "os.system": lambda s, d: Call(os.system, f"touch '{s}'"),
    "eval": lambda s, d: Call(builtins.eval, f"__import__('pathlib').Path({str(s)!r}).touch()"),
    "exec": lambda s, d: Call(builtins.exec, touch_code(s)),
    "Popen": lambda s, d: Call(subprocess.Popen, ["touch", str(s)]),
    "run": lambda s, d: Call(subprocess.run, ["touch", str(s)]),
    "run_path": lambda s, d: Call(runpy.run_path, str(_script(d, s))),
    "getattr-chain": lambda s, d: Call(Call(builtins.getattr, Call(builtins.__import__, "os"), "system"),
                                       f"touch '{s}'"),
    "webbrowser": lambda s, d: Call(webbrowser.open, str(s)),
}
GLOBALS = {
    "os.system": [f"{os.system.__module__}.system"], "eval": ["builtins.eval"], "exec": ["builtins.exec"],
    "Popen": ["subprocess.Popen"], "run": ["subprocess.run"], "run_path": ["runpy.run_path"],
    "getattr-chain": ["builtins.getattr", "builtins.__import__"], "webbrowser": ["webbrowser.open"],
}


def _script(d: Path, s: Path) -> Path:
    p = d / f"script-for-{s.name}.py"
    p.write_text(touch_code(s) + "\n")
    return p


# ---------------------------------------------------------------------------------------------
# checkpoint-looking carriers


def torch_zip(obj, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_protocol=protocol)
    return buf.getvalue()


def torch_legacy(obj, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_protocol=protocol, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def with_payload(payload, key: str = "x") -> dict:
    return {key: payload, "state_dict": dict(SD)}   # first: it runs before any tensor is rebuilt


def lightning(hparams) -> dict:
    """A PyTorch Lightning checkpoint's layout, with ``hparams`` as its hyper_parameters."""
    return {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{k}": v for k, v in SD.items()},
            "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}}}},
            "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": None}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]}],
            "lr_schedulers": [], "hparams_name": "kwargs", "hyper_parameters": hparams}


def set_zip_flags(data: bytes, bits: int, member: str | None = None) -> bytes:
    """Set general-purpose flag ``bits`` in the local and central headers of ``member``
    (default: every entry), leaving everything else (sizes, CRCs, data) as it was."""
    b = bytearray(data)
    z = zipfile.ZipFile(io.BytesIO(data))
    infos = [i for i in z.infolist() if member is None or i.filename.endswith(member)]
    assert infos
    for info in infos:
        struct.pack_into("<H", b, info.header_offset + 6,
                         struct.unpack_from("<H", b, info.header_offset + 6)[0] | bits)
    targets = {i.filename.encode() for i in infos}
    pos = b.find(b"PK\x01\x02")
    while pos != -1:
        n = struct.unpack_from("<H", b, pos + 28)[0]
        if bytes(b[pos + 46:pos + 46 + n]) in targets:
            struct.pack_into("<H", b, pos + 8, struct.unpack_from("<H", b, pos + 8)[0] | bits)
        pos = b.find(b"PK\x01\x02", pos + 4)
    return bytes(b)


def rezip(data: bytes, *, deflate: str = "", drop: str = "", replace: dict | None = None,
          extra: dict | None = None) -> bytes:
    """Re-zip an archive: members ending in ``deflate`` compressed, ending in ``drop`` left out,
    ``replace`` {suffix: bytes} swapped, ``extra`` {name: bytes} appended."""
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names, on purpose
        with zipfile.ZipFile(buf, "w") as z:
            for info in src.infolist():
                if drop and info.filename.endswith(drop):
                    continue
                body = src.read(info)
                for suffix, new in (replace or {}).items():
                    if info.filename.endswith(suffix):
                        body = new
                kind = zipfile.ZIP_DEFLATED if deflate and info.filename.endswith(deflate) else zipfile.ZIP_STORED
                z.writestr(info.filename, body, compress_type=kind)
            for name, body in (extra or {}).items():
                z.writestr(name, body)
    return buf.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, body in members.items():
            z.writestr(name, body)
    return buf.getvalue()


def handmade_exec_pickle(s: Path) -> bytes:
    """{'x': exec(<touch s>), 'epoch': 1}, written opcode by opcode (protocol 2)."""
    code = touch_code(s).encode()
    return (b"\x80\x02}q\x00("                                  # PROTO 2, EMPTY_DICT, MARK
            b"X\x01\x00\x00\x00xq\x01"                          # 'x'
            b"cbuiltins\nexec\nq\x02"                           # GLOBAL builtins.exec
            b"X" + len(code).to_bytes(4, "little") + code +     # the source
            b"\x85q\x03Rq\x04"                                  # TUPLE1, REDUCE
            b"X\x05\x00\x00\x00epochq\x05K\x01"                 # 'epoch': 1
            b"u.")                                              # SETITEMS, STOP


def junk_globals_pickle(s: Path, n: int = 40) -> bytes:
    """{'x': os.system(<touch s>), 'junk': [<n globals with control characters in their names>]}:
    the error must stay one short line."""
    cmd = f"touch '{s}'".encode()
    junk = b"".join(b"cjunk%d\nname\r\x1b[2J%d\n" % (i, i) for i in range(n))
    return (b"\x80\x02}q\x00(X\x01\x00\x00\x00x"
            b"cposix\nsystem\nX" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R"
            b"X\x04\x00\x00\x00junk](" + junk + b"eu.")


def handmade_torch_zip(pkl: bytes) -> bytes:
    """A torch zip archive assembled by hand around ``pkl`` (no torch.save involved)."""
    return zip_of({"archive/data.pkl": pkl, "archive/byteorder": b"little", "archive/version": b"3\n",
                   "archive/.data/serialization_id": b"0123456789"})


def npy_bytes(arr, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def object_array(payload) -> np.ndarray:
    a = np.empty(2, dtype=object)
    a[0], a[1] = {"lr": 0.01}, payload
    return a


# ---------------------------------------------------------------------------------------------
# Keras Lambda layers: a marshalled function in the config, as Keras' func_dump writes it


def lambda_code(s: Path) -> str:
    fn = eval(f"lambda x: (__import__('pathlib').Path({str(s)!r}).touch(), x)[1]")  # noqa: S307 - builds the payload
    return base64.b64encode(marshal.dumps(fn.__code__)).decode("ascii")


def keras_archive_with_lambda(d: Path, s: Path) -> Path:
    z = zipfile.ZipFile(KERAS_ARCHIVE)
    config = json.loads(z.read("config.json"))
    config["config"]["layers"].append({
        "module": "keras.layers", "class_name": "Lambda", "registered_name": None,
        "config": {"name": "evil", "trainable": True, "dtype": "float32",
                   "function": {"class_name": "__lambda__",
                                "config": {"code": lambda_code(s), "defaults": None, "closure": None}},
                   "arguments": {}},
        "build_config": {"input_shape": [None, 10]}, "name": "evil"})
    p = d / "evil_lambda.keras"
    p.write_bytes(rezip(KERAS_ARCHIVE.read_bytes(), replace={"config.json": json.dumps(config).encode()}))
    return p


def keras_h5_with_lambda(d: Path, s: Path) -> Path:
    """A tf.keras 2 whole-model .h5 (the format that bypasses Keras' safe_mode, CVE-2025-9905)."""
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "name": "in", "config": {"name": "in", "batch_input_shape": [None, 4]}},
        {"class_name": "Lambda", "name": "evil", "config": {
            "name": "evil", "function": [lambda_code(s), None, None], "function_type": "lambda",
            "output_shape": None, "arguments": {}}},
        {"class_name": "Dense", "name": "fc", "config": {"name": "fc", "units": 3}}]}}
    p = d / "evil_lambda.h5"
    with h5py.File(p, "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = b"2.15.0"
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [b"in", b"evil", b"fc"]
        for name in ("in", "evil"):
            mw.create_group(name).attrs["weight_names"] = np.array([], dtype=np.float64)
        g = mw.create_group("fc")
        g.attrs["weight_names"] = [b"fc/kernel:0", b"fc/bias:0"]
        g["fc/kernel:0"] = np.ones((4, 3), np.float32)
        g["fc/bias:0"] = np.zeros(3, np.float32)
    return p


# ---------------------------------------------------------------------------------------------
# the malicious corpus


@dataclass
class Hostile:
    build: Callable[[Path, Path], bytes | Path]   # (scratch dir, sentinel) -> file bytes, or a written file
    suffix: str                                   # the file's name ends in this (never used for detection)
    cause: str                                    # regex the one stderr line must match
    proof: str                                    # how an unsafe loader runs it (see PROVE)
    payload: str | None = None                    # key of PAYLOADS, for --allow-global


def P(name: str, d: Path, s: Path) -> Call:
    """The payload ``name`` aimed at sentinel ``s`` (scratch files in ``d``)."""
    return PAYLOADS[name](s, d)


def _g(name: str) -> str:
    return "|".join(g.replace(".", r"\.") for g in GLOBALS[name])


def hostile(build, suffix, payload, proof="torch") -> Hostile:
    return Hostile(build, suffix, _g(payload), proof, payload)


HOSTILE: dict[str, Hostile] = {
    # torch zip (torch.save), every pickle protocol; the payload in various places
    "zip-p2-payload-as-a-tensor": hostile(
        lambda d, s: torch_zip({"weight": SD["weight"], "bias": P("os.system", d, s)}), ".pt", "os.system"),
    "zip-p0-os-system": hostile(lambda d, s: torch_zip(with_payload(P("os.system", d, s)), 0), ".pt", "os.system"),
    "zip-p4-exec": hostile(lambda d, s: torch_zip(with_payload(P("exec", d, s)), 4), ".pt", "exec"),
    "zip-p5-eval": hostile(lambda d, s: torch_zip(with_payload(P("eval", d, s)), 5), ".pth", "eval"),
    "zip-subprocess-popen": hostile(lambda d, s: torch_zip(with_payload(P("Popen", d, s))), ".pt", "Popen"),
    "zip-subprocess-run": hostile(lambda d, s: torch_zip(with_payload(P("run", d, s), "optimizer")), ".pt", "run"),
    "zip-runpy-run-path": hostile(lambda d, s: torch_zip(with_payload(P("run_path", d, s))), ".pt", "run_path"),
    "zip-getattr-import-chain": hostile(
        lambda d, s: torch_zip(with_payload(P("getattr-chain", d, s))), ".pt", "getattr-chain"),
    "zip-webbrowser-open": hostile(lambda d, s: torch_zip(with_payload(P("webbrowser", d, s))), ".pt", "webbrowser"),
    # torch's legacy (non-zip) format
    "legacy-p2-os-system": hostile(lambda d, s: torch_legacy(with_payload(P("os.system", d, s))), ".pt", "os.system"),
    "legacy-p2-exec": hostile(lambda d, s: torch_legacy(with_payload(P("exec", d, s))), ".pt", "exec"),
    "legacy-p5-run": hostile(lambda d, s: torch_legacy(with_payload(P("run", d, s)), 5), ".bin", "run"),
    # a bare pickle.dump of a state dict, as people do
    "raw-pickle-p0-eval": hostile(lambda d, s: pickle.dumps(with_payload(P("eval", d, s)), 0), ".pkl", "eval",
                                  "pickle"),
    "raw-pickle-p2-os-system": hostile(lambda d, s: pickle.dumps(with_payload(P("os.system", d, s)), 2),
                                       ".pth", "os.system", "pickle"),
    "raw-pickle-p4-popen": hostile(lambda d, s: pickle.dumps(with_payload(P("Popen", d, s)), 4), ".bin", "Popen",
                                   "pickle"),
    "raw-pickle-p5-getattr-chain": hostile(
        lambda d, s: pickle.dumps(with_payload(P("getattr-chain", d, s)), 5), ".pt", "getattr-chain", "pickle"),
    "raw-pickle-40-junk-globals": Hostile(lambda d, s: junk_globals_pickle(s), ".pt",
                                          r"calls posix\.system, which can run code", "pickle", "os.system"),
    # zip tricks
    "zip-renamed-safetensors": hostile(lambda d, s: torch_zip(with_payload(P("os.system", d, s))),
                                       ".safetensors", "os.system"),
    "zip-renamed-bin": hostile(lambda d, s: torch_zip(with_payload(P("run_path", d, s))), ".bin", "run_path"),
    "zip-renamed-npz": hostile(lambda d, s: torch_zip(with_payload(P("eval", d, s))), ".npz", "eval"),
    "zip-polyglot-keras": hostile(   # a torch zip that also holds a .keras archive's members
        lambda d, s: rezip(torch_zip(with_payload(P("exec", d, s))),
                           extra={"config.json": zipfile.ZipFile(KERAS_ARCHIVE).read("config.json"),
                                  "model.weights.h5": zipfile.ZipFile(KERAS_ARCHIVE).read("model.weights.h5")}),
        ".keras", "exec", "pkl-member"),   # (torch.load refuses files outside archive/; a zip+pickle tool does not)
    "zip-deflated-data-pkl": hostile(lambda d, s: rezip(torch_zip(with_payload(P("os.system", d, s))),
                                                        deflate="data.pkl"), ".pt", "os.system"),
    "zip-flag-bits-3-and-11": hostile(   # "data descriptor follows" and "UTF-8 names" on every entry
        lambda d, s: set_zip_flags(torch_zip(with_payload(P("Popen", d, s))), 0x0808), ".pt", "Popen"),
    "zip-handmade-data-pkl": Hostile(lambda d, s: handmade_torch_zip(handmade_exec_pickle(s)), ".pt",
                                     r"builtins\.exec", "torch", "exec"),
    "zip-encrypted-flag": Hostile(   # torch (miniz) refuses encrypted entries; so must we, by name
        lambda d, s: set_zip_flags(torch_zip({"x": P("os.system", d, s), **SD}), 0x0001, "data.pkl"), ".pt",
        r"data\.pkl.*encrypt", "unflag"),
    "zip-nested-archive": Hostile(   # a torch zip inside a zip: never looked into
        lambda d, s: zip_of({"release/model.pt": torch_zip(with_payload(P("os.system", d, s)))}), ".zip",
        r"zip archive but not a PyTorch checkpoint", "nested"),
    # Lightning-style containers
    "lightning-hyper-parameters": hostile(lambda d, s: torch_zip(lightning(P("Popen", d, s))), ".ckpt", "Popen"),
    "lightning-nested-deep": hostile(
        lambda d, s: torch_zip(lightning({"cfg": {"layers": [64, 64, {"init": P("eval", d, s)}]}, "lr": 0.1})),
        ".ckpt", "eval"),
    # numpy object arrays
    "npy-object-array": Hostile(lambda d, s: npy_bytes(object_array(P("os.system", d, s)), allow_pickle=True),
                                ".npy", r"Python objects.*posix\.system", "numpy"),
    "npz-object-member": Hostile(
        lambda d, s: zip_of({"weight.npy": npy_bytes(SD["weight"].numpy()),
                             "meta.npy": npy_bytes(object_array(P("exec", d, s)), allow_pickle=True)}),
        ".npz", r"meta\.npy.*Python objects.*builtins\.exec", "numpy"),
}
INERT = {  # Keras Lambda layers: data to ckptfix, code to Keras
    "keras-archive-lambda": keras_archive_with_lambda,
    "keras-h5-lambda": keras_h5_with_lambda,
}


def write_hostile(name: str, d: Path) -> tuple[Path, Path]:
    """Build case ``name`` in ``d``; returns (file, its sentinel)."""
    d.mkdir(parents=True, exist_ok=True)
    s = d / f"pwned-{name}"
    case = HOSTILE[name]
    built = case.build(d, s)
    p = built if isinstance(built, Path) else d / f"{name}{case.suffix}"
    if not isinstance(built, Path):
        p.write_bytes(built)
    return p, s


def test_corpus_size():
    assert len(HOSTILE) + len(INERT) >= 20
    assert len(MALFORMED) >= 30


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_file_is_refused(cli, name, tmp_path):
    case = HOSTILE[name]
    p, s = write_hostile(name, tmp_path / "in")
    before = sha(p)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert_bad(cli("inspect", p), p, case.cause)
    for out in (out_dir / "out.safetensors", out_dir / "out.pt"):
        assert_bad(cli("apply", p, "-o", out), p, case.cause, out=out)
    assert_bad(cli("apply", p, "-r", "seed-pad-conv", "--dry-run"), p, case.cause)
    assert list(out_dir.iterdir()) == []
    assert sha(p) == before
    assert not s.exists(), f"the payload of {name} ran"
    assert no_sentinels(tmp_path) == []


@pytest.mark.parametrize("name", [n for n, c in HOSTILE.items() if c.payload])
def test_allow_global_never_admits_code(cli, name, tmp_path):
    """Naming the payload's own globals with --allow-global must not let them run."""
    p, s = write_hostile(name, tmp_path / "in")
    args = [a for g in GLOBALS[HOSTILE[name].payload] for a in ("--allow-global", g)]
    r = cli("inspect", p, *args)
    line = one_line(r.stderr)
    assert r.exit_code == 2, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in line
    assert any(g in line for g in GLOBALS[HOSTILE[name].payload]), line
    assert not s.exists(), f"--allow-global let the payload of {name} run"


@pytest.mark.parametrize("name", ["os.system", "torch.serialization.os.system", "builtins.eval", "eval",
                                  "builtins.exec", "builtins.getattr", "builtins.__import__", "subprocess.Popen",
                                  "runpy.run_path", "webbrowser.open", "importlib.import_module"])
def test_allow_global_refuses_code_running_names(cli, name, tmp_path):
    r = cli("inspect", SEED, "--allow-global", name)
    line = one_line(r.stderr)
    assert r.exit_code == 2, r.stderr
    assert name in line and "run code" in line, line


def test_allow_global_still_admits_data_classes(cli, tmp_path):
    """The refusal is aimed: a harmless class is still admitted (tests/test_bad_input.py covers the load)."""
    r = cli("inspect", SEED, "--allow-global", "argparse.Namespace", "--allow-global", "collections.Counter")
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("name", list(INERT))
def test_keras_lambda_is_inert(cli, name, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    s = d / f"pwned-{name}"
    p = INERT[name](d, s)
    before = sha(p)
    r = cli("inspect", p, "--json")
    assert r.exit_code in (0, 2), r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    if r.exit_code == 0:  # the Lambda layer is config data, listed like any other layer
        info = json.loads(r.stdout)
        assert info["tensors"] and "evil" in info["layer_order"]
    out = tmp_path / "out.safetensors"
    r = cli("apply", p, "-o", out)
    assert r.exit_code in (0, 2), r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert out.exists() == (r.exit_code == 0) and leftovers(tmp_path) == []
    assert sha(p) == before
    assert not s.exists(), "the Lambda layer's code ran"


# ---------------------------------------------------------------------------------------------
# the payloads are real: loading the files the unsafe way runs them

PROVE = r'''
import base64, builtins, io, json, marshal, pickle, sys, types, zipfile
from pathlib import Path

import numpy as np
import torch


def unflag(b):
    """Clear the 'encrypted' bit: the entry was never really encrypted."""
    b = bytearray(b)
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = b.find(sig)
        while i != -1:
            b[i + off] &= 0xFE
            i = b.find(sig, i + 4)
    return bytes(b)


def lambdas(p):
    if zipfile.is_zipfile(p):
        config = json.loads(zipfile.ZipFile(p).read("config.json"))
    else:
        import h5py
        with h5py.File(p, "r") as f:
            config = json.loads(f.attrs["model_config"])
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Lambda":
            fn = layer["config"]["function"]
            yield fn["config"]["code"] if isinstance(fn, dict) else fn[0]


def load(kind, p):
    if kind == "torch":      # torch.load before 2.6, or anyone passing weights_only=False
        torch.load(io.BytesIO(p.read_bytes()), weights_only=False)
    elif kind == "pickle":
        pickle.loads(p.read_bytes())
    elif kind == "pkl-member":   # what a tool that unpickles data.pkl itself would do
        z = zipfile.ZipFile(p)
        up = pickle.Unpickler(io.BytesIO(z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))))
        up.persistent_load = lambda pid: None
        up.load()
    elif kind == "unflag":
        torch.load(io.BytesIO(unflag(p.read_bytes())), weights_only=False)
    elif kind == "nested":
        z = zipfile.ZipFile(p)
        torch.load(io.BytesIO(z.read(z.namelist()[0])), weights_only=False)
    elif kind == "numpy":
        obj = np.load(p, allow_pickle=True)
        for k in getattr(obj, "files", []):
            obj[k]
    elif kind == "keras":    # what Keras' func_load does with a Lambda layer's config
        for code in lambdas(p):
            types.FunctionType(marshal.loads(base64.b64decode(code)), {"__builtins__": builtins})(None)


for kind, path in json.loads(sys.argv[1]):
    try:
        load(kind, Path(path))
    except Exception as e:   # most payloads break the load after running; that is fine
        print(f"{path}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
'''


def test_payloads_are_real(tmp_path):
    jobs, sentinels = [], {}
    for name, case in HOSTILE.items():
        p, s = write_hostile(name, tmp_path / name)
        jobs.append((case.proof, str(p)))
        sentinels[name] = s
    for name, build in INERT.items():
        d = tmp_path / name
        d.mkdir()
        s = d / f"pwned-{name}"
        jobs.append(("keras", str(build(d, s))))
        sentinels[name] = s
    assert not any(s.exists() for s in sentinels.values())
    env = dict(os.environ, BROWSER="touch")
    r = subprocess.run([sys.executable, "-c", PROVE, json.dumps(jobs)], capture_output=True, text=True,
                       timeout=120, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 60  # Popen payloads finish on their own time (a busy machine: slowly)
    while time.monotonic() < deadline and not all(s.exists() for s in sentinels.values()):
        time.sleep(0.05)
    missing = [n for n, s in sentinels.items() if not s.exists()]
    assert missing == [], f"these payloads do not run when loaded unsafely: {missing}\n{r.stderr}"


# =============================================================================================
# the malformed corpus


@dataclass
class Malformed:
    build: Callable[[Path], Path | tuple[Path, Path]]   # dir -> input, or (input, the file the error names)
    cause: str
    reads_data: bool = False   # only reading tensor data finds it: inspect (metadata) succeeds
    apply_args: tuple = ()     # extra arguments for apply


def st_header_edit(fn, name="model.safetensors", data_edit=None):
    def build(d: Path) -> Path:
        header, data = st_split(ST)
        fn(header)
        p = d / name
        p.write_bytes(st_join(header, data_edit(data) if data_edit else data))
        return p
    return build


def st_raw_header(raw: bytes, *, n: int | None = None):
    def build(d: Path) -> Path:
        _, data = st_split(ST)
        b = st_join(raw, data)
        if n is not None:
            b = n.to_bytes(8, "little") + b[8:]
        p = d / "model.safetensors"
        p.write_bytes(b)
        return p
    return build


def _set(tensor, field, value):
    def fn(h):
        h[tensor][field] = value
    return fn


def _gap(h):
    b, e = h["weight"]["data_offsets"]
    h["weight"]["data_offsets"] = [b + 8, e + 8]    # 8 bytes nobody owns before the weight


def _file(name: str, data: bytes | Callable[[], bytes]):
    def build(d: Path) -> Path:
        p = d / name
        p.write_bytes(data() if callable(data) else data)
        return p
    return build


def _storage_crc_flip() -> bytes:
    z = zipfile.ZipFile(io.BytesIO(PT))
    info = next(i for i in z.infolist() if i.filename.endswith("/data/1"))
    n, m = struct.unpack_from("<HH", PT, info.header_offset + 26)
    b = bytearray(PT)
    b[info.header_offset + 30 + n + m + 5] ^= 0xFF    # one byte of the weight's data: its zip CRC fails
    return bytes(b)


def _pt_record(suffix: str, fn) -> Callable[[], bytes]:
    return lambda: rezip(PT, replace={suffix: fn(zipfile.ZipFile(io.BytesIO(PT)).read(
        next(n for n in zipfile.ZipFile(io.BytesIO(PT)).namelist() if n.endswith(suffix))))})


def _sparse() -> bytes:
    return torch_zip({"weight": SD["weight"].reshape(10, -1).to_sparse(), "bias": SD["bias"]})


# HDF5 / Keras


def _legacy_h5(p: Path, *, link_to: Path | None = None, external: Path | None = None,
               virtual: Path | None = None, missing: bool = False) -> Path:
    """A tf.keras 2 weights-only .h5 (layer_names/weight_names), as the Keras tests build them."""
    with h5py.File(p, "w") as f:
        f.attrs["layer_names"] = [b"conv1", b"fc"]
        f.attrs["backend"] = b"tensorflow"
        g = f.create_group("conv1")
        g.attrs["weight_names"] = [b"conv1/kernel:0", b"conv1/bias:0"]
        g["conv1/kernel:0"] = np.ones((3, 3, 3, 8), np.float32)
        g["conv1/bias:0"] = np.zeros(8, np.float32)
        g = f.create_group("fc")
        g.attrs["weight_names"] = [b"fc/kernel:0", b"fc/bias:0"]
        if link_to is not None:
            g["fc/kernel:0"] = h5py.ExternalLink(str(link_to), "/kernel")
        elif external is not None:
            g.create_dataset("fc/kernel:0", shape=(4, 4), dtype="<f4", external=[(str(external), 0, 64)])
        elif virtual is not None:
            layout = h5py.VirtualLayout(shape=(4, 4), dtype="<f4")
            layout[:] = h5py.VirtualSource(str(virtual), "kernel", shape=(4, 4))
            g.create_virtual_dataset("fc/kernel:0", layout)
        elif not missing:
            g["fc/kernel:0"] = np.ones((4, 4), np.float32)
        g["fc/bias:0"] = np.zeros(4, np.float32)
    return p


def _secret(d: Path) -> Path:
    """A file outside the checkpoint that a hostile HDF5 file points into."""
    secret = d / "secret"
    secret.mkdir(exist_ok=True)
    (secret / "id_rsa").write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + b"A" * 64)
    with h5py.File(secret / "other.h5", "w") as f:
        f["kernel"] = np.arange(16, dtype=np.float32).reshape(4, 4)
    return secret


def _h5_cut(frac: float):
    def build(d: Path) -> Path:
        p = _legacy_h5(d / "weights.h5")
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * frac)])
        return p
    return build


def _keras_archive(**kw):
    def build(d: Path) -> Path:
        p = d / "model.keras"
        p.write_bytes(rezip(KERAS_ARCHIVE.read_bytes(), **kw))
        return p
    return build


def _keras_inner_cut() -> bytes:
    inner = zipfile.ZipFile(KERAS_ARCHIVE).read("model.weights.h5")
    return rezip(KERAS_ARCHIVE.read_bytes(), replace={"model.weights.h5": inner[: len(inner) // 2]})


# TF bundles


def _tf(edit: Callable[[Path], Path | None]):
    def build(d: Path) -> tuple[Path, Path]:
        prefix = tw.write_bundle(d / "ckpt", {"conv/kernel": np.ones((3, 3, 3, 8), np.float32),
                                              "conv/bias": np.zeros(8, np.float32)})
        named = edit(prefix) or Path(str(prefix) + ".index")
        return Path(str(prefix) + ".index"), named
    return build


def _flip(p: Path, pos: int) -> Path:
    b = bytearray(p.read_bytes())
    b[pos] ^= 0x01
    p.write_bytes(bytes(b))
    return p


def _tf_data(prefix: Path) -> Path:
    return Path(f"{prefix}.data-00000-of-00001")


def _tf_truncate_data(prefix: Path) -> Path:
    data = _tf_data(prefix)
    data.write_bytes(data.read_bytes()[:100])
    return data


def _tf_zero_shards(prefix: Path) -> None:
    pairs = [(b"", tw.encode_header(num_shards=0)),
             (b"w", tw.encode_entry(1, (4,), 0, 0, 16))]
    Path(str(prefix) + ".index").write_bytes(tw.build_table(pairs))


# numpy


def _npy_header(header: bytes, body: bytes = b"\0" * 16, version: bytes = b"\x01\x00") -> bytes:
    header = header + b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + version + len(header).to_bytes(2, "little") + header + body


NPY = npy_bytes(np.ones((4, 5), np.float32))


def _npz(members: dict[str, bytes]) -> Callable[[], bytes]:
    return lambda: zip_of(members)


def _npz_crc_flip() -> bytes:
    b = bytearray(zip_of({"w.npy": NPY}))
    b[30 + len("w.npy") + 128 + 3] ^= 0xFF   # inside the member's data, after its 128-byte .npy header
    return bytes(b)


# other files


def _fifo(d: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    p = d / "stream.pt"
    os.mkfifo(p)
    return p


def _symlink_loop(d: Path) -> Path:
    (d / "a.pt").symlink_to(d / "b.pt")
    (d / "b.pt").symlink_to(d / "a.pt")
    return d / "a.pt"


MALFORMED: dict[str, Malformed] = {
    # safetensors headers (cut/length/overlap/duplicate/huge/non-UTF-8 cases: tests/test_bad_input.py)
    "st-negative-offset": Malformed(st_header_edit(_set("bias", "data_offsets", [-8, 32])),
                                    r"invalid data offsets.*'bias'"),
    "st-reversed-offsets": Malformed(st_header_edit(_set("bias", "data_offsets", [40, 0])),
                                     r"invalid data offsets.*'bias'"),
    "st-gap-between-tensors": Malformed(st_header_edit(_gap, data_edit=lambda b: b + b"\0" * 8),
                                        r"offset.*'weight'"),
    "st-unknown-dtype": Malformed(st_header_edit(_set("bias", "dtype", "F33")), r"'bias'.*dtype.*F33"),
    "st-dtype-not-a-string": Malformed(st_header_edit(_set("bias", "dtype", 7)), r"'bias'.*dtype.*7"),
    "st-negative-dim": Malformed(st_header_edit(_set("bias", "shape", [-10])), r"invalid shape.*'bias'"),
    "st-float-dim": Malformed(st_header_edit(_set("bias", "shape", [10.0])), r"invalid shape.*'bias'"),
    "st-shape-product-overflows": Malformed(st_header_edit(_set("weight", "shape", [2**40, 2**40, 2**40])),
                                            r"'weight'.*bytes.*range"),
    "st-empty-shape-nonempty-range": Malformed(st_header_edit(_set("bias", "shape", [0])),
                                               r"'bias'.*0 bytes.*range is 40"),
    "st-entry-missing-offsets": Malformed(st_header_edit(lambda h: h["bias"].pop("data_offsets")),
                                          r"header entry for tensor 'bias'"),
    "st-entry-not-an-object": Malformed(st_header_edit(lambda h: h.__setitem__("bias", [1, 2])),
                                        r"header entry for tensor 'bias'"),
    "st-metadata-not-an-object": Malformed(st_header_edit(lambda h: h.__setitem__("__metadata__", ["a"])),
                                           r"__metadata__"),
    "st-header-nested-deeply": Malformed(st_raw_header(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
                                         r"nested too deeply|invalid safetensors header"),
    "st-header-nul-padded": Malformed(
        st_raw_header(json.dumps(st_split(ST)[0], separators=(",", ":")).encode() + b"\0" * 8),
        r"invalid safetensors header"),
    "st-header-a-json-array": Malformed(st_raw_header(b"[1, 2, 3]", n=16), r"not a checkpoint"),
    "st-header-length-zero": Malformed(st_raw_header(b"{}", n=0), r"not a checkpoint"),
    # PyTorch zip (cut/magic/short or deflated record/TorchScript/html/LFS: tests/test_bad_input.py)
    "pt-empty-zip": Malformed(_file("model.pt", b"PK\x05\x06" + b"\0" * 18), r"empty zip"),
    "pt-storage-record-missing": Malformed(_file("model.pt", lambda: rezip(PT, drop="/data/0")),
                                           r"record data/0 is missing"),
    "pt-storage-record-longer": Malformed(_file("model.pt", _pt_record("/data/0", lambda b: b + b"\0" * 64)),
                                          r"data/0.*holds \d+ bytes, expected \d+"),
    # (a rule that changes the tensors: a plain conversion copies the stored bytes without reading them)
    "pt-storage-crc-mismatch": Malformed(_file("model.pt", _storage_crc_flip), r"data/1.*CRC", reads_data=True,
                                         apply_args=("-r", "seed-pad-conv")),
    "pt-data-pkl-truncated": Malformed(_file("model.pt", _pt_record("data.pkl", lambda b: b[: len(b) // 2])),
                                       r"truncated|unexpected end"),
    "pt-data-pkl-empty": Malformed(_file("model.pt", _pt_record("data.pkl", lambda b: b"")),
                                   r"truncated|unexpected end"),
    "pt-byteorder-big": Malformed(_file("model.pt", _pt_record("byteorder", lambda b: b"big")),
                                  r"byte order 'big'"),
    "pt-duplicate-entries": Malformed(
        _file("model.pt", lambda: rezip(PT, extra={"seed_conv10/data.pkl": pickle.dumps({"a": 1}, 2)})),
        r"duplicate.*data\.pkl"),
    "pt-sparse-tensor": Malformed(_file("model.pt", _sparse), r"'weight'.*sparse"),
    "pt-not-a-dict": Malformed(_file("model.pt", lambda: torch_zip([SD["weight"], SD["bias"]])),
                               r"no state dict.*list"),
    "pt-legacy-magic-then-junk": Malformed(_file("model.pt", b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8"
                                                 b"\x50\x19.\x80\x02Kjunk" + bytes(range(40))),
                                           r"pickle|truncated|corrupt"),
    # HDF5 / Keras
    "h5-cut-in-half": Malformed(_h5_cut(0.5), r"HDF5|truncated"),
    "h5-cut-at-90-percent": Malformed(_h5_cut(0.9), r"HDF5|truncated"),
    "h5-listed-weight-missing": Malformed(lambda d: _legacy_h5(d / "w.h5", missing=True),
                                          r"fc/kernel:0.*missing"),
    "h5-external-link": Malformed(lambda d: _legacy_h5(d / "w.h5", link_to=_secret(d) / "other.h5"),
                                  r"fc/kernel.*(another|other|external) file"),
    "h5-external-raw-storage": Malformed(lambda d: _legacy_h5(d / "w.h5", external=_secret(d) / "id_rsa"),
                                         r"fc/kernel.*external"),
    "h5-virtual-dataset": Malformed(lambda d: _legacy_h5(d / "w.h5", virtual=_secret(d) / "other.h5"),
                                    r"fc/kernel.*virtual"),
    "keras-archive-without-weights": Malformed(_keras_archive(drop="model.weights.h5"), r"model\.weights\.h5"),
    "keras-archive-config-not-json": Malformed(_keras_archive(replace={"config.json": b"{'oops'"}),
                                               r"\.keras.*JSON|config\.json"),
    "keras-archive-weights-cut": Malformed(_file("model.keras", _keras_inner_cut),
                                           r"model\.weights\.h5.*(HDF5|truncated)"),
    # TF checkpoints
    "tf-index-bad-crc": Malformed(_tf(lambda prefix: _flip(Path(str(prefix) + ".index"), 12) and None), r"CRC"),
    "tf-data-bad-crc": Malformed(_tf(lambda prefix: _flip(_tf_data(prefix), 3)), r"CRC", reads_data=True),
    "tf-data-truncated": Malformed(_tf(_tf_truncate_data), r"truncated", reads_data=True),
    "tf-data-missing": Malformed(_tf(lambda prefix: _tf_data(prefix).unlink() or _tf_data(prefix)), r"missing",
                                 reads_data=True),
    "tf-zero-shards": Malformed(_tf(_tf_zero_shards), r"num_shards=0"),
    # .npy / .npz
    "npy-cut-in-header": Malformed(_file("w.npy", NPY[:40]), r"header"),
    "npy-cut-in-data": Malformed(_file("w.npy", NPY[:-9]), r"truncated"),
    "npy-negative-shape": Malformed(_file("w.npy", _npy_header(b"{'descr': '<f4', 'fortran_order': False, "
                                                               b"'shape': (-4,), }")), r"shape"),
    "npy-unknown-descr": Malformed(_file("w.npy", _npy_header(b"{'descr': '<f99', 'fortran_order': False, "
                                                              b"'shape': (4,), }")), r"header"),
    "npy-header-not-a-dict": Malformed(_file("w.npy", _npy_header(b"[1, 2, 3]")), r"header"),
    "npy-bad-version": Malformed(_file("w.npy", _npy_header(b"{'descr': '<f4', 'fortran_order': False, "
                                                            b"'shape': (4,), }", version=b"\x09\x00")),
                                 r"version|header"),
    "npy-shape-overflows": Malformed(_file("w.npy", _npy_header(b"{'descr': '<f4', 'fortran_order': False, "
                                                                b"'shape': (1099511627776, 1099511627776), }")),
                                     r"truncated|promises"),
    "npz-cut-in-half": Malformed(_file("w.npz", lambda: zip_of({"w.npy": NPY, "b.npy": NPY})[:300]),
                                 r"zip|npz|truncated"),
    "npz-member-bad-header": Malformed(_file("w.npz", _npz({"w.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': }  \n"})),
                                       r"w\.npy.*header"),
    "npz-member-crc-mismatch": Malformed(_file("w.npz", _npz_crc_flip), r"w\.npy.*(CRC|corrupt)"),
    # not regular files
    "fifo": Malformed(_fifo, r"not a regular file"),
    "symlink-loop": Malformed(_symlink_loop, r"symbolic links|cannot access"),
}


KNOWN: dict[str, str] = {}  # failures outside the readers, left to their owners (strict xfail: flags when fixed)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN[n]))
                                  if n in KNOWN else n for n in MALFORMED])
def test_malformed_file(cli, name, tmp_path):
    case = MALFORMED[name]
    d = tmp_path / "in"
    d.mkdir()
    built = case.build(d)
    inp, named = built if isinstance(built, tuple) else (built, built)
    regular = inp.is_file() and not inp.is_symlink()
    before = sha(d) if regular else None
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = cli("inspect", inp)
    if case.reads_data:
        assert r.exit_code == 0, f"metadata alone is fine here: {r.stderr}"
    else:
        _bad(r, named, case.cause)
    out = out_dir / "out.safetensors"
    _bad(cli("apply", inp, "-o", out, *case.apply_args), named, case.cause, out=out)
    assert list(out_dir.iterdir()) == []
    if regular:
        assert sha(d) == before


def _bad(r, path, cause, out=None):
    line = assert_bad(r, path, cause, out=out)
    assert "internal error" not in line, line
    return line
