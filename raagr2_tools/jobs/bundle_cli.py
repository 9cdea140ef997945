"""Run a bundle config through the real ``python -m monai.bundle`` command line, in a child process."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def bundle_command(
    config_files: Sequence[str | Path], run_id: str = "run", overrides: Mapping[str, Any] | None = None
) -> list[str]:
    """``python -m monai.bundle run <run_id> --config_file [...] --key value ...`` as an argument list.

    Values are passed as ``str(value)``: ``fire`` parses lists, numbers and booleans back from that text.
    """
    files = [str(Path(f).resolve()) for f in config_files]
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(files)]
    for key, value in (overrides or {}).items():
        command += [f"--{key}", str(value)]
    return command


def run_bundle(
    config_files: Sequence[str | Path],
    run_id: str = "run",
    overrides: Mapping[str, Any] | None = None,
    cwd: str | Path | None = None,
) -> float:
    """Run ``python -m monai.bundle run <run_id> --config_file [...] --key value ...``; return wall seconds.

    Raises:
        RuntimeError: naming the command when the bundle run fails (its output has been shown already).
    """
    command = bundle_command(config_files, run_id, overrides)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd)
    if result.returncode != 0:
        raise RuntimeError(f"bundle run failed (exit {result.returncode}): {' '.join(command)}")
    return time.perf_counter() - start
