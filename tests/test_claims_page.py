"""The claims' evidence page (cvlib.studies.claims_page) as text and as Chromium renders
it, and scripts/claims_doc.py, the real script in a subprocess, on a made OUT_DIR."""
import base64
import io
import json
import re
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO
from hostile import HOSTILE, assert_hostile_text_is_inert, open_trapped
from matplotlib.figure import Figure

from cvlib.studies.claims_page import Evidence, PageRow, claims_page
from cvlib.studies.judgments import DOES_NOT_HOLD, HOLDS, Verdict, inconclusive

# A claim text with everything that must be escaped in HTML or in a markdown table.
TRICKY = "max |logit difference| < 1e-3 & <b>same</b> classes"


def _png(width: float = 3.0) -> bytes:
    figure = Figure(figsize=(width, 2), dpi=50)
    figure.subplots().plot([0, 1, 2], [1, 0.5, 0.1])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _rows() -> list[PageRow]:
    def row(key, verdict, claim, evidence):
        return PageRow(key, claim, "CS231n lecture 6", f"setup of {key}",
                       "seed 0: 1.2e-4, seed 1: 3.4e-4", verdict, evidence)
    return [
        row("init_small", Verdict(HOLDS), "tanh + 0.01*randn: activations collapse",
            Evidence(_png(3), "std by depth <small init>")),
        row("init_unit", Verdict(HOLDS), "tanh + 1.0*randn: saturated",
            Evidence(_png(4), "saturation")),
        row("bn_test_time", Verdict(DOES_NOT_HOLD), TRICKY, None),
        row("lr_range", inconclusive("failed: relu-he-none-s1 <x>"),
            "The best SGD learning rate", Evidence(_png(2), "lr")),
    ]


ABOUT = {"scale": "smoke", "date": "2026-12-02", "machine": "ci & co",
         "command": "cvlib claims --scale smoke"}


def test_page_has_a_section_per_claim_with_its_verdict_and_figure():
    rows = _rows()
    page = claims_page(rows, "What <cvlib claims> found", ABOUT)
    sections = re.findall(r'<section class="claim" id="([^"]+)" data-verdict="([^"]+)">', page)
    assert sections == [("init_small", "holds"), ("init_unit", "holds"),
                        ("bn_test_time", "does not hold"), ("lr_range", "inconclusive")]
    assert "4 claims: 2 holds, 1 does not hold, 1 inconclusive" in page
    for row in rows[:2] + rows[3:]:
        assert f'src="data:image/png;base64,{base64.b64encode(row.evidence.png).decode()}"' \
            in page
    assert page.count("<figcaption>") == 3 and "no figure" in page
    # Escaped everywhere: title, about, claim (heading and contents), caption.
    # An inconclusive verdict says why, next to its badge.
    assert ('<span class="badge inconclusive">inconclusive</span><span class="reason">'
            'failed: relu-he-none-s1 &lt;x&gt;</span>') in page
    assert "<cvlib claims>" not in page and "What &lt;cvlib claims&gt; found" in page
    assert "ci &amp; co" in page and "<b>same</b>" not in page
    assert page.count(TRICKY.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")) \
        == 2
    assert "std by depth &lt;small init&gt;" in page
    for key, _ in sections:
        assert f'href="#{key}"' in page
    # Nothing to fetch.
    assert not re.search(r"""(src|href)=["']?https?:""", page)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page


def test_page_counts_verdicts():
    rows = [PageRow(f"k{i}", "c", "s", "", "", verdict, None)
            for i, verdict in enumerate([Verdict(HOLDS)] * 13 + [Verdict(DOES_NOT_HOLD)] * 3
                                        + [inconclusive("why")] * 2)]
    assert "18 claims: 13 holds, 3 do not hold, 2 inconclusive" in claims_page(rows, "t", {})
    with pytest.raises(ValueError, match="k0"):
        claims_page(rows + rows[:1], "t", {})


@pytest.fixture
def out_dir(tmp_path):
    """What `cvlib claims --out` writes: claims.csv, about.json and four figures."""
    folder = tmp_path / "out"
    (folder / "figures").mkdir(parents=True)
    rows = _rows()
    pd.DataFrame([{"key": row.key, "claim": row.claim, "source": row.source,
                   "setup": row.setup, "measured": row.measured, "verdict": row.verdict.kind,
                   "reason": row.verdict.reason}
                  for row in rows]).to_csv(folder / "claims.csv", index=False)
    (folder / "about.json").write_text(json.dumps({**ABOUT, "wall_time": "3 min"}))
    captions = {}
    for row in rows:
        if row.evidence:
            (folder / "figures" / f"{row.key}.png").write_bytes(row.evidence.png)
            captions[row.key] = row.evidence.caption
    (folder / "figures" / "captions.json").write_text(json.dumps(captions))
    return folder


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/claims_doc.py", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_script_writes_the_doc_and_copies_the_figures(out_dir, tmp_path):
    doc = tmp_path / "docs" / "claims.md"
    result = _script(str(out_dir), "--doc", str(doc))
    assert result.returncode == 0, result.stderr
    text = doc.read_text()
    assert text.startswith("# What `cvlib claims` found")
    assert "`cvlib claims --scale smoke`" in text and "2026-12-02" in text and "ci & co" in text
    assert "scripts/claims_doc.py" in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 4  # header, rule, one row per claim
    assert re.sub(r"\s+", " ", table[0]) == "| claim | setup | measured | verdict |"
    # Escaped "|": every row keeps its four cells.
    assert all(len(re.findall(r"(?<!\\)\|", line)) == 5 for line in table)
    # Shown as written, not as markup: "|" escaped, and "<b>", "*" too.
    assert "max \\|logit difference\\| < 1e-3 & \\<b>same\\</b> classes" in text
    assert "tanh + 0.01\\*randn" in text
    # An inconclusive verdict shows its reason.
    assert "| inconclusive: failed: relu-he-none-s1 \\<x> |" in re.sub(r" +\|", " |", text)
    # Default: the first three claims with a figure (bn_test_time has none).
    images = doc.parent / "images" / "claims"
    assert sorted(path.name for path in images.iterdir()) == [
        "init_small.png", "init_unit.png", "lr_range.png"]
    assert (images / "lr_range.png").read_bytes() == (out_dir / "figures" / "lr_range.png"
                                                      ).read_bytes()
    assert "![saturation](images/claims/init_unit.png)" in text
    assert "*std by depth \\<small init>*" in text


def test_script_shows_the_named_figures_and_rejects_unknown_ones(out_dir, tmp_path):
    doc = tmp_path / "claims.md"
    result = _script(str(out_dir), "--doc", str(doc), "--figures", "lr_range")
    assert result.returncode == 0, result.stderr
    assert [path.name for path in (tmp_path / "images" / "claims").iterdir()] == ["lr_range.png"]
    assert "](images/claims/lr_range.png)" in doc.read_text()
    result = _script(str(out_dir), "--doc", str(doc), "--figures", "bn_test_time")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "bn_test_time" in result.stderr


def test_script_needs_claims_csv_and_explains_itself(out_dir, tmp_path):
    (out_dir / "claims.csv").unlink()
    result = _script(str(out_dir), "--doc", str(tmp_path / "claims.md"))
    assert result.returncode == 2 and not (tmp_path / "claims.md").exists()
    assert result.stderr.count("\n") == 1 and "no claims.csv" in result.stderr
    help_ = _script("--help")
    assert help_.returncode == 0 and "OUT_DIR" in help_.stdout and "--figures" in help_.stdout


@pytest.mark.parametrize("verdict, reason", [("maybe", ""), ("inconclusive", ""),
                                             ("holds", "because")])
def test_script_refuses_a_verdict_it_does_not_know_or_one_without_its_reason(
        out_dir, tmp_path, verdict, reason):
    table = pd.read_csv(out_dir / "claims.csv", keep_default_na=False)
    table.loc[0, ["verdict", "reason"]] = [verdict, reason]
    table.to_csv(out_dir / "claims.csv", index=False)
    result = _script(str(out_dir), "--doc", str(tmp_path / "claims.md"))
    assert result.returncode == 2 and not (tmp_path / "claims.md").exists()
    assert result.stderr.count("\n") == 1 and "claims.csv" in result.stderr


def test_page_renders_in_chromium(page, tmp_path, test_artifacts):
    path = tmp_path / "claims.html"
    path.write_text(claims_page(_rows(), "What cvlib claims found", ABOUT))
    fetched = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(path.as_uri())
    assert [url for url in fetched if not url.startswith(("file:", "data:"))] == []
    sections = page.locator("section.claim")
    assert sections.count() == 4
    for index in range(4):
        assert sections.nth(index).is_visible()
    widths = page.eval_on_selector_all("img", "images => images.map(i => i.naturalWidth)")
    assert len(widths) == 3 and all(width > 0 for width in widths)
    # The verdict badges are coloured apart: green, red, grey.
    colours = [page.eval_on_selector(f"#{key} .badge",
                                     "badge => getComputedStyle(badge).backgroundColor")
               for key in ("init_small", "bn_test_time", "lr_range")]
    assert len(set(colours)) == 3
    page.screenshot(path=str(test_artifacts / "claims-page.png"), full_page=True)
    # A small window, so that a jump must scroll; each link lands on its section.
    page.set_viewport_size({"width": 400, "height": 300})
    for key in ("lr_range", "init_unit", "bn_test_time"):
        page.click(f'nav a[href="#{key}"]')
        assert page.evaluate("location.hash") == f"#{key}"
        assert page.eval_on_selector(":target", "element => element.id") == key
        top = page.eval_on_selector(f"#{key}", "element => element.getBoundingClientRect().top")
        assert -1 < top < 300  # scrolled to a fraction of a pixel


def test_hostile_strings_in_every_field_are_shown_as_text_and_never_run(page, tmp_path,
                                                                       test_artifacts):
    """A claim's measured text and reason carry run names and error messages; the key,
    title and about fields are escaped as carefully, attributes and anchors included."""
    rows = [PageRow(f"{hostile} {index}", hostile, hostile, hostile, hostile,
                    inconclusive(hostile) if index % 2 else Verdict(HOLDS),
                    Evidence(_png(2), hostile) if index % 3 else None)
            for index, hostile in enumerate(HOSTILE)]
    path = tmp_path / "claims.html"
    path.write_text(claims_page(rows, " ".join(HOSTILE), {hostile: hostile for hostile in HOSTILE}))
    dialogs = open_trapped(page, path.as_uri())
    page.screenshot(path=str(test_artifacts / "claims-page-hostile.png"), full_page=True)
    assert_hostile_text_is_inert(page, dialogs, scripts=0)
    assert page.title() == " ".join(HOSTILE)
    for index, hostile in enumerate(HOSTILE):
        section = page.locator("section.claim").nth(index)
        assert section.get_attribute("id") == f"{hostile} {index}"
        assert section.locator("h2").inner_text() == hostile
        if index % 2:
            assert section.locator(".reason").inner_text() == hostile
        if index % 3:
            assert section.locator("figcaption").inner_text() == hostile
            assert section.locator("img").get_attribute("alt") == hostile
    # Each link of the contents still lands on its own section.
    for index, hostile in enumerate(HOSTILE):
        page.locator("nav a").nth(index).click()
        assert page.eval_on_selector(":target", "element => element.id") == f"{hostile} {index}"
