"""Every figure in README.md and benchmarks/README.md comes from a committed JSON that the text names.

The documents are split into blocks (headings, paragraphs, list items, tables; a table also sees the paragraph
just before it). In each block every quantitative figure is found: a number with a unit or ratio marker
(``x``, ``ms``, ``s``, ``MiB``, ``%``, ``points``, ``GFLOPs``, ...), a thousands-grouped count (``8,911,235``), a
decimal with two or more places (``0.566``) or, in a table, a decimal (or a number in a column whose header
has a unit). Version numbers, dates, shapes (``4x240x240``), inline code and fenced code are not figures.

A block is backed by the JSON files it names, the paragraph before it (tables) and its section headings:
paths such as ``benchmarks/results/NAME.json``, ``results/NAME.{json,png}`` or ``results/NAME.*`` that exist
in the repository (outside ``runs/``). Each figure must occur, at its printed precision, among the numeric
values of those files (walked recursively, plus the numbers of their generated ``markdown`` text), scaled as
its unit says (``%`` and ``points``: x100, ``GFLOPs``: x1e-9, ``ms``: x1e3 from seconds, ``M``: x1e-6). Ratios
and differences are accepted only between two values stored under the same key (``volume_s`` / ``volume_s``,
``tc`` - ``tc``); a value stored directly is preferred.

No torch; the JSONs are read once.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "benchmarks/README.md")

# ---------------------------------------------------------------------------------------------------- parsing


@dataclass
class Block:
    doc: str
    line: int
    kind: str  # heading, paragraph, list, table
    lines: list[str]
    headings: list[str] = field(default_factory=list)  # the section's heading chain, outermost first
    before: str = ""  # the paragraph just before a table

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def split_blocks(doc: str, text: str) -> list[Block]:
    """Headings, paragraphs, list items and tables, fenced code dropped; stops at a licence section."""
    blocks: list[Block] = []
    heading_stack: list[tuple[int, str]] = []
    current: Block | None = None
    in_fence = False

    def flush() -> None:
        nonlocal current
        if current is not None and current.lines:
            blocks.append(current)
        current = None

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if line.lstrip().startswith("```"):
            flush()
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if not line.strip():
            flush()
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        if heading:
            flush()
            level = len(heading.group(1))
            if re.search(r"licen[cs]e|attribution", heading.group(2), re.I):
                break  # licence and attribution text is not checked
            heading_stack = [h for h in heading_stack if h[0] < level]
            blocks.append(Block(doc, number, "heading", [line], [h[1] for h in heading_stack]))
            heading_stack.append((level, line))
            continue
        is_table = line.lstrip().startswith("|")
        is_item = bool(re.match(r"^\s{0,1}([-*+]|\d+\.)\s+", line))
        kind = "table" if is_table else ("list" if is_item else "paragraph")
        if current is not None and (is_item or (current.kind == "table") != is_table):
            flush()
        if current is None:
            before = ""
            if kind == "table" and blocks and blocks[-1].kind in ("paragraph", "list"):
                before = blocks[-1].text
            current = Block(doc, number, kind, [], [h[1] for h in heading_stack], before)
        current.lines.append(line)
    flush()
    return blocks


# ------------------------------------------------------------------------------------------------ JSON names

_REF = re.compile(r"((?:[\w.<>-]+/)*[\w<>-]+(?:\.[\w-]+)*)\.(json\b|\{[^}\s]*\}|\*)")


def json_refs(doc: str, text: str) -> set[Path]:
    """Committed JSON files the text names (relative to the repository root or to the document's folder)."""
    found: set[Path] = set()
    base_dirs = [REPO, (REPO / doc).parent]
    for stem, suffix in _REF.findall(text):
        if suffix.startswith("{") and "json" not in suffix:
            continue
        for base in base_dirs:
            path = (base / f"{stem}.json").resolve()
            try:
                rel = path.relative_to(REPO)
            except ValueError:
                continue
            if rel.parts and rel.parts[0] == "runs":
                continue
            if path.is_file():
                found.add(path)
    return found


# ---------------------------------------------------------------------------------------------- JSON values


@dataclass
class Values:
    direct: list[float]  # every numeric value, sorted
    by_key: dict[str, list[float]]  # leaf key -> its values (for ratios and differences)


def _walk(obj, key: str, out: list[tuple[str, float]]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "markdown" and isinstance(v, str):
                # the generated text of the same run: its numbers are the run's figures
                for token in re.findall(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?", v):
                    out.append(("markdown", float(token.replace(",", ""))))
            else:
                _walk(v, k, out)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, key, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        out.append((key, float(obj)))


@lru_cache(maxsize=None)
def load_values(paths: frozenset[Path]) -> Values:
    pairs: list[tuple[str, float]] = []
    for path in sorted(paths):
        _walk(json.loads(path.read_text()), "", pairs)
    by_key: dict[str, list[float]] = {}
    for key, value in pairs:
        if key != "markdown":
            by_key.setdefault(key, []).append(value)
    return Values(sorted({v for _, v in pairs}), {k: sorted(set(v)) for k, v in by_key.items()})


# -------------------------------------------------------------------------------------------------- figures

_UNITS = (
    r"GFLOP/s|GFLOPs|GFLOP|GMACs|TFLOPs|MiB|GiB|KiB|MB|GB|ms|seconds|second|sec|s|minutes|minute|min|hours|h|"
    r"%|points|point|pp|mm|voxels|M|x|×"
)
_NUMBER = r"[+\-−]?\d[\d,]*(?:\.\d+)?(?:e[+\-−]?\d+)?"
_FIGURE = re.compile(rf"(?<![\w.^/])({_NUMBER})(?:\s?({_UNITS})(?![\w]))?")
_VERSION_WORDS = re.compile(
    r"(python|torch|monai|linux|onnxruntime|opset|torch-pruning|version|v|brats|pytorch|cuda|et al\.)\s*$", re.I
)
_SCALES = {
    "%": (100.0, 1.0),
    "points": (100.0,),
    "point": (100.0,),
    "pp": (100.0,),
    "GFLOP/s": (1.0,),
    "GFLOPs": (1e-9, 1.0),
    "GFLOP": (1e-9, 1.0),
    "GMACs": (1e-9, 1.0),
    "TFLOPs": (1e-12, 1.0),
    "ms": (1.0, 1e3),
    "M": (1e-6,),
}
_HEADER_UNITS = re.compile(r"\((ms|s|MiB|GiB|MB|GB|mm|%)\b[^)]*\)|\b(GFLOPs|GFLOP/s)\b")


@dataclass
class Figure:
    printed: str
    unit: str

    @property
    def value(self) -> float:
        return float(self.printed.replace(",", "").replace("−", "-").lstrip("+"))

    @property
    def half_unit(self) -> float:
        """Half a unit in the last printed place (1e-9 relative slack for float noise)."""
        mantissa, _, exponent = self.printed.lower().replace(",", "").partition("e")
        places = len(mantissa.partition(".")[2])
        step = 10.0 ** (-places) * (10.0 ** int(exponent.replace("−", "-")) if exponent else 1.0)
        return 0.5 * step * (1 + 1e-9) + 1e-12


def _strip(text: str) -> str:
    text = re.sub(r"`[^`]*`", " ", text)  # inline code: commands, paths, settings
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    text = re.sub(r"\b\d+(?:\.\d+)?(?:\s?[x×]\s?\d+(?:\.\d+)?)+\b", " ", text)  # shapes 4x240x240, 3×3
    text = re.sub(r"\b\d+\.\d+\.\d+\S*", " ", text)  # versions 2.13.0+cpu
    text = re.sub(r"\b\d{4}-\d{2}-\d{2}\b|\b(?:19|20)\d{2}(?:-(?:19|20)\d{2})?\b", " ", text)  # dates, years
    text = re.sub(r"\b\d+\^\d+\b", " ", text)  # 2^20, 10^9
    return text


def figures_in(text: str, column_unit: str = "", in_table: bool = False) -> list[Figure]:
    text = _strip(text)
    found = []
    for match in _FIGURE.finditer(text):
        printed, unit = match.group(1), match.group(2) or ""
        if _VERSION_WORDS.search(text[: match.start()]):
            continue
        bare = printed.replace(",", "").lstrip("+-−")
        grouped = bool(re.fullmatch(r"\d{1,3}(,\d{3})+", printed.lstrip("+-−")))
        decimals = len(bare.partition(".")[2].partition("e")[0]) if "." in bare else 0
        scientific = "e" in bare and "." in bare
        if unit:
            pass
        elif in_table and (decimals >= 1 or grouped or scientific or column_unit):
            unit = column_unit
        elif not (grouped or scientific or decimals >= 2):
            continue
        found.append(Figure(printed, unit))
    return found


def table_figures(block: Block) -> list[Figure]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.lines]
    header = rows[0] if rows else []
    found = []
    for row in rows[1:]:
        if all(re.fullmatch(r":?-{3,}:?", c) for c in row if c):
            continue
        for i, cell in enumerate(row):
            unit = ""
            if i < len(header):
                m = _HEADER_UNITS.search(header[i])
                unit = (m.group(1) or m.group(2)) if m else ""
            found.extend(figures_in(cell, unit, in_table=True))
    found.extend(figures_in(header[0] if header else "", in_table=False))
    return found


def _near(sorted_values: list[float], target: float, tol: float) -> bool:
    i = bisect.bisect_left(sorted_values, target - tol)
    return i < len(sorted_values) and sorted_values[i] <= target + tol


def backed(figure: Figure, values: Values) -> bool:
    p, tol = figure.value, figure.half_unit
    scales = _SCALES.get(figure.unit, (1.0,))
    for k in scales:
        if _near(values.direct, p / k, tol / k) or _near(values.direct, -p / k, tol / k):
            return True
    # ratios a/b and differences a-b of two values stored under the same key
    if figure.unit not in ("x", "×", "%", "points", "point", "pp", "") or p == 0:
        return False
    for k in scales:
        target, t = abs(p) / k, tol / k
        for key_values in values.by_key.values():
            if len(key_values) < 2:
                continue
            for a in key_values:
                if figure.unit in ("points", "point", "pp", ""):
                    if _near(key_values, a - target, t) or _near(key_values, a + target, t):
                        return True
                if figure.unit in ("points", "point", "pp"):
                    continue
                if a > 0 and target - t > 0:
                    lo, hi = a / (target + t), a / (target - t)
                    i = bisect.bisect_left(key_values, lo)
                    if i < len(key_values) and key_values[i] <= hi:
                        return True
    return False


# ---------------------------------------------------------------------------------------------------- checks


def check(doc: str) -> list[str]:
    text = (REPO / doc).read_text()
    blocks = split_blocks(doc, text)
    problems = []
    for block in blocks:
        figures = table_figures(block) if block.kind == "table" else figures_in(block.text)
        if not figures:
            continue
        refs = json_refs(doc, "\n".join([block.text, block.before, *block.headings]))
        snippet = re.sub(r"\s+", " ", block.text)[:90]
        if not refs:
            shown = ", ".join(f"{f.printed}{(' ' + f.unit) if f.unit else ''}" for f in figures[:8])
            problems.append(f"{doc}:{block.line}: no committed JSON named for {shown} in '{snippet}'")
            continue
        values = load_values(frozenset(refs))
        names = ", ".join(sorted(str(r.relative_to(REPO)) for r in refs))
        for figure in figures:
            if not backed(figure, values):
                problems.append(
                    f"{doc}:{block.line}: '{figure.printed}{(' ' + figure.unit) if figure.unit else ''}' "
                    f"is not in {names} ('{snippet}')"
                )
    return problems


def test_parser_finds_figures_and_skips_settings() -> None:
    found = {(f.printed, f.unit) for f in figures_in("ran 3.46x faster, 74.5 s, 8,911,235 params, ratio 0.566")}
    assert found == {("3.46", "x"), ("74.5", "s"), ("8,911,235", ""), ("0.566", "")}
    assert figures_in("torch 2.13.0+cpu, Python 3.11.7, 2026-11-21, 4x240x240x155, `--ratio 0.3 --x 5s`") == []
    assert figures_in("15 epochs, factor 0.1, patience 5, opset 18") == []


def test_json_values_and_scales() -> None:
    values = Values(sorted([0.17310355, 0.3, 15456043008.0, 74.544]), {"v": [2.0, 6.92]})
    assert backed(Figure("173.1", "ms"), values)
    assert backed(Figure("15.46", "GFLOPs"), values)
    assert backed(Figure("30", "%"), values)
    assert backed(Figure("74.5", "s"), values)
    assert not backed(Figure("74.6", "s"), values)
    assert backed(Figure("3.46", "x"), values)  # 6.92 / 2.0, same key
    assert not backed(Figure("4.4", "x"), values)
    assert backed(Figure("-4.92", ""), values)  # 2.0 - 6.92, same key


@pytest.mark.parametrize("doc", DOCS)
def test_every_figure_comes_from_a_named_committed_json(doc: str) -> None:
    problems = check(doc)
    assert not problems, f"{len(problems)} figure(s) in {doc} without a committed JSON behind them:\n" + "\n".join(
        problems
    )
