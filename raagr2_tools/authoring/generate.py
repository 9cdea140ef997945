"""Command line: (re)generate variant bundles, or ``--check`` that their generated files are current."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raagr2_tools.authoring.variant import __doc__ as VARIANT_DOC
from raagr2_tools.authoring.variant import write_variant_bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m raagr2_tools.authoring.generate",
        description=VARIANT_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("variant_dirs", nargs="+", type=Path, help="variant bundle folders (with variant.json)")
    parser.add_argument("--check", action="store_true", help="exit 1 if generated files are stale; write nothing")
    args = parser.parse_args(argv)
    status = 0
    for variant_dir in args.variant_dirs:
        try:
            stale = write_variant_bundle(variant_dir, check=args.check)
        except (OSError, ValueError) as e:
            print(f"ERROR: {e}", file=sys.stderr)
            return 1
        verb = "stale" if args.check else "wrote"
        print(f"{variant_dir}: {verb} {len(stale)} file(s){': ' + ', '.join(stale) if stale else ''}")
        status |= int(args.check and bool(stale))
    return status


if __name__ == "__main__":
    sys.exit(main())
