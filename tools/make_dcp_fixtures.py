"""torch.distributed.checkpoint fixtures for tests/test_dcp.py: writes tests/data/dcp/.

Runs with the project's own interpreter (torch 2.13.0 CPU), from the repository root:

    /work/main/.venv/bin/python tools/make_dcp_fixtures.py

Each checkpoint is written by ``torch.distributed.checkpoint.save`` (``FileSystemWriter``) in a
real gloo process group on 127.0.0.1, of the models in tests/dcp_nets.py (seeded):

* ``single/``: world size 1 (a ``FileStore``). ``{"model": DcpCnn().state_dict(), "optim":
  Adam.state_dict(), "epoch": 3}`` after one training step: one ``__0_0.distcp``, every tensor
  one chunk; the optimizer's state and param_groups, and ``epoch``, as DCP stores them.
* ``fsdp2/``: two processes (``torch.multiprocessing.spawn``, a TCP store), ``DcpMlp`` with
  ``fully_shard`` on each layer and the root, one Adam step, then ``get_state_dict`` ->
  ``{"model": ..., "optim": ...}``: every parameter a DTensor split on dim 0 (5 rows as 3 + 2),
  its chunks in ``__0_0.distcp`` and ``__1_0.distcp``.
* ``tp/``: two processes, ``DcpTp`` in bfloat16 with ``parallelize_module`` (fc1
  ``ColwiseParallel``: Shard(0); fc2 ``RowwiseParallel``: weight Shard(1), bias Replicate, which
  DCP writes once), saved as the bare model state dict (no key prefix).

``NAME_io.npz`` beside each: ``x`` (a seeded input) and ``y``, the source model's output for it
(eval mode), computed by rank 0 from the full (gathered) weights in an eager copy of the model.

Not byte-for-byte reproducible: DCP records a random save uuid in ``.metadata`` and torch.save a
random ``serialization_id`` in every item; values, names, shapes and layout are deterministic.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import dcp_nets  # noqa: E402

OUT = Path("tests/data/dcp")  # relative: DCP records the checkpoint id (the path) in .metadata


def _save_io(name: str, model: torch.nn.Module, x: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        y = model(x)
    np.savez(OUT / f"{name}_io.npz", x=x.float().numpy() if x.dtype == torch.bfloat16 else x.numpy(),
             y=y.float().numpy())


def single() -> None:
    store = dist.FileStore(str(OUT / ".store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        m = dcp_nets.DcpCnn()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        m(x).square().mean().backward()
        opt.step()
        dcp.save({"model": m.state_dict(), "optim": opt.state_dict(), "epoch": 3},
                 checkpoint_id=OUT / "single")
        _save_io("single", m, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)))
    finally:
        dist.destroy_process_group()
        (OUT / ".store").unlink(missing_ok=True)


def _fsdp2(rank: int) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(0)
    m = dcp_nets.DcpMlp()
    for layer in (m.fc1, m.norm, m.fc2):
        fully_shard(layer, mesh=mesh)
    fully_shard(m, mesh=mesh)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(1 + rank))
    m(x).square().mean().backward()
    opt.step()
    msd, osd = get_state_dict(m, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=OUT / "fsdp2")
    full = get_model_state_dict(m, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        eager = dcp_nets.DcpMlp()
        eager.load_state_dict(full, strict=True)
        _save_io("fsdp2", eager, torch.randn(3, 7, generator=torch.Generator().manual_seed(2)))


def _tp(rank: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(0)
    m = dcp_nets.DcpTp().to(torch.bfloat16)
    parallelize_module(m, mesh, {"fc1": ColwiseParallel(), "fc2": RowwiseParallel()})
    sd = m.state_dict()
    dcp.save(sd, checkpoint_id=OUT / "tp")
    full = {k: v.full_tensor() for k, v in sd.items()}
    if rank == 0:
        eager = dcp_nets.DcpTp().to(torch.bfloat16)
        eager.load_state_dict(full, strict=True)
        x = torch.randn(3, 6, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
        _save_io("tp", eager, x)


def _worker(rank: int, port: int, job: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        {"fsdp2": _fsdp2, "tp": _tp}[job](rank)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in ("single", "fsdp2", "tp"):
        shutil.rmtree(OUT / name, ignore_errors=True)
    single()
    for job in ("fsdp2", "tp"):
        mp.spawn(_worker, args=(_free_port(), job), nprocs=2, join=True)
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p}  {p.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
