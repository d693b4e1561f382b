"""Model-factory targets are built on the meta device; one whose constructor needs real tensors
(``self.to(device)``, ``.item()``, ``if t.all():``) is built again on the CPU within
``limits.build_budget()``, or refused in one line saying what it needs and what to do. On 50c8c96
each of these failed: "Cannot copy out of meta tensor", "Tensor.item() cannot be called on meta
tensors" (issue 11, item 8).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import moving_nets
from ckptfix import limits
from ckptfix import target as targets
from ckptfix.errors import TargetError

ROOT = Path(__file__).resolve().parent.parent
NETS = "tests/moving_nets.py"


def built(name: str, **kwargs):
    """The target of ``moving_nets:name``, and how many times its constructor ran."""
    cls = getattr(moving_nets, name)
    before = getattr(cls, "builds", 0)
    t = targets.resolve(f"moving_nets:{name}", kwargs or None)
    return t, getattr(cls, "builds", 0) - before


def real_state(cls, **kwargs) -> dict:
    """``model.state_dict()`` of the model built for real (seeded; its own warnings silenced)."""
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return cls(**kwargs).state_dict()


def reference(cls, **kwargs) -> dict:
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in real_state(cls, **kwargs).items()}


@pytest.mark.parametrize("name", ["MovesItself", "MovesByName", "MovesDtype", "ItemInInit", "BranchesOnATensor"])
def test_a_constructor_that_needs_real_tensors_is_built_on_the_cpu(name):
    t, builds = built(name)
    assert builds == 2  # the meta attempt, then the CPU build
    ref = reference(getattr(moving_nets, name))
    assert {k: (m.shape, m.dtype) for k, m in t.tensors.items()} == ref
    assert t.params == sum(m.numel for m in t.tensors.values())


def test_kwargs_reach_the_cpu_build_and_device_meta_keeps_it_on_meta():
    t, builds = built("MovesItself", hidden=32)
    assert builds == 2 and t.tensors["lstm.weight_hh_l0"].shape == (128, 32)
    t, builds = built("MovesItself", device="meta")  # what the error advises: no second build
    assert builds == 1 and t.tensors["linear.weight"].shape == (4, 16)


def test_a_real_buffer_among_meta_tensors_is_kept_from_the_meta_build():
    t, builds = built("CpuBuffer")
    assert builds == 1 and t.tensors["mean"].shape == (3,) and t.tensors["fc.weight"].shape == (3, 4)


def test_the_budget_holds_in_the_meta_build_too(monkeypatch):
    """An explicit device='cpu' tensor beyond the budget is made on meta instead: shapes are all
    a target needs."""
    monkeypatch.setattr(limits, "build_budget", lambda: 1 << 20)
    t, builds = built("HugeCpuBuffer")
    assert builds == 1 and t.tensors["table"].shape == (1000, 1000)


def test_a_constructor_that_raises_is_one_error_naming_the_target_and_cause():
    with pytest.raises(TargetError) as e:
        built("Raises")
    assert str(e.value) == "target moving_nets:Raises: building the model failed: ValueError: unknown backbone 'resnet9000'"


@pytest.mark.parametrize("name, need", [("BigMovesItself", "at least 3.8 MiB"), ("BigAfterItem", "3.8 MiB")])
def test_over_the_budget_the_error_says_what_it_needs_and_what_to_do(monkeypatch, cli, tmp_path, name, need):
    monkeypatch.setattr(limits, "build_budget", lambda: 1 << 20)
    ckpt = tmp_path / "c.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, ckpt)
    r = cli("diff", ckpt, "--target", f"{NETS}:{name}")
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"ckptfix: error: target {NETS}:{name}: its constructor fails on the meta device ("), r.stderr
    assert f"on the CPU it needs {need}, more than the 1 MiB ckptfix lets a model build take" in lines[0], r.stderr
    assert "--target-kwargs '{device: meta}'" in lines[0] and "pass that file as --target" in lines[0]
    if name == "BigMovesItself":
        assert "(NotImplementedError: Cannot copy out of meta tensor; no data!)" in lines[0]  # one sentence of it


def run(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "ckptfix", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env)


def test_suggest_check_and_diff_work_with_a_self_moving_target_and_print_no_warnings(tmp_path):
    sd = real_state(moving_nets.MovesItself)
    ckpt = tmp_path / "ddp.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in sd.items()}, ckpt)
    tgt = f"{NETS}:MovesItself"
    rules = tmp_path / "fix.yaml"
    r = run("suggest", ckpt, "--target", tgt, "-o", rules)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "module." in rules.read_text()
    r = run("check", ckpt, "--target", tgt, "-r", rules)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = run("diff", ckpt, "--target", tgt)
    assert r.returncode == 1 and r.stderr == "", r.stderr  # does not fit (the prefix): said on stdout


def test_warnings_are_the_models_own_without_ckptfix():
    """The control for the test above: building MovesItself does warn (so an empty stderr means
    ckptfix silenced it, not that there was nothing to say)."""
    code = "import sys; sys.path.insert(0, 'tests'); import moving_nets; moving_nets.MovesItself()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "Warning" in r.stderr, r.stderr


def test_an_ordinary_billion_parameter_factory_builds_on_meta_without_memory():
    """nn.Linear(40000, 25000) is 4 GB on the CPU; on meta its build takes none (the peak RSS of
    the whole process, torch included, stays far below 4 GB)."""
    # VmHWM: the peak RSS of this process image (ru_maxrss would carry the parent's over the exec)
    code = ("import json, re; from ckptfix import target; t = target.resolve('tests/moving_nets.py:billion'); "
            "hwm = re.search(r'VmHWM:\\s*(\\d+) kB', open('/proc/self/status').read()).group(1); "
            "print(json.dumps([t.params, int(hwm)]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    params, rss_kb = json.loads(r.stdout)
    assert params == 40000 * 25000 + 25000
    assert rss_kb < 2 << 20, f"peak RSS {rss_kb} KiB: the model was allocated"
