"""Batch mode (issue 6): directories, mirrored outputs, workers, JSON Lines report, resuming,
isolation of crashing/hanging/out-of-memory inputs, check over many files."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptfix import __version__
from ckptfix.batch import MANIFEST

NETS = "tests/nets.py:SmallNet"


def ddp_state(seed: int):
    g = torch.Generator().manual_seed(seed)
    net = {"0.weight": (8, 4), "0.bias": (8,), "2.weight": (3, 8), "2.bias": (3,)}
    return {f"module.{k}": torch.randn(*s, generator=g) for k, s in net.items()}


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def tree(tmp_path):
    """ckpts/a.pt, ckpts/sub/b.pt, ckpts/sub/deeper/c.pt, plus files that are not checkpoints."""
    root = tmp_path / "ckpts"
    for i, rel in enumerate(["a.pt", "sub/b.pt", "sub/deeper/c.pt"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save(ddp_state(i), root / rel)
    (root / "README.md").write_text("notes")
    (root / "sub/config.json").write_text("{}")
    return root


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_batch(cli, tree, out, report, *extra):
    return cli("apply", tree, "--recursive", "-r", "strip-ddp-prefix", "--out-dir", out,
               "--report", report, "--keep-going", *extra)


def test_recursive_batch_mirrors_paths_and_reports(cli, tree, tmp_path):
    out, report = tmp_path / "fixed", tmp_path / "run.jsonl"
    r = run_batch(cli, tree, out, report, "--jobs", "2", "--format", "safetensors")
    assert r.exit_code == 0, r.stdout + r.stderr
    for i, rel in enumerate(["a", "sub/b", "sub/deeper/c"]):
        got = load_file(out / f"{rel}.safetensors")
        want = {k.removeprefix("module."): v for k, v in ddp_state(i).items()}
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    recs = records(report)
    assert len(recs) == 3 and {rec["status"] for rec in recs} == {"done"}
    for rec in recs:
        assert rec["input_sha256"] == sha(Path(rec["input"]))
        assert rec["output_sha256"] == sha(Path(rec["output"]))
        assert rec["seconds"] > 0 and rec["ok"] and rec["steps"]
    assert len({rec["worker_pid"] for rec in recs}) <= 2
    assert "3 input(s)" in r.stdout and "3 done" in r.stdout


def test_one_worker_serves_every_input(cli, tree, tmp_path):
    """torch is imported once per worker: with --jobs 1 every input is served by one process."""
    report = tmp_path / "run.jsonl"
    assert run_batch(cli, tree, tmp_path / "fixed", report).exit_code == 0
    pids = {rec["worker_pid"] for rec in records(report)}
    assert len(pids) == 1 and os.getpid() not in pids


def test_rerun_skips_what_is_up_to_date_and_redoes_the_rest(cli, tree, tmp_path):
    out, report = tmp_path / "fixed", tmp_path / "run.jsonl"
    assert run_batch(cli, tree, out, report).exit_code == 0
    first = {rec["input"]: rec for rec in records(report)}
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}

    r = run_batch(cli, tree, out, report)
    assert r.exit_code == 0 and {rec["status"] for rec in records(report)} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == mtimes  # nothing rewritten
    assert "3 skipped" in r.stdout

    torch.save(ddp_state(7), tree / "sub/b.pt")           # a changed input
    (out / "a.pt").unlink()                                # a deleted output
    r = run_batch(cli, tree, out, report)
    status = {Path(rec["input"]).name: rec["status"] for rec in records(report)}
    assert r.exit_code == 0 and status == {"a.pt": "done", "b.pt": "done", "c.pt": "skipped"}, r.stdout
    b = torch.load(out / "sub/b.pt", weights_only=True)
    assert torch.equal(b["0.weight"], ddp_state(7)["module.0.weight"])
    assert sha(out / "a.pt") == first[str(tree / "a.pt")]["output_sha256"]  # rebuilt, identical

    damaged = (out / "a.pt").read_bytes()[:-10]            # a damaged output is not ours any more:
    (out / "a.pt").write_bytes(damaged)                    # refused without --force (see
    r = run_batch(cli, tree, out, report)                  # test_batch_resume), rebuilt with it
    assert r.exit_code == 2 and (out / "a.pt").read_bytes() == damaged
    assert run_batch(cli, tree, out, report, "--force").exit_code == 0
    assert sha(out / "a.pt") == first[str(tree / "a.pt")]["output_sha256"]

    rules = tmp_path / "other.yaml"                        # other rules: everything is redone
    rules.write_text("ckptfix: 1\nrules:\n  - strip_prefix: module.\n  - rename: {pattern: '^0\\.', replace: 'first.'}\n")
    r = cli("apply", tree, "--recursive", "-r", rules, "--out-dir", out, "--report", report)
    assert r.exit_code == 0 and {rec["status"] for rec in records(report)} == {"done"}
    assert "first.weight" in torch.load(out / "a.pt", weights_only=True)


def test_manifest_records_what_makes_an_output(cli, tree, tmp_path):
    out = tmp_path / "fixed"
    assert run_batch(cli, tree, out, tmp_path / "r.jsonl").exit_code == 0
    lines = [json.loads(x) for x in (out / MANIFEST).read_text().splitlines()]
    assert sorted(x["key"] for x in lines) == ["a.pt", "sub/b.pt", "sub/deeper/c.pt"]
    assert all(x["version"] == __version__ and len(x["digest"]) == 64 for x in lines)


def test_a_file_it_did_not_write_needs_force(cli, tree, tmp_path):
    out = tmp_path / "fixed"
    out.mkdir()
    (out / "a.pt").write_bytes(b"someone else's")
    r = run_batch(cli, tree, out, tmp_path / "r.jsonl")
    assert r.exit_code == 2 and "already exists" in r.stderr
    assert (out / "a.pt").read_bytes() == b"someone else's"
    assert run_batch(cli, tree, out, tmp_path / "r.jsonl", "--force").exit_code == 0


@pytest.mark.parametrize("fault, reason", [("segv", r"crashed \(SIGSEGV\)"), ("abort", r"aborted \(SIGABRT\)"),
                                           ("exit", r"exited with status 3")])
def test_a_crashing_worker_fails_that_input_only(cli, tree, tmp_path, monkeypatch, fault, reason):
    import re

    monkeypatch.setenv("CKPTFIX_WORKER_FAULT", f"sub/b.pt:{fault}")
    out, report = tmp_path / "fixed", tmp_path / "run.jsonl"
    r = run_batch(cli, tree, out, report)
    assert r.exit_code == 2
    status = {Path(rec["input"]).name: rec for rec in records(report)}
    assert status["a.pt"]["status"] == status["c.pt"]["status"] == "done"
    assert status["b.pt"]["status"] == "failed" and re.search(reason, status["b.pt"]["error"])
    assert str(tree / "sub/b.pt") in status["b.pt"]["error"]
    assert not (out / "sub/b.pt").exists() and (out / "sub/deeper/c.pt").exists()
    assert "failed:" in r.stdout and "b.pt" in r.stdout.split("failed:")[1]


def test_a_hanging_input_times_out(cli, tree, tmp_path, monkeypatch):
    monkeypatch.setenv("CKPTFIX_WORKER_FAULT", "a.pt:hang")
    report = tmp_path / "run.jsonl"
    r = run_batch(cli, tree, tmp_path / "fixed", report, "--timeout", "3")
    status = {Path(rec["input"]).name: rec for rec in records(report)}
    assert r.exit_code == 2 and "timed out after 3 s" in status["a.pt"]["error"]
    assert status["b.pt"]["status"] == status["c.pt"]["status"] == "done"


def test_out_of_memory_fails_that_input_only(cli, tree, tmp_path):
    """The memory cap turns a runaway allocation into a clean failure of that input."""
    rules = tmp_path / "huge.yaml"
    rules.write_text("ckptfix: 1\nrules:\n  - strip_prefix: module.\n"
                     "  - add: {for_each: '^0\\.weight$', key: 'huge', shape: [8, 1073741824], value: 1}\n")
    report = tmp_path / "run.jsonl"
    r = cli("apply", tree / "a.pt", tree / "sub/b.pt", "-r", rules, "--out-dir", tmp_path / "o",
            "--max-memory", "2GiB", "--report", report, "--keep-going")
    recs = records(report)
    # the planner sees the worker's cap: refused at plan time, naming the rule (limits.tensor_too_big)
    assert r.exit_code == 2 and len(recs) == 2, recs
    assert all("huge.yaml:4: rule 2 (add)" in rec["error"] and "this process can have" in rec["error"]
               for rec in recs), recs
    assert not list((tmp_path / "o").rglob("*.pt"))


def test_without_keep_going_the_batch_stops(cli, tree, tmp_path, monkeypatch):
    monkeypatch.setenv("CKPTFIX_WORKER_FAULT", "a.pt:exit")
    report = tmp_path / "run.jsonl"
    r = cli("apply", tree, "--recursive", "-r", "strip-ddp-prefix", "--out-dir", tmp_path / "o", "--report", report)
    assert r.exit_code == 2 and "2 not run" in r.stdout
    assert [rec["status"] for rec in records(report)] == ["failed"]


def test_json_lines_on_stdout_summary_on_stderr(cli, tree, tmp_path):
    r = cli("apply", tree, "--recursive", "-r", "strip-ddp-prefix", "--out-dir", tmp_path / "o", "--json")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.exit_code == 0 and len(lines) == 3 and all(x["status"] == "done" for x in lines)
    assert "3 done" in r.stderr


def test_a_directory_needs_recursive(cli, tree, tmp_path):
    r = cli("apply", tree, "-r", "strip-ddp-prefix", "--out-dir", tmp_path / "o")
    assert r.exit_code == 2 and "--recursive" in r.stderr and len(r.stderr.splitlines()) == 1


def test_check_many_files_for_a_ci_gate(cli, tree, tmp_path):
    target = tmp_path / "target.pt"
    torch.save({k.removeprefix("module."): v for k, v in ddp_state(9).items()}, target)
    r = cli("check", tree, "--recursive", "-r", "strip-ddp-prefix", "--target", target, "--jobs", "2")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stdout.count("(fits)") == 3
    torch.save({"module.0.weight": torch.zeros(8, 4)}, tree / "sub/partial.pt")
    report = tmp_path / "check.jsonl"
    r = cli("check", tree, "--recursive", "-r", "strip-ddp-prefix", "--target", target, "--report", report)
    recs = {Path(x["input"]).name: x for x in records(report)}
    assert r.exit_code == 1, r.stdout  # one does not fit: the gate fails
    assert recs["partial.pt"]["status"] == "failed" and "3 missing" in recs["partial.pt"]["error"]
    assert all(recs[n]["status"] == "done" and recs[n]["fits"] for n in ("a.pt", "b.pt", "c.pt"))
