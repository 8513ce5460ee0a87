"""The playground page in headless Chromium: one prompt, two models, answers streamed in.

Chromium and its driver come from Debian's packages (`make setup` installs them); the
screenshot is kept in artifacts/playground.png.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.serving.conftest import API_KEY

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert binary and driver, "Chromium and chromedriver are missing: run `make setup`"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    yield chrome
    chrome.quit()


def test_playground_streams_two_models_side_by_side(endpoint, client, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(endpoint.url + "/")
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(API_KEY)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: len(b.find_elements(By.NAME, "model")) >= 2)
    offered = {box.get_attribute("value") for box in browser.find_elements(By.NAME, "model")}
    assert {"base", "sft"} <= offered and "rm" not in offered  # reward models do not chat
    for box in browser.find_elements(By.NAME, "model"):
        if box.get_attribute("value") not in ("base", "sft") and box.is_selected():
            box.click()
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("What is 12 + 7?")
    browser.find_element(By.ID, "send").click()
    wait.until(
        lambda b: (
            len(b.find_elements(By.CSS_SELECTOR, ".card")) == 2
            and all(
                c.get_attribute("data-done") == "true"
                for c in b.find_elements(By.CSS_SELECTOR, ".card")
            )
        )
    )
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "playground.png"))
    shown = {
        c.get_attribute("data-model"): c.find_element(By.TAG_NAME, "pre").text
        for c in browser.find_elements(By.CSS_SELECTOR, ".card")
    }
    for model in ("base", "sft"):
        expected = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "What is 12 + 7?"}],
            max_tokens=32,
            temperature=0,
        )
        # The page shows what the API answers (the DOM collapses whitespace runs).
        assert " ".join(shown[model].split()) == " ".join(
            expected.choices[0].message.content.split()
        )
    assert shown["sft"].strip(), "the SFT model's answer did not show"
    assert (ARTIFACTS / "playground.png").stat().st_size > 10_000
