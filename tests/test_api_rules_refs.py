"""The library API takes one rules reference or a list of them (issue 14): a preset name given as
a string is that preset, never its characters; and the error classes are importable from the top."""

from pathlib import Path

import pytest
import torch

import ckptfix
from ckptfix import errors

SEED = Path(__file__).parent / "data" / "torch" / "seed_conv10.pt"


@pytest.mark.parametrize("rules", ["seed-pad-conv", Path("configs/seed-pad-conv.yaml")])
def test_one_rules_reference_equals_the_list_form(tmp_path, rules, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent.parent)
    one = ckptfix.apply_file(SEED, rules, tmp_path / "one.pt")
    listed = ckptfix.apply_file(SEED, [rules], tmp_path / "list.pt")
    assert one.ok and listed.ok, (one.error, listed.error)
    assert one.fits and [s.to_json() for s in one.steps] == [s.to_json() for s in listed.steps]
    a = torch.load(tmp_path / "one.pt", weights_only=True)
    b = torch.load(tmp_path / "list.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["weight"].shape == (15, 3, 5, 5)


def test_check_file_takes_one_rules_reference():
    res = ckptfix.check_file(SEED, rules="seed-pad-conv")
    assert res.ok and res.fits, res.error
    bare = ckptfix.check_file(SEED, target="Conv2d(3, 15, 5)")
    assert not bare.ok and bare.exit_code == errors.EXIT_DOES_NOT_FIT


def test_an_unknown_single_name_is_one_error_not_per_character():
    res = ckptfix.apply_file(SEED, "no-such-preset", dry_run=True)
    assert not res.ok and "no-such-preset" in res.error and res.exit_code == errors.EXIT_BAD_INPUT


def test_error_classes_exported_at_the_top():
    for name in ("CkptfixError", "InputError", "RulesError", "TargetError", "UsageError", "DoesNotFit",
                 "UnsafePickleError"):
        assert getattr(ckptfix, name) is getattr(errors, name)
        assert name in ckptfix.__all__
    assert ckptfix.exit_code_for(ckptfix.DoesNotFit("x")) == errors.EXIT_DOES_NOT_FIT
