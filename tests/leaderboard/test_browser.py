"""A real browser (Debian's chromium through playwright) opens the built site.

It checks that the tables render, that clicking a column header re-sorts the rows, and
that a script injected through a submission did not run. Needs ``/usr/bin/chromium``
(``.ci/browser-deps.sh`` installs it) and the ``playwright`` Python package.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from leaderboard import Board, build_site

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
INJECTED = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium (run .ci/browser-deps.sh)"),
]


@pytest.fixture
def site(bundle, helpers, tmp_path):
    board = Board(tmp_path / "board")
    evil = copy.deepcopy(bundle)
    evil["submitter"] = {"name": "Zed " + INJECTED, "affiliation": "Evil Lab", "link": "javascript:window.__pwned=3"}
    board.add(helpers.dump(helpers.reseal(evil), tmp_path / "evil.json"))
    # a second, honest entry with worse numbers, so sorting has something to reorder
    other = copy.deepcopy(bundle)
    other["submitter"] = {"name": "Alice", "affiliation": "Good Lab", "link": "https://example.org"}
    for cell in other["cells"]:
        for case in cell["cases"]:
            # honest counts for half the Dice: every metric must follow from them
            case.update(helpers.counts_for_dice(case["dice"] * 0.5))
            helpers.recount(case)
    board.add(helpers.dump(helpers.reseal(other, recompute_aggregates=True), tmp_path / "alice.json"))
    build_site(board, tmp_path / "site")
    return tmp_path / "site"


def test_site_in_a_real_browser(site):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            requests: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda req: requests.append(req.url))
            page.goto((site / "index.html").as_uri())
            page.wait_for_selector("html[data-sortable=ready]", timeout=10_000)

            # tables render with rows
            assert page.locator("table#entries tbody tr").count() == 2
            assert page.locator("table#attacks tbody tr").count() == 2
            assert page.locator("table#defenses tbody tr").count() == 2
            assert page.locator("table#segmenters tbody tr").count() == 2
            assert page.locator("table#cells tbody tr").count() == 16
            assert page.locator("img").first.evaluate("img => img.complete && img.naturalWidth > 0")

            # the injected markup is shown as text and did not run
            assert "<script>window.__pwned = 1</script>" in page.locator("table#entries").inner_text()
            assert page.evaluate("window.__pwned") is None
            assert page.locator("table#entries img").count() == 0

            # clicking the clean-Dice header sorts the attacks board, twice reverses it
            def column(table: str, index: int) -> list[str]:
                return page.locator(f"table#{table} tbody tr").evaluate_all(
                    f"rows => rows.map(r => r.cells[{index}].getAttribute('data-sort') || r.cells[{index}].textContent.trim())"
                )

            header = page.locator("table#attacks thead th", has_text="clean Dice")
            index = int(header.evaluate("th => th.cellIndex"))
            header.click()
            ascending = [float(v) for v in column("attacks", index)]
            assert ascending == sorted(ascending) and ascending[0] < ascending[-1]
            assert header.get_attribute("aria-sort") == "ascending"
            header.click()
            descending = [float(v) for v in column("attacks", index)]
            assert descending == sorted(ascending, reverse=True)
            assert header.get_attribute("aria-sort") == "descending"
            names = page.locator("table#entries thead th").first
            names.click()
            assert column("entries", 0)[0].startswith("Alice")
            names.click()
            assert column("entries", 0)[0].startswith("Zed")

            # the entry page: text, no execution, javascript: link not made a link
            page.locator("table#entries a", has_text="Zed").click()
            page.wait_for_selector("html[data-sortable=ready]", timeout=10_000)
            assert "entries/" in page.url
            assert INJECTED in page.locator("h1").inner_text()
            assert page.evaluate("window.__pwned") is None
            assert page.locator("a[href^='javascript:']").count() == 0
            assert page.locator("table#entry-cells tbody tr").count() == 8  # seeds pooled per rate and defense

            assert not errors, errors
            assert all(url.startswith("file://") for url in requests), requests  # nothing from the network
        finally:
            browser.close()
