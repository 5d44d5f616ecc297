"""report.html renders in a real browser: headless Chromium (Debian's ``chromium`` package) opens a demo run's
report offline, prints no console message (the page has no scripts; a broken image or blocked resource would log
one) and paints a non-blank page with the plots.

CI installs Chromium (``make browser``, called by ``.ci/run``) and sets ``UNPACT_REQUIRE_BROWSER=1``, which turns a
missing browser into a failure; elsewhere the test is skipped with the reason shown in pytest's summary.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from unpact_mech.demo import DemoConfig, run_demo


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("UNPACT_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed but UNPACT_REQUIRE_BROWSER=1 (run `make browser`)")
        pytest.skip("chromium not installed (`make browser` installs Debian's chromium)")
    return path


def _render(browser: str, html, png, profile, height: int) -> str:
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        f"--window-size=1300,{height}",
        f"--screenshot={png}",
        html.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def test_demo_report_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    run = run_demo(DemoConfig(model="tiny"), tmp_path / "run", progress=False, log=lambda _: None)
    png = tmp_path / "shot.png"
    log = _render(browser, run.report, png, tmp_path / "profile", 2400)
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not console, console

    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2400, 1300)
    non_white = (pixels.min(axis=2) < 235).mean()
    coloured = (pixels.max(axis=2) - pixels.min(axis=2) > 60).mean()  # heatmaps, plot lines, token colours
    assert non_white > 0.03, non_white  # text, tables and plots were painted
    assert coloured > 0.002, coloured


def test_a_console_error_is_caught(tmp_path):
    """Control: the console check can fail (a page that logs an error is reported)."""
    browser = _chromium()
    page = tmp_path / "bad.html"
    page.write_text("<html><body><p>x</p><script>console.error('broken-report')</script></body></html>")
    log = _render(browser, page, tmp_path / "bad.png", tmp_path / "profile", 300)
    assert any(":CONSOLE" in line and "broken-report" in line for line in log.splitlines())
