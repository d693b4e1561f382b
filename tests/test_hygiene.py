"""The suite itself: reproducible on any machine, however busy (issue 10)."""

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

TESTS = Path(__file__).parent


def test_hypothesis_runs_are_reproducible_and_never_timed():
    s = settings()
    assert s.derandomize and s.database is None and s.deadline is None
    # a test's own @settings(max_examples=...) keeps the profile's other choices
    assert settings(max_examples=5).derandomize and settings(max_examples=5).deadline is None


SEEN = []


@settings(max_examples=5)
@given(st.integers())
def _draws(x):
    SEEN.append(x)


def test_the_same_examples_every_run():
    SEEN.clear()
    _draws()
    first = list(SEEN)
    SEEN.clear()
    _draws()
    assert SEEN == first


def _calls(tree, attr):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == attr and isinstance(n.func.value, ast.Name)]


@pytest.mark.parametrize("path", sorted(TESTS.glob("*.py")), ids=lambda p: p.name)
def test_random_inputs_are_seeded(path):
    """No unseeded randomness in the suite: torch draws take a generator, numpy uses a seeded
    default_rng, Python's random a seeded Random; no os.urandom."""
    tree = ast.parse(path.read_text())
    bad = []
    for fn in ("randn", "rand", "randint", "randperm", "normal", "rand_like", "randn_like"):
        bad += [f"torch.{fn} line {c.lineno}" for c in _calls(tree, fn)
                if c.func.value.id == "torch" and not any(k.arg == "generator" for k in c.keywords)]
    bad += [f"np.random.{n.attr} line {n.lineno}" for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and n.value.attr == "random"
            and isinstance(n.value.value, ast.Name) and n.value.value.id in ("np", "numpy") and n.attr != "default_rng"]
    bad += [f"np.random.default_rng() without a seed, line {c.lineno}" for c in _calls(tree, "default_rng")
            if not c.args and not c.keywords]
    bad += [f"random.{c.func.attr} line {c.lineno}" for c in ast.walk(tree)
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and isinstance(c.func.value, ast.Name)
            and c.func.value.id == "random" and c.func.attr != "Random"]
    bad += [f"random.Random() without a seed, line {c.lineno}" for c in _calls(tree, "Random")
            if c.func.value.id == "random" and not c.args]
    bad += [f"os.urandom line {c.lineno}" for c in _calls(tree, "urandom") if c.func.value.id == "os"]
    assert not bad, f"{path.name}: unseeded randomness: {bad}"
