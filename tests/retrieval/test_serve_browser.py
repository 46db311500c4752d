"""`align serve` in a real headless browser: type a query, see the result grid, save a screenshot.

Needs Debian's `chromium` + `chromium-driver` (apt) and `selenium` (pip); skips when any is missing.
The screenshot goes to $ALIGN_SCREENSHOT_DIR (default: the test's tmp dir) as serve_results.png."""
import os
import shutil
import threading

import pytest

from align.cli import main
from align.retrieval.serve import make_server
from tests.retrieval.conftest import tri_shards

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium / chromium-driver not installed (apt)")
def test_query_in_a_headless_browser(tmp_path, tri_run):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    run, model = tri_run
    tri_shards(tmp_path / "shards", n_shards=2, per_shard=8)
    assert main(["embed", run, "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "emb"),
                 "--no-progress"]) == 0
    assert main(["index", str(tmp_path / "emb"), "--out", str(tmp_path / "ix")]) == 0
    srv = make_server(str(tmp_path / "ix"), model, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get(f"http://127.0.0.1:{srv.server_address[1]}/")
        box = driver.find_element(By.ID, "q")
        box.send_keys("a red cat")
        driver.find_element(By.ID, "go").click()
        wait = WebDriverWait(driver, 30)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".grid[data-target=image] .hit img")))
        images = driver.find_elements(By.CSS_SELECTOR, ".grid[data-target=image] .hit img")
        audios = driver.find_elements(By.CSS_SELECTOR, ".grid[data-target=audio] .hit audio")
        assert len(images) == 12 and len(audios) == 12
        # thumbnails really loaded from the shards (naturalWidth > 0), not broken links
        wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)
                                 for i in images))
        assert 'results for "a red cat"' in driver.find_element(By.ID, "status").text
        # an empty query shows the server's 400 message in the page
        box.clear()
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: "empty query" in d.find_element(By.ID, "status").text)
        box.send_keys("a red cat")
        driver.find_element(By.ID, "go").click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".grid[data-target=image] .hit img")))
        out = os.environ.get("ALIGN_SCREENSHOT_DIR") or str(tmp_path)
        os.makedirs(out, exist_ok=True)
        driver.save_screenshot(os.path.join(out, "serve_results.png"))
    finally:
        driver.quit()
        srv.shutdown()
        srv.server_close()
