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

    The child's error output is shown as it comes; its last line (on failure, the root cause that the runtime
    layer's hook prints, see :mod:`custom_modules.errors`) ends the error raised here.

    Raises:
        RuntimeError: naming the run and the child's last error line when the bundle run fails.
    """
    command = bundle_command(config_files, run_id, overrides)
    start = time.perf_counter()
    last = ""
    with subprocess.Popen(command, cwd=cwd, stderr=subprocess.PIPE, text=True, errors="replace") as child:
        for line in child.stderr:
            sys.stderr.write(line)
            last = line.strip() or last
    if child.returncode != 0:
        cause = last.removeprefix("error: ") or "no error output"
        raise RuntimeError(f"bundle run '{run_id}' failed (exit {child.returncode}): {cause}")
    return time.perf_counter() - start
