"""Headless Chromium (Debian's chromium and chromium-driver) driven with Selenium, offline.

The browser is started as the machine's notes require (root, no sandbox, no background
networking, a new empty profile) and resolves no host name but loopback addresses, so a page
that needs anything from another host fails to render, as it would on an air-gapped network.
Its console messages and every request it sends are logged for the tests to read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DESKTOP = (1280, 800)
PHONE = (390, 844)
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
    # "offline": every name but the loopback addresses fails to resolve
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
)


def require_chromium() -> None:
    """Skip on a developer's machine without Chromium; under CI (.ci/run sets CI) fail instead."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def start_chromium() -> Iterator[Any]:
    """A generator for a fixture: one browser, quit and its profile removed afterwards."""
    require_chromium()
    # Selenium Manager is never needed with both paths given; make sure it would not phone home.
    os.environ.setdefault("SE_AVOID_STATS", "true")
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="storescpd-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        set_viewport(driver, DESKTOP)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def set_viewport(driver: Any, size: tuple[int, int]) -> None:
    """Make the page's viewport (not the window, which has a frame even headless) ``size``."""
    driver.set_window_size(*size)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * size[0] - inner[0], 2 * size[1] - inner[1])


def console_errors(driver: Any) -> list[str]:
    """Console messages of level SEVERE since the last call (JavaScript errors, failed loads, CSP)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def requested_urls(driver: Any) -> list[str]:
    """Every network request the browser sent since the last call (DevTools performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    return urls


def foreign_requests(urls: list[str], origin: str) -> list[str]:
    """The requests that went to the network somewhere else than ``origin`` (scheme://host:port).

    chrome:, data:, blob: and about: URLs never leave the browser."""
    return [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss")
            and f"{urlsplit(u).scheme}://{urlsplit(u).netloc}" != origin]
