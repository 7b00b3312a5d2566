"""Regenerate docs/claims.md from the output of `cvlib claims --out DIR`.

DIR holds claims.csv (key, claim, source, setup, measured, verdict, reason), about.json (scale,
date, machine, command, optionally wall_time) and figures/<key>.png with
figures/captions.json. The document gets a paragraph saying where it comes from, the whole
table, and a few figures, copied next to it into images/claims/ so that the document does
not point into a run's output folder.

    python scripts/claims_doc.py OUT_DIR [--doc docs/claims.md] [--figures KEY,KEY,...]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pandas as pd

from cvlib.studies.claims import TABLE_COLUMNS, table_verdicts
from cvlib.studies.claims_page import verdict_summary

# The document's table: the source is left out to keep the rows readable on GitHub, and
# the verdict shows its reason ("inconclusive: ...").
DOC_COLUMNS = ["claim", "setup", "measured", "verdict"]
# Figures shown when --figures is not given: the first ones of the table that have one.
DEFAULT_FIGURES = 3


class DocError(Exception):
    """Input the document cannot be made from; the message says why, in one line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="claims_doc.py",
        description="Write the markdown page of what `cvlib claims` found (the table of "
                    "verdicts and a few figures) from the folder that `cvlib claims --out "
                    "OUT_DIR` wrote. The figures shown are copied to images/claims/ next "
                    "to the document.")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path,
                        help="the folder of `cvlib claims --out`: claims.csv, about.json, "
                             "figures/<key>.png, figures/captions.json")
    parser.add_argument("--doc", type=Path, default=Path("docs/claims.md"),
                        help="the markdown file to write (default: docs/claims.md)")
    parser.add_argument("--figures", metavar="KEY,KEY,...",
                        help="the claims whose figures to show, comma-separated (default: "
                             f"the first {DEFAULT_FIGURES} claims of the table with a figure)")
    return parser


def read_output(out_dir: Path) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """The table, the about fields and the figure captions that `cvlib claims` wrote.

    Args:
        out_dir: The folder of ``cvlib claims --out``.

    Returns:
        (table, about, captions by key); captions are {} without figures/captions.json.

    Raises:
        DocError: claims.csv or about.json is missing or not what the command writes
            (a column missing, a verdict unknown or without its reason).
    """
    for name in ("claims.csv", "about.json"):
        if not (out_dir / name).is_file():
            raise DocError(f"{out_dir} has no {name}: is it the folder of `cvlib claims --out`?")
    # Empty cells (a setup not given) stay "" rather than turning into NaN.
    table = pd.read_csv(out_dir / "claims.csv", dtype=str, keep_default_na=False)
    missing = [column for column in TABLE_COLUMNS if column not in table.columns]
    if missing:
        raise DocError(f"{out_dir / 'claims.csv'} lacks the column(s) {', '.join(missing)}")
    try:
        table_verdicts(table)
    except ValueError as error:
        raise DocError(f"{out_dir / 'claims.csv'}: {error}") from None
    about = _json_object(out_dir / "about.json")
    captions_file = out_dir / "figures" / "captions.json"
    captions = _json_object(captions_file) if captions_file.is_file() else {}
    return table, about, captions


def _json_object(path: Path) -> dict[str, str]:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DocError(f"{path} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise DocError(f"{path} is not a JSON object")
    return {name: str(field) for name, field in value.items()}


def chosen_figures(table: pd.DataFrame, figures_dir: Path, named: str | None) -> list[str]:
    """The keys whose figures the document shows.

    Args:
        table: The claims table.
        figures_dir: OUT_DIR/figures.
        named: The --figures value, or None for the first ones of the table with a figure.

    Raises:
        DocError: A named key has no figure.
    """
    available = [key for key in table["key"] if (figures_dir / f"{key}.png").is_file()]
    if named is None:
        return available[:DEFAULT_FIGURES]
    keys = [key.strip() for key in named.split(",") if key.strip()]
    for key in keys:
        if key not in available:
            raise DocError(f"no figure {figures_dir / (key + '.png')} for --figures {key}; "
                           f"there are: {', '.join(available) or 'none'}")
    return keys


def _inline(text: str) -> str:
    """Text shown as it is in markdown: claims hold "0.01*randn" and could hold "<b>",
    which would otherwise turn into emphasis or HTML."""
    return re.sub(r"<(?=[A-Za-z/!?])", r"\\<", " ".join(text.split()).replace("*", "\\*"))


def _cell(value: str) -> str:
    # A "|" would end the cell.
    return _inline(value).replace("|", "\\|")


def claims_doc(table: pd.DataFrame, about: dict[str, str], figures: dict[str, str]) -> str:
    """The markdown document.

    Args:
        table: The claims table, as claims.csv holds it.
        about: about.json's fields.
        figures: Image path relative to the document -> caption, in the order shown.

    Returns:
        The document's text.
    """
    def field(name: str) -> str:
        return about.get(name) or "unknown"

    wall_time = (f" (that invocation took {about['wall_time']}; cells finished by an earlier "
                 f"one are not trained again)" if about.get("wall_time") else "")
    lines = [
        "# What `cvlib claims` found", "",
        "`cvlib claims` tests the statements of CS231n lecture 6 (Training Neural Networks I) "
        "on real CIFAR-10, each over several seeds; a claim holds when every seed agrees it is "
        "true, does not hold when every seed says it is false, and is inconclusive "
        "otherwise. This page is generated by `scripts/claims_doc.py` from the output of "
        f"`{field('command')}` (scale {field('scale')}), run on {field('date')} on "
        f"{field('machine')}{wall_time}; do not edit it by hand, run the command and the "
        "script again.", "",
        verdict_summary(table["verdict"]) + ".", "",
        table.assign(verdict=[str(verdict) for verdict in table_verdicts(table)])[DOC_COLUMNS]
        .map(_cell).to_markdown(index=False),
    ]
    if figures:
        lines += ["", "## Figures"]
    for path, caption in figures.items():
        alt = " ".join(caption.split()).replace("[", "(").replace("]", ")")
        lines += ["", f"![{alt}]({path})", "", f"*{_inline(caption)}*"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the document; returns the exit code (2 for input it cannot use)."""
    args = _parser().parse_args(argv)
    figures_dir = args.out_dir / "figures"
    try:
        table, about, captions = read_output(args.out_dir)
        keys = chosen_figures(table, figures_dir, args.figures)
    except DocError as error:
        print(f"claims_doc.py: error: {error}", file=sys.stderr)
        return 2
    images = args.doc.parent / "images" / "claims"
    images.mkdir(parents=True, exist_ok=True)
    figures = {}
    for key in keys:
        shutil.copyfile(figures_dir / f"{key}.png", images / f"{key}.png")
        # Relative and with "/": the link must work on GitHub, whatever wrote it.
        link = Path(os.path.relpath(images / f"{key}.png", args.doc.parent)).as_posix()
        figures[link] = captions.get(key, key)
    args.doc.write_text(claims_doc(table, about, figures))
    print(f"wrote {args.doc} ({len(table)} claims, {len(figures)} figures in {images})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
