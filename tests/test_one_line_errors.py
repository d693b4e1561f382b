"""Bad input of every kind ends as exit 2 and one line naming the file (or the rule), never as
"internal error" (reserved for bugs): nesting deeper than Python's recursion, tensors no machine
holds planned by a rule, and odd values in rules and headers found by auditing (each failed on
f53d0ac with an internal error, or planned silently and failed while writing).
"""

from __future__ import annotations

import io
import re
import resource
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

DEPTH = 2000


def one_line(r, where: str, pattern: str, code: int = 2) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == code, (r.stdout, r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "internal error" not in r.stderr, r.stderr
    assert lines[0].startswith(f"ckptfix: error: {where}"), r.stderr
    assert re.search(pattern, lines[0]), r.stderr
    return lines[0]


# ------------------------------------------------------------------------------ deep nesting

def deep_pickle_pt(tmp_path: Path, kind: str, depth: int = DEPTH) -> Path:
    """A torch zip whose data.pkl holds {"w": tensor, "deep": <container nested ``depth`` deep>}."""
    bio = io.BytesIO()
    torch.save({"w": torch.ones(2), "deep": "PLACEHOLDER!"}, bio)
    with zipfile.ZipFile(io.BytesIO(bio.getvalue())) as z:
        items = [(i.filename, z.read(i)) for i in z.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as w:
        for name, data in items:
            if name.endswith("data.pkl"):
                at = data.index(b"PLACEHOLDER!") - 5  # the BINUNICODE opcode and its length
                data = data[:at] + nested_ops(kind, depth) + data[at + 5 + 12:]
            w.writestr(name, data)
    p = tmp_path / f"deep-{kind}.pt"
    p.write_bytes(out.getvalue())
    return p


def nested_ops(kind: str, depth: int = DEPTH) -> bytes:
    """Pickle opcodes pushing one container nested ``depth`` deep (a few KB)."""
    if kind == "list":
        return b"]" * depth + b"a" * (depth - 1)       # EMPTY_LIST..., APPEND...
    if kind == "tuple":
        return b")" + b"\x85" * (depth - 1)           # EMPTY_TUPLE, TUPLE1...
    # {"k": {"k": ...}}: EMPTY_DICT 'k' pushed depth-1 times, the innermost {}, then SETITEMs
    return b"}X\x01\x00\x00\x00k" * (depth - 1) + b"}" + b"s" * (depth - 1)


@pytest.mark.parametrize("kind", ["list", "tuple", "dict"])
def test_a_pickle_nested_2000_deep(cli, tmp_path, kind):
    p = deep_pickle_pt(tmp_path, kind)
    one_line(cli("inspect", p), f"{p}: ", r"nested too deeply")
    out = tmp_path / "out.pt"
    one_line(cli("apply", p, "-o", out), f"{p}: ", r"nested too deeply")
    assert not out.exists()


def test_a_pickle_nested_deep_but_within_the_limit_still_reads(cli, tmp_path):
    p = deep_pickle_pt(tmp_path, "list", depth=100)
    r = cli("apply", p, "-o", tmp_path / "out.pt")
    assert r.exit_code == 0, r.stderr
    assert torch.load(tmp_path / "out.pt", weights_only=True)["w"].tolist() == [1, 1]


def _deep_json(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


def test_deep_json_in_a_safetensors_header(cli, tmp_path):
    header = ('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "x": ' + _deep_json() + "}").encode()
    p = tmp_path / "deep.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    one_line(cli("inspect", p), f"{p}: ", r"nested too deeply")


def test_deep_json_in_a_keras_config_json(cli, tmp_path):
    p = tmp_path / "deep.keras"
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        f["layers/dense/vars/0"] = np.ones((2, 2), np.float32)
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", '{"class_name": "Sequential", "config": ' + _deep_json() + "}")
        z.writestr("metadata.json", "{}")
        z.writestr("model.weights.h5", bio.getvalue())
    one_line(cli("inspect", p), f"{p}: ", r"config\.json is nested too deeply")


def test_deep_json_in_a_keras_h5_attribute(cli, tmp_path):
    p = tmp_path / "deep.h5"
    with h5py.File(p, "w") as f:
        f.attrs["model_config"] = '{"class_name": "Sequential", "config": ' + _deep_json() + "}"
        f.attrs["layer_names"] = [b"dense"]
        g = f.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0"]
        g["dense/kernel:0"] = np.ones((2, 2), np.float32)
    one_line(cli("inspect", p), f"{p}: ", r"model_config attribute is nested too deeply")


def test_deep_json_in_a_keras_sharded_index(cli, tmp_path):
    p = tmp_path / "m.weights.json"
    p.write_text('{"weight_map": {}, "metadata": ' + _deep_json() + "}")
    one_line(cli("inspect", p), f"{p}: ", r"nested too deeply")


@pytest.fixture
def fc(tmp_path) -> Path:
    p = tmp_path / "fc.pt"
    torch.save({"fc.weight": torch.ones(10, 60), "fc.bias": torch.ones(10), "bn.running_var": torch.ones(10),
                "half.weight": torch.ones(3, dtype=torch.float16)}, p)
    return p


@pytest.mark.parametrize("text", [
    "rules:\n  - drop: {keys: x}\nx: " + _deep_json(5000) + "\n",   # beyond Python's recursion
    "rules: " + _deep_json(5000) + "\n",
    "rules:\n  - drop: {keys: x}\nx: " + _deep_json(700) + "\n",
    "rules:\n  - drop: {keys: x}\nx: " + "{a: " * 600 + "1" + "}" * 600 + "\n",
])
def test_deep_yaml_in_a_rules_file(cli, tmp_path, fc, text):
    rules = tmp_path / "deep.yaml"
    rules.write_text(text)
    one_line(cli("apply", fc, "-r", rules, "--dry-run"), f"{rules}: ", r"YAML nested too deeply")


def test_deep_yaml_in_target_kwargs(cli, fc):
    one_line(cli("check", fc, "--target", "x", "--target-kwargs", _deep_json(5000)), "--target-kwargs",
             r"nested too deeply")


# ------------------------------------------------------------------------------ planned sizes

def _rules(tmp_path: Path, rule: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(f"rules:\n  - {rule}\n")
    return p


@pytest.mark.parametrize("rule, pattern", [
    ("pad: {keys: 'fc\\.', axis: 0, size: 1000000000000}", r"fc\.weight \[10, 60\] -> \[1000000000000, 60\] float32: "
     r"it would be 60,000,000,000,000 elements \(218\.3 TiB\), over the 1 TiB"),
    ("pad: {keys: 'fc\\.', axis: 0, size: 100000000000000000000000000000}", r"over the 1 TiB"),
    ("add: {key: x, shape: [100000000000, 100000000000]}", r"rule 1 \(add\): x \[100000000000, 100000000000\] float32: .*over the 1 TiB"),
])
def test_a_rule_planning_a_tensor_over_1_tib_is_refused_at_plan_time(cli, tmp_path, fc, rule, pattern):
    rules = _rules(tmp_path, rule)
    out = tmp_path / "out.pt"
    for args in (["--dry-run"], ["-o", out]):
        one_line(cli("apply", fc, "-r", rules, *args), f"{rules}:2: rule 1 ", pattern)
    assert not out.exists()


def test_a_tensor_beyond_the_process_memory_is_refused_at_plan_time(tmp_path, fc):
    # under a 1.5 GiB address-space cap, a pad to 4 GiB is refused when planned (not a MemoryError
    # while writing)
    rules = _rules(tmp_path, "pad: {keys: 'fc\\.weight', axis: 0, size: 17895697}")  # x 60 x 4 B = 4 GiB
    cap = 3 << 29

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    r = subprocess.run([sys.executable, "-m", "ckptfix", "apply", str(fc), "-r", str(rules), "-o",
                        str(tmp_path / "out.pt")], capture_output=True, text=True, preexec_fn=limit)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"ckptfix: error: {rules}:2: rule 1 (pad): fc.weight [10, 60] -> [17895697, 60]"), r.stderr
    assert "in memory, more than the" in lines[0] and "this process can have" in lines[0], r.stderr
    assert not (tmp_path / "out.pt").exists()


# ------------------------------------------------------------------------------ audit: odd values

@pytest.mark.parametrize("rule, pattern", [
    ("flatten_order: {keys: 'fc\\.weight', hwc: [-1, -2, 30], axis: 1}", r"hwc\.0: Input should be greater than or equal to 1"),
    ("add: {key: x, shape: [3], dtype: int8, value: 1000}", r"value 1000\.0 does not fit dtype int8"),
    ("add: {key: x, shape: [3], dtype: bool, value: 2}", r"value 2\.0 does not fit dtype bool"),
    ("add: {key: x, shape: [3], value: 1e400}", r"value: Input should be a finite number"),
    ("add: {key: x, shape: [3], dtype: float16, value: 100000}", r"does not fit dtype float16"),
    ("pad: {keys: 'fc\\.weight', axis: 0, size: 20, fill: constant, value: .inf}", r"value: Input should be a finite number"),
    ("pad: {keys: 'fc\\.weight', axis: 0, size: 20, fill: normal, std: .nan}", r"std: Input should be a finite number"),
    ("pad: {keys: 'half', axis: 0, size: 20, fill: constant, value: 100000}", r"fill value 100000 does not fit dtype float16"),
    ("bn_eps: {keys: 'bn', from: .inf, to: 1}", r"from: Input should be a finite number"),
    ("bn_eps: {keys: 'bn', from: 1e308, to: 1e-308}", r"adding 1e\+308 overflows dtype float32"),
])
def test_odd_values_in_rules_are_refused_naming_the_rule(cli, tmp_path, fc, rule, pattern):
    rules = _rules(tmp_path, rule)
    out = tmp_path / "out.safetensors"
    one_line(cli("apply", fc, "-r", rules, "-o", out), f"{rules}:2: ", pattern)
    assert not out.exists()


def test_a_npy_header_with_a_bool_dimension(cli, tmp_path):
    d = "{'descr': '<f4', 'fortran_order': False, 'shape': (True,), }"
    d += " " * (118 - len(d)) + "\n"
    p = tmp_path / "a.npy"
    p.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode() + bytes(4))
    one_line(cli("apply", p, "-o", tmp_path / "out.safetensors"), f"{p}: ", r"invalid shape \(True,\)")
