"""Our streaming safetensors writer is byte-identical to safetensors.torch.save_file."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from ckptfix import dtypes
from ckptfix.formats.safetensors_io import SafetensorsReader, SafetensorsWriter
from ckptfix.tensors import TensorMeta

DT = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int8, torch.uint8, torch.bool, torch.float64]


@settings(max_examples=40, deadline=None)
@given(spec=st.dictionaries(st.text("abcxyz._/0123", min_size=1, max_size=8),
                            st.tuples(st.lists(st.integers(0, 4), max_size=3), st.sampled_from(DT)),
                            min_size=1, max_size=6),
       with_meta=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_writer_matches_save_file_bytes(tmp_path_factory, spec, with_meta, seed):
    d = tmp_path_factory.mktemp("st")
    g = torch.Generator().manual_seed(seed)
    tensors = {k: (torch.randn(shape, generator=g) * 10).to(dt) for k, (shape, dt) in spec.items()}
    meta = {"format": "pt"} if with_meta else None
    save_file(tensors, d / "ref.safetensors", metadata=meta)
    metas = {k: TensorMeta(tuple(t.shape), dtypes.from_torch(t.dtype)) for k, t in tensors.items()}
    with open(d / "ours.safetensors", "wb") as f:
        w = SafetensorsWriter(f, metas, meta)
        for name in w.order:
            w.write(name, tensors[name])
        w.finish()
    assert (d / "ours.safetensors").read_bytes() == (d / "ref.safetensors").read_bytes()
    r = SafetensorsReader(d / "ours.safetensors")
    assert r.metas() == metas
    for k, t in tensors.items():
        assert torch.equal(r.read(k), t)
    ref = load_file(d / "ours.safetensors")
    assert all(torch.equal(ref[k], tensors[k]) for k in tensors)
