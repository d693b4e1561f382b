"""Issue 10 section 1: no pickle global, with or without ``--allow-global``, makes a file run
code, import a module, or read or write a file.

Each payload below is a real call that does something when the file is loaded unsafely
(``torch.load(weights_only=False)``, proven in a child process by ``test_payloads_fire_when_loaded_unsafely``),
so the tests that show ckptfix does not run them cannot pass vacuously. The payload files are
written with ckptfix's own placeholder writer (``pickles.INERT_PICKLE``), which emits the global
without importing it; the proof test shows the bytes really name and call it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ckptfix.formats import pickles

DATA = Path(__file__).parent / "data"
SEED = DATA / "torch" / "seed_conv10.pt"
SD = torch.load(SEED, weights_only=True)


def G(module: str, name: str, *args):
    """A pickled call ``module.name(*args)`` (REDUCE), as data: nothing is imported here."""
    return pickles.inert_class(module, name)(*args)


def R(module: str, name: str):
    """A pickled reference to the global ``module.name`` itself (no call)."""
    return pickles.inert_class(module, name)


def code_for(s: Path) -> str:
    return f"open({str(s)!r}, 'w').close()"


def _pickle_file(d: Path, s: Path) -> Path:
    """A plain pickle that touches ``s`` when loaded (for numpy.load / torch.load payloads)."""
    p = d / "evil.pkl"
    p.write_bytes(b"cbuiltins\nexec\n(V" + code_for(s).encode("raw_unicode_escape") + b"\ntR.")
    return p


def _script(d: Path, s: Path) -> Path:
    p = d / "script.py"
    p.write_text(code_for(s) + "\n")
    return p


# name -> (scratch dir, sentinel) -> the payload object. The 8 names of the issue first, then
# 30 more callables from the stdlib, torch and numpy that take a string or a path.
PAYLOADS = {
    "timeit.timeit": lambda d, s: G("timeit", "timeit", code_for(s), "pass", R("time", "perf_counter"), 1),
    "cProfile.run": lambda d, s: G("cProfile", "run", code_for(s)),
    "profile.run": lambda d, s: G("profile", "run", code_for(s)),
    "logging.config.dictConfig": lambda d, s: G("logging.config", "dictConfig", {
        "version": 1, "handlers": {"h": {"class": "logging.FileHandler", "filename": str(s)}},
        "loggers": {"pwn": {"handlers": ["h"]}}}),
    "torch.fx.graph_module._exec_with_source": lambda d, s: G("torch.fx.graph_module", "_exec_with_source",
                                                              code_for(s), {}),
    "numpy.load": lambda d, s: G("numpy", "load", str(_pickle_file(d, s)), None, True),
    "io.open": lambda d, s: G("io", "open", str(s), "w"),
    "codecs.open": lambda d, s: G("codecs", "open", str(s), "w"),
    # more
    "builtins.open": lambda d, s: G("builtins", "open", str(s), "w"),
    "builtins.exec": lambda d, s: G("builtins", "exec", code_for(s)),
    "builtins.eval": lambda d, s: G("builtins", "eval", code_for(s)),
    "builtins.__import__": lambda d, s: G("builtins", "__import__", "ckptfix_canary"),
    "importlib.import_module": lambda d, s: G("importlib", "import_module", "ckptfix_canary"),
    "subprocess.getoutput": lambda d, s: G("subprocess", "getoutput", f"touch '{s}'"),
    "subprocess.check_call": lambda d, s: G("subprocess", "check_call", ["touch", str(s)]),
    "os.system": lambda d, s: G("os", "system", f"touch '{s}'"),
    "runpy.run_path": lambda d, s: G("runpy", "run_path", str(_script(d, s))),
    "shutil.copyfile": lambda d, s: G("shutil", "copyfile", str(_script(d, s)), str(s)),
    "shutil.make_archive": lambda d, s: G("shutil", "make_archive", str(s), "zip", str(d)),
    "sqlite3.connect": lambda d, s: G("sqlite3", "connect", str(s)),
    "zipfile.ZipFile": lambda d, s: G("zipfile", "ZipFile", str(s), "w"),
    "tarfile.open": lambda d, s: G("tarfile", "open", str(s), "w"),
    "gzip.open": lambda d, s: G("gzip", "open", str(s), "wb"),
    "bz2.open": lambda d, s: G("bz2", "open", str(s), "wb"),
    "lzma.open": lambda d, s: G("lzma", "open", str(s), "wb"),
    "wave.open": lambda d, s: G("wave", "open", str(s), "wb"),
    "logging.FileHandler": lambda d, s: G("logging", "FileHandler", str(s)),
    "tempfile.mkstemp": lambda d, s: G("tempfile", "mkstemp", None, s.name, str(d)),
    "shutil.copy": lambda d, s: G("shutil", "copy", str(_script(d, s)), str(s)),
    "shelve.open": lambda d, s: G("shelve", "open", str(s)),
    "logging.handlers.RotatingFileHandler": lambda d, s: G("logging.handlers", "RotatingFileHandler", str(s)),
    "tempfile.NamedTemporaryFile": lambda d, s: G("tempfile", "NamedTemporaryFile", "w+b", -1, None, None, "",
                                                  s.name, str(d), False),
    "numpy.save": lambda d, s: G("numpy", "save", str(s), [1, 2]),
    "numpy.savetxt": lambda d, s: G("numpy", "savetxt", str(s), [[1.0]]),
    "numpy.memmap": lambda d, s: G("numpy", "memmap", str(s), "uint8", "w+", 0, (4,)),
    "torch.save": lambda d, s: G("torch", "save", [1], str(s)),
    "torch.from_file": lambda d, s: G("torch", "from_file", str(s), True, 4),
    "ckptfix_canary.Thing": lambda d, s: G("ckptfix_canary", "Thing", "x"),
}

CANARY = textwrap.dedent("""
    import os, pathlib
    pathlib.Path(os.environ["CKPTFIX_CANARY"]).touch()   # importing this module is the payload
    class Thing:
        def __init__(self, *a):
            pass
""")


def write_payload(name: str, root: Path) -> tuple[Path, Path, Path]:
    """``(checkpoint, sentinel, scratch dir)``: a torch zip ``{"x": payload, "state_dict": SD}``.
    The payload comes first, so it runs before any tensor is rebuilt."""
    d = root / name.replace(".", "_")
    d.mkdir(parents=True)
    s = d / "pwned-sentinel"
    p = d / "ckpt.pt"
    obj = {"x": PAYLOADS[name](d, s), "state_dict": dict(SD)}
    torch.save(obj, p, pickle_module=pickles.INERT_PICKLE)
    (d / "ckptfix_canary.py").write_text(CANARY)
    return p, s, d


def fired(d: Path) -> list[str]:
    """What a payload left in its scratch dir (sentinel files by any suffix, the canary's mark)."""
    return sorted(p.name for p in d.iterdir() if p.name.startswith("pwned-sentinel"))


def env_for(d: Path) -> dict:
    return dict(os.environ, CKPTFIX_CANARY=str(d / "pwned-sentinel-canary"),
                PYTHONPATH=os.pathsep.join([str(d), os.environ.get("PYTHONPATH", ""), str(Path(__file__).parents[1])]))


def test_payloads_fire_when_loaded_unsafely(tmp_path):
    """The proof: every payload file does what it says under an unsafe load, in a child process
    (one process for all, each payload in its own directory)."""
    files = {name: write_payload(name, tmp_path) for name in PAYLOADS}
    script = textwrap.dedent("""
        import json, os, sys, torch
        out = {}
        for name, p, d in json.loads(sys.argv[1]):
            os.environ["CKPTFIX_CANARY"] = os.path.join(d, "pwned-sentinel-canary")
            sys.path.insert(0, d)
            sys.modules.pop("ckptfix_canary", None)
            try:
                torch.load(p, weights_only=False)
            except BaseException as e:
                pass
            sys.path.remove(d)
        """)
    arg = json.dumps([[n, str(p), str(d)] for n, (p, _s, d) in files.items()])
    r = subprocess.run([sys.executable, "-c", script, arg], capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL, env=env_for(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    silent = [n for n, (_p, _s, d) in files.items() if not fired(d)]
    assert silent == [], f"these payloads did nothing when loaded unsafely: {silent}"


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_payload_never_runs_and_flag_cannot_admit_it(cli, name, tmp_path, monkeypatch):
    p, s, d = write_payload(name, tmp_path)
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.setenv("CKPTFIX_CANARY", str(d / "pwned-sentinel-canary"))
    before = p.read_bytes()
    sys.modules.pop("ckptfix_canary", None)
    out = tmp_path / "out"
    out.mkdir()

    r = cli("inspect", p, "--json")
    if pickles.runs_code(name):  # a known way to run code: the file is refused as hostile
        assert r.exit_code == 2, r.stdout
        line = r.stderr.strip()
        assert str(p) in line and name in line and "run code" in line, line
        assert "--allow-global" not in line  # never suggests a name that would be refused
    else:  # anything else is kept as inert data, and the state dict is read
        assert r.exit_code == 0, r.stderr
        info = json.loads(r.stdout)
        assert name in info["inert_globals"]
        assert {t["name"] for t in info["tensors"]} == set(SD)
        r = cli("apply", p, "-r", "seed-pad-conv", "-o", out / "o.safetensors")
        assert r.exit_code == 0, r.stderr

    # naming it on the command line never admits it, and says why without suggesting another flag
    r = cli("inspect", p, "--allow-global", name)
    assert r.exit_code == 2
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and f"--allow-global {name} refused" in line, line

    assert fired(d) == [], f"the payload {name} ran"
    assert "ckptfix_canary" not in sys.modules, "a module named by the file was imported"
    assert p.read_bytes() == before


def test_no_payload_module_is_imported_in_a_fresh_process(tmp_path):
    """In a fresh process: reading and converting a file that names a module on sys.path (whose
    import is itself the payload) neither imports it nor runs it; a .pt output keeps the
    reference, so loading the output unsafely imports it (the bytes were kept, not dropped)."""
    p, s, d = write_payload("ckptfix_canary.Thing", tmp_path)
    out = d / "out.pt"
    env = env_for(d)
    for args in (["inspect", str(p)], ["apply", str(p), "-r", "seed-pad-conv", "-o", str(out)],
                 ["inspect", str(p), "--allow-global", "ckptfix_canary.Thing"]):
        r = subprocess.run([sys.executable, "-m", "ckptfix.cli", *args], capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL, env=env, cwd=d)
        assert "Traceback" not in r.stderr, r.stderr
        assert fired(d) == [], f"ckptfix {args[0]} imported the canary"
    assert out.exists()
    r = subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(out)!r}, weights_only=False)"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=d)
    assert fired(d) == ["pwned-sentinel-canary"], r.stderr


def test_lightning_hparams_omegaconf_survive_as_data(cli, tmp_path):
    """A Lightning-style checkpoint with an omegaconf config: read without importing omegaconf,
    and written back into a .pt output unchanged (loaded unsafely, it equals the original)."""
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"model": {"lr": 0.1, "layers": [1, 2, 3], "act": "relu"},
                                      "name": "run-7", "opt": None})
    p = tmp_path / "lit.ckpt"
    torch.save({"state_dict": dict(SD), "hyper_parameters": cfg, "hparams_type": omegaconf.DictConfig,
                "epoch": 3, "global_step": 120}, p)
    code = textwrap.dedent(f"""
        import sys, json
        from ckptfix import api
        info = api.inspect({str(p)!r})
        print(json.dumps({{"omegaconf": "omegaconf" in sys.modules, "inert": info["inert_globals"]}}))
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["omegaconf"] is False and "omegaconf.dictconfig.DictConfig" in seen["inert"]

    out = tmp_path / "out.ckpt"
    r = cli("apply", p, "-r", "seed-pad-conv", "-o", out)
    assert r.exit_code == 0, r.stderr
    back = torch.load(out, weights_only=False)
    assert back["hyper_parameters"] == cfg and type(back["hyper_parameters"]) is omegaconf.DictConfig
    assert back["hparams_type"] is omegaconf.DictConfig
    assert (back["epoch"], back["global_step"]) == (3, 120)
    assert back["state_dict"]["weight"].shape == (15, 3, 5, 5)
    assert torch.equal(back["state_dict"]["weight"][:10], SD["weight"])


def test_shared_and_cyclic_objects_are_walked_once(tmp_path):
    """Pickles share and cycle (omegaconf nodes point at their parents): walking and copying
    terminates and keeps the sharing."""
    a = G("m", "A", 1)
    b = {"a": a, "again": a}
    a.__setstate__({"parent": b})          # a -> b -> a
    nodes = [n for _p, n, _d in pickles.walk(b)]
    assert sum(n is a for n in nodes) == 1
    c = pickles.transform(b, lambda v: v)
    assert c["a"] is c["again"] and c["a"].state["parent"] is c


@pytest.mark.parametrize("name", sorted(pickles.VETTED))
def test_every_vetted_name_is_admitted_and_is_a_class(name):
    obj = pickles.admit(name)
    assert callable(obj) and not pickles.runs_code(name)


@pytest.mark.parametrize("name", ["timeit.timeit", "cProfile.run", "profile.run", "logging.config.dictConfig",
                                  "torch.fx.graph_module._exec_with_source", "numpy.load", "io.open",
                                  "codecs.open", "builtins.print", "functools.partial", "operator.attrgetter",
                                  "collections.defaultdict", "nonexistent.module.thing"])
def test_unvetted_names_are_refused_by_admit(name):
    with pytest.raises(ValueError):
        pickles.admit(name)


# ---------------------------------------------------------------------------------------------
# round 2: attacks found by a second tester against the placeholder design (each failed before)

import io as _io
import struct as _struct
import zipfile as _zipfile


def _G(mod: str, name: str) -> bytes:
    return b"c" + mod.encode("utf-8") + b"\n" + name.encode("utf-8") + b"\n"


def _S(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"X" + _struct.pack("<I", len(b)) + b


def _I(n: int) -> bytes:
    return b"J" + _struct.pack("<i", n)


def _tensor(key: str = "0", n: int = 4) -> bytes:
    """torch's own opcodes for a float tensor of ``n`` elements on storage ``key``."""
    return (_G("torch._utils", "_rebuild_tensor_v2") + b"((" + _S("storage") + _G("torch", "FloatStorage")
            + _S(key) + _S("cpu") + _I(n) + b"tQ" + _I(0) + b"(" + _I(n) + b"t(" + _I(1) + b"t\x89"
            + _G("collections", "OrderedDict") + b")RtR")


def _tensor_with_state(state: bytes, key: str = "0") -> bytes:
    """A tensor rebuilt through _rebuild_from_type_v2, whose state sets attributes on it."""
    return (_G("torch._tensor", "_rebuild_from_type_v2") + b"(" + _G("torch._utils", "_rebuild_tensor_v2")
            + _G("torch", "Tensor") + b"((" + _S("storage") + _G("torch", "FloatStorage") + _S(key) + _S("cpu")
            + _I(4) + b"tQ" + _I(0) + b"(" + _I(4) + b"t(" + _I(1) + b"t\x89" + _G("collections", "OrderedDict")
            + b")Rt" + state + b"tR")


def _pt(tmp_path, name: str, pkl_body: bytes) -> Path:
    """A torch zip holding storage "0" (arange(4.)) whose data.pkl is ``pkl_body`` + STOP."""
    buf = _io.BytesIO()
    torch.save({"w": torch.arange(4.0)}, buf)
    zin = _zipfile.ZipFile(_io.BytesIO(buf.getvalue()))
    p = tmp_path / name
    with _zipfile.ZipFile(p, "w", _zipfile.ZIP_STORED) as z:
        for i in zin.infolist():
            z.writestr(i.filename, b"\x80\x02" + pkl_body + b"." if i.filename.endswith("data.pkl")
                       else zin.read(i))
    return p


def _dict(*pairs: bytes) -> bytes:
    return b"}(" + b"".join(pairs) + b"u"


def test_dunder_attributes_set_by_the_file_are_refused(cli, tmp_path):
    """A file can set attributes on a tensor (``_rebuild_from_type_v2``'s state) or on a vetted
    object (BUILD): ``__getstate__``/``__reduce_ex__`` there would be called by the .pt writer."""
    state = _dict(_S("__getstate__") + _G("ckptfix_canary", "fire"))
    for where, body in {
        "value": _dict(_S("w") + _tensor(), _S("extra") + _tensor_with_state(state)),
        "key": _dict(_S("w") + _tensor(), _S("extra") + _dict(_tensor_with_state(state) + _S("v"))),
    }.items():
        p = _pt(tmp_path, f"{where}.pt", body)
        r = cli("apply", p, "-o", tmp_path / f"{where}-out.pt")
        assert r.exit_code == 2, r.stdout
        assert "__getstate__" in r.stderr and "hostile" in r.stderr and len(r.stderr.splitlines()) == 1
        assert not (tmp_path / f"{where}-out.pt").exists()
    ns = _G("argparse", "Namespace") + b")R" + _dict(_S("__reduce_ex__") + _G("torch", "Size")) + b"b"
    p = _pt(tmp_path, "ns.pt", _dict(_S("w") + _tensor(), _S("hp") + ns))
    r = cli("apply", p, "-o", tmp_path / "ns-out.pt", "--allow-global", "argparse.Namespace")
    assert r.exit_code == 2 and "__reduce_ex__" in r.stderr, r.stderr


def test_tensors_anywhere_in_the_container_are_written_with_their_data(cli, tmp_path):
    """Dict keys, set members and a vetted object's attributes hold tensors too: the .pt output
    carries their data (it used to carry meta tensors: values lost)."""
    body = _dict(_S("w") + _tensor(),
                 _S("keyed") + _dict(_tensor() + _S("v")),
                 _S("inset") + _G("builtins", "set") + b"(]" + _tensor() + b"atR",
                 _S("hp") + _G("argparse", "Namespace") + b")R" + _dict(_S("t") + _tensor()) + b"b")
    p = _pt(tmp_path, "anywhere.pt", body)
    out = tmp_path / "out.pt"
    r = cli("apply", p, "-o", out, "--allow-global", "argparse.Namespace")
    assert r.exit_code == 0, r.stderr
    back = torch.load(out, weights_only=False)
    found = [next(iter(back["keyed"])), next(iter(back["inset"])), back["hp"].t]
    for t in found:
        assert t.device.type == "cpu" and torch.equal(t, torch.arange(4.0))


def test_tensors_the_pickle_builds_and_bare_storages_are_refused(cli, tmp_path):
    built = _G("torch", "FloatTensor") + b"(" + _I(1 << 20) + b"tR"
    p = _pt(tmp_path, "built.pt", _dict(_S("w") + _tensor(), _S("u") + built))
    r = cli("inspect", p)
    assert r.exit_code == 2 and "built by the pickle" in r.stderr, r.stderr
    storage = b"(" + _S("storage") + _G("torch", "FloatStorage") + _S("0") + _S("cpu") + _I(4) + b"tQ"
    p = _pt(tmp_path, "storage.pt", _dict(_S("w") + _tensor(), _S("raw") + storage))
    r = cli("apply", p, "-o", tmp_path / "o.pt")
    assert r.exit_code == 2 and "bare storage" in r.stderr, r.stderr


def test_an_expanded_view_is_held_to_the_size_limits(cli, tmp_path):
    """Stride 0 makes 4 stored bytes a 4 TiB tensor when read: refused when opened, not an
    allocation failure later (it used to be 'internal error ... can't allocate memory')."""
    view = (_G("torch._utils", "_rebuild_tensor_v2") + b"((" + _S("storage") + _G("torch", "FloatStorage")
            + _S("0") + _S("cpu") + _I(4) + b"tQ" + _I(0) + b"(\x8a\x06" + (1 << 40).to_bytes(6, "little")
            + b"t(" + _I(0) + b"t\x89" + _G("collections", "OrderedDict") + b")RtR")
    p = _pt(tmp_path, "view.pt", _dict(_S("w") + view))
    r = cli("inspect", p)
    assert r.exit_code == 2 and "when read" in r.stderr and "internal error" not in r.stderr, r.stderr


def test_a_global_is_written_back_with_the_module_boundary_it_was_read_with(cli, tmp_path):
    """``GLOBAL sentpkg / boom.x`` behind a global the opcode parser cannot decode: written back
    as it was, never as ``sentpkg.boom / x`` (which would import the submodule sentpkg.boom)."""
    decoy = b"c" + b"caf\xc3\xa9" + b"\nx\n" + b"0"
    body = _dict(_S("w") + _tensor(), _S("b") + _G("sentpkg", "boom.x"), _S("d") + decoy[:-1])
    p = _pt(tmp_path, "split.pt", body)
    out = tmp_path / "out.pt"
    r = cli("apply", p, "-o", out)
    assert r.exit_code == 0, r.stderr
    pkl = _zipfile.ZipFile(out).read(next(n for n in _zipfile.ZipFile(out).namelist() if n.endswith("data.pkl")))
    assert _G("sentpkg", "boom.x") in pkl and _G("sentpkg.boom", "x") not in pkl


def test_an_ambiguous_module_boundary_is_readable_but_not_written_back(cli, tmp_path):
    body = _dict(_S("w") + _tensor(), _S("a") + _G("p.q", "r"), _S("b") + _G("p", "q.r"))
    p = _pt(tmp_path, "ambiguous.pt", body)
    assert cli("inspect", p).exit_code == 0
    assert cli("apply", p, "-o", tmp_path / "o.safetensors").exit_code == 0
    r = cli("apply", p, "-o", tmp_path / "o.pt")
    assert r.exit_code == 2 and "ambiguous" in r.stderr, r.stderr


def test_many_globals_behind_an_undecodable_one_cost_few_loads(tmp_path, monkeypatch):
    """A pickle opcode parser stops at the first odd opcode; the pattern scan still finds every
    global, so 200 unknown globals take a few loads, not one load each (a 2 MB file took 5 min)."""
    from ckptfix.formats.detect import open_checkpoint

    decoy = _S("d") + b"c" + b"\xff\xfe" + b"\nx\n"
    body = _dict(_S("w") + _tensor(), decoy, *[_S(f"g{i}") + _G(f"mod{i}", "Thing") for i in range(200)])
    p = _pt(tmp_path, "many.pt", body)
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (loads.append(1), real(*a, **k))[1])
    try:
        open_checkpoint(p).close()
    except Exception:  # noqa: BLE001 - the undecodable global itself may be refused; the count is the point
        pass
    assert len(loads) <= 4, len(loads)


def test_deep_placeholders_are_bounded_and_moderate_depth_writes(cli, tmp_path):
    def nest(depth: int) -> bytes:
        return _G("m", "Box") * depth + _I(0) + b"\x85R" * depth  # Box(Box(...Box(0)))
    deep = _pt(tmp_path, "deep.pt", _dict(_S("w") + _tensor(), _S("x") + nest(3000)))
    r = cli("apply", deep, "-o", tmp_path / "deep-out.pt")
    assert r.exit_code == 2 and "nested too deeply" in r.stderr, r.stderr
    ok = _pt(tmp_path, "ok.pt", _dict(_S("w") + _tensor(), _S("x") + nest(200)))
    r = cli("apply", ok, "-o", tmp_path / "ok-out.pt")
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("name", ["fractions.Fraction", "decimal.Decimal", "collections.deque", "builtins.range"])
def test_constructors_with_superlinear_cost_are_not_vetted(name):
    with pytest.raises(ValueError):
        pickles.admit(name)


# round 3: a third tester's variants

def test_attributes_that_shadow_the_type_are_refused(cli, tmp_path):
    """BUILD on an OrderedDict updates its __dict__: an ``items`` attribute hid the entries from
    every check while ``dict(node)`` still saved them (uninitialised memory reached an output).
    A tensor attribute shadowing ``_typed_storage`` would be called by the writer."""
    hidden = _G("torch", "ByteTensor") + b"(" + _I(4096) + b"tR"
    od = (_G("collections", "OrderedDict") + b")R(" + _S("w") + _tensor() + _S("leak") + hidden + b"u"
          + _dict(_S("items") + _G("collections", "Counter")) + b"b")
    p = _pt(tmp_path, "hidden.pt", _dict(_S("state_dict") + od))
    for args in (["inspect", p], ["apply", p, "--state-key", "state_dict", "-o", tmp_path / "o.pt"]):
        r = cli(*args)
        assert r.exit_code == 2 and "shadowing" in r.stderr and "items" in r.stderr, r.stderr
    assert not (tmp_path / "o.pt").exists()
    state = _dict(_S("_typed_storage") + _G("ckptfix_canary", "fire"))
    p = _pt(tmp_path, "typed.pt", _dict(_S("w") + _tensor(), _S("extra") + _tensor_with_state(state)))
    r = cli("apply", p, "-o", tmp_path / "t.pt")
    assert r.exit_code == 2 and "_typed_storage" in r.stderr and "internal error" not in r.stderr, r.stderr


def test_a_meta_tensor_without_data_is_refused(cli, tmp_path):
    meta = (_G("torch._utils", "_rebuild_meta_tensor_no_storage") + b"(" + _G("torch", "float32")
            + b"(" + _I(4) + b"t(" + _I(1) + b"t\x89tR")
    for where, body in {"state": _dict(_S("m") + meta), "extra": _dict(_S("w") + _tensor(), _S("m") + meta)}.items():
        p = _pt(tmp_path, f"{where}.pt", body)
        for out in ("o.pt", "o.safetensors"):
            r = cli("apply", p, "-o", tmp_path / f"{where}-{out}")
            assert r.exit_code == 2 and "no data in the file" in r.stderr, r.stderr


def test_a_whole_pickled_module_is_read_as_its_state_dict(cli, tmp_path):
    """``torch.save(model)`` files (at the top, or under a key as many training scripts save
    them): the module is a placeholder, never built; its recorded state gives the state dict,
    named, ordered and valued as ``model.state_dict()``, non-persistent buffers left out."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 10, 5), torch.nn.BatchNorm2d(10),
                                torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 4)))
    model[1].register_buffer("scratch", torch.ones(2), persistent=False)
    model(torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0)))  # BN statistics move
    want = model.state_dict()
    for name, obj in {"top.pt": model, "nested.pt": {"model": model, "epoch": 3}}.items():
        p = tmp_path / name
        torch.save(obj, p)
        r = cli("inspect", p, "--json")
        assert r.exit_code == 0, r.stderr
        info = json.loads(r.stdout)
        assert [t["name"] for t in info["tensors"]] == list(want)
        assert any("whole pickled module torch.nn.modules.container.Sequential" in w for w in info["warnings"])
        out = tmp_path / f"out-{name}.safetensors"
        assert cli("apply", p, "-o", out).exit_code == 0
        from safetensors.torch import load_file

        got = load_file(out)
        assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)  # safetensors orders by dtype
