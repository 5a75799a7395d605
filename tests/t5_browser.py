"""Tier 3: an HTML coverage report opened from the mount in a real browser (headless
Chromium from Debian, driven by Selenium): relative links and stylesheets just work."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import TOKEN, require_fuse


def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CIARTFS_REQUIRE_FUSE") == "1":  # CI installs them (scripts/test.sh)
            pytest.fail("chromium and chromium-driver are required in CI")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


@pytest.mark.parametrize("report", [
    "github/acme/api/latest/0/coverage",  # CircleCI: files of their own
    "actions/acme/api/workflow/ci.yml/latest/coverage-report",  # GitHub Actions: members of a zip
])
def test_coverage_report_opens_with_links_and_styles(demo_fake, mount, report):
    require_fuse()
    from selenium.webdriver.common.by import By

    m = mount(env={"GH_TOKEN": TOKEN})
    index = m.path / report / "index.html"
    assert index.is_file()
    driver = browser()
    try:
        driver.set_page_load_timeout(60)
        driver.get(index.as_uri())
        assert driver.title.startswith("Coverage for build")
        body_font = driver.execute_script("return getComputedStyle(document.body).fontFamily")
        assert "sans-serif" in body_font, "style.css (a relative link) was applied"
        driver.find_element(By.LINK_TEXT, "src/app.py").click()
        assert driver.title == "src/app.py"
        assert driver.current_url == (index.parent / "src/app.py.html").as_uri()
        covered = driver.find_element(By.CLASS_NAME, "covered")
        assert covered.value_of_css_property("background-color") == "rgba(204, 255, 204, 1)", \
            "../style.css from the linked page was applied"
    finally:
        driver.quit()
