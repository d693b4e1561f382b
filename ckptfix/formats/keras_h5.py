"""Keras weight files: HDF5 (Keras 3 ``.weights.h5``, legacy ``.h5``), ``.keras`` archives and
Keras 3 sharded saves (``NAME.weights.json`` + ``NAME_00000.weights.h5`` ...).

Nothing here imports Keras or TensorFlow, and configs are only ever parsed as JSON data
(a ``Lambda`` layer in a config is just a dict).

Keys come out as ``<layer>/<variable>`` (``conv1/kernel``, ``bn1/moving_mean``); layers of
nested models are prefixed with the nested model's name (``backbone/conv1/kernel``).

Layouts
-------
* Keras 3 (``.weights.h5``, inside ``.keras``, sharded): ``layers/<class_snake>[_N]/vars/<i>``;
  the user's layer name is the ``name`` attribute of ``vars`` (older Keras 3 files lack it: the
  name then comes from the config, else the group name, which is Keras' auto name). Variable
  names are implied by the class (derived from the snake name, or from the config).
* Legacy whole-model ``.h5``: ``model_weights/<layer>/<weight_name>`` listed by the
  ``layer_names`` / ``weight_names`` attributes (possibly split into ``layer_names0``,
  ``layer_names1`` ...); tf.keras 2 weight names end in ``:0``, which is stripped.
* Legacy weights-only ``.h5``: the same at the file root.
* Any other HDF5 file: every numeric dataset, named by its path.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

from .. import dtypes
from ..errors import InputError
from . import zipmember
from .detect import HDF5_MAGIC
from .fileio import ZIP_MEMBER_ERRORS, RangeFile
from ..limits import MAX_DEPTH, MAX_JSON_MEMBER, depth_exceeds
from .. import layer_table as T
from ..tensors import TensorMeta
from .base import NumpyReader
from .fileset import FileSet

# ------------------------------------------------------------------------------ class tables

_SNAKE_TO_CLASS = {
    "dense": "Dense", "einsum_dense": "EinsumDense",
    "conv1d": "Conv1D", "conv2d": "Conv2D", "conv3d": "Conv3D",
    "conv1d_transpose": "Conv1DTranspose", "conv2d_transpose": "Conv2DTranspose",
    "conv3d_transpose": "Conv3DTranspose",
    "depthwise_conv1d": "DepthwiseConv1D", "depthwise_conv2d": "DepthwiseConv2D",
    "separable_conv1d": "SeparableConv1D", "separable_conv2d": "SeparableConv2D",
    "batch_normalization": "BatchNormalization", "layer_normalization": "LayerNormalization",
    "group_normalization": "GroupNormalization", "unit_normalization": "UnitNormalization",
    "rms_normalization": "RMSNormalization", "normalization": "Normalization",
    "embedding": "Embedding", "p_re_lu": "PReLU", "re_lu": "ReLU", "leaky_re_lu": "LeakyReLU",
    "e_lu": "ELU", "lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN",
    "conv_lstm1d": "ConvLSTM1D", "conv_lstm2d": "ConvLSTM2D", "conv_lstm3d": "ConvLSTM3D",
    "multi_head_attention": "MultiHeadAttention", "input_layer": "InputLayer",
    "functional": "Functional", "sequential": "Sequential",
    "global_average_pooling1d": "GlobalAveragePooling1D",
    "global_average_pooling2d": "GlobalAveragePooling2D",
    "global_average_pooling3d": "GlobalAveragePooling3D",
    "global_max_pooling1d": "GlobalMaxPooling1D", "global_max_pooling2d": "GlobalMaxPooling2D",
    "max_pooling1d": "MaxPooling1D", "max_pooling2d": "MaxPooling2D",
    "average_pooling1d": "AveragePooling1D", "average_pooling2d": "AveragePooling2D",
    "zero_padding1d": "ZeroPadding1D", "zero_padding2d": "ZeroPadding2D",
    "up_sampling1d": "UpSampling1D", "up_sampling2d": "UpSampling2D",
}

_KERNEL_BIAS = ("kernel", "bias")
CONV_CLASSES = T.KERAS_CONV_CLASSES
_MODEL_CLASSES = {"Functional", "Sequential", "Model"}


def snake_to_class(snake: str) -> str:
    """Keras class name from the snake-case group name (``conv2d_1`` -> ``Conv2D``)."""
    base = re.sub(r"_\d+$", "", snake)
    if base in _SNAKE_TO_CLASS:
        return _SNAKE_TO_CLASS[base]
    parts = [p for p in base.split("_") if p]
    out = "".join(p[:1].upper() + p[1:] for p in parts)
    return re.sub(r"(\d)d(?=[A-Z]|$)", r"\1D", out)


def class_to_snake(name: str) -> str:
    """Keras' ``to_snake_case`` (``Conv2DTranspose`` -> ``conv2d_transpose``)."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    s = re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()
    return s if not s.startswith("_") else "private" + s


def variable_names(cls: str | None, n: int, config: dict | None = None,
                   attr: str | None = None) -> list[str]:
    """Names of a Keras layer's ``n`` variables (in save order); indices where unknown."""
    names: tuple[str, ...] | None = None
    if cls == "BatchNormalization" or cls in ("LayerNormalization", "GroupNormalization"):
        full = list(T.variable_names(cls))
        cfg = config or {}
        if cfg.get("scale", True) is False:
            full.remove("gamma")
        if cfg.get("center", True) is False:
            full.remove("beta")
        if config is None and cls == "BatchNormalization" and n == 3:
            names = None  # gamma or beta missing: ambiguous without the config
        else:
            names = tuple(full)
    elif T.variable_names(cls) is not None:
        names = T.variable_names(cls)
    elif attr is not None and attr.endswith("_dense"):
        names = _KERNEL_BIAS  # MultiHeadAttention's EinsumDense sub-layers
    elif attr == "cell":
        names = T.RNN_CELL_VARIABLES
    out = []
    for i in range(n):
        out.append(names[i] if names is not None and i < len(names) else str(i))
    return out


# ------------------------------------------------------------------------------ config walking

def _layer_entries(config: Any) -> list[dict]:
    """The layer dicts of a (Functional/Sequential) model config."""
    if isinstance(config, dict) and "config" in config and "class_name" in config:
        config = config["config"]
    if isinstance(config, list):
        return [c for c in config if isinstance(c, dict)]
    if isinstance(config, dict) and isinstance(config.get("layers"), list):
        return [c for c in config["layers"] if isinstance(c, dict)]
    return []


def _entry_name(entry: dict) -> str | None:
    cfg = entry.get("config")
    name = cfg.get("name") if isinstance(cfg, dict) else None
    if not isinstance(name, str):
        name = entry.get("name")
    return name if isinstance(name, str) else None


def walk_config(config: Any, prefix: str = "") -> list[tuple[str, str, dict]]:
    """[(layer path, class name, layer config)] in model order, nested models included."""
    out = []
    for entry in _layer_entries(config):
        name = _entry_name(entry)
        cls = entry.get("class_name")
        if not isinstance(name, str) or not isinstance(cls, str):
            continue
        cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
        path = f"{prefix}{name}"
        out.append((path, cls, cfg))
        if cls in _MODEL_CLASSES or _layer_entries(entry):
            out.extend(walk_config(entry, prefix=f"{path}/"))
    return out


def padding_warnings(layers: list[tuple[str, str, dict]]) -> list[str]:
    out = []
    for path, cls, cfg in layers:
        if cls not in CONV_CLASSES:
            continue
        padding = cfg.get("padding")
        strides = cfg.get("strides", 1)
        if isinstance(strides, (int, float)):
            strides = [strides]
        if not isinstance(strides, (list, tuple)):
            continue
        if padding == "same" and any(isinstance(s, (int, float)) and s > 1 for s in strides):
            out.append("TF pads 'same' asymmetrically with stride > 1; PyTorch's padding cannot "
                       f"reproduce it exactly (layer {path})")
    return out


def _decode_attr(value) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_decode_attr(v) for v in value]
    return value


def _strip_tf_suffix(name: str) -> str:
    return re.sub(r":\d+$", "", name)


from ..layers import natural_key as _natural_key


# ------------------------------------------------------------------------------ the readers

class _H5Errors:
    """Exceptions h5py raises on malformed files (plus what our own parsing can raise)."""
    types = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError,
             AttributeError, struct.error, UnicodeDecodeError, json.JSONDecodeError,
             zipfile.BadZipFile,
             OverflowError)  # h5py's file-object driver, asked to seek past 2**63 (fuzzing)


class KerasH5Reader(NumpyReader):
    format = "keras-h5"

    def __init__(self, path: str | Path, *, _files=None, _config=None, _display=None,
                 fileset: FileSet | None = None) -> None:
        super().__init__(path, fileset)
        self._display = _display or self.path
        self._files: list = []
        self._owned: list = []
        self._entries: dict[str, tuple[Any, str]] = {}  # key -> (h5 file, dataset path)
        self._metas: dict[str, TensorMeta] = {}
        self._classes: dict[str, str] = {}
        self._warnings: list[str] = []
        self._config = _config
        self._layer_order: list[str] = []
        self.layout = "?"
        try:
            if _files is None:
                f = _open_h5(self.fileset, self.path)
                self._owned.append(f)
                _files = [f]
            self._files = list(_files)
            self._build()
        except InputError:
            self.close()
            raise
        except _H5Errors.types as e:
            self.close()
            raise InputError(self._display, f"corrupt or unreadable HDF5 file "
                             f"({type(e).__name__}: {_one_line(e)})") from None

    # -- layout detection

    def _build(self) -> None:
        root = self._files[0]
        if "model_weights" in root and _has_layer_names(root["model_weights"]):
            self.layout = "legacy-model"
            if self._config is None and "model_config" in root.attrs:
                self._config = _parse_json_attr(root.attrs["model_config"], "model_config",
                                                self._display)
            self._build_legacy(root["model_weights"])
        elif _has_layer_names(root):
            self.layout = "legacy-weights"
            if self._config is None and "model_config" in root.attrs:
                self._config = _parse_json_attr(root.attrs["model_config"], "model_config",
                                                self._display)
            self._build_legacy(root)
        elif any("layers" in f or "vars" in f for f in self._files):
            self.layout = "keras3"
            self._build_keras3()
        else:
            self.layout = "hdf5"
            self._build_generic(root)
        cfg_layers = walk_config(self._config) if self._config is not None else []
        for path, cls, _cfg in cfg_layers:
            self._classes.setdefault(path, cls)
        if cfg_layers:
            self._layer_order = [p for p, _, _ in cfg_layers]
        self._warnings.extend(padding_warnings(cfg_layers))
        rank = {name: i for i, name in enumerate(self._layer_order)}
        self._classes = dict(sorted(self._classes.items(),
                                    key=lambda kv: (rank.get(kv[0], len(rank)),)))

    def _add(self, key: str, f, ds_path: str) -> None:
        ds = f[ds_path]
        import h5py

        if not isinstance(ds, h5py.Dataset):
            raise InputError(self._display, f"{ds_path} is not a dataset")
        self._refuse_foreign(ds, ds_path)
        if key in self._entries:
            raise InputError(self._display, f"two datasets map to the weight name {key!r}")
        dtype = _canonical_dtype(ds)
        if dtype is None:
            self._warnings.append(f"skipped {ds_path}: dtype {ds.dtype} is not a tensor dtype")
            return
        shape = ds.shape
        if shape is None:
            self._warnings.append(f"skipped {ds_path}: empty dataspace")
            return
        self._entries[key] = (f, ds_path)
        self._metas[key] = TensorMeta(shape=tuple(int(s) for s in shape), dtype=dtype)

    def _refuse_foreign(self, obj, where: str) -> None:
        """Refuse data kept outside the checkpoint: HDF5 can link to, map or store a dataset's
        bytes in any file on disk (``/home/u/.ssh/id_rsa``), which a conversion would copy out."""
        import h5py

        if not any(obj.file == f for f in self._files):
            raise InputError(self._display, f"{where} is an external link to another file "
                             f"({obj.file.filename}): refused")
        if isinstance(obj, h5py.Dataset) and obj.external:
            raise InputError(self._display, f"{where} keeps its data in an external raw file "
                             f"({obj.external[0][0]!r}): refused")
        if isinstance(obj, h5py.Dataset) and obj.is_virtual:
            raise InputError(self._display, f"{where} is a virtual dataset (data mapped from other "
                             "files): refused")

    # -- legacy

    def _build_legacy(self, group) -> None:
        layer_names = _list_attr(group, "layer_names")
        for layer in layer_names:
            if layer not in group:
                raise InputError(self._display, f"layer {layer!r} is listed in layer_names but "
                                 "has no group")
            g = group[layer]
            self._refuse_foreign(g, layer)
            weight_names = _list_attr(g, "weight_names")
            for wname in weight_names:
                clean = _strip_tf_suffix(wname)
                key = clean if clean.startswith(layer + "/") else f"{layer}/{clean}"
                if wname not in g:
                    raise InputError(self._display, f"weight {wname!r} of layer {layer!r} is "
                                     "listed in weight_names but missing")
                self._refuse_foreign(g[wname], f"{layer}/{wname}")
                self._add(key, g.file, g[wname].name)
        self._layer_order = list(layer_names)

    # -- keras 3

    def _build_keras3(self) -> None:
        import h5py

        owners: dict[str, dict] = {}  # owner group path ('' = root) -> info
        for f in self._files:
            found = []

            def visit(name, obj, found=found):
                if isinstance(obj, h5py.Group) and name.split("/")[-1] == "vars":
                    found.append(name)

            f.visititems(visit)
            for vars_path in found:
                owner_path = vars_path[: -len("vars")].rstrip("/")
                info = owners.setdefault(owner_path, {"name": None, "vars": {}})
                g = f[vars_path]
                if "name" in g.attrs and info["name"] is None:
                    info["name"] = str(_decode_attr(g.attrs["name"]))
                for vname in g:
                    if vname in info["vars"]:
                        raise InputError(self._display, f"variable {vars_path}/{vname} appears "
                                         "in more than one shard")
                    info["vars"][vname] = (f, f"{vars_path}/{vname}")
        # names from the config when the files do not carry them (older Keras 3)
        cfg_names = self._keras3_names_from_config()
        cfg_by_path = {p: (c, cfg) for p, c, cfg in walk_config(self._config)} \
            if self._config is not None else {}

        def display_path(owner_path: str) -> tuple[str, str | None]:
            """('<user names joined by />', class) of an owner group."""
            parts = owner_path.split("/") if owner_path else []
            names = []
            cls = None
            attr = None
            for i, comp in enumerate(parts):
                if comp == "layers":
                    continue
                sub = "/".join(parts[: i + 1])
                info = owners.get(sub)
                user = info["name"] if info and info["name"] else None
                if user is None:
                    user = cfg_names.get(sub, comp)
                names.append(user)
                attr = comp
                if i > 0 and parts[i - 1] == "layers":
                    cls = snake_to_class(comp)
                else:
                    cls = None  # an attribute sub-object (MHA's _query_dense, an RNN cell)
            return "/".join(names), (cls, attr)

        file_rank = {id(f): i for i, f in enumerate(self._files)}
        ordered = []
        for owner_path, info in owners.items():
            layer, (cls, attr) = display_path(owner_path)
            if owner_path == "":
                layer = info["name"] or ""
            offs = []  # (shard number, byte offset): Keras writes layers in model order
            for f, dp in info["vars"].values():
                try:
                    off = f[dp].id.get_offset()
                except Exception:  # noqa: BLE001 - metadata only, ordering hint
                    off = None
                if off is not None:
                    offs.append((file_rank[id(f)], off))
            ordered.append((owner_path, layer, cls, attr, info, min(offs) if offs else None))
            if layer and cls and owner_path:
                cfg_cls = cfg_by_path.get(layer, (None, None))[0]
                self._classes[layer] = cfg_cls or cls
        if self._config is not None:
            rank = {p: i for i, (p, _, _) in enumerate(walk_config(self._config))}
            ordered.sort(key=lambda t: (rank.get(t[1], len(rank)), _natural_key(t[0])))
        elif all(t[5] is not None for t in ordered if t[4]["vars"]):
            ordered.sort(key=lambda t: (t[5] is None, t[5] or (0, 0), _natural_key(t[0])))
        else:
            ordered.sort(key=lambda t: _natural_key(t[0]))
        for owner_path, layer, cls, attr, info, _ in ordered:
            if owner_path:
                self._layer_order.append(layer)
            if not info["vars"]:
                continue
            cfg_cls, cfg = cfg_by_path.get(layer, (None, None))
            cls = cfg_cls or cls
            vkeys = sorted(info["vars"], key=_natural_key)
            names = variable_names(cls, len(vkeys), cfg, attr)
            if any(n.isdigit() for n in names) and cls and vkeys:
                self._warnings.append(f"variable names of layer {layer or '<model>'} "
                                      f"({cls}) are unknown; used their indices")
            for vkey, vname in zip(vkeys, names):
                f, dp = info["vars"][vkey]
                key = f"{layer}/{vname}" if layer else vname
                self._add(key, f, dp)

    def _keras3_names_from_config(self) -> dict[str, str]:
        """Group path -> user name, reconstructing Keras' snake-name uniquification."""
        out: dict[str, str] = {}

        def rec(config, prefix):
            used: dict[str, int] = {}
            for entry in _layer_entries(config):
                name = _entry_name(entry)
                cls = entry.get("class_name")
                if not isinstance(name, str) or not isinstance(cls, str):
                    continue
                snake = class_to_snake(cls)
                n = used.get(snake, 0)
                used[snake] = n + 1
                group = f"{prefix}layers/{snake}" + (f"_{n}" if n else "")
                out[group] = name
                if _layer_entries(entry):
                    rec(entry, group + "/")

        if self._config is not None:
            rec(self._config, "")
        return out

    # -- anything else

    def _build_generic(self, root) -> None:
        import h5py

        paths = []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                paths.append(name)

        root.visititems(visit)
        for p in paths:
            self._add(_strip_tf_suffix(p), root, p)

    # -- interface

    def metas(self) -> dict[str, TensorMeta]:
        return dict(self._metas)

    def read_array(self, name: str):
        import numpy as np

        if name not in self._entries:
            raise KeyError(name)
        f, dp = self._entries[name]
        try:
            ds = f[dp]
            _check_stored(ds, dp, self._metas[name], self._display)
            arr = ds[()]
        except MemoryError:  # numpy's, for the array h5py decompresses into
            raise InputError(self._display, f"not enough memory to read {dp} "
                             f"({self._metas[name].nbytes:,} bytes)") from None
        except _H5Errors.types as e:
            raise InputError(self._display, f"cannot read {dp} ({type(e).__name__}: "
                             f"{_one_line(e)}): corrupt or truncated file") from None
        arr = np.asarray(arr)
        if self._metas[name].dtype == "bfloat16":
            arr = (arr.copy() if not arr.flags.c_contiguous else arr).view("V2")
        elif arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if tuple(arr.shape) != self._metas[name].shape:
            raise InputError(self._display, f"{dp}: read shape {arr.shape} differs from its "
                             f"declared shape {self._metas[name].shape}")
        return arr

    def layer_classes(self) -> dict[str, str]:
        return dict(self._classes)

    def layer_configs(self) -> dict[str, dict]:
        return {path: cfg for path, _cls, cfg in walk_config(self._config)} if self._config else {}

    def extras(self) -> dict[str, Any]:
        return {"layout": self.layout, "keras_config": self._config,
                "layer_order": list(self._layer_order)}

    def warnings(self) -> list[str]:
        return list(self._warnings)

    def close(self) -> None:
        for f in self._owned:
            try:
                f.close()
            except Exception:  # noqa: BLE001
                pass
        self._owned = []
        for extra in getattr(self, "_extra_close", []):
            try:
                extra.close()
            except Exception:  # noqa: BLE001
                pass
        self._extra_close = []
        super().close()


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else ""


def _open_h5(fileset: FileSet, path: Path):
    """h5py's own (native) driver on a file of the set, checked to be the very file the set
    opened (h5py keeps its descriptor, so every later read is of that file)."""
    import h5py

    h = fileset.open(path)  # containment; the fstat every change is measured against
    f = h5py.File(path, "r")
    try:
        same = h.same_file(f.id.get_vfd_handle())
    except (TypeError, ValueError, RuntimeError, OSError):  # not the sec2 driver: no descriptor
        same = True
    if not same:
        f.close()
        raise InputError(path, "changed while being opened (replaced by another file)")
    return f


def _has_layer_names(group) -> bool:
    return "layer_names" in group.attrs or "layer_names0" in group.attrs


def _list_attr(group, name: str) -> list[str]:
    """An attribute that Keras may split into ``name0``, ``name1``, ... when over 64 KiB."""
    if name in group.attrs:
        values = _decode_attr(group.attrs[name])
    else:
        values = []
        i = 0
        while f"{name}{i}" in group.attrs:
            values.extend(_decode_attr(group.attrs[f"{name}{i}"]))
            i += 1
    if not isinstance(values, list):
        values = [values]
    return [str(v) for v in values]  # an empty attribute is an empty float64 array


def _parse_json_attr(value, what: str, path) -> Any:
    text = _decode_attr(value)
    if not isinstance(text, str):
        return None
    return _loads_config(text, f"{what} attribute", path)


def _loads_config(text: str, what: str, path) -> Any:
    """A JSON config, as data only (nothing in a config is ever executed). Refuses lone
    surrogates (from invalid UTF-8 or "\\ud800" escapes: unprintable layer names and classes)
    and nesting deep enough to exhaust the recursion of the config walk (found by fuzzing)."""
    try:
        obj = json.loads(text)
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError as e:
        raise InputError(path, f"{what} is not valid JSON ({e})") from None
    except RecursionError:
        raise InputError(path, f"{what} is nested too deeply") from None
    except UnicodeEncodeError:
        raise InputError(path, f"{what} holds invalid Unicode (lone surrogates): corrupt file") from None
    if depth_exceeds(obj):
        raise InputError(path, f"{what} is nested too deeply (more than {MAX_DEPTH} levels)")
    return obj


# deflate shrinks data at most ~1032:1; other filters are given the same allowance
_MAX_FILTER_RATIO = 1100


def _check_stored(ds, dp: str, meta: TensorMeta, display) -> None:
    """Refuse to read a dataset whose bytes are mostly not in the file: HDF5 fills unwritten
    (sparse) datasets with the fill value, so a few KB can declare terabytes, which reading
    would allocate and fill (found by fuzzing: a 25 KB .weights.h5 that needs 8 GiB)."""
    need = meta.nbytes
    if need == 0:
        return
    stored = ds.id.get_storage_size()
    filtered = ds.id.get_create_plist().get_nfilters() > 0
    if stored * (_MAX_FILTER_RATIO if filtered else 1) < need:
        raise InputError(display, f"{dp} declares {need:,} bytes ({list(meta.shape)} {meta.dtype}) "
                         f"but the file stores {stored:,} for it: an unwritten or sparse dataset "
                         "(corrupt, or made to exhaust memory)")


def _canonical_dtype(ds) -> str | None:
    if ds.attrs.get("dtype", None) is not None:
        tag = _decode_attr(ds.attrs["dtype"])
        if tag == "bfloat16" and ds.dtype.itemsize == 2:
            return "bfloat16"
    try:
        return dtypes.from_numpy(ds.dtype)
    except (KeyError, TypeError):
        return None


# ------------------------------------------------------------------------------ .keras archive

def _open_member(src, zf: zipfile.ZipFile, name: str):
    """A seekable file object for one zip member: a window on a stored member's bytes (nothing
    copied), else the member decompressed into a temporary file by a bounded stream (a deflated
    member can be a bomb: memory never holds more than one step of it). ``src``: the archive's
    fileset.Handle."""
    zpath = src.path
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        def check_head(head: bytes) -> None:
            eof = hdf5_eof(head)
            if eof is None:
                raise InputError(zpath, f"member {name} is not an HDF5 file (no HDF5 signature)")
            if info.file_size > eof:
                raise InputError(zpath, f"compressed member {name} expands beyond the {eof:,} bytes its "
                                 f"HDF5 superblock declares (to {info.file_size:,}): corrupt or hostile archive")
        return zipmember.extract_member(src, zf, name, check_head)
    start = zipmember.data_start(src, info)
    if start + info.file_size > src.size:
        raise InputError(zpath, f"{name} runs past the end of the archive: truncated")
    return RangeFile(src.fd, start, info.file_size)


def hdf5_eof(head: bytes) -> int | None:
    """The file size an HDF5 file's superblock declares (its base address + end-of-file address),
    from the file's first bytes; None without a signature there (at 0, 512, 1024, ...)."""
    at = 0
    while at + 8 <= len(head) and head[at:at + 8] != HDF5_MAGIC:
        at = at * 2 or 512
    if at + 9 > len(head):
        return None
    version = head[at + 8]
    if version in (0, 1):
        width, fields = head[at + 13], at + (24 if version == 0 else 28)
    elif version in (2, 3):
        width, fields = head[at + 9], at + 12
    else:
        return None
    if width not in (2, 4, 8) or fields + 3 * width > len(head):
        return None
    base = int.from_bytes(head[fields:fields + width], "little")
    eof = int.from_bytes(head[fields + 2 * width:fields + 3 * width], "little")
    return base + eof



def _read_json_member(src, zf: zipfile.ZipFile, name: str) -> Any:
    text = zipmember.read_member(src, zf, name, MAX_JSON_MEMBER).decode("utf-8")
    return _loads_config(text, name, src.path)


class KerasArchiveReader(KerasH5Reader):
    format = "keras-archive"

    def __init__(self, path: str | Path, fileset: FileSet | None = None) -> None:
        import h5py

        p = Path(path)
        self._extra_close = []
        fileset = fileset if fileset is not None else FileSet(p)
        try:
            src = fileset.open(p)
            with src.file() as zfp, zipfile.ZipFile(zfp) as zf:
                names = zf.namelist()
                if "config.json" not in names:
                    raise InputError(p, "is a zip without config.json: not a .keras archive")
                weights = [n for n in names if n.endswith(".weights.h5")]
                if "model.weights.h5" in names:
                    weights = ["model.weights.h5"]
                if not weights:
                    raise InputError(p, ".keras archive has no model.weights.h5")
                config = _read_json_member(src, zf, "config.json")
                metadata = _read_json_member(src, zf, "metadata.json") if "metadata.json" in names else None
                fobj = _open_member(src, zf, weights[0])
        except InputError:
            fileset.close()
            raise
        except FileNotFoundError:
            fileset.close()
            raise InputError(p, "no such file or directory") from None
        except (zipfile.BadZipFile, OSError, ValueError, KeyError, UnicodeDecodeError,
                struct.error, EOFError, RuntimeError, *ZIP_MEMBER_ERRORS) as e:
            # RuntimeError: "encrypted" (and NotImplementedError: unknown compression method or
            # flags); zlib/LZMA: bad compressed data
            fileset.close()
            raise InputError(p, f"corrupt .keras archive ({type(e).__name__}: "
                             f"{_one_line(e)})") from None
        self._extra_close.append(fobj)
        self.metadata = metadata
        try:
            h5 = h5py.File(fobj, "r")
        except _H5Errors.types as e:
            fobj.close()
            fileset.close()
            raise InputError(p, f"{weights[0]} in the archive is not a readable HDF5 file "
                             f"({type(e).__name__}: {_one_line(e)})") from None
        self._extra_close.insert(0, h5)
        super().__init__(p, _files=[h5], _config=config, fileset=fileset)

    def extras(self) -> dict[str, Any]:
        out = super().extras()
        out["metadata"] = self.metadata
        return out


# ------------------------------------------------------------------------------ sharded

class KerasShardedReader(KerasH5Reader):
    """Keras 3 sharded weights: ``NAME.weights.json`` ({"metadata", "weight_map"}) whose
    weight_map maps h5 group paths (``/layers/dense/vars``) to shard files
    ``NAME_00000.weights.h5``; a layer's variables may continue in the next shard (that shard
    is then not named in the map), so every ``NAME_NNNNN.weights.h5`` next to the json is read."""

    format = "keras-sharded"

    def __init__(self, path: str | Path, fileset: FileSet | None = None) -> None:
        p = Path(path)
        fileset = fileset if fileset is not None else FileSet(p)
        if p.is_dir():
            found = sorted(p.glob("*.weights.json"))
            if not found:
                raise InputError(p, "directory has no *.weights.json")
            if len(found) > 1:
                raise InputError(p, "directory has several *.weights.json files: pass one")
            p = found[0]
        self._extra_close = []
        try:
            h = fileset.open(p)
            text = h.read_all().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(p, f"cannot read ({_one_line(e)})") from None
        try:
            index = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(p, f"invalid JSON ({e})") from None
        if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
            raise InputError(p, "has no 'weight_map' object: not a Keras sharded weights file")
        shard_names: list[str] = []
        for value in index["weight_map"].values():
            for v in value if isinstance(value, list) else [value]:
                if not isinstance(v, str) or "/" in v or "\\" in v or v in ("", ".", ".."):
                    raise InputError(p, f"weight_map names an invalid shard file {v!r}")
                if v not in shard_names:
                    shard_names.append(v)
        base = p.name[: -len(".weights.json")] if p.name.endswith(".weights.json") \
            else p.stem
        pattern = re.compile(re.escape(base) + r"_\d{5}\.weights\.h5$")
        for extra in sorted(p.parent.iterdir()):
            if pattern.match(extra.name) and extra.name not in shard_names:
                shard_names.append(extra.name)
        shard_names.sort(key=_natural_key)
        if not shard_names:
            raise InputError(p, "weight_map names no shard files")
        files = []
        for name in shard_names:
            sp = p.parent / name
            try:
                if not (sp.exists() or sp.is_symlink()):
                    raise FileNotFoundError(sp)
                files.append(_open_h5(fileset, sp))
            except FileNotFoundError:
                for f in files:
                    f.close()
                raise InputError(sp, f"shard named in {p.name} is missing") from None
            except InputError:
                for f in files:
                    f.close()
                raise
            except _H5Errors.types as e:
                for f in files:
                    f.close()
                raise InputError(sp, f"corrupt or unreadable HDF5 shard "
                                 f"({type(e).__name__}: {_one_line(e)})") from None
        self._extra_close.extend(files)
        self.index = index
        self.shards = shard_names
        super().__init__(p, _files=files, fileset=fileset)

    def extras(self) -> dict[str, Any]:
        out = super().extras()
        out["shards"] = list(self.shards)
        out["metadata"] = self.index.get("metadata")
        return out
