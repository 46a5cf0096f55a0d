"""The Space in a real browser: Debian's chromium driven by Playwright (executable_path, never a downloaded
browser); skipped with the reason where chromium is missing."""

import json
import os
import shutil
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="the Space needs gradio: pip install 'hfq[spaces]'")

import hfq  # noqa: E402,F401
from hfq.space import comparison  # noqa: E402
from space_helpers import CHROMIUM, EVIL, PROMPT, _serve, variants_dir  # noqa: E402,F401 (fixture)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    pw = sync_api.sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM)
    yield b
    b.close()
    pw.stop()


def test_browser_click_streams_every_panel_and_escapes_names(browser, variants_dir, tmp_path):
    from playwright.sync_api import expect

    folder = tmp_path / "evil"
    shutil.copytree(variants_dir, folder)
    results = json.loads((folder / "results.json").read_text())
    for r in results["variants"]:   # a hostile variant name, as a card or repo id could carry it
        for k in ("folder", "file"):
            if k in r:
                r[k] = r[k].replace(str(variants_dir), str(folder))
    results["variants"][0]["variant"] = EVIL
    (folder / "results.json").write_text(json.dumps(results))
    cmp = comparison(variants=folder)
    demo = _serve(cmp)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(demo.local_url)
        page.locator("#prompt textarea").fill(PROMPT)
        page.get_by_role("button", name="Generate").click()
        for i in range(len(cmp.specs)):
            expect(page.locator(f"#panel-{i} textarea")).not_to_have_value("", timeout=30_000)
            expect(page.locator(f"#cost-{i}")).to_contain_text("tokens/s", timeout=30_000)
        expect(page.locator("#panel-1")).to_contain_text(EVIL)        # the label, shown as text
        page.get_by_role("tab", name="Divergence").click()
        page.get_by_role("button", name="Show divergence").click()
        expect(page.locator("#hfq-divergence")).to_contain_text(EVIL, timeout=30_000)
        assert page.locator("#hfq-divergence .hfq-variant").count() == len(cmp.specs) - 1
        page.get_by_role("tab", name="Quality").click()
        expect(page.locator("#quality")).to_contain_text(EVIL)       # the table cell, as text
        page.get_by_role("tab", name="Side by side").click()
        shot = Path(os.environ.get("HFQ_TEST_ARTIFACTS", tmp_path)) / "space.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert page.evaluate("window.__hfq_pwned") is None
        assert page.locator("#panel-1 script, #hfq-divergence script, #hfq-divergence img, #quality script, "
                            "#quality img").count() == 0
    finally:
        page.close()
        demo.close()
