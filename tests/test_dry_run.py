"""--dry-run (and all planning) reads no tensor data: a reader that fails on any data read still plans."""

import pytest

from ckptfix import api
from ckptfix.formats import fileio, safetensors_io, torch_io


@pytest.fixture
def no_data_reads(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("tensor data was read")
    monkeypatch.setattr(safetensors_io, "read_range", boom)
    monkeypatch.setattr(torch_io, "read_range", boom)
    monkeypatch.setattr(torch_io.TorchReader, "read", boom)
    monkeypatch.setattr(safetensors_io.SafetensorsReader, "read", boom)
    monkeypatch.setattr(safetensors_io, "copy_range", boom)
    monkeypatch.setattr(fileio, "copy_range", boom)


def test_dry_run_plans_without_reading_data(no_data_reads, cli, data, tmp_path):
    r = cli("apply", data / "torch/seed_conv10.pt", "-r", "seed-pad-conv", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert "weight [10, 3, 5, 5] -> [15, 3, 5, 5]" in r.stdout and "dry run" in r.stdout
    r = cli("apply", data / "torch/hf_sharded", "--dry-run", "--target", "tests/nets.py:sharded_net")
    assert r.exit_code == 0, r.stderr
    assert cli("inspect", data / "torch/lightning_net.ckpt").exit_code == 0
    assert cli("diff", data / "torch/ddp_net.pt", "--target", "tests/nets.py:SmallNet").exit_code == 1


def test_the_guard_itself_works(no_data_reads, data, tmp_path):
    res = api.apply_file(data / "torch/seed_conv10.pt", ["seed-pad-conv"], tmp_path / "o.pt")  # writing needs data
    assert not res.ok and "tensor data was read" in res.error
    assert not (tmp_path / "o.pt").exists()
