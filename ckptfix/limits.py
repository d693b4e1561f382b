"""Sizes and depths ckptfix refuses to go beyond: one place for every budget.

Inputs are untrusted. A few bytes can declare gigabytes (a deflated zip member, a pickle string
length, a JSON config nested thousands deep), and a rule can ask for a tensor no machine holds.
Each budget below is checked *before* the memory is spent, so the failure is one line naming the
file (or the rule) instead of a MemoryError, a RecursionError or the kernel's OOM killer.
"""

from __future__ import annotations

import math
import os

# -- compressed zip members (formats/zipmember.py) -----------------------------------------------
# deflate cannot expand data more than 1032:1; a member declaring more is lying (other methods,
# which ckptfix reads through zipfile, are given the same allowance)
MAX_RATIO = 1100
MAX_JSON_MEMBER = 64 << 20     # config.json / metadata.json of a .keras archive
MAX_PICKLE_MEMBER = 256 << 20  # a compressed data.pkl (torch never compresses one; it reads it whole)
MAX_SMALL_RECORD = 1 << 20     # byteorder, version, .storage_alignment ... of a torch zip
MAX_CODE_MEMBER = 16 << 20     # a code/*.py file of a TorchScript archive (read whole; its declarations parsed)

# -- nesting -------------------------------------------------------------------------------------
# Real configs and checkpoint containers nest a few dozen levels; the walkers over them recurse,
# and Python's recursion limit is 1000
MAX_DEPTH = 500
# ONNX subgraphs (If/Loop/Scan bodies inside nodes' attributes) nest a few levels in real models;
# each level is a few frames of the walk over them (formats/onnx_io.py)
MAX_GRAPH_DEPTH = 64
# ... and the node inputs/outputs an ONNX graph may name, each a Python string the reader keeps (a
# large language model's graph names well under a million; a crafted 2 GB file could name 10^9)
MAX_GRAPH_NAMES = 5_000_000
# ... and the leaves of a Flax msgpack tree (formats/flax_io.py), each a Python object with a name: a
# TrainState of a large model holds thousands (a million cost ~320 MB here); 1.4 MB of short keys
# under one 64 KB key 13 GB of names
MAX_TREE_ENTRIES = 1_000_000
MAX_TREE_NAME_CHARS = 256 << 20

# -- planned tensors (plan.py) ---------------------------------------------------------------------
MAX_TENSOR_BYTES = 1 << 40     # 1 TiB: no tensor a rule makes may be larger, whatever the machine


# -- building a target model on the CPU (target.py) -------------------------------------------------
# when its constructor cannot run on the meta device (it calls self.to(...), .item(), ...): the
# tensors it makes may take half of what the process can have (``build_budget``)


def build_budget() -> int:
    """The bytes of tensors a target's constructor may make when it is built on the CPU: half of
    ``memory_limit()`` (the other half is for the rest of the run, and for the copies a
    ``self.to(dtype)`` holds while it converts), never more than ``MAX_TENSOR_BYTES``."""
    return min(memory_limit() // 2, MAX_TENSOR_BYTES)


def fmt_bytes(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} bytes"


def depth_exceeds(obj, limit: int = MAX_DEPTH) -> bool:
    """Whether dicts/lists/tuples nest more than ``limit`` levels in ``obj`` (iterative: safe on any
    depth; each container is visited once, so shared or cyclic references cost nothing more)."""
    stack = [(obj, 1)]
    seen: set[int] = set()
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list, tuple)) or id(node) in seen:
            continue
        if depth > limit:
            return True
        seen.add(id(node))
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list, tuple)))
    return False


def memory_limit() -> int:
    """The most memory this process can have: physical RAM, lowered by an address-space or data
    rlimit (less what the process already uses of it) and a cgroup v2 limit when set. It does not
    depend on what is free right now, so a plan is refused or accepted the same way each time."""
    import resource

    limits = []
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        limits.append(os.sysconf("SC_PHYS_PAGES") * page)
        with open("/proc/self/statm") as f:
            statm = [int(x) * page for x in f.read().split()]
        used = {resource.RLIMIT_AS: statm[0], getattr(resource, "RLIMIT_DATA", -1): statm[5]}
    except (ValueError, OSError, AttributeError, IndexError):
        used = {}
    for which, in_use in used.items():
        soft, _hard = resource.getrlimit(which)
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append(max(soft - in_use, 0))
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
        if text.isdigit():
            limits.append(int(text))
    except OSError:
        pass
    return min(limits) if limits else MAX_TENSOR_BYTES


def tensor_too_big(before, after, computed: bool, memory: int, working: int = 0) -> str | None:
    """Why a tensor a rule makes (``after``, a TensorMeta; from ``before``, None for a new one)
    cannot be made, or None. The policy: no tensor over ``MAX_TENSOR_BYTES`` (which also keeps
    every element count far inside int64); and when the op computes it (anything but a byte copy),
    its input and output must fit in ``memory`` (``memory_limit()``) together, with the
    ``working`` copies the op says it holds (``Op.working``)."""
    if after.nbytes > MAX_TENSOR_BYTES:
        return f"it would be {after.numel:,} elements ({fmt_bytes(after.nbytes)}), over the " \
               f"{fmt_bytes(MAX_TENSOR_BYTES)} ckptfix allows for any tensor"
    need = after.nbytes + (before.nbytes if before is not None else 0) + working
    if computed and need > memory:
        what = "input, output and working copies" if working else "input and output"
        return f"computing it holds {fmt_bytes(need)} ({what}) in memory, more than the " \
               f"{fmt_bytes(memory)} this process can have"
    return None


MAX_DIM = 1 << 62  # safetensors' bound on a dimension (its reader refuses 2**62 and more)


def impossible_shape(shape, itemsize: int = 1) -> bool:
    """A shape no array can have: a dimension of 2**62 or more, or an empty shape whose other
    dimensions' bytes reach 2**62 (numpy: "Maximum allowed dimension exceeded"; a safetensors
    output of it would be refused). A non-empty such shape is past any file's size anyway.
    Every reader's tensors are checked with it when the checkpoint is opened."""
    if any(d >= MAX_DIM for d in shape):
        return True
    return 0 in shape and math.prod(d for d in shape if d) * itemsize >= MAX_DIM
