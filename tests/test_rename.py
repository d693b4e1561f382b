"""Renaming, prefixes, drop and keep, on metadata (the planner) and through apply."""

import pytest

from ckptfix.errors import RulesError
from ckptfix.plan import make_plan
from ckptfix.rules import parse_text
from ckptfix.tensors import TensorMeta

M = {n: TensorMeta((2, 2)) for n in ["module.layers/0/w", "module.layers/1/w", "module.layers/0/b", "module.head.w"]}


def names(yaml_rules, metas=M):
    return list(make_plan(metas, parse_text(yaml_rules, "t.yaml").rules).entries)


def test_regex_with_groups():
    assert names(r"""rules:
  - rename: {pattern: '^module\.layers/(\d+)/(w|b)$', replace: 'blocks.\1.\2'}""") == [
        "blocks.0.w", "blocks.1.w", "blocks.0.b", "module.head.w"]


def test_named_groups():
    assert names(r"""rules:
  - rename: {pattern: '^module\.(?P<rest>.*)$', replace: '\g<rest>'}""")[0] == "layers/0/w"


def test_map_exact_and_template():
    got = names("""rules:
  - strip_prefix: module.
  - rename: {map: {'layers/{n}/w': 'blocks.{n}.weight', 'layers/{n}/b': 'blocks.{n}.bias', head.w: fc.weight}}""")
    assert got == ["blocks.0.weight", "blocks.1.weight", "blocks.0.bias", "fc.weight"]


def test_strip_and_add_prefix_and_drop_keep():
    assert names("rules:\n  - strip_prefix: module.\n  - add_prefix: model.\n")[0] == "model.layers/0/w"
    assert names("rules:\n  - drop: '/b$'\n") == ["module.layers/0/w", "module.layers/1/w", "module.head.w"]
    assert names("rules:\n  - keep: 'head'\n") == ["module.head.w"]
    assert names("rules:\n  - add_prefix: {prefix: x., keys: head}\n")[-1] == "x.module.head.w"


def test_torch_compile_prefix_preset_shape():
    m = {"_orig_mod.conv.weight": TensorMeta((1,))}
    assert names("rules:\n  - strip_prefix: _orig_mod.\n", m) == ["conv.weight"]


@pytest.mark.parametrize("rules,msg", [
    ("rules:\n  - rename: {pattern: 'layers', replace: 'x'}\n  - rename: {pattern: '/\\d+/', replace: '/'}\n", "would both be named"),
    ("rules:\n  - strip_prefix: nope.\n", "no key starts with"),
    ("rules:\n  - rename: {map: {missing.key: a}}\n", "matches no key"),
    ("rules:\n  - rename: {map: {'layers/{n}/w': 'x.{m}'}}\n", "placeholder {m}"),
    ("rules:\n  - drop: 'zzz'\n", "match no tensor"),
    ("rules:\n  - rename: {pattern: '(', replace: 'x'}\n", "does not compile"),
    ("rules:\n  - rename: {pattern: 'a', replace: '\\2'}\n", "invalid"),
])
def test_rename_errors_name_the_rule_and_line(rules, msg):
    with pytest.raises(RulesError, match=msg) as e:
        names(rules)
    assert "t.yaml:" in str(e.value)


def test_apply_renames_through_the_cli(cli, tmp_path, data):
    from safetensors.torch import load_file

    out = tmp_path / "o.safetensors"
    r = cli("apply", data / "torch/ddp_net.pt", "-r", "strip-ddp-prefix", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert sorted(load_file(out)) == sorted(k.removeprefix("module.") for k in
                                            __import__("torch").load(data / "torch/ddp_net.pt", weights_only=True))
