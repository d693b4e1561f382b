"""Progress (issue 14): one unit system for sizes and speed, no ETA at first, a bar that shows
with NO_COLOR, the batch's overall bar, and the plan printed before the first byte is written."""

from __future__ import annotations

from io import StringIO
from pathlib import Path


from ckptfix import api
from ckptfix.progress import Bar, BatchBar, Progress, binary_unit, fmt_bytes

SEED = Path(__file__).parent / "data" / "torch" / "seed_conv10.pt"


class Tty(StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _run(monkeypatch, no_color: bool, steps: int = 6):
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    stream, clock = Tty(), Clock()
    bar = Bar(stream=stream, delay=0, clock=clock)
    bar.start("out.safetensors", 3 * 2**30, 12)
    frames = []
    for _ in range(steps):
        clock.t += 0.5
        bar.advance(2**28, 1)
        before = len(stream.getvalue())
        bar._shown[0].refresh()
        frames.append(stream.getvalue()[before:])
    bar.finish()
    return frames


def test_units_match_and_no_eta_at_first(monkeypatch):
    frames = _run(monkeypatch, no_color=True)
    assert "eta" not in frames[0] and "eta" not in frames[1]  # under a second: no estimate
    assert "0.2/3.0 GiB" in frames[0]
    assert "0.5 GiB/s" in frames[-1] and "MB/s" not in "".join(frames) and "MiB/s" not in frames[-1]
    assert "eta 0:03" in frames[-1]  # 1.5 GiB left at 0.5 GiB/s


def test_bar_is_visible_without_colour(monkeypatch):
    frames = _run(monkeypatch, no_color=True)
    assert "[" in frames[0] and "#" in frames[0] and "-" * 8 in frames[0]
    assert frames[-1].count("#") > frames[0].count("#")


def test_coloured_bar_uses_rich(monkeypatch):
    frames = _run(monkeypatch, no_color=False)
    assert "━" in frames[-1]


def test_binary_units():
    assert binary_unit(1536) == (1024, "KiB") and fmt_bytes(3 * 2**30) == "3.0 GiB" and fmt_bytes(12) == "12 bytes"


def test_batch_bar_counts_files(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    stream = Tty()
    bb = BatchBar(3, 3 * 2**20, stream=stream, clock=Clock())
    bb.record(2**20)
    bb.record(2**20)
    text = stream.getvalue()
    bb.finish()
    assert "2/3 files" in text and "2.0/3.0 MiB" in text


class FirstByte(Progress):
    def __init__(self, log):
        self.log = log

    def advance(self, nbytes, tensors=0):
        if nbytes and "first byte" not in self.log:
            self.log.append("first byte")


def test_plan_is_reported_before_the_data_moves(tmp_path):
    log: list[str] = []
    from ckptfix.render import plan_text

    res = api.apply_file(SEED, ["seed-pad-conv"], tmp_path / "o.safetensors", progress=FirstByte(log),
                         on_plan=lambda r: log.append(plan_text(r.plan, "plan") + ("" if r.fit.fits else "!")))
    assert res.ok and len(log) == 2 and log[1] == "first byte"
    assert "weight [10, 3, 5, 5] -> [15, 3, 5, 5]" in log[0]


def test_cli_prints_the_plan_before_wrote(cli, tmp_path):
    r = cli("apply", SEED, "-r", "seed-pad-conv", "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 0
    out = r.stdout
    assert out.index(": plan") < out.index("result fits") < out.index("wrote ") and out.count(": plan") == 1


def test_plan_not_called_when_it_does_not_validate(tmp_path):
    called = []
    res = api.apply_file(SEED, [], tmp_path / "o.safetensors", target="layer:Conv2d(3, 15, 5)",
                         on_plan=called.append)
    assert not res.ok and called == [] and not (tmp_path / "o.safetensors").exists()
