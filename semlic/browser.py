"""A page opened in headless Chromium: its console errors, what a script finds on it, a screenshot.

Used by ``semlic report --screenshot`` and the report's tests. Chromium and ChromeDriver come from
Debian's packages (``chromium``, ``chromium-driver``: the Makefile installs them); Selenium drives
them. Chromium starts with no network of its own (no background networking, sync or component
updates), in a fresh profile, so a page that needs the network shows it as errors.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, import_extra

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-extensions", "--disable-default-apps", "--hide-scrollbars")


# Resolves once every picture of the page has loaded or failed (a failure is a console error).
WAIT_FOR_IMAGES = ("const done = arguments[arguments.length - 1];"
                   "Promise.all([...document.images].map(i => i.complete ? 0 : "
                   "new Promise(r => {i.onload = i.onerror = r;}))).then(() => done(true));")


@dataclass
class PageCheck:
    errors: list[str] = field(default_factory=list)     # console messages of level SEVERE
    messages: list[str] = field(default_factory=list)   # every console message
    result: Any = None                                  # what ``script`` returned


def find_binary(name: str, env: str, candidates: tuple[str, ...]) -> str:
    path = os.environ.get(env) or next((p for p in candidates if Path(p).is_file()), None) or shutil.which(name)
    if not path:
        raise ConfigError(f"{name} not found ({', '.join(candidates)}; set {env}): install Debian's chromium and "
                          "chromium-driver packages (`make browser`)")
    return path


def check_page(page: str | os.PathLike, *, script: str | None = None, screenshot: str | os.PathLike | None = None,
               width: int = 1400, height: int = 1800, actions: str | None = None) -> PageCheck:
    """Open ``page`` (a file), run ``actions`` (JavaScript, e.g. moving a slider), then ``script``
    (JavaScript whose ``return`` value comes back as ``result``); save a ``screenshot`` (PNG)."""
    webdriver = import_extra("selenium.webdriver", "report", "the report's browser check")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = find_binary("chromium", "SEMLIC_CHROMIUM", ("/usr/bin/chromium",
                                                                          "/usr/bin/chromium-browser"))
    profile = tempfile.mkdtemp(prefix="semlic-chromium-")
    for flag in CHROMIUM_FLAGS + (f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=find_binary("chromedriver", "SEMLIC_CHROMEDRIVER", ("/usr/bin/chromedriver",)))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(60)
        driver.get(Path(page).absolute().as_uri())
        driver.execute_async_script(WAIT_FOR_IMAGES)
        if actions:
            driver.execute_script(actions)
            driver.execute_async_script(WAIT_FOR_IMAGES)
        check = PageCheck()
        if script:
            check.result = driver.execute_script(script)
        if screenshot is not None:  # the whole page, not only the window
            import base64

            size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
            shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        for entry in driver.get_log("browser"):
            text = f"{entry.get('level')}: {entry.get('message')}"
            check.messages.append(text)
            if entry.get("level") == "SEVERE":
                check.errors.append(text)
        return check
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
