import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # matplotlib's font cache (~/.cache/matplotlib) is shared with whatever else runs on the machine. One
    # written while a matplotlib install was being replaced lists none of its bundled fonts, and then
    # every log-scale plot logs ~20 "findfont" warnings: the CLI tests that check stderr is one line
    # failed on exactly that. The suite (and the processes it starts) builds its own, once.
    if "MPLCONFIGDIR" not in os.environ:
        path = tempfile.mkdtemp(prefix="deepserve-tests-matplotlib-")
        os.environ["MPLCONFIGDIR"] = path
        config.add_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))


@pytest.fixture(autouse=True, scope="session")
def _quiet_threads():
    # Two test processes may share 2 cores in CI; keep torch from oversubscribing them.
    import torch

    torch.set_num_threads(1)


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m training`` as a user would, in a child process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
