"""The app in a real browser: headless Chromium (Debian's `chromium` package) driven by Playwright.

The page is a laptop screen, 1366 x 768. Set APG_APP_SCREENSHOT=path/to/file.png to keep the screenshot of the
fold (app/screenshot.png is made this way).
"""

import os
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from test_app import free_port

import apg
from apg.app import logic, ui

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000
LAPTOPS = ({"width": 1366, "height": 768}, {"width": 1440, "height": 900})
# What must be on screen together, without scrolling: every control of the default settings with a custom interval
# on the right (the tallest panel), the button and the first seed's result.
ABOVE_THE_FOLD = ("model", "num-seeds", "steps", "scheduler", "guidance-scale", "height", "width", "left-method",
                  "left-interval", "right-method", "right-preset", "right-eta", "right-norm_threshold",
                  "right-momentum", "right-interval", "right-sigma-low", "right-sigma-high", "generate", "slider",
                  "summary")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    demo = ui.build_demo()
    ui.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path_factory.mktemp("profile")), executable_path=str(CHROMIUM), headless=True,
                args=CHROMIUM_ARGS, viewport=LAPTOPS[0],
            )
            try:
                page = context.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(demo.local_url)
                yield page
            finally:
                context.close()
    finally:
        demo.close()


def _save_atomically(data: bytes, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        tmp.write(data)
    os.chmod(tmp.name, 0o644)  # NamedTemporaryFile makes it private
    os.replace(tmp.name, path)


def _fill(page, elem_id, value):
    box = page.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.blur()


def _choose(page, elem_id, option):
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def _generate(page, expect_in_summary):
    previous = page.locator("#summary").inner_text()
    page.locator("#generate").click()
    page.wait_for_function(
        "([previous, text]) => { const s = document.querySelector('#summary').innerText;"
        " return s !== previous && s.includes(text); }", arg=[previous, expect_in_summary])


def test_eight_seeds_every_row_and_caption_in_full(page):
    _fill(page, "steps", 6)
    _fill(page, "num-seeds", 8)
    _generate(page, "mean over 8 seeds")
    page.wait_for_function("() => [...document.querySelectorAll('#gallery img')].filter(i => i.complete"
                           " && i.naturalWidth > 0).length >= 16")
    sources = page.locator("#slider img").evaluate_all("imgs => imgs.map(i => [i.src, i.naturalWidth])")
    assert len({src for src, _ in sources}) == 2 and all(w == 32 and ".png" in s for s, w in sources), sources
    # No scroll box around the gallery: every row is on the page.
    wrap = page.locator("#gallery .grid-wrap").evaluate("e => [e.scrollHeight, e.clientHeight]")
    assert wrap[0] <= wrap[1] + 1, wrap
    captions = page.locator("#gallery .caption-label").evaluate_all(
        "els => els.map(e => [e.innerText, e.scrollWidth <= e.clientWidth + 1, e.scrollHeight <= e.clientHeight + 1])")
    assert len(captions) == 16 and all(fits_x and fits_y for _, fits_x, fits_y in captions), captions
    assert all("clipped" in text and " %" in text for text, _, _ in captions), captions
    headers = page.locator("#table th").all_inner_texts()
    assert any("CFG clipped %" in h for h in headers) and any("APG saturation" in h for h in headers), headers


def _outside_the_screen(page):
    """ids of ABOVE_THE_FOLD whose box is not wholly inside the viewport (or that are not shown)."""
    return page.evaluate(
        """ids => ids.filter(id => { const e = document.getElementById(id); if (!e || !e.offsetParent) return true;
           const r = e.getBoundingClientRect(); return r.width === 0 || r.left < 0 || r.top < 0
           || r.right > window.innerWidth || r.bottom > window.innerHeight; })""", list(ABOVE_THE_FOLD))


def test_controls_button_and_result_fit_a_laptop_screen(page, tmp_path):
    _fill(page, "num-seeds", 4)
    _choose(page, "right-interval", "σ range (below)")
    _fill(page, "right-sigma-low", 0.5)
    _generate(page, "σ∈(0.5, inf]")
    assert "interval=(0.5, float('inf'))" in page.locator("#code").inner_text()  # an empty high box is ∞
    try:
        for size in LAPTOPS:
            page.set_viewport_size(size)
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_timeout(500)  # let the layout and the progress overlay settle
            assert _outside_the_screen(page) == [], size
        page.set_viewport_size(LAPTOPS[0])
        page.wait_for_timeout(500)
        shot = page.screenshot()
        _save_atomically(shot, Path(os.environ.get("APG_APP_SCREENSHOT", tmp_path / "screenshot.png")))
    finally:
        page.set_viewport_size(LAPTOPS[0])
        _choose(page, "right-interval", "off")


def _dimmed(page):
    """Result id -> whether it is dimmed."""
    return page.evaluate("ids => Object.fromEntries(ids.map(id => [id,"
                         " getComputedStyle(document.getElementById(id)).opacity < 1]))", list(ui.RESULT_IDS))


def test_changed_settings_dim_every_result_until_generate(page):
    _generate(page, "Right")
    assert not any(_dimmed(page).values()) and not page.locator("#stale-note").is_visible()
    _fill(page, "num-seeds", 1)
    assert all(_dimmed(page).values()), _dimmed(page)  # the images, the summary, the table and the code box
    assert page.locator("#stale-note").is_visible()
    _generate(page, "seed 0")
    page.wait_for_function("() => !document.body.classList.contains('apg-stale')")
    assert not any(_dimmed(page).values()) and not page.locator("#stale-note").is_visible()


def test_a_change_during_a_run_keeps_its_result_dimmed(page):
    _fill(page, "num-seeds", 8)
    _fill(page, "steps", 25)  # a run long enough to change a setting while it runs
    previous = page.locator("#summary").inner_text()
    page.locator("#generate").click()
    _fill(page, "seed", 3)
    page.wait_for_function("previous => document.querySelector('#summary').innerText !== previous", arg=previous)
    page.wait_for_timeout(500)
    assert all(_dimmed(page).values()), _dimmed(page)  # the result is for seed 0, the screen says seed 3
    _fill(page, "seed", 0)
    _fill(page, "steps", 6)


def test_out_of_range_steps_are_refused_with_a_message_not_clamped(page):
    _fill(page, "steps", 0)
    page.locator("#generate").click()
    toast = page.get_by_text("Invalid settings: steps must be in [1, 1000], got 0")
    toast.wait_for(state="visible")
    assert page.locator("#steps input").input_value() == "0"  # the box keeps what was typed
    page.wait_for_function("() => document.body.classList.contains('apg-stale')")
    _fill(page, "steps", 6)


@pytest.mark.parametrize("method", list(apg.METHODS))
def test_each_method_shows_its_own_knobs_and_runs(page, method):
    cls = apg.METHODS[method]
    _choose(page, "right-method", cls.label)
    own = {param.name for param in cls.parameters}
    for name in logic.method_parameters():  # the widgets update after a round trip to the server
        page.locator(f"#right-{name}").wait_for(state="visible" if name in own else "hidden", timeout=10_000)
    _generate(page, f"Right ▶ {cls.label}")


def test_preset_and_interval_reach_the_run(page):
    _choose(page, "right-method", "APG")
    _choose(page, "right-preset", "sd21")
    name, (low, high) = next(iter(apg.INTERVALS.items()))
    _choose(page, "right-interval", f"{name}: σ ∈ ({low:g}, {high:g}]")
    _generate(page, "β=-0.75")
    code = page.locator("#code").inner_text()
    assert "norm_threshold=7.5, momentum=-0.75" in code and f"interval=({low!r}, {high!r})" in code
