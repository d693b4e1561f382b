"""The step table reads at the terminal's width (issue 14): idle rules in one line, changes
folded, no line wider than the width, names escaped."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings, strategies as st

from ckptfix import api
from ckptfix.plan import Plan, Step
from ckptfix.render import plan_text, steps_text, text_width
from ckptfix.tensors import TensorMeta

DATA = Path(__file__).parent / "data"
KERAS = DATA / "keras" / "tiny_cnn.keras"
SEED = DATA / "torch" / "seed_conv10.pt"


def _plan(rules, path=KERAS):
    res = api.apply_file(path, rules, None, dry_run=True)
    assert res.ok, res.error
    return res.plan


def test_keras_to_torch_at_80_columns_is_compact():
    plan = _plan(["keras-to-torch"])
    text = plan_text(plan, "tiny_cnn.keras: plan", width=80)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80
    idle = [s.index for s in plan.steps if not s.changes and not s.touched]
    assert len(idle) >= 10  # the preset is for many model shapes
    assert f"{len(idle)} rule(s) matched no tensor and did nothing" in text and "--verbose" in text
    assert "(matched nothing)" not in text and "rename '/weights$'" not in text
    # the changes, one a line, shapes never split
    assert "conv1/kernel [3, 3, 3, 8] -> [8, 3, 3, 3]" in text
    assert "... (10 in all)" in text and "rules from keras-to-torch" in text
    assert len(lines) < 2 * len(plan.steps)  # before: 19 rows of 3-4 lines each


def test_verbose_lists_every_step_and_change():
    plan = _plan(["keras-to-torch"])
    text = steps_text(plan, verbose=True, width=80)
    assert "(matched nothing)" in text and "did nothing" not in text
    assert "... (10 in all)" not in text and "bn1/moving_variance -> bn1/running_var" in text
    assert max(map(len, text.splitlines())) <= 80


def test_checks_go_under_the_row_when_narrow_and_in_a_column_when_wide():
    plan = _plan(["seed-pad-conv"], SEED)
    narrow, wide = steps_text(plan, width=80), steps_text(plan, width=200)
    assert "checks: 2/2 fit target; 1 layer(s) params ok; expect ok" in narrow
    assert "checks" in wide.splitlines()[1] and "2/2 fit target" in wide and "checks:" not in wide
    assert "weight [10, 3, 5, 5] -> [15, 3, 5, 5]" in narrow  # params change: the column shows them
    assert "1,140" in narrow and "throughout" not in narrow


def test_width_is_columns_else_80_off_a_terminal(monkeypatch):
    import io

    monkeypatch.setenv("COLUMNS", "132")
    assert text_width(io.StringIO()) == 132
    monkeypatch.delenv("COLUMNS")
    assert text_width(io.StringIO()) == 80
    monkeypatch.setenv("COLUMNS", "10")
    assert text_width(io.StringIO()) == 40  # MIN_WIDTH


NAME = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=90)
SHAPE = st.lists(st.integers(0, 10**6), max_size=6)


@st.composite
def plans(draw):
    steps = []
    for i in range(draw(st.integers(1, 12))):
        names = draw(st.lists(NAME, max_size=6))
        shapes = [(draw(SHAPE), draw(SHAPE)) for _ in names]
        changes = [f"{n} [{', '.join(map(str, a))}] -> [{', '.join(map(str, b))}]" for n, (a, b) in zip(names, shapes)]
        steps.append(Step(index=i + 1, rule="x", summary=draw(NAME), where=draw(st.sampled_from(
            ["rules.yaml:3", f"{draw(NAME)}:{i}", "a:b"])), changes=changes, touched=names[:2],
            params=draw(st.integers(0, 10**12)), fit_target=draw(st.integers(0, 2)),
            layers=[{"layer": n, "params": 1, "target_params": 2, "ok": draw(st.booleans())} for n in names[:3]],
            expect_errors=draw(st.lists(NAME, max_size=2)), expect_checked=draw(st.booleans())))
    return Plan(inputs={"w": TensorMeta((3,), "float32")}, entries={}, steps=steps, target=None, fit=None)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(plans(), st.integers(60, 200), st.booleans())
def test_no_line_wider_than_the_width(plan, width, verbose):
    text = plan_text(plan, "in.pt: plan", verbose=verbose, width=width)
    assert max(map(len, text.splitlines())) <= width
    assert "\x1b" not in text and "\r" not in text  # names escaped (errors.one_line)
    for s in plan.steps:  # every step is there, or counted as idle
        assert any(line.lstrip().startswith(str(s.index)) for line in text.splitlines()) or "did nothing" in text


def test_escape_in_a_name_is_escaped():
    step = Step(index=1, rule="rename", summary="rename", where="r.yaml:1",
                changes=["evil\x1b[31m -> x\ny"], touched=["x"])
    text = steps_text(Plan(inputs={}, entries={}, steps=[step], target=None, fit=None), width=80)
    assert "\x1b" not in text and "\\x1b[31m" in text and len(text.splitlines()) == 3
