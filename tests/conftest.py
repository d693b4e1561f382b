import hashlib
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from typer.testing import CliRunner

# Hypothesis: the same examples on every run and machine (derandomize; no example database), and
# nothing that depends on the machine's speed (no deadline, no too-slow health check), so a busy CI
# machine cannot fail a property test. HYPOTHESIS_PROFILE=explore draws new examples, for hunting.
settings.register_profile("ckptfix", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ckptfix"))

DATA = Path(__file__).parent / "data"
TORCH = DATA / "torch"
KERAS = DATA / "keras"

# The variables of the two Keras fixture models, as ckptfix names them (`<layer>/<variable>`).
KERAS_EXPECTED = {
    "tiny_cnn": ["conv1/kernel", "conv1/bias", "bn1/gamma", "bn1/beta", "bn1/moving_mean",
                 "bn1/moving_variance", "conv2/kernel", "conv2/bias", "fc/kernel", "fc/bias"],
    "conv1d": ["conv1d/kernel", "conv1d/bias", "conv1d_1/kernel", "conv1d_1/bias",
               "dense/kernel", "dense/bias"],
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(autouse=True)
def _inputs_never_change():
    """Every test: the bundled fixtures are byte-identical afterwards."""
    before = sha256(DATA)
    yield
    assert sha256(DATA) == before, "a test modified the input fixtures"


@pytest.fixture(autouse=True)
def _run_from_the_repository_root(monkeypatch):
    """Tests name files relative to the checkout (``tests/nets.py:SmallNet``): the same result
    whichever directory pytest is started from."""
    monkeypatch.chdir(Path(__file__).parent.parent)


@pytest.fixture
def data():
    return DATA


@pytest.fixture
def tmp_copy(tmp_path):
    def copy(src: Path) -> Path:
        dst = tmp_path / src.name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
        return dst
    return copy


class Cli:
    def __init__(self):
        self.runner = CliRunner()

    def __call__(self, *args):
        from ckptfix.cli import app

        r = self.runner.invoke(app, [str(a) for a in args])
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception
        return r


@pytest.fixture
def cli():
    return Cli()
