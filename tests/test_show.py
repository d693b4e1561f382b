"""`ckptfix show`: the PNG read back. Sizes, tile positions and pixel values are computed here from
the constants and formulas the ckptfix.pictures docstring states; the PNG must hold exactly them."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ckptfix import api
from ckptfix import pictures as P
from conftest import KERAS

# The picture's first row starts below the title line.
TOP = P.MARGIN + P.LINE_H + P.GAP


def _png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im).copy()


def _tile(px: np.ndarray, x0: int, y0: int, row: int, col: int, th: int, tw: int) -> np.ndarray:
    y, x = y0 + row * (th + P.PAD), x0 + col * (tw + P.PAD)
    return px[y:y + th, x:x + tw]


def _up(a: np.ndarray, s: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (kh, kw[, 3]) by s."""
    return np.repeat(np.repeat(a, s, axis=0), s, axis=1)


def _rgb(w: np.ndarray) -> np.ndarray:
    lo, hi = w.min(), w.max()
    return np.floor(255 * (w - lo) / (hi - lo) + 0.5).astype(np.uint8)


def _sym(w: np.ndarray) -> np.ndarray:
    a = np.abs(w).max()
    return np.floor(127.5 + 127.5 * w / a + 0.5).astype(np.uint8)


def _first_conv() -> np.ndarray:
    """4 filters 3x3x3, distinct dyadic values (sums are exact in float32): -6 .. 7.375."""
    return (np.arange(108, dtype=np.float64).reshape(4, 3, 3, 3) / 8 - 6)


def _save_conv(path, w: np.ndarray) -> None:
    torch.save({"conv1.weight": torch.tensor(w, dtype=torch.float32),
                "conv1.bias": torch.zeros(w.shape[0])}, path)


def test_first_layer_rgb_tiles_and_image_size(cli, tmp_path):
    pytest.importorskip("PIL")
    w = _first_conv()
    _save_conv(tmp_path / "c.pt", w)
    r = cli("show", tmp_path / "c.pt", "-o", tmp_path / "x.png")
    assert r.exit_code == 0, r.stderr
    assert "1 filter grid(s), 1 histogram(s)" in r.stdout   # the bias (rank 1) gets no histogram by default
    px = _png(tmp_path / "x.png")
    s = P.tile_scale(3, 3)
    assert s == 8                                         # 3x3 kernels become 24x24 px tiles
    t = 3 * s
    cols = math.ceil(math.sqrt(4))
    grid_h = 2 * t + P.PAD
    assert px.shape == (TOP + P.CAPTION_H + grid_h + P.GAP + P.CAPTION_H + P.HIST_H + P.MARGIN,
                        P.MARGIN + P.PANEL_W + P.MARGIN, 3)
    want = _rgb(w)                                        # min-max over the whole layer
    y0 = TOP + P.CAPTION_H
    for k in range(4):
        tile = _tile(px, P.MARGIN, y0, k // cols, k % cols, t, t)
        assert np.array_equal(tile, _up(np.moveaxis(want[k], 0, -1), s)), k
    # the greatest value (filter 3, input channel 2 = blue, last element) is 255 in blue, the least 0 in red
    assert _tile(px, P.MARGIN, y0, 1, 1, t, t)[-1, -1, 2] == 255
    assert _tile(px, P.MARGIN, y0, 0, 0, t, t)[0, 0, 0] == 0
    # the PAD between tiles is background
    assert (px[y0:y0 + t, P.MARGIN + t:P.MARGIN + t + P.PAD] == P.BG).all()


def test_histogram_bar_heights(cli, tmp_path):
    pytest.importorskip("PIL")
    # 50 bins over [0, 50], 1 wide: 200 values in bin 0, 1 in bin 10, 100 in bin 49 (with the max, 50)
    v = np.array([0.5] * 200 + [10.5] + [49.5] * 99 + [50.0], dtype=np.float32).reshape(7, 43)
    save_file({"fc.weight": torch.from_numpy(v)}, tmp_path / "h.safetensors")
    r = cli("show", tmp_path / "h.safetensors", "-o", tmp_path / "h.png")
    assert r.exit_code == 0, r.stderr
    px = _png(tmp_path / "h.png")
    assert px.shape == (TOP + P.CAPTION_H + P.HIST_H + P.MARGIN, P.MARGIN + P.PANEL_W + P.MARGIN, 3)
    plot = px[TOP + P.CAPTION_H:TOP + P.CAPTION_H + P.HIST_H, P.MARGIN:P.MARGIN + P.BINS * P.BAR_W]
    heights = {0: P.HIST_H, 10: 1, 49: math.floor(P.HIST_H * 100 / 200 + 0.5)}  # 1 px: non-empty, rounds to 0
    assert heights[49] == 40
    for j in range(P.BINS):
        h = heights.get(j, 0)
        bar = plot[:, j * P.BAR_W:(j + 1) * P.BAR_W - 1]
        assert (bar[P.HIST_H - h:] == P.BAR).all(), j
        assert (bar[:P.HIST_H - h] == P.PLOT_BG).all(), j
        assert (plot[:, (j + 1) * P.BAR_W - 1] == P.PLOT_BG).all(), j  # the gap


def test_keras_hwio_shows_the_same_tiles_as_its_torch_conversion(cli, tmp_path):
    pytest.importorskip("PIL")
    res = api.apply_file(KERAS / "tiny_cnn.keras", ["keras-to-torch"], tmp_path / "t.safetensors")
    assert res.ok, res.error
    assert cli("show", KERAS / "tiny_cnn.keras", "conv1", "-o", tmp_path / "k.png").exit_code == 0
    assert cli("show", tmp_path / "t.safetensors", "conv1", "-o", tmp_path / "t.png").exit_code == 0
    k, t = _png(tmp_path / "k.png"), _png(tmp_path / "t.png")
    assert k.shape == t.shape
    y0, th = TOP + P.CAPTION_H, 3 * 8
    cols = math.ceil(math.sqrt(8))
    grid = (slice(y0, y0 + 3 * th + 2 * P.PAD), slice(P.MARGIN, P.MARGIN + cols * th + (cols - 1) * P.PAD))
    assert np.array_equal(k[grid], t[grid])
    # and those tiles are the converted weight's, min-max normalised
    from safetensors.numpy import load_file

    w = load_file(tmp_path / "t.safetensors")["conv1.weight"].astype(np.float64)
    assert w.shape == (8, 3, 3, 3)
    want = _rgb(w)
    for f in range(8):
        assert np.array_equal(_tile(k, P.MARGIN, y0, f // cols, f % cols, th, th),
                              _up(np.moveaxis(want[f], 0, -1), 8)), f
    # -r keras-to-torch draws the same grid before and after, the after one right of the before panel
    r = cli("show", KERAS / "tiny_cnn.keras", "conv1", "-r", "keras-to-torch", "-o", tmp_path / "r.png")
    assert r.exit_code == 0, r.stderr
    rp = _png(tmp_path / "r.png")
    after_x = P.MARGIN + P.PANEL_W + P.GAP
    assert np.array_equal(rp[grid], k[grid])
    assert np.array_equal(rp[grid[0], after_x:after_x + grid[1].stop - grid[1].start], k[grid])


def test_rules_before_after_in_channels_sum(cli, tmp_path):
    pytest.importorskip("PIL")
    w = _first_conv()
    _save_conv(tmp_path / "c.pt", w)
    (tmp_path / "gray.yaml").write_text("ckptfix: 1\nrules:\n"
                                        "  - in_channels: {keys: '^conv1\\.weight$', size: 1, mode: sum}\n")
    r = cli("show", tmp_path / "c.pt", "-r", tmp_path / "gray.yaml", "-o", tmp_path / "g.png")
    assert r.exit_code == 0, r.stderr
    assert "2 filter grid(s), 2 histogram(s)" in r.stdout
    px = _png(tmp_path / "g.png")
    y0, t, cols = TOP + P.CAPTION_H, 24, 2
    after_x = P.MARGIN + P.PANEL_W + P.GAP
    before, after = _rgb(w), _sym(w.sum(axis=1))      # after: (4, 3, 3), one grey tile per filter
    for k in range(4):
        assert np.array_equal(_tile(px, P.MARGIN, y0, k // cols, k % cols, t, t),
                              _up(np.moveaxis(before[k], 0, -1), 8)), k
        grey = _tile(px, after_x, y0, k // cols, k % cols, t, t)
        assert np.array_equal(grey, _up(np.repeat(after[k][..., None], 3, axis=-1), 8)), k
    # the summed filter with the greatest |value| is white where it peaks; 0 would be mid grey (128)
    assert _tile(px, after_x, y0, 1, 1, t, t)[-1, -1].tolist() == [255, 255, 255]
    assert P.normalize_symmetric(np.array([0.0, 1.0]))[0] == 128
    assert not list(tmp_path.glob(".ckptfix-tmp-*"))


def test_deeper_layer_is_a_matrix_per_input_channel(cli, tmp_path):
    pytest.importorskip("PIL")
    g = torch.Generator().manual_seed(3)
    w2 = torch.randn(5, 4, 3, 3, generator=g)
    save_file({"conv2.weight": w2, "conv2.bias": torch.zeros(5)}, tmp_path / "d.safetensors")
    r = cli("show", tmp_path / "d.safetensors", "conv2", "-o", tmp_path / "d.png")
    assert r.exit_code == 0, r.stderr
    assert "1 filter grid(s), 2 histogram(s)" in r.stdout   # named: every floating tensor, the bias too
    px = _png(tmp_path / "d.png")
    want = _sym(w2.double().numpy())
    y0 = TOP + P.CAPTION_H
    for o in range(5):
        for i in range(4):
            tile = _tile(px, P.MARGIN, y0, o, i, 24, 24)
            assert np.array_equal(tile, _up(np.repeat(want[o, i][..., None], 3, axis=-1), 8)), (o, i)


def test_layer_selection_by_regex_and_the_default(cli, tmp_path):
    pytest.importorskip("PIL")
    r = cli("show", KERAS / "tiny_cnn.keras", "conv.*", "-o", tmp_path / "a.png")
    assert r.exit_code == 0 and "2 filter grid(s), 4 histogram(s)" in r.stdout, r.stdout + r.stderr  # kernels, biases
    r = cli("show", KERAS / "tiny_cnn.keras", "-o", tmp_path / "b.png")
    assert r.exit_code == 0 and "2 filter grid(s), 3 histogram(s)" in r.stdout   # + fc/kernel
    # names after the rules select too
    r = cli("show", KERAS / "tiny_cnn.keras", "conv2.weight", "-r", "keras-to-torch", "-o", tmp_path / "c.png")
    assert r.exit_code == 0 and "2 filter grid(s)" in r.stdout, r.stdout + r.stderr


def test_limits_cap_what_is_read_and_drawn(cli, tmp_path):
    pytest.importorskip("PIL")
    g = torch.Generator().manual_seed(5)
    state = {f"c{i}.weight": torch.randn(100, 3, 1, 1, generator=g) for i in range(P.MAX_CONV_LAYERS + 2)}
    save_file(state, tmp_path / "m.safetensors")
    r = cli("show", tmp_path / "m.safetensors", "-o", tmp_path / "m.png")
    assert r.exit_code == 0, r.stderr
    assert f"{P.MAX_CONV_LAYERS} filter grid(s)" in r.stdout
    px = _png(tmp_path / "m.png")
    cols = math.ceil(math.sqrt(P.MAX_FILTERS))           # 64 of the 100 filters
    rows = math.ceil(P.MAX_FILTERS / cols)
    t = P.tile_scale(1, 1)
    assert t == P.MIN_TILE
    grid_h = rows * t + (rows - 1) * P.PAD
    assert px.shape[1] == 2 * P.MARGIN + (P.HIST_COLS * P.PANEL_W + (P.HIST_COLS - 1) * P.GAP)
    hist_rows = math.ceil((P.MAX_CONV_LAYERS + 2) / P.HIST_COLS)
    assert px.shape[0] == (TOP + P.MAX_CONV_LAYERS * (P.CAPTION_H + grid_h + P.GAP)
                           + hist_rows * (P.CAPTION_H + P.HIST_H + P.GAP) - P.GAP + P.MARGIN)


def _one_line_error(r, *words):
    assert r.exit_code == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckptfix: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_inputs_one_line_exit_2_no_file(cli, tmp_path):
    _save_conv(tmp_path / "c.pt", _first_conv())
    _one_line_error(cli("show", tmp_path / "c.pt", "-o", tmp_path / "x.jpg"), "x.jpg", ".png")
    _one_line_error(cli("show", tmp_path / "c.pt"), "-o")
    _one_line_error(cli("show", tmp_path / "c.pt", "-o", tmp_path / "no" / "x.png"), "no such directory")
    pytest.importorskip("PIL")
    _one_line_error(cli("show", tmp_path / "missing.pt", "-o", tmp_path / "x.png"), "missing.pt")
    _one_line_error(cli("show", tmp_path / "c.pt", "fc", "-o", tmp_path / "x.png"), "no layer matches 'fc'", "conv1")
    _one_line_error(cli("show", tmp_path / "c.pt", "-r", "no-such-preset", "-o", tmp_path / "x.png"))
    (tmp_path / "bad.yaml").write_text("ckptfix: 1\nrules:\n  - transpose: {keys: 'nothing', layout: HWIO->OIHW}\n")
    _one_line_error(cli("show", tmp_path / "c.pt", "-r", tmp_path / "bad.yaml", "-o", tmp_path / "x.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "c.pt"]


def test_without_pillow_one_line_naming_the_extra(cli, tmp_path, monkeypatch):
    _save_conv(tmp_path / "c.pt", _first_conv())
    for mod in [m for m in sys.modules if m == "PIL" or m.startswith("PIL.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "PIL", None)   # `import PIL` now raises ImportError
    _one_line_error(cli("show", tmp_path / "c.pt", "-o", tmp_path / "x.png"), "pip install 'ckptfix[show]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_reads_only_the_tensors_drawn_each_once(cli, tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    from ckptfix.formats.safetensors_io import SafetensorsReader

    g = torch.Generator().manual_seed(7)
    state = {"a.weight": torch.randn(4, 3, 3, 3, generator=g), "a.bias": torch.randn(4, generator=g),
             "b.weight": torch.randn(6, 4, 3, 3, generator=g), "fc.weight": torch.randn(2, 6, generator=g)}
    save_file(state, tmp_path / "m.safetensors")
    reads = []
    real = SafetensorsReader.read
    monkeypatch.setattr(SafetensorsReader, "read", lambda self, name: reads.append(name) or real(self, name))
    assert cli("show", tmp_path / "m.safetensors", "b", "-o", tmp_path / "b.png").exit_code == 0
    assert reads == ["b.weight"]                 # its filters and its histogram from one read
    reads.clear()
    assert cli("show", tmp_path / "m.safetensors", "-o", tmp_path / "all.png").exit_code == 0
    assert sorted(reads) == ["a.weight", "b.weight", "fc.weight"]   # the bias: no histogram by default
    reads.clear()
    (tmp_path / "stem.yaml").write_text("ckptfix: 1\nrules:\n  - rename: {pattern: '^a\\.', replace: 'stem.'}\n")
    r = cli("show", tmp_path / "m.safetensors", "stem", "-r", tmp_path / "stem.yaml", "-o", tmp_path / "r.png")
    assert r.exit_code == 0 and "2 filter grid(s), 4 histogram(s)" in r.stdout, r.stdout + r.stderr
    assert reads == ["a.weight", "a.bias"]       # the after side computed from the same reads


def test_non_finite_values_are_magenta_and_left_out_of_the_scale(cli, tmp_path):
    pytest.importorskip("PIL")
    w = _first_conv()
    w[0, 1, 0, 0] = np.nan                       # the green channel of filter 0's top-left pixel
    w[3, 2, 2, 2] = np.inf                       # where the max was: the max is now the next value
    _save_conv(tmp_path / "n.pt", w)
    assert cli("show", tmp_path / "n.pt", "conv1", "-o", tmp_path / "n.png").exit_code == 0
    px = _png(tmp_path / "n.png")
    y0, t = TOP + P.CAPTION_H, 24
    finite = np.where(np.isfinite(w), w, np.nan)
    lo, hi = np.nanmin(finite), np.nanmax(finite)
    assert hi == w[3, 2, 2, 1]
    assert (_tile(px, P.MARGIN, y0, 0, 0, t, t)[:8, :8] == P.NONFINITE).all()
    assert (_tile(px, P.MARGIN, y0, 1, 1, t, t)[16:, 16:] == P.NONFINITE).all()
    assert _tile(px, P.MARGIN, y0, 1, 1, t, t)[16, 8, 2] == 255 == math.floor(255 * (hi - lo) / (hi - lo) + 0.5)
