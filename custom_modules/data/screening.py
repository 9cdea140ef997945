"""Skip a bad case, report it, and go on with the rest: one bad case never stops a dataset run.

- :class:`ScreenedCompose` is a ``Compose`` whose :class:`~custom_modules.errors.CaseInputError` (raised by
  :class:`~custom_modules.transforms.LoadCased` or any transform) turns the case into a *skip record*
  ``{"case_id", SKIPPED_KEY: reason}`` instead of an error; other errors still raise.
- :class:`CaseDataLoader` is a MONAI ``DataLoader`` that takes skip records out of every batch, logs them, keeps
  them in :attr:`CaseDataLoader.skipped` (with those the datalist loader already dropped) and yields only the
  usable cases.
- :class:`~custom_modules.handlers.SkippedCasesReport` ends the evaluator's epoch when the loader ran out early
  and writes the list of skipped cases.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

from monai.data import DataLoader, list_data_collate
from monai.transforms import Compose

from ..errors import CaseInputError, root_cause
from ..transforms.load_case import case_name

__all__ = ["SKIPPED_KEY", "CaseDataLoader", "ScreenedCompose", "case_error", "skip_record", "skipping_collate"]

logger = logging.getLogger(__name__)

#: key of a skip record: the reason the case was skipped
SKIPPED_KEY = "skipped_reason"
_BATCH_SKIPS = "_skipped_cases"


def skip_record(case_id: str, reason: str) -> dict[str, str]:
    """The record of a case that is skipped: ``{"case_id": ..., SKIPPED_KEY: reason}``."""
    return {"case_id": case_id, SKIPPED_KEY: reason}


def case_error(error: BaseException) -> CaseInputError | None:
    """The :class:`CaseInputError` that caused ``error`` (MONAI wraps transform errors), else ``None``."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, CaseInputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    cause = root_cause(error) if error is not None else None
    return cause if isinstance(cause, CaseInputError) else None


class ScreenedCompose(Compose):
    """A ``Compose`` that returns a skip record for a case any of its transforms refuses with ``CaseInputError``."""

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(input_, *args, **kwargs)
        except Exception as e:
            error = case_error(e)
            if error is None or not isinstance(input_, Mapping):
                raise
            return skip_record(error.case_id or case_name(input_), error.problem)


def skipping_collate(batch: Sequence[Mapping[Hashable, Any]]) -> dict[Hashable, Any]:
    """``list_data_collate`` of the usable items of ``batch``; skip records go under a private key."""
    skipped = [dict(item) for item in batch if isinstance(item, Mapping) and SKIPPED_KEY in item]
    usable = [item for item in batch if not (isinstance(item, Mapping) and SKIPPED_KEY in item)]
    collated = list_data_collate(usable) if usable else {}
    collated[_BATCH_SKIPS] = skipped
    return collated


class CaseDataLoader(DataLoader):
    """A MONAI ``DataLoader`` that drops skip records from batches, logs each once and keeps them in
    :attr:`skipped`; ``dataset.data.skipped`` (cases the datalist loader dropped) is included.

    Args and kwargs are those of ``monai.data.DataLoader``; ``collate_fn`` defaults to :func:`skipping_collate`.
    """

    def __init__(self, dataset: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("collate_fn", skipping_collate)
        super().__init__(dataset, *args, **kwargs)
        #: skip records of the current pass: ``{"case_id", SKIPPED_KEY}``
        self.skipped: list[dict[str, str]] = []

    def __iter__(self) -> Iterator[Any]:
        self.skipped = [dict(r) for r in getattr(getattr(self.dataset, "data", None), "skipped", [])]
        for batch in super().__iter__():
            records = batch.pop(_BATCH_SKIPS, []) if isinstance(batch, dict) else []
            for record in records:
                logger.warning(f"skipped case {record['case_id']}: {record[SKIPPED_KEY]}")
            self.skipped += records
            if isinstance(batch, dict) and not batch:
                continue
            yield batch
