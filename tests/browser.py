"""Headless Chromium for the browser tests (Debian's chromium driven by Playwright): one
browser per test session, and pages that record console errors and refuse every request that
would leave the machine."""

from __future__ import annotations

import os
import shutil

import pytest

# the flags this machine needs: no background connections (refused by the closed network)
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def executable() -> str:
    """Chromium's path; skip without it (fail under CI, which installs it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
    pytest.skip("chromium not installed here (CI installs it)")


def offline_page(browser, width: int = 1280):
    """A new page of `width` CSS pixels and the lists its console errors and its refused
    outside requests (anything but file: and data: URLs) are appended to."""
    errors: list[str] = []
    outside: list[str] = []
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r):
        if r.request.url.startswith(("file://", "data:")):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return page, errors, outside
