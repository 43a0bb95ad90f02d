"""The chat page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
ask, watch the streamed answer, see route and adapter, click a citation and read its passage and file."""
import os
import shutil

import pytest

from loradex.testing import ThreadedServer

from .test_server import _project

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# In CI a missing browser is a failure, not a skip: .ci/run installs it.
_HAVE_BROWSER = bool(shutil.which("chromium") and shutil.which("chromedriver"))
pytestmark = pytest.mark.skipif(not os.environ.get("CI") and not _HAVE_BROWSER,
                                reason="needs Debian's chromium and chromium-driver (installed by .ci/run)")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def test_ask_stream_and_open_a_citation(project_dir, tmp_path, monkeypatch, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from loradex.server.app import create_app

    proj, ref = _project(project_dir, tmp_path, monkeypatch)
    running = ThreadedServer(create_app(proj))
    try:
        browser.get(running.url + "/")
        key = browser.find_element(By.ID, "key")
        key.send_keys("user-key")
        browser.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")
        browser.find_element(By.ID, "question").send_keys("police report for a stolen bike")
        browser.find_element(By.CSS_SELECTOR, "#ask button[type=submit]").click()
        wait = WebDriverWait(browser, 30)
        cite = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#log .turn button.cite")))
        meta = browser.find_element(By.CSS_SELECTOR, "#log .turn .meta").text
        assert "route: claims" in meta and ref.label in meta
        assert browser.find_element(By.CSS_SELECTOR, "#log .turn").get_attribute("data-done") == "1"
        cite.click()
        where = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#passage .where")))
        assert where.get_attribute("data-file").startswith("docs/claims/")
        passage = browser.find_element(By.ID, "passage-text").text
        answer = browser.find_element(By.CSS_SELECTOR, "#log .turn .a").text
        assert "verified" in browser.find_element(By.ID, "passage").text
        first_sentence = answer.rsplit("1", 1)[0].strip()  # the echo engine quotes source 1's first sentence
        assert first_sentence and first_sentence in " ".join(passage.split())
    finally:
        running.stop()


def test_a_follow_up_carries_the_conversation(project_dir, tmp_path, monkeypatch, browser):
    """The page sends its earlier turns with each question, so a follow-up that names nothing is still routed
    and searched with the conversation's terms (the server condenses it: `loradex.conversation`)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from loradex.server.app import create_app

    proj, _ = _project(project_dir, tmp_path, monkeypatch)
    running = ThreadedServer(create_app(proj))
    try:
        browser.get(running.url + "/")
        browser.find_element(By.ID, "key").send_keys("user-key")
        browser.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")
        wait = WebDriverWait(browser, 30)
        for n, question in enumerate(("police report for a stolen bike", "and how long do I have?"), start=1):
            browser.find_element(By.ID, "question").send_keys(question)
            browser.find_element(By.CSS_SELECTOR, "#ask button[type=submit]").click()
            wait.until(lambda b, n=n: len(b.find_elements(By.CSS_SELECTOR, "#log .turn[data-done='1']")) == n)
        turns = browser.find_elements(By.CSS_SELECTOR, "#log .turn")
        assert "route: claims" in turns[1].find_element(By.CSS_SELECTOR, ".meta").text
        sent = browser.execute_script("return conversation")
        assert [t["role"] for t in sent] == ["user", "assistant", "user", "assistant"]
        assert sent[2]["content"] == "and how long do I have?"
        assert browser.find_element(By.ID, "error").text == ""
    finally:
        running.stop()


def test_eval_report_renders_with_its_charts(project_dir, tmp_path, browser):
    """`loradex eval`'s report.html, opened in Chromium: the table, the chart (decoded and drawn) and the worst
    answers are there; a screenshot is taken."""
    import json

    from selenium.webdriver.common.by import By
    from typer.testing import CliRunner

    from loradex.cli import app

    from .test_eval_run import FORMATS, QUESTIONS
    from .test_ingest import DOCS
    from .test_pipeline import ECHO

    root = project_dir(DOCS, ECHO + FORMATS)
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    assert CliRunner().invoke(app, ["ingest", "-p", str(root)]).exit_code == 0
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["eval", str(questions), "--modes", "base,rag,hybrid,oracle", "--out", str(out),
                                 "-p", str(root)])
    assert r.exit_code == 0, r.output
    browser.set_window_size(1400, 1000)
    browser.get((out / "report.html").as_uri())
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("loradex eval")
    img = browser.find_element(By.CSS_SELECTOR, "img[alt='metrics by mode']")
    width = browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
    assert width and width > 400  # the chart was decoded and has its size, not a broken image
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "contains_answer" in body and "Worst answers" in body and "When must theft be reported" in body
    assert browser.save_screenshot(str(tmp_path / "report.png")) and (tmp_path / "report.png").stat().st_size > 10_000
