"""A generated demo report, opened in a real headless browser (Chromium through Selenium).

The browser is Debian's ``chromium`` + ``chromium-driver``. Where they are missing the set-up
installs them with apt-get when it may (running as root, and in CI or with
``WIDENET_INSTALL_BROWSER=1``); otherwise, or if that fails, the test is skipped with a message
saying how to install them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import ClassVar

import pytest

from widenet import lab

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (
    "no headless Chromium found: install it with `apt-get install chromium chromium-driver` "
    "(Debian/Ubuntu) and `pip install selenium`, or set WIDENET_INSTALL_BROWSER=1 as root to "
    "let the test set-up do it"
)


def _find() -> tuple[str | None, str | None]:
    browser = next((p for b in BROWSERS if (p := shutil.which(b))), None)
    return browser, shutil.which("chromedriver")


def _may_install() -> bool:
    allowed = os.environ.get("CI") == "true" or os.environ.get("WIDENET_INSTALL_BROWSER") == "1"
    return (
        allowed and hasattr(os, "geteuid") and os.geteuid() == 0 and bool(shutil.which("apt-get"))
    )


@pytest.fixture(scope="module")
def driver():
    webdriver = pytest.importorskip("selenium.webdriver", reason=INSTALL_HINT)
    browser, chromedriver = _find()
    if (browser is None or chromedriver is None) and _may_install():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=300, check=False)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
                env=env,
                timeout=900,
                check=False,
                capture_output=True,
            )
        except (OSError, subprocess.TimeoutExpired):
            pass
        browser, chromedriver = _find()
    if browser is None or chromedriver is None:
        pytest.skip(INSTALL_HINT)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=chromedriver)
    try:
        drv = webdriver.Chrome(options=options, service=service)
    except Exception as err:  # noqa: BLE001 - any start-up failure means no usable browser
        pytest.skip(f"Chromium did not start ({type(err).__name__}: {err}); {INSTALL_HINT}")
    yield drv
    drv.quit()


class PageConfig(lab.Config):
    n: int = 50
    QUICK: ClassVar[dict] = {"n": 20}


def page_run(config: PageConfig, ctx: lab.RunContext) -> dict:
    """A small experiment with a heat map, for the browser test.

    What it shows
    -------------
    A table of numbers::

        n    value
        20   0.05
    """
    import numpy as np

    from widenet.report import annotate_heatmap

    grid = ctx.rng.standard_normal((4, 5))
    fig = ctx.figure(figsize=(4, 3))
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="viridis")
    annotate_heatmap(ax, im, [[f"{v:.1f}" for v in row] for row in grid])
    fig.colorbar(im, ax=ax, label="value")
    ctx.save_figure(fig, "heat map")
    return {
        "n": config.n,
        "widths": [10, 100, 1000],
        "error": np.array([0.3, 0.1, 0.03]),
        "accuracy": {"iris": {"ntk": 0.95, "rf": 0.9}, "wine": {"ntk": 0.97, "rf": 0.96}},
        "curve": np.linspace(1, 0, 50),
    }


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    metrics = {"n": "size", "widths": "w", "error": "e", "accuracy": "a", "curve": "c"}
    lab.register("browser-page", summary="Browser check.", config=PageConfig, metrics=metrics)(
        page_run
    )
    out = tmp_path_factory.mktemp("browser") / "demo"
    try:
        # A real experiment too (about 2 s at quick size): its paper table and rendered docs.
        path, results = lab.run_demo(out, only=["browser-page", "du-convergence"], threads=1)
    finally:
        lab.unregister("browser-page")
    assert not any(r.error for r in results)
    return path


def test_report_in_headless_chromium(driver, demo_report):
    driver.get(demo_report.as_uri())
    assert driver.title == "widenet demo"
    broken = driver.execute_script(
        "return Array.from(document.images)"
        ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);"
    )
    n_images = driver.execute_script("return document.images.length;")
    assert n_images >= 5 and broken == []  # heat map + du-convergence's four figures
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    position = driver.execute_script(
        "return getComputedStyle(document.querySelector('nav.bar')).position;"
    )
    assert position == "sticky"
    # The contents bar stays on screen after scrolling to the last section.
    driver.execute_script("document.getElementById('exp-du-convergence').scrollIntoView();")
    top = driver.execute_script(
        "return document.querySelector('nav.bar').getBoundingClientRect().top;"
    )
    assert abs(top) < 1
    driver.execute_script("window.scrollTo(0, 0);")
    shot = demo_report.parent / "screenshot.png"
    assert driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
