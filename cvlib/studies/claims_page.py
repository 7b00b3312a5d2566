"""The evidence page of ``cvlib claims``: one self-contained HTML page, ``claims.html``,
that a student reads without running anything.

Each claim of the notes gets a section with its source, the setup that tested it, the
figures measured per seed, its verdict and the figure that shows the evidence. The PNGs
are inlined as data URIs and the style is inline, so the page loads nothing from
anywhere and can be mailed or opened from a zip as it is.
"""
from __future__ import annotations

import base64
import html
from collections import Counter
from dataclasses import dataclass

from cvlib.studies.judgments import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, Verdict

# The badge's class per verdict.
BADGE_CLASSES = {HOLDS: "holds", DOES_NOT_HOLD: "does-not-hold", INCONCLUSIVE: "inconclusive"}
# The summary's wording per verdict for a count of one and of more, in this order; the
# verdict's own name where it reads as a label ("13 holds").
COUNTED = {HOLDS: ("holds", "holds"), DOES_NOT_HOLD: ("does not hold", "do not hold"),
           INCONCLUSIVE: ("inconclusive", "inconclusive")}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; padding: 1em; max-width: 52em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; }
h2 { font-size: 1.15em; margin: 0 0 .5em; }
dl.about { display: grid; grid-template-columns: max-content 1fr; gap: .1em 1em;
           font-size: .9em; color: #555; }
dl.about dt { font-weight: 600; }
dl.about dd { margin: 0; overflow-wrap: anywhere; }
.summary { font-size: 1.1em; font-weight: 600; }
.note { color: #555; font-style: italic; }
nav ol { padding-left: 1.5em; }
nav li { margin: .25em 0; }
section.claim { border-top: 1px solid #ccc; padding: 1em 0; }
section.claim dl { margin: .5em 0; }
section.claim dt { font-weight: 600; font-size: .9em; color: #555; }
section.claim dd { margin: 0 0 .4em 0; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: .05em .6em; border-radius: 1em; color: #fff;
         font-size: .85em; font-weight: 600; white-space: nowrap; }
.badge.holds { background: #2e7d32; }
.badge.does-not-hold { background: #c62828; }
.badge.inconclusive { background: #757575; }
.reason { color: #555; margin-left: .4em; }
figure { margin: .8em 0; }
img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: .9em; color: #555; margin-top: .3em; }
"""

# How a verdict is reached, in the words of cvlib.studies.verdicts.
RULE = ("Each claim is judged once per seed, as true, false, or unknown (the figure cannot "
        "tell, e.g. a difference inside the noise margin). The verdict is <b>holds</b> when "
        "every seed agrees the claim is true, <b>does not hold</b> when every seed says it "
        "is false, and <b>inconclusive</b> otherwise: when the seeds disagree, when any one "
        "of them cannot tell, or when a run the claim rests on failed or diverged. An "
        "inconclusive verdict says why.")


@dataclass(frozen=True)
class Evidence:
    """The figure that shows one claim's evidence."""

    png: bytes  # a PNG image
    caption: str


@dataclass(frozen=True)
class PageRow:
    """One claim of the table, with its figure."""

    key: str  # the claim's short key, e.g. "init_small": the section's id and anchor
    claim: str
    source: str
    setup: str
    measured: str  # the measured figures per seed, as text
    verdict: Verdict
    evidence: Evidence | None


def _badge(verdict: Verdict) -> str:
    return (f'<span class="badge {BADGE_CLASSES[verdict.kind]}">'
            f"{html.escape(verdict.kind)}</span>")


def verdict_summary(verdicts: list[str]) -> str:
    """The verdicts counted, e.g. ``"13 holds, 3 do not hold, 2 inconclusive"``.

    Args:
        verdicts: One verdict per claim.

    Returns:
        The three verdicts, always, in their usual order (a zero says as much as a count).
    """
    counts = Counter(verdicts)
    return ", ".join(f"{counts[verdict]} {one if counts[verdict] == 1 else many}"
                     for verdict, (one, many) in COUNTED.items())


def _figure(evidence: Evidence | None) -> str:
    if evidence is None:
        return '<p class="note">no figure for this claim</p>'
    data = base64.b64encode(evidence.png).decode("ascii")
    caption = html.escape(evidence.caption)
    return (f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _section(row: PageRow) -> str:
    key, verdict = html.escape(row.key), html.escape(row.verdict.kind)
    reason = (f'<span class="reason">{html.escape(row.verdict.reason)}</span>'
              if row.verdict.reason else "")
    return (f'<section class="claim" id="{key}" data-verdict="{verdict}">\n'
            f"<h2>{html.escape(row.claim)}</h2>\n<p>{_badge(row.verdict)}{reason}</p>\n<dl>"
            f"<dt>source</dt><dd>{html.escape(row.source)}</dd>"
            f"<dt>setup</dt><dd>{html.escape(row.setup) or '&mdash;'}</dd>"
            f"<dt>measured, per seed</dt><dd>{html.escape(row.measured) or '&mdash;'}</dd>"
            "</dl>\n"
            f"{_figure(row.evidence)}\n</section>")


def claims_page(rows: list[PageRow], title: str, about: dict[str, str]) -> str:
    """The evidence page of the claims: what was run, the verdicts counted, how a
    verdict is decided, a table of contents, then one section per claim.

    Args:
        rows: The claims, in the order shown; each key must be unique (it is the anchor).
        title: The page's title and heading.
        about: What the page was made from (scale, date, machine, command, ...), shown
            as a definition list in the given order.

    Returns:
        The whole HTML document.
    """
    keys = [row.key for row in rows]
    if len(set(keys)) != len(keys):
        # A repeated anchor would send the table of contents to the first one only.
        raise ValueError(f"claim keys repeat: {sorted({k for k in keys if keys.count(k) > 1})}")
    about_html = "".join(f"<dt>{html.escape(name)}</dt><dd>{html.escape(value)}</dd>"
                         for name, value in about.items())
    contents = "\n".join(f'<li><a href="#{html.escape(row.key)}">{html.escape(row.claim)}'
                         f"</a> {_badge(row.verdict)}</li>" for row in rows)
    sections = "\n".join(_section(row) for row in rows)
    summary = html.escape(verdict_summary([row.verdict.kind for row in rows]))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<dl class="about">{about_html}</dl>
<p class="summary">{len(rows)} claims: {summary}</p>
<p>{RULE}</p>
<nav><h2>Claims</h2>
<ol>
{contents}
</ol></nav>
{sections}
</body>
</html>
"""
