"""Output names (issue 14): an unknown suffix is refused unless --format says what to write; -o -
is refused (outputs are written atomically, never streamed), and stdout gets nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptfix import api
from ckptfix.errors import UsageError
from ckptfix.execute import check_output_name, output_format

SEED = Path(__file__).parent / "data" / "torch" / "seed_conv10.pt"


@pytest.mark.parametrize("name", ["x.onnx", "x.h5", "x.npz", "model.v2"])
def test_unknown_suffix_is_refused_in_one_line(cli, tmp_path, name):
    out = tmp_path / name
    r = cli("apply", SEED, "-o", out)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and f"unknown output suffix '{out.suffix}'" in r.stderr
    assert ".safetensors" in r.stderr and ".pt/.pth/.bin/.ckpt" in r.stderr and "--format" in r.stderr
    assert not out.exists()


def test_format_says_what_to_write(cli, tmp_path):
    out = tmp_path / "x.onnx"
    r = cli("apply", SEED, "-o", out, "--format", "safetensors")
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes()[8:9] == b"{"  # a safetensors header, as asked


@pytest.mark.parametrize("name,fmt", [("a.safetensors", "safetensors"), ("a.PT", "pt"), ("a.bin", "pt"),
                                      ("a.ckpt", "pt"), ("noext", "pt")])
def test_known_suffixes_and_none(tmp_path, name, fmt):
    assert output_format(tmp_path / name, None, "pt", None) == fmt


def test_dash_is_refused_and_stdout_gets_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("apply", SEED, "-o", "-")
    assert r.exit_code == 2 and r.stdout == ""
    assert "-o -: writing to stdout is not supported" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "-").exists()
    with pytest.raises(UsageError, match="stdout"):
        check_output_name("-", "safetensors", None)  # whatever the format


def test_api_refuses_before_opening_the_input(tmp_path):
    res = api.apply_file(tmp_path / "missing.pt", [], tmp_path / "x.onnx")
    assert not res.ok and res.exit_code == 2 and "unknown output suffix" in res.error
