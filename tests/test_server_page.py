"""The web page end to end in headless Chromium: pick a LoRA, generate, see progress, results and infotext."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from generate_fixtures import RunningServer, load_generator, tiny_lora_folder

from lorapipe.server.app import create_app
from lorapipe.server.settings import ServerSettings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="headless Chromium not installed (apt install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    generator = load_generator(tiny_model_dir, tiny_lora_folder(tmp_path_factory.mktemp("page"), tiny_model_dir))
    with RunningServer(create_app(ServerSettings(), generator=generator)) as running:
        yield running


@pytest.fixture()
def browser():
    selenium = pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    del selenium
    profile = tempfile.mkdtemp(prefix="lorapipe-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_page_generates_with_a_lora_and_shows_infotext(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".lora input[type=checkbox]"))
    assert "lorapipe" in browser.title
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".lora span")]
    assert "toy (dwjz_toy)" in names and "style" in names

    browser.find_element(By.ID, "prompt").send_keys("a photo of dwjz toy, (soft light:1.2)")
    browser.find_element(By.ID, "negative").send_keys("blurry")
    browser.find_element(By.CSS_SELECTOR, '.lora input[data-name="toy"]').click()
    weight = browser.find_element(By.CSS_SELECTOR, 'input[data-weight-for="toy"]')
    weight.clear()
    weight.send_keys("0.7")
    Select(browser.find_element(By.ID, "sampler")).select_by_visible_text("Euler a")
    for field, value in (("steps", "40"), ("width", "128"), ("height", "128"), ("seed", "321"), ("batch", "2")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "generate").click()

    # The progress bar moves while the job runs.
    wait.until(lambda d: 0 < int(d.find_element(By.ID, "bar").get_attribute("aria-valuenow")) < 100)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "body[data-generated='2']")))
    cards = browser.find_elements(By.CSS_SELECTOR, ".result")
    assert len(cards) == 2
    texts = [c.find_element(By.CSS_SELECTOR, "pre").text for c in cards]
    assert all("<lora:toy:0.7>" in t and 'Lora hashes: "toy: ' in t for t in texts)
    assert {"Seed: 321" in t or "Seed: 322" in t for t in texts} == {True}
    assert all(
        browser.execute_script("return arguments[0].naturalWidth", img) == 128
        for img in browser.find_elements(By.CSS_SELECTOR, ".result img")
    )
    assert "Seed: 321" in texts[0]  # first image first
    browser.execute_script("window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "server-page.png"))


def test_page_shows_errors_from_the_api(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/ui/")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sampler option"))
    steps = browser.find_element(By.ID, "steps")
    # Bypass the page's own max= check to see the server's 422 reach the page.
    browser.execute_script("arguments[0].removeAttribute('max'); arguments[0].value = '5000'", steps)
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 30).until(lambda d: "422" in d.find_element(By.ID, "status").text)
    assert "less than or equal" in browser.find_element(By.ID, "status").text
