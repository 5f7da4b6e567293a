"""The web console, end to end in a real headless Chromium against a real server with the tiny model.

Every request the browser makes is recorded (Chrome's performance log), so "no third-party
origin" is checked on what the browser actually fetched, not on what the HTML says.
Screenshots of the job and models pages are taken at 1280 and 390 px; set
``FITGATE_CONSOLE_SCREENSHOTS=docs/console`` to write them where the README shows them.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import CHINESE_LABELS, chinese_keyword_rows, keyword_rows, require_tool, ticket_rows, write_csv
from tests.service.conftest import TOKENS, Server, bearer, make_server

pytestmark = pytest.mark.slow  # a real browser against a real server
REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "sms_spam_sample.csv"
XSS = "<img src=x onerror=alert(1)>"
WIDTHS = (1280, 390)
# what the tiny random BERT learns in seconds; the console's own option fields carry them
TINY_OPTIONS = {"num_train_epochs": "3", "learning_rate": "0.005", "max_length": "32"}


@pytest.fixture(scope="module")
def console_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, chinese_model_dir: Path
) -> Iterator[Server]:
    # the default base model reads English; the operator added one that reads Chinese
    srv = make_server(
        tmp_path_factory.mktemp("console"),
        tiny_model_dir,
        FITGATE_BASE_MODELS=json.dumps({"chinese-tiny": str(chinese_model_dir)}),
    )
    srv.start()
    yield srv
    srv.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium = require_tool("chromium", "the test command installs Debian's chromium")
    driver_path = require_tool("chromedriver", "the test command installs Debian's chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=ChromeService(executable_path=driver_path))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


# --- helpers ---------------------------------------------------------------------------------------


def wait_for(driver: WebDriver, timeout: float = 30) -> WebDriverWait[WebDriver]:
    """Wait, retrying a check that met an element the page's polling just re-rendered."""
    return WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))


def visible(driver: WebDriver, css: str, timeout: float = 30) -> WebElement:
    return wait_for(driver, timeout).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def click(driver: WebDriver, css: str) -> None:
    """Click an element a re-render may replace between finding and clicking it."""
    wait_for(driver).until(lambda d: _clicked(d, css))


def _clicked(driver: WebDriver, css: str) -> bool:
    try:
        driver.find_element(By.CSS_SELECTOR, css).click()
        return True
    except (StaleElementReferenceException, NoSuchElementException):
        return False


def text_of(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def requested_urls(driver: WebDriver) -> list[str]:
    """Every URL the browser requested since the last call (the performance log is drained on read)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def browser_errors(driver: WebDriver) -> list[str]:
    """Console errors since the last call: script errors and CSP violations (a 4xx answer is the API's, not one)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]


def assert_only_own_origin(urls: list[str], server: Server) -> None:
    own = urlsplit(server.url).netloc
    foreign = [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).netloc != own]
    assert not foreign, f"the page contacted other origins: {foreign}"


def sign_in(driver: WebDriver, server: Server, who: str) -> None:
    driver.get(f"{server.url}/")
    field = visible(driver, "#token")
    field.send_keys(TOKENS[who][0])
    driver.find_element(By.CSS_SELECTOR, "#signin button[type=submit]").click()
    team = "team-b" if who == "team-b" else "team-a"  # as tests/service/conftest.py configures the tokens
    # the tab may still show the previous test's sign-in: wait for this caller's
    wait_for(driver).until(ec.text_to_be_present_in_element((By.ID, "identity"), f"Signed in: team {team} "))


def choose_file(driver: WebDriver, path: Path, model: str) -> None:
    driver.find_element(By.ID, "model-name").send_keys(model)
    driver.find_element(By.ID, "file").send_keys(str(path))


def set_options(driver: WebDriver, values: dict[str, str]) -> None:
    for name, value in values.items():
        field = driver.find_element(By.ID, f"opt-{name}")
        field.clear()
        field.send_keys(value)


def screenshot(driver: WebDriver, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("FITGATE_CONSOLE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        driver.set_window_size(width, 1000)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(int(height) + 120, 6000))
        path = folder / f"{name}-{width}.png"
        assert driver.save_screenshot(str(path)), path
        assert path.stat().st_size > 10_000
    driver.set_window_size(1280, 1000)


def finished(driver: WebDriver, timeout: float = 240) -> str:
    wait_for(driver, timeout).until(
        lambda d: text_of(d, "#job-status") in {"succeeded", "blocked", "failed", "cancelled"}
    )
    visible(driver, "#outcome")
    return text_of(driver, "#job-status")


def api_job(server: Server, driver: WebDriver, who: str) -> dict[str, Any]:
    """The job the browser shows, as the API answers it."""
    job_id = driver.current_url.rsplit("/", 1)[1]
    return dict(httpx.get(f"{server.url}/jobs/{job_id}", headers=bearer(who), timeout=30).json())


# --- the specification -------------------------------------------------------------------------------


def test_a_product_engineer_fine_tunes_tries_promotes_and_rolls_back_in_the_browser(
    console_server: Server, browser: WebDriver, tmp_path: Path
) -> None:
    requested_urls(browser)
    sign_in(browser, console_server, "team-a")

    # what fitgate read, before anything trains
    choose_file(browser, SAMPLE, "team-a/spam")
    visible(browser, "#detected")
    assert "Text column text, label column label" in text_of(browser, "#detected")
    assert "1000 of 1000 rows kept" in text_of(browser, "#detected")
    assert Select(browser.find_element(By.ID, "text-column")).first_selected_option.text == "text"
    check = text_of(browser, "#check")
    assert "ham" in check and "866" in check and "spam" in check and "134" in check
    assert "26 duplicate texts" in check

    # start with the tiny model's options; the job page draws the curves as evaluations arrive
    set_options(browser, TINY_OPTIONS)
    browser.find_element(By.ID, "start").click()
    wait_for(browser).until(ec.url_contains("/console/jobs/"))
    wait_for(browser, 120).until(lambda d: int(text_of(d, "#point-count") or 0) >= 2)
    assert browser.find_elements(By.CSS_SELECTOR, "#loss-chart canvas"), "the loss chart is drawn"
    status = finished(browser)
    job = api_job(console_server, browser, "team-a")
    assert status == job["status"]
    assert text_of(browser, "#job-phase") == "done"
    points = browser.find_elements(By.CSS_SELECTOR, "#points tbody tr")
    assert len(points) >= 2
    verdict = text_of(browser, "#verdict")
    if status == "succeeded":
        assert job["result"]["version"] in verdict
        assert "macro-F1" in text_of(browser, "#metrics")
        assert "ECE" in text_of(browser, "#metrics")
    else:  # the tiny random BERT may be judged blocked: the page says why, with the findings
        assert job["reason"] in verdict
        assert browser.find_elements(By.CSS_SELECTOR, "ul.findings li")
    wait_for(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#plots img")) == 2)
    assert "rows look mislabelled" in text_of(browser, "#label-issues")
    assert browser.find_elements(By.XPATH, "//button[text()='Download report.json']")
    screenshot(browser, "job", tmp_path)

    # a second version of the same model, learnable for sure, so there is something to promote and roll back
    keyword = write_csv(tmp_path / "keyword.csv", keyword_rows(300))
    browser.get(f"{console_server.url}/")
    choose_file(browser, keyword, "team-a/spam")
    visible(browser, "#detected")
    set_options(browser, {**TINY_OPTIONS, "num_train_epochs": "4"})
    browser.find_element(By.ID, "start").click()
    wait_for(browser).until(ec.url_contains("/console/jobs/"))
    assert finished(browser) == "succeeded", text_of(browser, "#verdict")
    new_version = api_job(console_server, browser, "team-a")["result"]["version"]

    # try it: the served version answers with label, confidence and probabilities
    visible(browser, "#verdict a[href*='#try']")  # drawn once the report, plots and audit have loaded
    browser.find_element(By.LINK_TEXT, "Try this model").click()
    visible(browser, "#try-text").send_keys("win cash prize claim now urgent")
    wait_for(browser).until(lambda d: Select(d.find_element(By.ID, "try-version")).first_selected_option.text)
    browser.find_element(By.CSS_SELECTOR, "#try-form button[type=submit]").click()
    label = visible(browser, "#try-label").text
    answered = httpx.post(
        f"{console_server.url}/predict",
        json={"texts": ["win cash prize claim now urgent"], "model": "team-a/spam", "version": new_version},
        headers=bearer("team-a"),
        timeout=30,
    ).json()["predictions"][0]
    assert label == answered["label"] == "spam"
    # the version the link opened answers (the worker may not have switched to it yet: it is answered as pinned)
    assert f"version {new_version}" in text_of(browser, "#try-result")
    assert float(text_of(browser, "#try-confidence")) == pytest.approx(answered["confidence"], abs=1e-3)
    assert "Class probabilities" in text_of(browser, "#try-result")

    # promote and roll back, each after a confirmation
    versions = [v for v in httpx.get(f"{console_server.url}/models", headers=bearer("team-a")).json()]
    assert [v["version"] for v in versions if v["current"]] == [new_version]
    if len(versions) >= 2:
        older = next(v["version"] for v in versions if not v["current"])
        click(browser, f"button.promote[data-version='{older}']")
        browser.switch_to.alert.accept()
        wait_for(browser).until(lambda d: current_version(console_server) == older)
    click(browser, "button.rollback")
    browser.switch_to.alert.accept()
    if len(versions) >= 2:
        wait_for(browser).until(lambda d: current_version(console_server) == new_version)
    else:  # one version: nothing to roll back to, and the page says so in the API's words
        wait_for(browser).until(lambda d: "nothing to roll back" in text_of(d, "#models-error").lower() or
                                text_of(d, "#models-error"))  # fmt: skip
        assert text_of(browser, "#models-error")
    wait_for(browser).until(lambda d: "drift detector" in text_of(d, "#models"))
    screenshot(browser, "models", tmp_path)

    urls = requested_urls(browser)
    assert any(u.endswith("/finetune/validate") for u in urls)
    assert_only_own_origin(urls, console_server)
    assert not [e for e in browser_errors(browser) if "Content Security Policy" in e]


def test_a_multi_label_upload_shows_its_labels_trains_and_answers_several_labels_in_the_browser(
    console_server: Server, browser: WebDriver, tmp_path: Path
) -> None:
    sign_in(browser, console_server, "team-a")
    tickets = write_csv(tmp_path / "tickets.csv", ticket_rows(600))
    choose_file(browser, tickets, "team-a/tickets")
    visible(browser, "#label-cardinality")
    assert "labels per text" in text_of(browser, "#label-cardinality")
    labels = text_of(browser, "#multi-label")
    assert all(name in labels for name in ("account", "billing", "bug")) and "Most frequent label pairs" in labels
    set_options(browser, {**TINY_OPTIONS, "num_train_epochs": "20", "learning_rate": "0.005"})
    browser.find_element(By.ID, "start").click()
    wait_for(browser).until(ec.url_contains("/console/jobs/"))
    assert finished(browser, timeout=400) == "succeeded", text_of(browser, "#verdict")
    metrics = visible(browser, "#per-label").text  # drawn once the report has loaded
    assert "threshold" in metrics and "micro-F1" in metrics and "Hamming loss" in metrics

    visible(browser, "#verdict a[href*='#try']")
    browser.find_element(By.LINK_TEXT, "Try this model").click()
    visible(browser, "#try-text").send_keys("refund for the crash please")
    wait_for(browser).until(lambda d: Select(d.find_element(By.ID, "try-version")).first_selected_option.text)
    browser.find_element(By.CSS_SELECTOR, "#try-form button[type=submit]").click()
    answered = set(visible(browser, "#try-labels").text.split(", "))
    assert answered == {"billing", "bug"}
    assert "Label probabilities" in text_of(browser, "#try-result")
    assert not [e for e in browser_errors(browser) if "Content Security Policy" in e]


def test_the_job_page_shows_what_the_repair_saw_and_the_training_rows_it_left_out(
    console_server: Server, browser: WebDriver, tmp_path: Path
) -> None:
    """20% of the labels flipped: the audit doubts them, the next attempt trains without the training ones, and
    the job page lists the attempts with the search's reasoning and the rows it left out."""
    rows = keyword_rows(300)
    rng = random.Random(5)
    noisy = [(t, {"ham": "spam", "spam": "ham"}[y] if rng.random() < 0.2 else y) for t, y in rows]
    data = write_csv(tmp_path / "noisy.csv", noisy)
    sign_in(browser, console_server, "team-a")
    choose_file(browser, data, "team-a/noisy")
    visible(browser, "#detected")
    set_options(browser, {**TINY_OPTIONS, "num_train_epochs": "4"})
    browser.find_element(By.ID, "start").click()
    wait_for(browser).until(ec.url_contains("/console/jobs/"))
    finished(browser, timeout=400)
    job = api_job(console_server, browser, "team-a")
    dropped = job["result"]["attempts"][1]["rows_dropped"]
    assert dropped > 0, job["result"]["attempts"]
    attempts = browser.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")
    assert len(attempts) == len(job["result"]["attempts"]) >= 2
    assert "excluded_training_rows" in attempts[1].text and "audit" in text_of(browser, "#attempts")
    wait_for(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#dropped-rows tbody tr"))
    section = text_of(browser, "#dropped-rows")
    assert f"trained without {dropped} training rows" in section and "validation and test rows were kept" in section
    listed = browser.find_elements(By.CSS_SELECTOR, "#dropped-rows tbody tr")
    assert len(listed) == min(dropped, 20)
    assert browser.find_elements(By.XPATH, "//button[text()='Download dropped_rows.csv']")
    screenshot(browser, "job-cleaned", tmp_path)


def current_version(server: Server) -> str | None:
    for v in httpx.get(f"{server.url}/models", headers=bearer("team-a"), timeout=30).json():
        if v["model"] == "team-a/spam" and v["current"]:
            return str(v["version"])
    return None


def test_labels_file_names_and_texts_from_users_show_as_text_never_as_markup(
    console_server: Server, browser: WebDriver, tmp_path: Path
) -> None:
    rows = [(f"win cash {XSS} prize {i}", XSS) if i % 3 == 0 else (f"see you at lunch {i}", "ham") for i in range(120)]
    data = write_csv(tmp_path / f"{XSS[:4]}labels.csv", rows)
    sign_in(browser, console_server, "team-a")
    browser.get_log("browser")
    choose_file(browser, data, "team-a/xss")
    visible(browser, "#detected")
    check = text_of(browser, "#check")
    assert XSS in check, "the label is shown as the text it is"
    assert not browser.find_elements(By.CSS_SELECTOR, "#check img"), "no element was made from a label"
    set_options(browser, TINY_OPTIONS)
    browser.find_element(By.ID, "start").click()
    wait_for(browser).until(ec.url_contains("/console/jobs/"))
    finished(browser)
    assert not browser.find_elements(By.CSS_SELECTOR, "main img:not(#plots img)")
    if browser.find_elements(By.CSS_SELECTOR, "#metrics table"):
        assert XSS in text_of(browser, "#metrics")
    with pytest.raises(TimeoutException):  # an executed onerror would open an alert
        wait_for(browser, 1).until(ec.alert_is_present())
    assert not browser_errors(browser), "no script error, no CSP violation"


def test_a_second_team_cannot_see_the_first_teams_job_in_the_browser(
    console_server: Server, browser: WebDriver
) -> None:
    jobs = httpx.get(f"{console_server.url}/jobs", headers=bearer("team-a"), timeout=30).json()
    assert jobs, "the first test left team-a a job"
    sign_in(browser, console_server, "team-b")
    # team-b's own list (it has none), drawn after its sign-in replaced whatever the tab showed before
    wait_for(browser).until(lambda d: "No jobs yet." in text_of(d, "#jobs"))
    assert jobs[0]["job_id"] not in text_of(browser, "#jobs")
    browser.get(f"{console_server.url}/console/jobs/{jobs[0]['job_id']}")
    wait_for(browser).until(lambda d: text_of(d, "#job-error"))
    assert "not found" in text_of(browser, "#job-error").lower() or "no job" in text_of(browser, "#job-error").lower()
    assert not browser.find_elements(By.CSS_SELECTOR, "#job-status")


def test_a_token_is_kept_for_the_tab_only_and_a_wrong_one_is_refused_with_the_apis_message(
    console_server: Server, browser: WebDriver
) -> None:
    browser.get(f"{console_server.url}/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{console_server.url}/")
    visible(browser, "#token").send_keys("not-a-token")
    browser.find_element(By.CSS_SELECTOR, "#signin button[type=submit]").click()
    wait_for(browser).until(lambda d: text_of(d, "#signin-error"))
    assert "refused" in text_of(browser, "#signin-error")
    assert browser.execute_script("return document.cookie") == ""
    sign_in(browser, console_server, "team-a")
    assert browser.execute_script("return sessionStorage.getItem('fitgate.token')") == TOKENS["team-a"][0]


def test_the_api_docs_load_swagger_ui_from_the_service_itself(console_server: Server, browser: WebDriver) -> None:
    requested_urls(browser)
    browser_errors(browser)
    browser.get(f"{console_server.url}/docs")
    visible(browser, ".swagger-ui .information-container", timeout=60)
    assert "/finetune/validate" in text_of(browser, "#swagger-ui")
    urls = requested_urls(browser)
    assert any(u.endswith("/docs/assets/swagger-ui-bundle.js") for u in urls)
    assert_only_own_origin(urls, console_server)
    assert not [e for e in browser_errors(browser) if "Content Security Policy" in e]


def test_every_page_carries_a_policy_that_forbids_inline_script_and_other_origins(console_server: Server) -> None:
    for path in ("/", "/console/models", "/console/jobs/x", "/docs"):
        r = httpx.get(f"{console_server.url}{path}", timeout=30)
        assert r.status_code == 200, path
        policy = r.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
        assert "<script>" not in r.text and "googletagmanager" not in r.text and "cdn." not in r.text


def test_a_chinese_upload_trains_on_a_model_that_reads_it_and_its_chinese_labels_show_everywhere(
    console_server: Server, browser: WebDriver, tmp_path: Path
) -> None:
    reviews = write_csv(tmp_path / "评论.csv", chinese_keyword_rows(300))
    sign_in(browser, console_server, "team-a")
    choose_file(browser, reviews, "team-a/reviews")

    # the dry run: the server's default (English) model cannot read it, so the operator's Chinese one is chosen
    visible(browser, "#base-model")
    assert text_of(browser, "#base-model-name") == "chinese-tiny"
    assert "server-default does not (" in text_of(browser, "#base-model-reason")
    readings = text_of(browser, "#base-model")
    assert "Han 100.0%" in readings and "server-default" in readings
    assert text_of(browser, "#base-model-example").startswith("As the model sees a text: ")

    # asking for the English model gets the refusal, with the numbers and the models that read the text
    Select(browser.find_element(By.ID, "opt-base_model")).select_by_visible_text("minilm")
    refusal = visible(browser, "#refusal").text
    assert "base model 'minilm'" in refusal and "of the word pieces are unknown" in refusal and "[UNK]" in refusal
    assert "'chinese-tiny'" in refusal and "'multilingual-e5-small'" in refusal
    assert not browser.find_element(By.ID, "start").is_enabled()

    Select(browser.find_element(By.ID, "opt-base_model")).select_by_visible_text("choose the one that reads my text")
    wait_for(browser).until(lambda d: text_of(d, "#base-model-name") == "chinese-tiny")
    set_options(browser, {**TINY_OPTIONS, "num_train_epochs": "4"})
    browser.find_element(By.ID, "start").click()
    wait_for(browser).until(ec.url_contains("/console/jobs/"))
    assert finished(browser) == "succeeded", text_of(browser, "#verdict")
    job = api_job(console_server, browser, "team-a")
    visible(browser, "#verdict a[href*='#try']")  # the outcome has rendered
    assert text_of(browser, "#base-model-name") == "chinese-tiny"
    metrics = text_of(browser, "#metrics")
    assert all(label in metrics for label in CHINESE_LABELS)
    assert not browser_errors(browser)

    # the same through HTTP: predictions, the report, the metrics and the label audit carry the Chinese labels
    answer = httpx.post(
        f"{console_server.url}/predict",
        json={"texts": ["很差，肮脏，失望", "干净，舒适，推荐"], "model": "team-a/reviews"},
        headers=bearer("team-a"),
        timeout=30,
    ).json()
    assert [p["label"] for p in answer["predictions"]] == [CHINESE_LABELS[1], CHINESE_LABELS[0]]
    assert set(answer["predictions"][0]["probabilities"]) == set(CHINESE_LABELS)
    report = httpx.get(f"{console_server.url}/jobs/{job['job_id']}/report", headers=bearer("team-a"), timeout=30).json()
    assert report["report"]["data_report"]["base_model"]["name"] == "chinese-tiny"
    assert report["report"]["label_names"] == sorted(CHINESE_LABELS)
    metrics_text = httpx.get(f"{console_server.url}/metrics", timeout=30).text
    assert f'label="{CHINESE_LABELS[1]}"' in metrics_text, "Prometheus label values carry the Chinese label"
    issues = httpx.get(
        f"{console_server.url}/jobs/{job['job_id']}/label_issues.csv", headers=bearer("team-a"), timeout=30
    )
    assert issues.status_code in (200, 404) and "\ufffd" not in issues.text


def test_a_chinese_upload_asking_for_the_english_model_over_http_is_a_422_that_says_what_to_do(
    console_server: Server, tmp_path: Path
) -> None:
    reviews = write_csv(tmp_path / "reviews.csv", chinese_keyword_rows(100))
    with reviews.open("rb") as f:
        r = httpx.post(
            f"{console_server.url}/finetune",
            headers=bearer("team-a"),
            files={"file": ("reviews.csv", f, "text/csv")},
            data={"model_name": "team-a/refused", "parameters": '{"base_model": "minilm"}'},
            timeout=60,
        )
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["type"] == "UnreadableText"
    assert "of the word pieces are unknown to its vocabulary" in error["message"] and "[UNK]" in error["message"]
    assert "Choose base_model 'chinese-tiny' or 'multilingual-e5-small'" in error["message"]
    jobs = httpx.get(f"{console_server.url}/jobs", headers=bearer("team-a"), timeout=30).json()
    assert all(job["model"] != "team-a/refused" for job in jobs)  # nothing was queued


def test_a_file_is_scored_from_the_models_page_with_progress_and_a_download(
    console_server: Server, browser: WebDriver, tmp_path: Path, healthy_run: Path
) -> None:
    from fitgate.settings import Settings
    from models.gate import release
    from models.names import ModelName
    from models.registry import open_registry

    settings = Settings(data_dir=console_server.data_dir)
    version = release(healthy_run, ModelName.parse("team-a/scorer"), settings, open_registry(settings),
                      promote=True).version  # fmt: skip
    sign_in(browser, console_server, "team-a")
    browser.get(f"{console_server.url}/console/models?model=team-a/scorer")
    wait_for(browser).until(lambda d: Select(d.find_element(By.ID, "try-model")).first_selected_option.text
                            == "team-a/scorer")  # fmt: skip
    rows = [("", "an empty text: reported in its row")] + [(text, "") for text, _ in keyword_rows(299)]
    source = write_csv(tmp_path / "to-score.csv", rows, header=("text", "note"))
    browser.find_element(By.ID, "score-file").send_keys(str(source))
    Select(browser.find_element(By.ID, "score-format")).select_by_visible_text("jsonl")
    browser.find_element(By.ID, "score-start").click()
    wait_for(browser).until(ec.url_contains("/console/jobs/"))
    wait_for(browser, 120).until(lambda d: text_of(d, "#job-status") == "succeeded")
    assert text_of(browser, "#batch-rows").startswith("300 of 300")
    assert browser.find_element(By.ID, "curves").get_attribute("hidden") is not None  # no learning curves
    summary = visible(browser, "#batch-summary").text
    assert f"300 rows scored with version {version}; 1 could not be scored" in summary, summary
    assert "share on validation" in text_of(browser, "#batch-drift")
    assert visible(browser, "#batch-download").is_enabled()
    job = api_job(console_server, browser, "team-a")
    assert job["kind"] == "batch" and job["arguments"]["output_format"] == "jsonl"
    lines = httpx.get(f"{console_server.url}/jobs/{job['job_id']}/output", headers=bearer("team-a")).text.splitlines()
    assert len(lines) == 300 and json.loads(lines[0])["problem"] == "empty text"
    assert not browser_errors(browser)
