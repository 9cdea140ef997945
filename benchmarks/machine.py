"""Description of the machine a benchmark ran on (CPU model, cores, memory, device, versions, date, commit)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from custom_modules.hardware import CPU_FLAGS, cpu_flags, cpu_model

__all__ = ["CPU_FLAGS", "cpu_flags", "cpu_model", "device_name", "machine_description"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def device_name(device: str | torch.device) -> str:
    """Human-readable name of ``device``: the GPU name for CUDA, the CPU model otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def _memory_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20  # KiB -> GiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _git_commit() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def machine_description(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Machine, software and date of a run (JSON-ready). Cores: logical CPUs, and those usable by this process."""
    import monai

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_usable": usable,
        "memory_total_gib": _memory_total_gib(),
        "torch_default_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "git": _git_commit(),
    }
