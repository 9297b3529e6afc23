"""Debian's headless Chromium driven through its chromedriver (selenium), for the dashboard's
browser tests; never a browser downloaded by a tool. Every wait is for a condition, with a
deadline."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
)
WAIT_SECONDS = 30.0
#: Set to a folder (docs/images) to have the browser test save each page there.
SCREENSHOTS_ENVIRONMENT_VARIABLE = "DLEDGER_MQ_DASHBOARD_SCREENSHOTS"


def require_chromium() -> None:
    """Skip where there is no Chromium, except in CI (.ci/run installs it): there, fail."""
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} missing: .ci/run should have installed them")
    pytest.skip(f"no {CHROMIUM} (apt-get install chromium chromium-driver)")


@contextmanager
def chromium() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    service = Service(shutil.which("chromedriver") or CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()  # stops the chromedriver and the browser it started


def wait_for(driver: Any, condition: Callable[[Any], object], what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(condition)
    except TimeoutException:
        body = driver.find_element("tag name", "body").text[:3000]
        raise AssertionError(f"not within {WAIT_SECONDS} s: {what}\npage:\n{body}") from None


def text_of(driver: Any, selector: str) -> str | None:
    """The text of the first element ``selector`` finds, None if there is none: read in one
    step in the page (each sample replaces the tables' rows, so a found element goes stale)."""
    text = driver.execute_script(
        "const found = document.querySelector(arguments[0]);"
        "return found ? found.textContent.trim() : null;",
        selector,
    )
    return None if text is None else str(text)


def attribute_of(driver: Any, selector: str, name: str) -> str | None:
    value = driver.execute_script(
        "const found = document.querySelector(arguments[0]);"
        "return found ? found.getAttribute(arguments[1]) : null;",
        selector,
        name,
    )
    return None if value is None else str(value)


def sign_in(driver: Any, base_url: str, access_key: str, secret_key: str) -> None:
    driver.get(base_url + "/")
    wait_for(driver, lambda d: d.find_elements("id", "access-key"), "the sign-in form")
    driver.find_element("id", "access-key").send_keys(access_key)
    driver.find_element("id", "secret-key").send_keys(secret_key)
    driver.find_element("id", "sign-in").click()
    wait_for(driver, lambda d: text_of(d, "#connection") == "live", "the page live")


def show_view(driver: Any, view: str) -> None:
    """Switch the page to ``view`` as its navigation does (no reload)."""
    driver.find_element("css selector", f'nav a[data-view="{view}"]').click()
    wait_for(
        driver,
        lambda d: d.find_element("id", f"view-{view}").is_displayed(),
        f"the {view} view",
    )


def screenshot(driver: Any, name: str) -> None:
    folder = os.environ.get(SCREENSHOTS_ENVIRONMENT_VARIABLE)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"dashboard-{name}.png"))
