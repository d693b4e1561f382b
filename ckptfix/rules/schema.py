"""The rules file: pydantic models (``ckptfix schema`` prints their JSON Schema) and a YAML
loader that keeps line numbers, so every error says ``file:line`` and suggests a fix.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .. import dtypes
from ..errors import RulesError
from ..limits import MAX_DEPTH
from .ops import FILLS

Keys = Union[str, list[str]]
KEYS_DOC = "regular expression(s) searched in each tensor name (anchor with ^ and $)"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


CLASSES_DOC = ("only tensors of layers of these classes (Conv2D, Dense, ... from the file's config, "
               "the rules file's layer_classes, or read from shapes)")


class RenameOp(_Model):
    """Rename keys: ``pattern`` + ``replace`` (regex, groups as \\1 or \\g<name>), or ``map``
    (exact names; ``{name}`` placeholders match one dot/slash-free segment)."""

    pattern: str | None = None
    replace: str | None = None
    map: dict[str, str] | None = None
    classes: list[str] | None = Field(None, description=CLASSES_DOC)

    @model_validator(mode="after")
    def _one_form(self):
        if self.map is not None and (self.pattern is not None or self.replace is not None):
            raise ValueError("give either map, or pattern and replace, not both")
        if self.map is None and (self.pattern is None or self.replace is None):
            raise ValueError("give pattern and replace (regex), or map")
        return self


class PrefixOp(_Model):
    prefix: str = Field(min_length=1)
    keys: Keys | None = Field(None, description=KEYS_DOC + "; default every key")


class KeysOp(_Model):
    keys: Keys = Field(description=KEYS_DOC)


class TransposeOp(_Model):
    keys: Keys = Field(description=KEYS_DOC)
    classes: list[str] | None = Field(None, description=CLASSES_DOC)
    layout: str | None = Field(None, description="SRC->DST, e.g. HWIO->OIHW, IO->OI, WIO->OIW, "
                               "DHWIO->OIDHW, HWOI->IOHW, HWCM->OIHW (depthwise)")
    perm: list[int] | None = None

    @model_validator(mode="after")
    def _one_form(self):
        if (self.layout is None) == (self.perm is None):
            raise ValueError("give exactly one of layout or perm")
        if self.perm is not None and sorted(self.perm) != list(range(len(self.perm))):
            raise ValueError(f"perm {self.perm} is not a permutation of 0..{len(self.perm) - 1}")
        if self.layout is not None:
            from ..layouts import parse

            parse(self.layout)
        return self


class SliceOp(_Model):
    keys: Keys = Field(description=KEYS_DOC)
    classes: list[str] | None = Field(None, description=CLASSES_DOC)
    axis: int = 0
    start: int | None = None
    stop: int | None = None
    step: int | None = None
    index: list[int] | None = Field(None, description="explicit indices to keep, in order")

    @model_validator(mode="after")
    def _one_form(self):
        if self.index is not None and (self.start, self.stop, self.step) != (None, None, None):
            raise ValueError("give index, or start/stop/step, not both")
        if self.index is None and (self.start, self.stop) == (None, None):
            raise ValueError("give start and/or stop, or index")
        if self.index is not None and not self.index:
            raise ValueError("index must not be empty")
        return self


class PadOp(_Model):
    keys: Keys = Field(description=KEYS_DOC)
    classes: list[str] | None = Field(None, description=CLASSES_DOC)
    axis: int = 0
    size: int = Field(ge=0)
    fill: Literal[FILLS] = "zeros"  # the op's list: one place
    value: float | None = Field(None, description="fill: constant", allow_inf_nan=False)
    std: float | None = Field(None, description="fill: normal (default 0.02)", allow_inf_nan=False)
    seed: int = Field(0, description="fill: normal/default")

    @model_validator(mode="after")
    def _fill_fields(self):
        if self.fill == "constant" and self.value is None:
            raise ValueError("fill: constant needs value")
        if self.value is not None and self.fill != "constant":
            raise ValueError("value goes with fill: constant")
        if self.std is not None and self.fill != "normal":
            raise ValueError("std goes with fill: normal")
        return self


class ReshapeOp(_Model):
    """Reshape with the same element count, as ``numpy.reshape(a, shape, order="C")``: the elements
    are read and written in row-major order (the bytes stay as they are). ``shape`` may hold one -1
    (inferred); ``squeeze: true`` drops every size-1 axis instead (a PReLU alpha ``[1, 1, C]`` ->
    ``[C]``) and leaves a tensor with none unchanged."""

    keys: Keys = Field(description=KEYS_DOC)
    classes: list[str] | None = Field(None, description=CLASSES_DOC)
    shape: list[Annotated[int, Field(ge=-1)]] | None = Field(
        None, description="the new shape, same element count; one -1 is inferred")
    squeeze: Literal[True] | None = Field(None, description="true: drop every size-1 axis")

    @model_validator(mode="after")
    def _one_form(self):
        if (self.shape is None) == (self.squeeze is None):
            raise ValueError("give exactly one of shape or squeeze: true")
        if self.shape is not None and self.shape.count(-1) > 1:
            raise ValueError(f"shape {self.shape} has more than one -1")
        return self


class CastOp(_Model):
    dtype: Literal["float32", "float16", "bfloat16"]
    keys: Keys | None = Field(None, description=KEYS_DOC + "; default every floating-point tensor")
    classes: list[str] | None = Field(None, description=CLASSES_DOC)


class FlattenOrderOp(_Model):
    """Reorder a Linear weight's input features from the source's flatten order of a feature map
    to the target's: ``dims`` (the map's sizes in the source's order) and ``layout`` (letters, e.g.
    ``HWC->CHW``: Keras flattens NHWC, PyTorch NCHW; ``WC->CW`` after Conv1D). ``hwc: [H, W, C]``
    is the short form of ``dims: [H, W, C], layout: HWC->CHW``. Apply to the PyTorch-layout weight
    (out, features), i.e. after IO->OI (axis 1)."""

    keys: Keys = Field(description=KEYS_DOC)
    hwc: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=3, max_length=3,
                                                          description="the feature map's (H, W, C) before Flatten")
    dims: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=1,
                                                           description="the map's sizes in the source's order")
    layout: str | None = Field(None, description="source order -> target order, e.g. HWC->CHW")
    axis: int = 1
    classes: list[str] | None = Field(None, description=CLASSES_DOC)

    @model_validator(mode="after")
    def _one_form(self):
        if (self.hwc is None) == (self.dims is None):
            raise ValueError("give hwc: [H, W, C], or dims and layout")
        if self.dims is not None:
            if self.layout is None:
                raise ValueError("dims needs a layout, e.g. HWC->CHW")
            from ..layouts import parse

            if len(parse(self.layout)) != len(self.dims):
                raise ValueError(f"layout {self.layout} has {len(parse(self.layout))} axes, dims {len(self.dims)}")
        elif self.layout is not None:
            raise ValueError("layout goes with dims (hwc means HWC->CHW)")
        return self


class ReorderBlocksOp(_Model):
    """Cut ``axis`` into len(order) equal blocks and put them in ``order`` (block i of the result is
    block order[i] of the input): recurrent gates, e.g. Keras GRU (z, r, h) -> torch (r, z, n) is
    ``order: [1, 0, 2]`` on the torch-layout weights and biases."""

    keys: Keys = Field(description=KEYS_DOC)
    order: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    axis: int = 0
    classes: list[str] | None = Field(None, description=CLASSES_DOC)

    @model_validator(mode="after")
    def _perm(self):
        if sorted(self.order) != list(range(len(self.order))):
            raise ValueError(f"order {self.order} is not a permutation of 0..{len(self.order) - 1}")
        return self


class SplitOp(_Model):
    """Cut one tensor (``key``, an exact name) into len(into) equal parts along ``axis``, named
    ``into`` (torch.chunk); ``squeeze: true`` drops the axis (parts of size 1: torch.unbind), e.g.
    Keras GRU bias (2, 3U) -> bias_ih (3U,) and bias_hh (3U,). The original tensor is gone."""

    key: str
    into: list[str] = Field(min_length=1)
    axis: int = 0
    squeeze: bool = False

    @model_validator(mode="after")
    def _names(self):
        if len(set(self.into)) != len(self.into) or any(not n for n in self.into):
            raise ValueError("into must list distinct, non-empty names")
        return self


class InChannelsOp(_Model):
    """A conv's input channels from C to ``size`` (grayscale, multispectral): ``mode: sum`` (to 1,
    as timm: a gray image gives the same activations), ``repeat`` (as timm for 3 -> N: cycled and
    scaled by C/N), ``keep`` (the old channels kept, new ones from ``map`` or ``fill``). Apply to
    the PyTorch-layout weight (O, I, ...): ``axis`` 1."""

    keys: Keys = Field(description=KEYS_DOC)
    classes: list[str] | None = Field(None, description=CLASSES_DOC)
    size: int = Field(ge=1, description="the new number of input channels")
    mode: Literal["keep", "sum", "repeat"] = "keep"
    map: dict[Annotated[int, Field(ge=0)], Union[Annotated[int, Field(ge=0)],
                                                Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]]] | None = Field(
        None, description="mode keep: new channel -> source channel (or a list, summed), e.g. {3: 0}: NIR from red")
    fill: Literal["zeros", "mean"] = Field("zeros", description="mode keep: new channels the map does not name")
    axis: int = 1

    @model_validator(mode="after")
    def _mode_fields(self):
        if self.mode != "keep" and (self.map is not None or self.fill != "zeros"):
            raise ValueError("map and fill go with mode: keep")
        return self


def _check_keep(keep: list[int] | None, size: int, what: str) -> None:
    """A ``keep`` list names ``size`` distinct indices."""
    if keep is not None and len(keep) != size:
        raise ValueError(f"keep lists {len(keep)} {what}es, size says {size}" if what == "class" else
                         f"keep lists {len(keep)} {what}s, size says {size}")
    if keep is not None and len(set(keep)) != len(keep):
        raise ValueError(f"keep lists a {what} twice")


class NumClassesOp(_Model):
    """A classifier head's class count: its weight's and bias's ``axis`` (0 in PyTorch layout)
    and any ``coupled`` tensors' change together. Smaller: the first ``size`` classes, or ``keep``
    (class indices in their new order). Larger: the old classes kept, new rows drawn as PyTorch
    initialises the layer (``fill: default``, seeded) or zeros. ``reinit: true`` draws all rows afresh."""

    layer: str = Field(min_length=1, description="the head layer's name (its .weight and .bias change)")
    size: int = Field(ge=1, description="the new number of classes")
    keep: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="class indices to keep, in the new order")
    fill: Literal["default", "zeros"] = Field("default", description="rows for new classes")
    reinit: bool = False
    seed: int = 0
    coupled: list[str] | None = Field(None, description="exact names of other tensors whose axis 0 is the classes")
    axis: int = 0

    @model_validator(mode="after")
    def _forms(self):
        if self.keep is not None and self.reinit:
            raise ValueError("give keep or reinit, not both")
        _check_keep(self.keep, self.size, "class")
        return self


class ChannelsOp(_Model):
    """Grow or prune a layer's output channels, with everything that reads them: its bias, the
    norms after it (all their per-channel tensors) and the next layers' input channels (``then``:
    declared, or read from the target's graph). Growing: the producer's new channels are ``fill``
    (zeros, or PyTorch's init), the norms' new slots a fresh norm's (weight 1, bias 0, mean 0,
    var 1) and the readers' new input weights zeros, so the network's outputs are unchanged.
    Pruning: ``keep`` (indices), ``by: l1`` (the channels whose filters have the largest L1 norm),
    or else the first ``size``."""

    layer: str = Field(min_length=1, description="the layer whose output channels change")
    size: int = Field(ge=1, description="the new number of channels")
    then: list[str] | None = Field(None, description="the layers reading those channels, in order "
                                   "(norms, depthwise convs, then convs/Linears); default: from the target's graph")
    keep: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="channels to keep, in order")
    by: Literal["l1"] | None = Field(None, description="l1: keep the channels with the largest L1 norm")
    fill: Literal["zeros", "default"] = Field("zeros", description="the producer's new channels")
    seed: int = 0

    @model_validator(mode="after")
    def _forms(self):
        if self.keep is not None and self.by is not None:
            raise ValueError("give keep or by, not both")
        _check_keep(self.keep, self.size, "channel")
        if self.then is not None:
            twice = [n for i, n in enumerate(self.then) if n in self.then[:i]]
            if twice:
                raise ValueError(f"then lists {twice[0]!r} twice")
            if self.layer in self.then:
                raise ValueError(f"then lists the layer {self.layer!r} itself")
        return self


class ResizeKernelOp(_Model):
    """Resize conv kernels (O, I, kh, kw) to ``size``: ``method: pi`` (FlexiViT's PI-resize, as
    timm resample_patch_embed: a patch resized with the image gives the same token) or plain
    ``bicubic``/``bilinear`` interpolation."""

    keys: Keys = Field(description=KEYS_DOC)
    classes: list[str] | None = Field(None, description=CLASSES_DOC)
    size: list[Annotated[int, Field(ge=1)]] = Field(min_length=2, max_length=2, description="[kh, kw]")
    method: Literal["pi", "bicubic", "bilinear"] = "pi"
    interpolation: Literal["bicubic", "bilinear"] = Field("bicubic", description="method pi: the resize it inverts")
    antialias: bool = True


class ResamplePosEmbedOp(_Model):
    """Resample a ViT absolute position embedding (1, P + h*w, D) or (P + h*w, D) from one grid to
    another, the ``prefix_tokens`` (class token, ...) kept, as timm resample_abs_pos_embed."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)  # `from`, never the Python name `from_`

    keys: Keys = Field(description=KEYS_DOC)
    to: list[Annotated[int, Field(ge=1)]] = Field(min_length=2, max_length=2, description="the new grid [h, w]")
    from_: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, alias="from", min_length=2, max_length=2, description="the old grid [h, w]; default: square")
    prefix_tokens: int = Field(1, ge=0)
    method: Literal["bicubic", "bilinear"] = "bicubic"
    antialias: bool = True


class BnEpsOp(_Model):
    """Fold an eps difference into BatchNorm running variances: running_var += from - to, so that
    a layer with eps ``to`` computes what the source computed with eps ``from``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)  # `from`/`to`, not from_eps/to_eps

    keys: Keys = Field(description=KEYS_DOC + " (the running variance tensors)")
    from_eps: float = Field(alias="from", gt=0, allow_inf_nan=False)
    to_eps: float = Field(alias="to", gt=0, allow_inf_nan=False)


class AddOp(_Model):
    """Add a tensor the checkpoint lacks (e.g. BatchNorm's num_batches_tracked)."""

    key: str = Field(description="the new tensor's name; with for_each, a template like '{layer}.num_batches_tracked'")
    for_each: str | None = Field(None, description="regex with named groups: add one tensor per matching key")
    shape: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    dtype: str = "float32"
    value: float = Field(0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _dtype(self):
        if self.dtype not in dtypes.BY_NAME:
            raise ValueError(f"unknown dtype {self.dtype!r}")
        if not dtypes.fits(self.dtype, self.value):
            raise ValueError(f"value {self.value} does not fit dtype {self.dtype}")
        return self


class Expect(_Model):
    """Checked after the rule: the plan fails (exit 1) if any differs."""

    shapes: dict[str, list[int]] | None = None
    params: int | None = Field(None, description="total parameter count after this rule")
    layer_params: dict[str, int] | None = None
    tensors: int | None = Field(None, description="number of tensors after this rule")


OPS: dict[str, type[_Model]] = {
    "rename": RenameOp,
    "strip_prefix": PrefixOp,
    "add_prefix": PrefixOp,
    "drop": KeysOp,
    "keep": KeysOp,
    "transpose": TransposeOp,
    "slice": SliceOp,
    "reshape": ReshapeOp,
    "pad": PadOp,
    "cast": CastOp,
    "flatten_order": FlattenOrderOp,
    "reorder_blocks": ReorderBlocksOp,
    "split": SplitOp,
    "bn_eps": BnEpsOp,
    "in_channels": InChannelsOp,
    "num_classes": NumClassesOp,
    "channels": ChannelsOp,
    "resize_kernel": ResizeKernelOp,
    "resample_pos_embed": ResamplePosEmbedOp,
    "add": AddOp,
}
RULE_FIELDS = ("expect", "optional")
# Scalar shorthands: `strip_prefix: module.` == `strip_prefix: {prefix: module.}`
SHORTHAND = {"strip_prefix": "prefix", "add_prefix": "prefix", "drop": "keys", "keep": "keys"}


@dataclass
class Rule:
    op: str
    spec: _Model
    expect: Expect | None
    index: int          # 1-based position in its file
    source: str         # file (or preset) it came from
    line: int | None
    optional: bool = False  # may match nothing (presets for many model shapes)

    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclass
class RulesFile:
    rules: list[Rule]
    target: Any = None
    target_kwargs: dict | None = None
    source: str = "<rules>"
    base_dir: Path | None = None
    layer_classes: dict[str, str] | None = None
    include: list[str] | None = None
    #: the files it was read from: itself and every file it includes (presets too), in order
    files: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# YAML with line numbers


MAX_NODES = 100_000  # YAML aliases can expand a tiny file exponentially ("billion laughs")


def _lines(node, path=(), out=None) -> dict[tuple, int]:
    """Map each path in the document to its 1-based line."""
    out = {} if out is None else out
    if len(out) > MAX_NODES:
        raise _TooBig()
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
            if key in seen:
                raise _Dup(key, k.start_mark.line + 1)
            seen.add(key)
            out[path + (key,)] = k.start_mark.line + 1
            _lines(v, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _lines(v, path + (i,), out)
    return out


def _deeper_than(node, limit: int) -> bool:
    """Whether the YAML node tree nests more than ``limit`` levels (iterative; an alias is a shared
    node, visited once)."""
    stack, seen = [(node, 1)], set()
    while stack:
        n, depth = stack.pop()
        if depth > limit:
            return True
        if id(n) in seen or not isinstance(n, (yaml.MappingNode, yaml.SequenceNode)):
            continue
        seen.add(id(n))
        children = [v for kv in n.value for v in kv] if isinstance(n, yaml.MappingNode) else n.value
        stack.extend((c, depth + 1) for c in children)
    return False


class _TooBig(Exception):
    pass


class _Dup(Exception):
    def __init__(self, key, line):
        self.key, self.line = key, line


def load_yaml(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise RulesError(f"invalid YAML: {e.problem or e.context}", source=source, line=line) from None
    except yaml.YAMLError as e:
        raise RulesError(f"invalid YAML: {e}", source=source) from None
    except RecursionError:  # PyYAML composes and constructs recursively
        raise RulesError("YAML nested too deeply (more than Python's recursion limit)", source=source) from None
    try:
        if node is not None and _deeper_than(node, MAX_DEPTH):
            raise RulesError(f"YAML nested too deeply (more than {MAX_DEPTH} levels)", source=source)
        lines = _lines(node) if node is not None else {}
    except _Dup as d:
        raise RulesError(f"duplicate key {d.key!r}", source=source, line=d.line) from None
    except _TooBig:
        raise RulesError(f"YAML expands to over {MAX_NODES:,} nodes (anchors/aliases nested too deep)",
                         source=source) from None
    return data, lines


def _line_for(lines: dict, path: tuple) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def _suggest(word: str, choices) -> str | None:
    m = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f"did you mean {m[0]!r}?" if m else None


TOP_FIELDS = {"ckptfix": "format version (1)", "target": "what to fit", "target_kwargs": "kwargs for a model factory",
              "rules": "the list of rules", "description": "free text",
              "layer_classes": "layer name -> Keras class, for files that do not record it",
              "include": "presets or rules files whose rules run first"}


def _pydantic_error(e: ValidationError, model: type[_Model], base: tuple, lines: dict, source: str) -> RulesError:
    # an unknown field first: a misspelt required field ("sizes") also shows up as "size missing"
    errors = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")
    err = errors[0]
    loc = tuple(err.get("loc", ()))
    path = base + loc
    line = _line_for(lines, path)
    fields = [f.alias or name for name, f in model.model_fields.items()]   # as a rules file spells them
    if err["type"] == "extra_forbidden":
        field = loc[-1]
        hint = _suggest(field, fields)
        return RulesError(f"unknown field {field!r} in {base[-1]} rule", source=source, line=line,
                          hint=hint or f"fields: {', '.join(fields)}")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return RulesError(f"{base[-1]} rule needs field {loc[-1]!r}", source=source, line=line)
    if not loc:  # a check across fields
        return RulesError(f"{base[-1]} rule: {msg}", source=source, line=line)
    return RulesError(f"{base[-1]} rule: {'.'.join(str(x) for x in loc)}: {msg}", source=source, line=line)


def looks_like_rules(data: Any) -> bool:
    """Whether parsed YAML is recognisably a rules file (before any message quotes its content):
    a mapping of top-level fields only, or a list of rule mappings each naming an op."""
    if data is None:
        return True
    if isinstance(data, dict):
        return all(isinstance(k, str) and k in TOP_FIELDS for k in data)
    if isinstance(data, list):
        return all(isinstance(i, dict) and any(k in OPS for k in i) for i in data)
    return False


def parse_rules(data: Any, lines: dict, source: str, base_dir: Path | None = None) -> RulesFile:
    if data is None:
        data = {}
    if isinstance(data, list):  # a bare list of rules is accepted too
        data = {"rules": data}
        lines = {("rules",) + k: v for k, v in lines.items()}
    if not isinstance(data, dict):
        raise RulesError("a rules file is a mapping with a 'rules' list", source=source, line=1)
    for k in data:
        if k not in TOP_FIELDS:
            raise RulesError(f"unknown top-level field {k!r}", source=source, line=_line_for(lines, (k,)),
                             hint=_suggest(k, TOP_FIELDS) or f"fields: {', '.join(TOP_FIELDS)}")
    version = data.get("ckptfix", 1)
    if version != 1:
        raise RulesError(f"unsupported rules version {version!r} (this ckptfix reads version 1)",
                         source=source, line=_line_for(lines, ("ckptfix",)))
    items = data.get("rules") or []
    if not isinstance(items, list):
        raise RulesError("'rules' must be a list", source=source, line=_line_for(lines, ("rules",)))
    rules = []
    for i, item in enumerate(items):
        path = ("rules", i)
        line = _line_for(lines, path)
        if not isinstance(item, dict):
            raise RulesError(f"rule {i + 1} must be a mapping like `- rename: {{...}}`", source=source, line=line)
        expect_raw = item.get("expect")
        optional = item.get("optional", False)
        if not isinstance(optional, bool):
            raise RulesError("optional must be true or false", source=source, line=_line_for(lines, path + ("optional",)))
        ops = [k for k in item if k not in RULE_FIELDS]
        if len(ops) != 1:
            if not ops:
                raise RulesError(f"rule {i + 1} has no op", source=source, line=line,
                                 hint=f"ops: {', '.join(OPS)}")
            unknown = [k for k in ops if k not in OPS]
            if unknown:
                raise RulesError(f"unknown rule {unknown[0]!r}", source=source,
                                 line=_line_for(lines, path + (unknown[0],)),
                                 hint=_suggest(unknown[0], list(OPS) + list(RULE_FIELDS)) or f"ops: {', '.join(OPS)}")
            raise RulesError(f"rule {i + 1} has several ops ({', '.join(ops)}): one per list item",
                             source=source, line=line)
        op = ops[0]
        if op not in OPS:
            raise RulesError(f"unknown rule {op!r}", source=source, line=_line_for(lines, path + (op,)),
                             hint=_suggest(op, OPS) or f"ops: {', '.join(OPS)}")
        body = item[op]
        if op in SHORTHAND and isinstance(body, (str, list)):
            body = {SHORTHAND[op]: body}
        if not isinstance(body, dict):
            raise RulesError(f"{op} rule needs a mapping of fields", source=source, line=_line_for(lines, path + (op,)))
        model = OPS[op]
        try:
            spec = model.model_validate(body)
        except ValidationError as e:
            raise _pydantic_error(e, model, path + (op,), lines, source) from None
        except ValueError as e:  # from validators that call other parsers
            raise RulesError(f"{op} rule: {e}", source=source, line=_line_for(lines, path + (op,))) from None
        _check_regexes(op, spec, source, _line_for(lines, path + (op,)))
        expect = None
        if expect_raw is not None:
            try:
                expect = Expect.model_validate(expect_raw)
            except ValidationError as e:
                raise _pydantic_error(e, Expect, path + ("expect",), lines, source) from None
        rules.append(Rule(op=op, spec=spec, expect=expect, index=i + 1, source=source, line=line, optional=optional))
    kwargs = data.get("target_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise RulesError("target_kwargs must be a mapping", source=source, line=_line_for(lines, ("target_kwargs",)))
    classes = data.get("layer_classes")
    if classes is not None and not (isinstance(classes, dict) and all(isinstance(v, str) for v in classes.values())):
        raise RulesError("layer_classes must map layer names to class names", source=source,
                         line=_line_for(lines, ("layer_classes",)))
    include = data.get("include")
    if isinstance(include, str):
        include = [include]
    if include is not None and not (isinstance(include, list) and all(isinstance(i, str) for i in include)):
        raise RulesError("include must be a preset name or a list of them (or of rules files)", source=source,
                         line=_line_for(lines, ("include",)))
    return RulesFile(rules=rules, target=data.get("target"), target_kwargs=kwargs, source=source, base_dir=base_dir,
                     layer_classes={str(k): v for k, v in classes.items()} if classes else None, include=include)


def _check_regexes(op: str, spec: _Model, source: str, line: int | None) -> None:
    pats: list[str] = []
    if op == "add" and spec.for_each is not None:
        pats.append(spec.for_each)
    keys = getattr(spec, "keys", None)
    if keys is not None:
        pats += [keys] if isinstance(keys, str) else list(keys)
    if op == "rename" and spec.pattern is not None:
        pats.append(spec.pattern)
    for p in pats:
        try:
            re.compile(p)
        except re.error as e:
            raise RulesError(f"{op} rule: regex {p!r} does not compile: {e}", source=source, line=line) from None
    if op == "rename" and spec.pattern is not None:
        try:  # the template is parsed (group references checked) even when nothing matches
            re.compile(spec.pattern).sub(spec.replace, "")
        except (re.error, IndexError) as e:
            raise RulesError(f"rename rule: replacement {spec.replace!r} is invalid: {e}",
                             source=source, line=line) from None


def json_schema() -> dict:
    """JSON Schema of a rules file, for editors (``ckptfix schema``)."""
    wrappers = []
    for name, model in OPS.items():
        wrappers.append({
            "type": "object",
            "title": name,
            "properties": {name: {"$ref": f"#/$defs/{model.__name__}"}, "expect": {"$ref": "#/$defs/Expect"},
                           "optional": {"type": "boolean", "description": "may match no tensor"}},
            "required": [name],
            "additionalProperties": False,
        })
    defs = {}
    for model in list(OPS.values()) + [Expect]:
        s = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(s.pop("$defs", {}))
        defs[model.__name__] = s
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ckptfix rules file",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "ckptfix": {"const": 1, "description": TOP_FIELDS["ckptfix"]},
            "description": {"type": "string"},
            "target": {"description": "checkpoint path, module:callable, file.py:callable, a layer "
                       "spec YAML path, a layer expression like 'Conv2d(3, 15, 5)', or a mapping "
                       "name -> layer expression",
                       "anyOf": [{"type": "string"}, {"type": "object"}]},
            "target_kwargs": {"type": "object"},
            "layer_classes": {"type": "object", "additionalProperties": {"type": "string"}},
            "include": {"description": TOP_FIELDS["include"],
                        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "rules": {"type": "array", "items": {"anyOf": wrappers}},
        },
        "$defs": defs,
    }
