"""CLI surface: schema, presets, JSON contracts, usage errors."""

import json

from ckptfix.rules import load_rules, presets
from ckptfix.rules.schema import OPS
from conftest import TORCH


def test_schema_lists_every_op_and_is_json(cli):
    r = cli("schema")
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    titles = {w["title"] for w in schema["properties"]["rules"]["items"]["anyOf"]}
    assert titles == set(OPS)
    assert schema["properties"]["rules"]["type"] == "array"


def test_every_preset_loads_and_is_listed(cli):
    names = presets()
    assert {"strip-ddp-prefix", "strip-torch-compile-prefix", "seed-pad-conv", "keras-to-torch"} <= set(names)
    out = cli("presets").stdout
    for name in names:
        assert load_rules(name).rules
        assert name in out


def test_apply_json_lines_contract(cli, tmp_path):
    r = cli("apply", TORCH / "seed_conv10.pt", "-r", "seed-pad-conv", "-o", tmp_path / "o.pt", "--json")
    assert r.exit_code == 0
    obj = json.loads(r.stdout.strip())
    assert {"input", "output", "ok", "fits", "error", "steps", "params", "target_params"} <= obj.keys()
    assert obj["ok"] and obj["fits"] and obj["params"] == obj["target_params"] == 1140
    step = obj["steps"][0]
    assert step["changes"] == ["weight [10, 3, 5, 5] -> [15, 3, 5, 5]", "bias [10] -> [15]"]
    assert step["layers"] == [{"layer": "(root)", "params": 1140, "target_params": 1140, "ok": True}]
    # a misfit is reported in the same object, exit 1, nothing on stdout but JSON
    r = cli("apply", TORCH / "seed_conv10.pt", "--target", "Conv2d(3, 15, 5)", "-o", tmp_path / "x.pt", "--json")
    assert r.exit_code == 1
    obj = json.loads(r.stdout.strip())
    assert obj["ok"] is False and obj["fits"] is False and "does not fit" in obj["error"]
    assert not (tmp_path / "x.pt").exists()


def test_usage_errors_are_one_line_exit_2(cli, tmp_path):
    for args in (["apply", TORCH / "seed_conv10.pt", "-r", "seed-pad-conv"],            # no -o
                 ["apply", TORCH / "seed_conv10.pt", "-r", "no-such-preset", "-o", tmp_path / "o.pt"],
                 ["apply", TORCH / "seed_conv10.pt", "-o", tmp_path / "o.pt", "--shard-size", "lots"],
                 ["diff", TORCH / "seed_conv10.pt", "--target", "Conv2d(3, 15, 5) + x"],
                 ["check", TORCH / "seed_conv10.pt"]):
        r = cli(*args)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_several_inputs_into_an_out_dir(cli, tmp_path):
    out = tmp_path / "fixed"
    r = cli("apply", TORCH / "ddp_net.pt", TORCH / "wrapped_net.pt", "--target", "tests/nets.py:SmallNet",
            "-r", "strip-ddp-prefix", "--out-dir", out, "--keep-going", "--format", "safetensors")
    assert r.exit_code == 2  # wrapped_net has no `module.` prefix: that rule matches nothing there
    assert (out / "ddp_net.safetensors").exists() and not (out / "wrapped_net.safetensors").exists()
