"""The studio page end to end in headless Chromium on the tiny model: upload 6 photos, see the check, caption them
with the tiny captioner, train 8 steps, see sample images appear, pick a checkpoint, generate with it and find its
LoRA tag in the infotext. A screenshot of each stage is kept in test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest
from generate_fixtures import RunningServer, load_generator
from studio_fixtures import png_bytes
from test_server_page import ARTIFACTS, CHROMEDRIVER, CHROMIUM, browser  # noqa: F401 - the shared browser fixture

from lorapipe.server.app import create_app
from lorapipe.server.settings import ServerSettings
from lorapipe.server.studio_settings import StudioSettings

TINY_PRESET = Path(__file__).resolve().parents[1] / "examples" / "presets" / "tiny-cpu.toml"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="headless Chromium not installed (apt install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def studio_server(tiny_model_dir, tmp_path_factory):
    from lorapipe.dataset.captioners.tiny import make_tiny_captioner

    root = tmp_path_factory.mktemp("studio-page")
    loras = root / "loras"
    loras.mkdir()
    captioner = make_tiny_captioner(root / "tiny-blip", "blip")
    settings = ServerSettings(
        base_model=str(tiny_model_dir),
        lora_dir=str(loras),
        studio=StudioSettings(
            home=str(root / "home"), presets=(str(TINY_PRESET),), captioner="blip", captioner_model=str(captioner)
        ),
    )
    with RunningServer(create_app(settings, generator=load_generator(tiny_model_dir, loras))) as running:
        yield running, root


def _shot(driver, name: str, section: str | None = None) -> None:
    if section:
        driver.execute_script("document.getElementById(arguments[0]).scrollIntoView()", section)
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"studio-{name}.png"))


def test_photos_to_lora_to_image_in_one_page(studio_server, browser):  # noqa: F811 - the fixture above
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    server, root = studio_server
    wait = WebDriverWait(browser, 120)
    photos = root / "photos"
    photos.mkdir()
    for index in range(6):
        (photos / f"IMG_{index:04d}.png").write_bytes(png_bytes(96 + 16 * (index % 2), 80, seed=index))

    browser.get(server.url + "/studio/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#preset option"))
    browser.find_element(By.ID, "trigger").send_keys("dwjz")
    browser.find_element(By.ID, "class-name").send_keys("toy")
    Select(browser.find_element(By.ID, "preset")).select_by_value("tiny-cpu")
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in sorted(photos.iterdir())))

    # 1. the check: six thumbnails, each with its findings beside it
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-checked") == "6")
    cards = browser.find_elements(By.CSS_SELECTOR, "#photos .photo")
    assert len(cards) == 6
    assert all(card.find_elements(By.CSS_SELECTOR, ".findings li") for card in cards)
    assert "IMG_0000.png" in cards[0].text
    _shot(browser, "1-check", "photos-step")

    # 2. captions: caption all with the tiny captioner, then edit one in place
    browser.find_element(By.ID, "caption-all").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-captioned") == "6")
    first = browser.find_element(By.CSS_SELECTOR, "#captions textarea")
    assert first.get_attribute("value").startswith("dwjz toy")
    browser.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('change'))",
        first,
        "dwjz toy, a small test photo",
    )
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".caption.saved"))
    _shot(browser, "2-captions", "captions-step")

    # 3. settings: 8 steps, a checkpoint every 4; the advanced box shows the TOML the run will train with
    browser.find_element(By.ID, "steps").send_keys("8")
    checkpoints = browser.find_element(By.ID, "checkpoints-count")
    checkpoints.clear()
    checkpoints.send_keys("2")
    browser.find_element(By.ID, "rank").click()
    browser.find_element(By.CSS_SELECTOR, "#advanced summary").click()
    wait.until(lambda d: "save_every_n_steps = 4" in d.find_element(By.ID, "toml").get_attribute("value"))
    assert "max_train_steps = 8" in browser.find_element(By.ID, "toml").get_attribute("value")
    _shot(browser, "3-settings", "train-step")

    # 4. train: the loss chart fills and sample images appear per checkpoint
    browser.find_element(By.ID, "start").click()
    # While it trains, the banner says what the server's busy policy (default: refuse) does to generation.
    banner = wait.until(lambda d: d.find_element(By.ID, "banner").text)
    assert "is using the GPU: image generation is refused (503) until it finishes" in banner
    wait.until(
        lambda d: any(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
            for img in d.find_elements(By.CSS_SELECTOR, ".checkpoint img.sample")
        )
    )
    wait.until(lambda d: d.find_element(By.ID, "run-status").get_attribute("data-status") == "succeeded")
    columns = browser.find_elements(By.CSS_SELECTOR, ".checkpoint")
    assert len(columns) >= 2 and all(c.find_elements(By.CSS_SELECTOR, "img.sample") for c in columns)
    assert "step 8/8" in browser.find_element(By.ID, "run-status").text
    _shot(browser, "4-run", "run-step")

    # 5. use the step-4 checkpoint: the generate page opens with its tag in the prompt
    chosen = next(c for c in columns if c.find_element(By.TAG_NAME, "h3").text == "step 4")
    chosen.find_element(By.CSS_SELECTOR, "button.use").click()
    wait.until(lambda d: "<lora:" in d.find_element(By.ID, "prompt").get_attribute("value"))
    prompt = browser.find_element(By.ID, "prompt").get_attribute("value")
    name = prompt.split("<lora:", 1)[1].split(":", 1)[0]
    assert name.endswith(tuple("0123456789abcdef")) and "step00000004" in name
    for field, value in (("steps", "4"), ("width", "64"), ("height", "64"), ("seed", "7"), ("batch", "1")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-generated") == "1")
    infotext = browser.find_element(By.CSS_SELECTOR, ".result pre").text
    assert f"<lora:{name}:1>" in infotext and f'Lora hashes: "{name}: ' in infotext
    _shot(browser, "5-generated")


def test_the_page_signs_in_with_its_own_form(tiny_model_dir, tmp_path, browser):  # noqa: F811 - the fixture above
    """With --api-auth the page asks in its own form (never the browser's dialog), says so on a wrong password,
    then loads photos (as authorised blobs) and the generate page with the same sign-in."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    settings = ServerSettings(
        base_model=str(tiny_model_dir),
        api_auth=(("ann", "pa:ss"),),
        studio=StudioSettings(home=str(tmp_path / "home"), presets=(str(TINY_PRESET),)),
    )
    with RunningServer(create_app(settings, generator=load_generator(tiny_model_dir, None))) as server:
        with httpx.Client(base_url=server.url, auth=("ann", "pa:ss")) as client:
            dataset = client.post("/studio/api/datasets", json={"trigger": "dwjz", "class_name": "toy"}).json()["id"]
            files = [("files", (f"IMG_{i}.png", png_bytes(96, 80, seed=i), "image/png")) for i in range(2)]
            assert client.post(f"/studio/api/datasets/{dataset}/photos", files=files).status_code == 201
        wait = WebDriverWait(browser, 30)
        browser.get(server.url + "/studio/")
        remember = "localStorage.setItem('lorapipe.studio', JSON.stringify({dataset: arguments[0]}))"
        browser.execute_script(remember, dataset)  # the page shows the photos of the dataset it last worked on
        browser.refresh()
        form = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "dialog#sign-in[open]"))
        form.find_element(By.NAME, "user").send_keys("ann")
        form.find_element(By.NAME, "password").send_keys("wrong\n")
        message = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "dialog#sign-in[open] .error").text)
        assert message == "Incorrect username or password"
        _shot(browser, "signin-1-refused")

        form = browser.find_element(By.CSS_SELECTOR, "dialog#sign-in[open]")
        assert form.find_element(By.NAME, "user").get_attribute("value") == "ann"  # kept; the password is not
        form.find_element(By.NAME, "password").send_keys("pa:ss\n")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#preset option"))
        assert not browser.find_elements(By.CSS_SELECTOR, "dialog#sign-in")
        thumbs = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photos .photo img"))
        assert len(thumbs) == 2
        wait.until(lambda d: all(d.execute_script("return arguments[0].naturalWidth", img) for img in thumbs))
        assert all(img.get_attribute("src").startswith("blob:") for img in thumbs)  # fetched with the header
        assert "pa:ss" not in browser.current_url and "ann" not in browser.current_url
        _shot(browser, "signin-2-signed-in", "photos-step")

        browser.get(server.url + "/ui/")  # the same tab keeps the sign-in (sessionStorage) for the generate page
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sampler option"))
        assert not browser.find_elements(By.CSS_SELECTOR, "dialog#sign-in")
