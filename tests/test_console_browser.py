"""The console in a real browser: headless Chromium (Debian's) driven by Selenium signs in through
the form, finds the jobs table and the charts rendered, and takes a screenshot (docs/console.png,
the README's, is refreshed only with MATCHER_UPDATE_SCREENSHOTS=1, so a test run leaves the tree clean)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests import console_fixtures

console_env = console_fixtures.console_env  # the session-scoped fixture

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
README_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "console.png"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="no /usr/bin/chromium and /usr/bin/chromedriver: `make browser` installs them (apt, as root)")


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="matcher-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # The network is closed: without these Chromium keeps trying to reach its update and sync services.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1360,1900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(10)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_sign_in_and_see_jobs_and_charts(console_env, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    browser.get(console_env.url + "/")
    assert browser.find_elements(By.ID, "jobs") == []  # 401: the sign-in form only
    browser.find_element(By.ID, "token").send_keys(console_env.console_token)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    # The click returns once the form is sent; the redirect to the dashboard may still be loading.
    WebDriverWait(browser, 10).until(lambda driver: driver.find_elements(By.ID, "jobs"))

    rows = browser.find_elements(By.CSS_SELECTOR, "table#jobs tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, ".state").text for r in rows].count("released") == 3
    assert "list_too_small" in browser.find_element(By.ID, "jobs").text
    for chart in ("jobs-chart", "epsilon-chart"):
        svg = browser.find_element(By.CSS_SELECTOR, f"#{chart} svg")
        assert svg.size["width"] > 300 and svg.size["height"] > 60  # laid out, not an empty box
        bars = svg.find_elements(By.CSS_SELECTOR, "rect.bar")
        assert bars and max(b.size["height"] * b.size["width"] for b in bars) > 10
    assert browser.get_cookie("matcher_console")["httpOnly"] is True
    screenshot = README_SCREENSHOT if os.environ.get("MATCHER_UPDATE_SCREENSHOTS") == "1" else \
        Path(tempfile.mkdtemp(prefix="matcher-console-shot-")) / "console.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000   # a rendered page, not a blank one
