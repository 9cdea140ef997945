"""The end of an evaluator's pass over a dataset with skipped cases: stop at the last usable case and report."""

from __future__ import annotations

import logging
import os
from typing import Any

from ignite.engine import Engine, Events

from ..data.screening import SKIPPED_KEY, CaseDataLoader
from ..files import remove_stale_temporaries, write_json

__all__ = ["SKIPPED_CASES_FILE", "SkippedCasesReport"]

logger = logging.getLogger(__name__)

#: the list of skipped cases in the run's output folder
SKIPPED_CASES_FILE = "skipped_cases.json"


class SkippedCasesReport:
    """Attach to an evaluator reading a :class:`~custom_modules.data.CaseDataLoader`.

    With skipped cases the loader yields fewer batches than its length; Ignite would then restart the loader to
    fill the epoch, so this ends the epoch when the loader stops. At the start it removes the temporary files
    that a killed run left in ``output_dir``. At the end of the run it logs how many cases
    were used and skipped (each with its reason) and writes ``<output_dir>/skipped_cases.json``
    (``{"cases": N, "used": n, "skipped": [{"case_id", "reason"}]}``), replacing that of an earlier run.

    Args:
        dataloader: the evaluator's loader.
        output_dir: folder of the list; ``None`` only logs.
        what: the word for the run in the summary line, e.g. ``"inference"``.
    """

    def __init__(self, dataloader: CaseDataLoader, output_dir: str | None = None, what: str = "run") -> None:
        if not isinstance(dataloader, CaseDataLoader):
            raise TypeError(f"SkippedCasesReport needs a custom_modules.data.CaseDataLoader, got {type(dataloader)}")
        self.dataloader, self.output_dir, self.what = dataloader, output_dir, what

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._clean)
        engine.add_event_handler(Events.DATALOADER_STOP_ITERATION, self._end_epoch)
        engine.add_event_handler(Events.COMPLETED, self.report)

    def _clean(self, engine: Engine) -> None:
        """Remove the temporary files a killed run left in the output folder (older than a minute)."""
        if self.output_dir is not None:
            remove_stale_temporaries(self.output_dir)

    def _end_epoch(self, engine: Engine) -> None:
        if self.dataloader.skipped:
            engine.terminate_epoch()

    def summary(self) -> dict[str, Any]:
        """``{"cases", "used", "skipped"}`` of the last pass."""
        skipped = [{"case_id": r["case_id"], "reason": r[SKIPPED_KEY]} for r in self.dataloader.skipped]
        total = len(self.dataloader.dataset) + len(
            getattr(getattr(self.dataloader.dataset, "data", None), "skipped", [])
        )
        return {"cases": total, "used": total - len(skipped), "skipped": skipped}

    def report(self, engine: Engine | None = None) -> dict[str, Any]:
        summary = self.summary()
        if self.output_dir is not None:
            write_json(os.path.join(self.output_dir, SKIPPED_CASES_FILE), summary, indent=2)
        if summary["skipped"]:
            where = f" (listed in {os.path.join(self.output_dir, SKIPPED_CASES_FILE)})" if self.output_dir else ""
            reasons = "; ".join(f"{s['case_id']}: {s['reason']}" for s in summary["skipped"])
            logger.warning(
                f"{self.what}: {summary['used']} of {summary['cases']} cases done, {len(summary['skipped'])} "
                f"skipped{where}: {reasons}"
            )
        else:
            logger.info(f"{self.what}: all {summary['cases']} cases done")
        return summary
