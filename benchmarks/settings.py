"""Benchmark settings (shapes, repeats, device, threads), shared by ``compare`` and its ``measure`` children."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["BenchSettings", "add_settings_args", "settings_from_args"]


@dataclass(frozen=True)
class BenchSettings:
    """What is measured and how often. Shapes are in voxels, channels-first, without the batch dimension.

    Defaults are the real-size benchmark (4x192x192 slices, 240x240x155 volumes); :meth:`tiny` is the
    seconds-long variant for tests.
    """

    device: str = "cpu"
    threads: int | None = None  # torch.set_num_threads in the child; None keeps torch's default
    seed: int = 0
    in_channels: int = 4
    slice_size: tuple[int, int] = (192, 192)  # slice latency, FLOPs and training step input (H, W)
    latency_batch: int = 8  # the second slice-latency batch size (the first is 1)
    warmup_b1: int = 2
    repeats_b1: int = 10
    warmup_batch: int = 2
    repeats_batch: int = 5
    volume_shape: tuple[int, int, int] = (240, 240, 155)  # (H, W, D), D = axial slices
    slice_roi: tuple[int, int] = (240, 240)  # SliceInferer roi_size
    sw_batch_size: int = 8
    volume_warmup: int = 1
    volume_repeats: int = 2
    segresnet_roi: tuple[int, int, int] = (240, 240, 160)  # SlidingWindowInferer roi_size of the peer
    segresnet_overlap: float = 0.5
    train_batch: int = 8
    train_warmup: int = 1
    train_steps: int = 3
    learning_rate: float = 1e-4  # Adam, as in the baseline bundle's train.json
    tiny: bool = False

    @classmethod
    def tiny_preset(cls, **overrides: Any) -> BenchSettings:
        """Seconds-long settings for tests: 32x32 slices, a 32x32x8 volume, 1 warm-up + 1 repeat each."""
        tiny = dict(
            slice_size=(32, 32),
            warmup_b1=1,
            repeats_b1=1,
            warmup_batch=1,
            repeats_batch=1,
            volume_shape=(32, 32, 8),
            slice_roi=(32, 32),
            volume_warmup=1,
            volume_repeats=1,
            segresnet_roi=(32, 32, 16),
            train_batch=2,
            train_warmup=1,
            train_steps=1,
            tiny=True,
        )
        tiny.update(overrides)
        return cls(**tiny)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_cli(self) -> list[str]:
        """Command-line arguments that rebuild these settings through :func:`settings_from_args`."""
        args = ["--device", self.device, "--seed", str(self.seed)]
        args += ["--tiny"] if self.tiny else []
        args += ["--threads", str(self.threads)] if self.threads else []
        args += ["--volume-repeats", str(self.volume_repeats), "--train-steps", str(self.train_steps)]
        args += ["--repeats-b1", str(self.repeats_b1), "--repeats-batch", str(self.repeats_batch)]
        return args


def add_settings_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options that change :class:`BenchSettings` (shared by ``compare`` and ``measure``)."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device to measure on")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each child")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and 1 repeat each (tests)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs and weights")
    parser.add_argument("--volume-repeats", type=int, default=None, help="timed volumes per variant (default 2)")
    parser.add_argument("--train-steps", type=int, default=None, help="timed training steps (default 3)")
    parser.add_argument("--repeats-b1", type=int, default=None, help="timed batch-1 slice passes (default 10)")
    parser.add_argument("--repeats-batch", type=int, default=None, help="timed batch-8 slice passes (default 5)")
    return parser


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """:class:`BenchSettings` from parsed :func:`add_settings_args` options."""
    overrides: dict[str, Any] = {"device": args.device, "threads": args.threads, "seed": args.seed}
    for key in ("volume_repeats", "train_steps", "repeats_b1", "repeats_batch"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {value}.")
            overrides[key] = value
    return BenchSettings.tiny_preset(**overrides) if args.tiny else BenchSettings(**overrides)
