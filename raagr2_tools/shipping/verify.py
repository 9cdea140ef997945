"""``python -m raagr2_tools.shipping.verify BUNDLE... --schema PATH``: the model-zoo checks, offline.

Prints one ``PASS``/``FAIL`` line per bundle and check (with the reason on failure); exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .zoo_checks import ZOO_CHECKS, verify_bundle


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Apply the MONAI model-zoo CI checks (full mode) to bundles, offline.")
    parser.add_argument("bundles", nargs="+", type=Path, help="bundle folders")
    parser.add_argument("--schema", type=Path, required=True, help="local copy of the metadata schema JSON")
    parser.add_argument("--checks", nargs="+", choices=list(ZOO_CHECKS), help="checks to run (default: all)")
    args = parser.parse_args(argv)
    failed = 0
    for bundle in args.bundles:
        try:
            results = verify_bundle(bundle, args.schema, args.checks)
        except (FileNotFoundError, ValueError) as e:
            print(f"FAIL {bundle}: {e}")
            failed += 1
            continue
        for name, message in results.items():
            print(f"PASS {bundle} {name}" if message is None else f"FAIL {bundle} {name}: {message}")
            failed += message is not None
    print(f"{failed} failure(s)" if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
