"""Headless Chromium driven by Selenium, with Debian's chromium and chromium-driver.

No driver is downloaded: Selenium is pointed at ``/usr/bin/chromedriver``.
The browser only ever loads pages from loopback.
"""

from __future__ import annotations

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.support.gateway import require

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium(width: int = 1100, height: int = 760) -> webdriver.Chrome:
    """A headless Chromium with a fixed window size (screenshots of one size)."""
    require("chromium")
    require("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--metrics-recording-only",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
