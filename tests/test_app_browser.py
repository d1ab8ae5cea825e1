"""The app in a real browser: headless Chromium (Debian's `chromium` package) driven by Playwright.

Set APG_APP_SCREENSHOT=path/to/file.png to keep the screenshot (the README's is made this way).
"""

import os
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from test_app import app, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def url():
    demo = app.build_demo()
    app.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield demo.local_url
    finally:
        demo.close()


def _save_atomically(data: bytes, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        tmp.write(data)
    os.chmod(tmp.name, 0o644)  # NamedTemporaryFile makes it private
    os.replace(tmp.name, path)


def test_generate_renders_both_images(url, tmp_path):
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 1180},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.locator("#generate").click()
            slider_images = page.locator("#slider img")
            slider_images.nth(1).wait_for(state="visible")
            page.wait_for_function(
                "() => { const imgs = document.querySelectorAll('#slider img');"
                " return imgs.length >= 2 && [...imgs].every(i => i.complete && i.naturalWidth > 0); }"
            )
            sources = slider_images.evaluate_all("imgs => imgs.map(i => [i.src, i.naturalWidth, i.naturalHeight])")
            assert len({src for src, _, _ in sources}) == 2, sources  # two different images, not one twice
            assert all((w, h) == (32, 32) for _, w, h in sources), sources  # the PNGs at full resolution
            assert all(".png" in src for src, _, _ in sources), sources
            page.wait_for_function(
                f"() => document.querySelectorAll('#gallery img').length >= {2 * app.DEFAULTS['num_seeds']}"
            )
            assert "saturation" in page.locator("#summary").inner_text()
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_timeout(500)  # let the progress overlay fade and the scroll settle
            shot = page.screenshot()

            # The paper's preset fills the right method's sliders, and the next run uses them.
            page.locator("#right-preset input").click()
            page.get_by_role("option", name="sd21", exact=True).click()
            first_code = page.locator("#code").inner_text()
            page.locator("#generate").click()
            page.wait_for_function(
                "previous => { const code = document.querySelector('#code').innerText;"
                " return code !== previous && code.includes('norm_threshold=7.5, momentum=-0.75'); }",
                arg=first_code,
            )
        finally:
            context.close()
    _save_atomically(shot, Path(os.environ.get("APG_APP_SCREENSHOT", tmp_path / "screenshot.png")))
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
