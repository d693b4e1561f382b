"""Pictures of a checkpoint's weights (``ckptfix show``): conv filters as image grids, a histogram
per weight, and a before | after view of a rules file. The numbers are computed here (numpy);
Pillow (the optional extra ``ckptfix[show]``) only turns them into a PNG and writes the labels
(``ImageFont.load_default()``). Everything below is exact, so a test can compute every pixel.

What is drawn
  ``LAYER`` arguments select layers: each is a layer name or a tensor name (its layer), else a
  regular expression that must match a whole layer name (``re.fullmatch``); with ``-r``, the
  names after the rules are accepted too. An argument that selects nothing is an error. Without
  arguments: the first ``MAX_CONV_LAYERS`` conv weights get a filter grid and the first
  ``MAX_HISTOGRAMS`` floating-point tensors of rank >= 2 (kernels, matrices) a histogram; the
  title says when a limit cut some off. Named layers: a filter grid for each conv layer among
  them and a histogram of each of their floating-point tensors (biases and norms too). Only the
  tensors drawn are read, each once (with ``-r``, the after side is computed from the same read;
  a rule that chooses channels from the data reads what it needs).

Filters
  A conv weight is shown in PyTorch's layout, (O, I/groups, *K) (a transposed conv: (I, O, *K)).
  A TensorFlow/Keras/Flax kernel is brought there by the layer table's own layout op
  (``HWIO->OIHW``, depthwise ``HWCM->OIHW``, Flax ConvTranspose's flip) and the caption says so
  ("HWIO shown as OIHW"), so a Keras file and its converted torch file give the same tiles. A
  1-D kernel (O, I, W) is drawn as tiles of height 1; a 3-D one by its middle depth slice
  ``D // 2`` (said in the caption).

  * I = 3: one RGB tile per filter, input channels 0, 1, 2 as red, green, blue. Min-max per
    layer: with lo, hi the least and greatest finite values of the whole tensor (all filters,
    not only those shown), ``p = floor(255 * (v - lo) / (hi - lo) + 0.5)``; 128 if hi == lo.
  * I = 1: one grey tile per filter. I > 1 otherwise: a matrix of grey tiles, one row per
    filter (output channel), one column per input channel. Symmetric per layer, 0 is mid grey:
    with a the greatest finite |v| of the whole tensor, ``p = floor(127.5 + 127.5 * v / a + 0.5)``
    (v = a: 255, v = -a: 0, v = 0: 128); 128 everywhere if a == 0. Grey is R = G = B = p.
  * A non-finite value is ``NONFINITE`` (magenta) and takes no part in lo, hi or a.
  * Tile size: the kernel upscaled by nearest neighbour by the integer ``s = max(1, ceil(MIN_TILE
    / max(kh, kw)))`` (a 3x3 kernel: 24x24 px); pixel (y, x) of a tile is kernel element
    (y // s, x // s).
  * Grid: tiles ``PAD`` px apart, ``BG`` between them. One tile per filter (I = 1 or 3): n =
    min(O, ``MAX_FILTERS``) tiles in ``cols = ceil(sqrt(n))`` columns, filter i at row i // cols,
    column i % cols. Matrix: min(O, ``MAX_ROWS``) rows, min(I, ``MAX_CHANNELS``) columns. The
    caption says how many of how many are shown.

Histograms
  ``BINS`` bins over [min, max] of the tensor's finite values (``numpy.histogram``: the last bin
  holds max; min == max: the range [v - 0.5, v + 0.5]). The plot area is ``BINS * BAR_W`` x
  ``HIST_H`` px of ``PLOT_BG``; bin j is the columns ``j*BAR_W .. j*BAR_W + BAR_W - 2`` (one px
  gap), a bar of ``BAR`` colour standing on the bottom row, ``h = floor(HIST_H * count / max_count
  + 0.5)`` px tall, at least 1 px for a non-empty bin. The caption gives the range and the count
  of the tallest bin.

Layout
  Background ``BG``; a ``MARGIN`` on every side. At the top a title line (``LINE_H`` px, then
  ``GAP``). Then one row per filter grid: a panel with a caption of ``CAPTION_LINES`` lines
  (``CAPTION_H`` px) above its grid; a panel is ``max(grid width, PANEL_W)`` px wide. Then the
  histograms, ``HIST_COLS`` panels of ``PANEL_W`` x (``CAPTION_H + HIST_H``) px per row. Panels
  and rows are ``GAP`` px apart. With ``-r`` each picture is a pair, before then after: the after
  filter panel right of the before panel (``GAP`` apart), histograms as before, after, before,
  after... Each side is normalised on its own. Width: the widest row plus the margins; height:
  the rows, their gaps, the title and the margins. Captions longer than their panel are cut
  (ending in ``...``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import dtypes
from . import layer_table as T
from . import layers as L
from . import layouts
from .errors import CkptfixError, UsageError, one_line

PILLOW_MISSING = "show draws with Pillow, which is not installed: pip install 'ckptfix[show]'"

MAX_CONV_LAYERS = 8
MAX_HISTOGRAMS = 24
MAX_FILTERS = 64
MAX_ROWS = 32
MAX_CHANNELS = 16
MIN_TILE = 24
PAD = 2
BINS = 50
BAR_W = 6
HIST_H = 80
HIST_COLS = 4
LINE_H = 13
CAPTION_LINES = 2
CAPTION_H = CAPTION_LINES * LINE_H
PANEL_W = BINS * BAR_W + 20
MARGIN = 8
GAP = 12

BG = (24, 24, 32)
TEXT = (232, 232, 232)
PLOT_BG = (52, 52, 68)
BAR = (110, 170, 255)
NONFINITE = (255, 0, 255)

CONV_KINDS = frozenset(f"Conv{t}{n}d" for n in (1, 2, 3) for t in ("", "Transpose"))


# ---------------------------------------------------------------------------------------------
# What to draw


@dataclass(frozen=True)
class FilterSource:
    """A conv weight: its stored name and how it becomes PyTorch's layout."""

    name: str
    layer: L.Layer
    layout: str | None = None     # the layout op (HWIO->OIHW ...), None when stored as torch's
    flip: tuple[int, ...] = ()    # axes reversed after it (Flax ConvTranspose)
    torch_kind: str = "Conv2d"

    @property
    def torch_layout(self) -> str:
        spatial = "DHW"[3 - int(self.torch_kind[-2]):]
        return ("IO" if "Transpose" in self.torch_kind else "OI") + spatial

    def to_torch(self, t):
        """The stored tensor in PyTorch's layout (the layer table's op, as the rules apply it)."""
        from .rules.ops import Depthwise, Transpose

        if self.layout in layouts.DEPTHWISE_LAYOUTS:
            t = Depthwise(self.layout).data(t)
        elif self.layout is not None:
            t = Transpose(layouts.parse(self.layout), self.layout).data(t)
        return t.flip(self.flip) if self.flip else t

    def layout_note(self) -> str:
        if self.layout is None:
            return self.torch_layout
        stored = self.layout.split("->")[0]
        return f"{stored} shown as {self.torch_layout}" + (" (flipped)" if self.flip else "")


def _full_names(metas) -> dict[str, dict[str, str]]:
    """layer -> {local variable -> full tensor name}."""
    out: dict[str, dict[str, str]] = {}
    for key in metas:
        layer, var = L.split_key(key)
        out.setdefault(layer, {})[var] = key
    return out


def conv_weights(layer: L.Layer, names: dict[str, str], config: dict | None = None) -> list[FilterSource]:
    """The conv weights of a layer as the layer table reads it (a SeparableConv: two)."""
    shapes = {v: tuple(m.shape) for v, m in layer.tensors.items()}
    if not shapes:
        return []
    if L.torch_named(shapes):
        kind = layer.torch_kind or layer.kind
        w = shapes.get("weight")
        if kind in CONV_KINDS and w is not None and len(w) == int(kind[-2]) + 2:
            return [FilterSource(names["weight"], layer, torch_kind=kind)]
        return []
    readings = T.keras_readings(shapes, layer.kind if layer.kind in T.FORMS_BY_CLASS else None, config)
    if not readings:
        return []
    _form, naming, units = readings[0]
    stored = {form_var: var for var, form_var in naming.items()}
    out = []
    for unit in units:
        conv = unit.tensors.get("weight")
        if unit.kind in CONV_KINDS and isinstance(conv, T.Convert) and conv.var in stored:
            out.append(FilterSource(names[stored[conv.var]], layer, conv.layout, conv.flip, unit.kind))
    return out


@dataclass
class Selection:
    """The layers chosen and what of them is drawn (input names)."""

    filters: list[FilterSource] = field(default_factory=list)
    histograms: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # limits that cut something off


def _floating(meta) -> bool:
    try:
        return dtypes.get(meta.dtype).floating
    except (KeyError, ValueError):
        return False


def select(metas, layers: dict[str, L.Layer], selectors: Sequence[str], configs: dict | None = None,
           aliases: dict[str, str] | None = None) -> Selection:
    """What to draw. ``aliases``: other names for layers (after the rules) -> input layer."""
    configs, aliases = configs or {}, aliases or {}
    names = _full_names(metas)
    chosen: list[str] = []
    if selectors:
        for sel in selectors:
            hit = _match(sel, layers, metas, aliases)
            if not hit:
                shown = ", ".join(one_line(n) or "(root)" for n in list(layers)[:6])
                raise UsageError(f"no layer matches {one_line(sel)!r} (layers: {shown}"
                                 + (", ..." if len(layers) > 6 else "") + ")")
            chosen += [h for h in hit if h not in chosen]
        chosen.sort(key=list(layers).index)
    else:
        chosen = list(layers)
    s = Selection()
    convs = [f for name in chosen for f in conv_weights(layers[name], names[name], configs.get(name))]
    if selectors:
        s.filters = convs
        s.histograms = [k for name in chosen for k in names[name].values() if _floating(metas[k])]
    else:
        s.filters = convs[:MAX_CONV_LAYERS]
        if len(convs) > MAX_CONV_LAYERS:
            s.notes.append(f"filters of the first {MAX_CONV_LAYERS} of {len(convs)} conv weights")
        hists = [k for name in chosen for k in names[name].values()
                 if _floating(metas[k]) and metas[k].rank >= 2]
        s.histograms = hists[:MAX_HISTOGRAMS]
        if len(hists) > MAX_HISTOGRAMS:
            s.notes.append(f"histograms of the first {MAX_HISTOGRAMS} of {len(hists)} weights")
    if not s.filters and not s.histograms:
        what = ", ".join(one_line(n) or "(root)" for n in chosen[:4])
        raise UsageError(f"nothing to draw in {what}: no conv filters and no floating-point weights")
    return s


def _match(sel: str, layers, metas, aliases) -> list[str]:
    if sel in layers:
        return [sel]
    if sel in aliases:
        return [aliases[sel]]
    if sel in metas:
        return [L.layer_of(sel)]
    try:
        rx = re.compile(sel)
    except re.error:
        return []
    hit = [n for n in layers if rx.fullmatch(n)]
    hit += [aliases[a] for a in aliases if rx.fullmatch(a) and aliases[a] not in hit]
    return hit


# ---------------------------------------------------------------------------------------------
# Numbers -> pixels (numpy only)


def _finite(v: np.ndarray) -> np.ndarray:
    return v[np.isfinite(v)]


def normalize_rgb(w: np.ndarray) -> np.ndarray:
    """Min-max over the whole array: uint8 of the same shape."""
    f = _finite(w)
    if f.size == 0 or f.max() == f.min():
        p = np.full(w.shape, 128.0)
    else:
        lo, hi = float(f.min()), float(f.max())
        p = np.floor(255.0 * (w - lo) / (hi - lo) + 0.5)
    return np.clip(np.nan_to_num(p), 0, 255).astype(np.uint8)


def normalize_symmetric(w: np.ndarray) -> np.ndarray:
    """0 -> 128, +-max|v| -> 255 / 0: uint8 of the same shape."""
    f = _finite(w)
    a = float(np.abs(f).max()) if f.size else 0.0
    if a == 0.0:
        p = np.full(w.shape, 128.0)
    else:
        p = np.floor(127.5 + 127.5 * (w / a) + 0.5)
    return np.clip(np.nan_to_num(p), 0, 255).astype(np.uint8)


def tile_scale(kh: int, kw: int) -> int:
    return max(1, math.ceil(MIN_TILE / max(kh, kw)))


@dataclass
class Grid:
    """A filter grid's pixels (H, W, 3 uint8) and what it shows."""

    pixels: np.ndarray
    note: str


def as_4d(w: np.ndarray) -> tuple[np.ndarray, str]:
    """(O, I, *K) -> (O, I, kh, kw): 1-D kernels of height 1, 3-D ones by their middle slice."""
    if w.ndim == 3:
        return w[:, :, None, :], ""
    if w.ndim == 5:
        d = w.shape[2] // 2
        return w[:, :, d], f"depth slice {d} of {w.shape[2]}; "
    return w, ""


def filter_grid(w: np.ndarray) -> Grid:
    """The grid of a conv weight in PyTorch's layout (O, I, *K), float64."""
    w4, note = as_4d(w)
    o, i, kh, kw = w4.shape
    s = tile_scale(kh, kw)
    th, tw = kh * s, kw * s
    bad = ~np.isfinite(w4)
    if i in (1, 3):
        n = min(o, MAX_FILTERS)
        cols = max(1, math.ceil(math.sqrt(n)))
        rows = max(1, math.ceil(n / cols))
        if i == 3:
            p = normalize_rgb(w4)
            tiles = np.moveaxis(p, 1, -1)                       # (O, kh, kw, 3)
            bad_px = bad.any(axis=1)
            what = f"RGB filters, min-max per layer [{_num(w4, min)}, {_num(w4, max)}]"
        else:
            p = normalize_symmetric(w4)[:, 0]
            tiles = np.repeat(p[..., None], 3, axis=-1)
            bad_px = bad[:, 0]
            what = f"grey filters, symmetric per layer +-{_absmax(w4)}"
        tiles = tiles.copy()
        tiles[bad_px] = NONFINITE
        place = [(k // cols, k % cols, tiles[k]) for k in range(n)]
        note += (f"{n} of {o} " if n < o else f"{o} ") + what
    else:
        rows, cols = min(o, MAX_ROWS), min(i, MAX_CHANNELS)
        p = normalize_symmetric(w4)
        tiles = np.repeat(p[..., None], 3, axis=-1).copy()     # (O, I, kh, kw, 3)
        tiles[bad] = NONFINITE
        place = [(r, c, tiles[r, c]) for r in range(rows) for c in range(cols)]
        note += (f"{rows} of {o} filters" if rows < o else f"{o} filters")
        note += (f" x {cols} of {i} inputs" if cols < i else f" x {i} inputs")
        note += f", symmetric per layer +-{_absmax(w4)}"
    gh, gw = rows * th + (rows - 1) * PAD, cols * tw + (cols - 1) * PAD
    px = np.empty((gh, gw, 3), np.uint8)
    px[:] = BG
    for r, c, tile in place:
        y, x = r * (th + PAD), c * (tw + PAD)
        px[y:y + th, x:x + tw] = np.repeat(np.repeat(tile, s, axis=0), s, axis=1)
    return Grid(px, note)


def _num(w, f) -> str:
    v = _finite(w)
    return f"{float(f(v)):.3g}" if v.size else "nan"


def _absmax(w) -> str:
    v = _finite(w)
    return f"{float(np.abs(v).max()):.3g}" if v.size else "0"


def histogram(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(counts, bar heights in px, range) of the finite values."""
    f = _finite(v.ravel())
    if f.size == 0:
        return np.zeros(BINS, np.int64), np.zeros(BINS, np.int64), (0.0, 0.0)
    lo, hi = float(f.min()), float(f.max())
    rng = (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)
    counts, _ = np.histogram(f, bins=BINS, range=rng)
    top = counts.max()
    h = np.floor(HIST_H * counts / top + 0.5).astype(np.int64)
    h[(counts > 0) & (h == 0)] = 1
    return counts, h, (lo, hi)


def histogram_pixels(heights: np.ndarray) -> np.ndarray:
    px = np.empty((HIST_H, BINS * BAR_W, 3), np.uint8)
    px[:] = PLOT_BG
    for j, h in enumerate(heights):
        if h:
            px[HIST_H - h:, j * BAR_W:(j + 1) * BAR_W - 1] = BAR
    return px


# ---------------------------------------------------------------------------------------------
# Panels and the page


@dataclass
class Panel:
    """One captioned picture: its pixels (None: a caption only) and its size."""

    lines: list[str]
    pixels: np.ndarray | None
    kind: str                      # "filters" or "histogram"
    name: str = ""
    side: str = ""                 # "", "before", "after"
    x: int = 0                     # where it was placed
    y: int = 0

    @property
    def width(self) -> int:
        w = self.pixels.shape[1] if self.pixels is not None else 0
        return max(w, PANEL_W) if self.kind == "filters" else PANEL_W

    @property
    def height(self) -> int:
        return CAPTION_H + (self.pixels.shape[0] if self.pixels is not None else
                            (HIST_H if self.kind == "histogram" else 0))


@dataclass
class Picture:
    title: str
    panels: list[Panel]
    width: int = 0
    height: int = 0

    @property
    def summary(self) -> str:
        f = sum(1 for p in self.panels if p.kind == "filters" and p.pixels is not None)
        h = sum(1 for p in self.panels if p.kind == "histogram" and p.pixels is not None)
        return f"{self.width}x{self.height} px: {f} filter grid(s), {h} histogram(s)"


def layout(title: str, rows: list[list[Panel]]) -> Picture:
    """Place the panels: ``rows`` top to bottom, each row's panels left to right."""
    y, width = MARGIN + LINE_H + GAP, 0
    for row in rows:
        x = MARGIN
        for p in row:
            p.x, p.y = x, y
            x += p.width + GAP
        width = max(width, x - GAP - MARGIN)
        y += max(p.height for p in row) + GAP
    return Picture(title, [p for row in rows for p in row], width + 2 * MARGIN, y - GAP + MARGIN)


def draw(pic: Picture):
    """The Pillow image of a laid-out picture."""
    Image, ImageDraw, ImageFont = pillow()
    canvas = np.empty((pic.height, pic.width, 3), np.uint8)
    canvas[:] = BG
    for p in pic.panels:
        if p.pixels is not None:
            h, w = p.pixels.shape[:2]
            canvas[p.y + CAPTION_H:p.y + CAPTION_H + h, p.x:p.x + w] = p.pixels
    img = Image.fromarray(canvas, "RGB")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((MARGIN, MARGIN), _fit(pic.title, pic.width - 2 * MARGIN, font), fill=TEXT, font=font)
    for p in pic.panels:
        for k, line in enumerate(p.lines[:CAPTION_LINES]):
            d.text((p.x, p.y + k * LINE_H), _fit(line, p.width, font), fill=TEXT, font=font)
    return img


def _fit(text: str, width: int, font) -> str:
    text = one_line(text)
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def pillow():
    """(Image, ImageDraw, ImageFont), or the one-line error naming the extra."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise CkptfixError(PILLOW_MISSING) from None
    return Image, ImageDraw, ImageFont


# ---------------------------------------------------------------------------------------------
# Reading and drawing


def _values(t) -> np.ndarray:
    import torch

    return t.detach().to(torch.float64).numpy()


def _filter_panel(src: FilterSource, t, side: str) -> Panel:
    w = _values(src.to_torch(t))
    grid = filter_grid(w)
    return Panel([f"{_side(side)}{src.name}  {src.layer.describe()}", f"{src.layout_note()}; {grid.note}"],
                 grid.pixels, "filters", src.name, side)


def _hist_panel(name: str, t, side: str) -> Panel:
    v = _values(t)
    counts, heights, (lo, hi) = histogram(v)
    shape = "x".join(map(str, v.shape)) or "scalar"
    return Panel([f"{_side(side)}{name}  [{shape}]", f"{BINS} bins over [{lo:.3g}, {hi:.3g}]; tallest {int(counts.max())}"],
                 histogram_pixels(heights), "histogram", name, side)


class _LastRead:
    """A reader that keeps the last tensor read: the rules' output of a tensor just drawn is
    computed from it, not from a second read."""

    def __init__(self, reader) -> None:
        self.reader, self.last = reader, None

    def read(self, name: str):
        if self.last is None or self.last[0] != name:
            self.last = (name, self.reader.read(name))
        return self.last[1]

    def __getattr__(self, attr):
        return getattr(self.reader, attr)


class _Drawn:
    """Each tensor read once: a conv weight that also gets a histogram has it drawn while read.
    ``source``: output name -> the input name the selection knows it by (after the rules)."""

    def __init__(self, sel: Selection, source: dict[str, str] | None = None) -> None:
        self.wanted, self.source = set(sel.histograms), source or {}
        self.done: dict[str, Panel] = {}

    def filters(self, src: FilterSource, t, side: str) -> Panel:
        if self.source.get(src.name, src.name) in self.wanted:
            self.done[src.name] = _hist_panel(src.name, t, side)
        return _filter_panel(src, t, side)

    def histogram(self, name: str, read, side: str) -> Panel:
        return self.done.pop(name, None) or _hist_panel(name, read(), side)


def _side(side: str) -> str:
    return f"{side}: " if side else ""


def _missing(name: str, kind: str, why: str) -> Panel:
    return Panel([f"after: {name}", why], None, kind, name, "after")


def render(path: str | Path, selectors: Sequence[str] = (), rules: Iterable = (), opts=None) -> Picture:
    """Lay out and compute the picture of ``path`` (before | after ``rules``, if any)."""
    from . import api

    opts = opts or api.Options()
    rule_refs = list(rules)
    if not rule_refs:
        with opts.open(path) as r:
            metas = r.metas()
            layers = L.read_layers(metas, r.layer_classes(), r.layer_configs())
            sel = select(metas, layers, selectors, r.layer_configs())
            drawn = _Drawn(sel)
            rows = [[drawn.filters(f, r.read(f.name), "")] for f in sel.filters]
            hists = [drawn.histogram(n, lambda n=n: r.read(n), "") for n in sel.histograms]
            title = f"{path} ({r.format})"
        rows += [hists[i:i + HIST_COLS] for i in range(0, len(hists), HIST_COLS)]
    else:
        rows, title, sel = _render_rules(path, selectors, rule_refs, opts)
    if sel.notes:
        title += "; " + "; ".join(sel.notes)
    return layout(title, rows)


def _render_rules(path, selectors, rule_refs, opts):
    from . import api
    from .execute import _Producer
    from .progress import Progress

    rf = api.compose_rules(rule_refs)
    plan, reader = api.plan_file(path, rf, opts=opts)
    with reader:
        metas = reader.metas()
        classes = {**reader.layer_classes(), **(rf.layer_classes or {})}
        layers = L.read_layers(metas, classes, reader.layer_configs())
        outputs: dict[str, list[str]] = {}
        for out_name, e in plan.entries.items():
            if e.source is not None:
                outputs.setdefault(e.source, []).append(out_name)
        aliases = {}
        for src, outs in outputs.items():
            for o in outs:
                aliases.setdefault(L.layer_of(o), L.layer_of(src))
                aliases.setdefault(o, L.layer_of(src))
        sel = select(metas, layers, selectors, reader.layer_configs(), aliases)
        after_metas = plan.metas
        after_layers = L.read_layers(after_metas)
        after_names = _full_names(after_metas)
        memo = _LastRead(reader)
        prod = _Producer(plan, memo, Progress())
        before_drawn, after_drawn = _Drawn(sel), _Drawn(sel, {outs[0]: src for src, outs in outputs.items()})
        rows = []
        for f in sel.filters:
            before = before_drawn.filters(f, memo.read(f.name), "before")
            after = None
            for o in outputs.get(f.name, []):
                ly = after_layers[L.layer_of(o)]
                cands = [c for c in conv_weights(ly, after_names[ly.name]) if c.name == o]
                if cands:
                    after = after_drawn.filters(cands[0], prod.tensor(o), "after")
                    break
            if after is None:
                outs = outputs.get(f.name)
                after = _missing(f.name, "filters", f"{', '.join(outs)} (not a conv weight there)"
                                 if outs else "not in the output (the rules drop it)")
            rows.append([before, after])
        hists = []
        for n in sel.histograms:
            hists.append(before_drawn.histogram(n, lambda n=n: memo.read(n), "before"))
            outs = outputs.get(n, [])
            if outs:
                hists.append(after_drawn.histogram(outs[0], lambda o=outs[0]: prod.tensor(o), "after"))
            else:
                hists.append(_missing(n, "histogram", "not in the output (the rules drop it)"))
        title = f"{path} ({reader.format}): before | after {rf.source}"
    rows += [hists[i:i + HIST_COLS] for i in range(0, len(hists), HIST_COLS)]
    return rows, title, sel


def show_file(path: str | Path, out: str | Path | None, selectors: Sequence[str] = (), rules: Iterable = (),
              opts=None) -> Picture:
    """Draw ``path`` into the PNG ``out`` (written atomically: nothing on any error)."""
    from .formats.atomic import atomic_file

    if out is None:
        raise UsageError("show needs -o OUT.png")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"{out}: -o must name a .png file")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: no such directory {out.parent}")
    if out.is_dir():
        raise UsageError(f"{out}: is a directory")
    pillow()
    pic = render(path, selectors, rules, opts)
    img = draw(pic)
    try:
        with atomic_file(out) as tmp:
            img.save(tmp, format="PNG")
    except OSError as e:
        raise CkptfixError(f"{out}: cannot write: {e.strerror or e}") from None
    return pic
