"""Axial-slice inference that skips slices without brain and crops the others to the brain."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Callable

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SliceInferer
from monai.utils import convert_to_dst_type, ensure_tuple_rep, fall_back_tuple

#: the spatial axis of a ``(C, H, W, D)`` case that the slices are cut along (``D``: the stored array's last axis)
SLICE_AXIS = 2

__all__ = ["BrainSliceInferer"]

#: (batch index, slice index, top, left) of one crop; the crop's height and width are its group key
CropOrigin = tuple[int, int, int, int]


class BrainSliceInferer(Inferer):
    """Slice-by-slice inference of ``(B, C, H, W, D)`` volumes along the last axis, with two deployment options.

    - ``skip_empty_slices``: slices without a brain voxel (every channel exactly 0; inputs are z-scored with
      ``NormalizeIntensityd(nonzero=True)``, so background stays 0) are not run; their output is
      ``background_logit`` everywhere. The other slices go through :class:`monai.inferers.SliceInferer` as
      one sub-volume, so their output is that of ``SliceInferer``.
    - ``crop_to_brain`` (implies skipping empty slices): each slice is cropped to its brain bounding box,
      expanded by ``margin`` pixels (within the image), then grown outwards to the grid of ``divisor``-pixel
      blocks of the full-slice pass (so the network's pooling windows are those of the full slice; zero
      padding where a box leaves the image), run whole (no sliding window) and pasted back; outside the box
      the output is ``background_logit``. Crops of equal shape are batched, up to ``sw_batch_size`` per call.

    With both options off it is ``SliceInferer(roi_size, sw_batch_size, spatial_dim=2, overlap=overlap)``.

    After each call ``last_stats`` holds ``slices`` (B * D), ``slices_run`` (slices sent to the network) and
    ``pixels_run_fraction``: pixels of all network inputs (padding included) over B * H * W * D.

    Args:
        roi_size: in-plane (H, W) window of the ``SliceInferer`` path; non-positive entries mean the image size.
        sw_batch_size: slices (windows or crops) per network call.
        overlap: in-plane window overlap of the ``SliceInferer`` path.
        skip_empty_slices: do not run slices without brain.
        crop_to_brain: run each slice's brain box only.
        divisor: crop heights and widths are multiples of this (16: RAAGR2-Net downsamples 4 times).
        margin: pixels added around the brain box on each side before growing to ``divisor``.
        background_logit: output where the network is not run (-20: sigmoid ~2e-9).
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        sw_batch_size: int = 8,
        overlap: float = 0.25,
        skip_empty_slices: bool = False,
        crop_to_brain: bool = False,
        divisor: int = 16,
        margin: int = 8,
        background_logit: float = -20.0,
    ) -> None:
        super().__init__()
        if sw_batch_size < 1 or divisor < 1 or margin < 0:
            raise ValueError(
                f"need sw_batch_size >= 1, divisor >= 1 and margin >= 0, got {sw_batch_size}, {divisor}, {margin}."
            )
        self.roi_size = ensure_tuple_rep(roi_size, 2)
        self.sw_batch_size = int(sw_batch_size)
        self.skip_empty_slices = bool(skip_empty_slices)
        self.crop_to_brain = bool(crop_to_brain)
        self.divisor = int(divisor)
        self.margin = int(margin)
        self.background_logit = float(background_logit)
        self.slice_inferer = SliceInferer(
            roi_size=self.roi_size, sw_batch_size=self.sw_batch_size, spatial_dim=SLICE_AXIS, overlap=overlap
        )
        self.last_stats: dict[str, float] = {}

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """``inputs (B, C, H, W, D)`` -> logits ``(B, out, H, W, D)`` (float32 when an option is on)."""
        if inputs.dim() != 5:
            raise ValueError(f"BrainSliceInferer expects a (B, C, H, W, D) volume, got shape {tuple(inputs.shape)}.")
        b, _, h, w, d = inputs.shape
        pixels = [0]

        def counted(x: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
            pixels[0] += x.shape[0] * x.shape[-2] * x.shape[-1]
            return network(x, *a, **k)

        if not (self.skip_empty_slices or self.crop_to_brain):
            out = self.slice_inferer(inputs, counted, *args, **kwargs)
            slices_run = b * d
        else:
            x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
            run = self._crop if self.crop_to_brain else self._skip
            out, slices_run = run(x, counted, network, *args, **kwargs)
            out = convert_to_dst_type(out, inputs, dtype=torch.float32)[0]
        self.last_stats = {
            "slices": b * d,
            "slices_run": slices_run,
            "pixels_run_fraction": pixels[0] / (b * h * w * d) if b * h * w * d else 0.0,
        }
        return out

    def _background(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        """``(B, channels, H, W, D)`` float32 filled with ``background_logit``, on ``x``'s device."""
        return torch.full(
            (x.shape[0], channels, *x.shape[2:]), self.background_logit, dtype=torch.float32, device=x.device
        )

    def _channels(self, x: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> int:
        """Output channels of ``network``, from one (uncounted) slice when no slice of ``x`` has brain."""
        return int(self.slice_inferer(x[:1, ..., :1], network, *args, **kwargs).shape[1])

    def _skip(
        self,
        x: torch.Tensor,
        counted: Callable[..., torch.Tensor],
        network: Callable[..., torch.Tensor],
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, int]:
        """Run the slices with brain through ``SliceInferer`` as one ``(1, C, H, W, n)`` sub-volume."""
        keep = brain_slices(x).nonzero().tolist()  # (n, 2): batch and slice index
        if not keep:
            return self._background(x, self._channels(x, network, *args, **kwargs)), 0
        sub = torch.stack([x[i, ..., j] for i, j in keep], dim=-1).unsqueeze(0)
        pred = self.slice_inferer(sub, counted, *args, **kwargs)
        out = self._background(x, pred.shape[1])
        for k, (i, j) in enumerate(keep):
            out[i, ..., j] = pred[0, ..., k]
        return out, len(keep)

    def _crop(
        self,
        x: torch.Tensor,
        counted: Callable[..., torch.Tensor],
        network: Callable[..., torch.Tensor],
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, int]:
        """Run each slice's brain box, crops of one shape batched together, and paste the logits back."""
        groups = self._crop_groups(x)
        if not groups:
            return self._background(x, self._channels(x, network, *args, **kwargs)), 0
        out: torch.Tensor | None = None
        h, w = x.shape[2:4]
        for (ch, cw), origins in sorted(groups.items()):
            for start in range(0, len(origins), self.sw_batch_size):
                chunk = origins[start : start + self.sw_batch_size]
                crops = x.new_zeros((len(chunk), x.shape[1], ch, cw))
                for k, (i, j, top, left) in enumerate(chunk):
                    (y0, y1, cy0), (x0, x1, cx0) = _overlap(top, ch, h), _overlap(left, cw, w)
                    crops[k, :, cy0 : cy0 + y1 - y0, cx0 : cx0 + x1 - x0] = x[i, :, y0:y1, x0:x1, j]
                pred = counted(crops, *args, **kwargs)
                if not isinstance(pred, torch.Tensor) or pred.shape[0] != len(chunk) or pred.shape[2:] != (ch, cw):
                    raise ValueError(
                        f"the network must return a (N, out, H, W) tensor for (N, C, H, W) input {tuple(crops.shape)}, "
                        f"got {type(pred).__name__} {tuple(getattr(pred, 'shape', ()))}."
                    )
                pred = pred.to(device=x.device, dtype=torch.float32)
                if out is None:
                    out = self._background(x, pred.shape[1])
                for k, (i, j, top, left) in enumerate(chunk):
                    (y0, y1, cy0), (x0, x1, cx0) = _overlap(top, ch, h), _overlap(left, cw, w)
                    out[i, :, y0:y1, x0:x1, j] = pred[k, :, cy0 : cy0 + y1 - y0, cx0 : cx0 + x1 - x0]
        assert out is not None
        return out, sum(len(o) for o in groups.values())

    def _crop_groups(self, x: torch.Tensor) -> dict[tuple[int, int], list[CropOrigin]]:
        """Crop origins of the slices with brain, grouped by crop (height, width)."""
        h, w = x.shape[2:4]
        roi = fall_back_tuple(self.roi_size, (h, w))
        # the full-slice pass (SliceInferer) pads an image smaller than roi_size by half the difference in front
        grid = (-(max(roi[0] - h, 0) // 2), -(max(roi[1] - w, 0) // 2))
        brain = (x != 0).any(dim=1)  # (B, H, W, D)
        rows, cols = _extent(brain.any(dim=2)), _extent(brain.any(dim=1))  # each (first, last): (B, D)
        groups: dict[tuple[int, int], list[CropOrigin]] = defaultdict(list)
        for i, j in brain_slices(x).nonzero().tolist():
            top, bottom = self._box(rows[0][i][j], rows[1][i][j], h, grid[0])
            left, right = self._box(cols[0][i][j], cols[1][i][j], w, grid[1])
            groups[(bottom - top, right - left)].append((i, j, top, left))
        return groups

    def _box(self, first: int, last: int, size: int, origin: int) -> tuple[int, int]:
        """``[start, stop)`` along one axis: ``first..last`` plus ``margin`` within ``[0, size)``, grown out to the
        ``divisor`` grid that starts at ``origin``."""
        start, stop = max(first - self.margin, 0), min(last + 1 + self.margin, size)
        start = origin + (start - origin) // self.divisor * self.divisor
        stop = origin - (-(stop - origin) // self.divisor) * self.divisor
        return start, stop


def brain_slices(x: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` bool: which slices of ``x (B, C, H, W, D)`` have a voxel with a non-zero channel."""
    return (x != 0).flatten(1, 3).any(dim=1)


def _extent(hits: torch.Tensor) -> tuple[list[list[int]], list[list[int]]]:
    """First and last true index along dim 1 of ``hits (B, N, D)``, as ``(B, D)`` nested lists (N and -1 if none)."""
    index = torch.arange(hits.shape[1], device=hits.device).view(1, -1, 1)
    first = torch.where(hits, index, hits.shape[1]).amin(dim=1)
    last = torch.where(hits, index, -1).amax(dim=1)
    return first.tolist(), last.tolist()


def _overlap(start: int, length: int, size: int) -> tuple[int, int, int]:
    """Part of the box ``[start, start + length)`` inside ``[0, size)``: image start, image stop, box offset."""
    lo, hi = max(start, 0), min(start + length, size)
    return lo, hi, lo - start
