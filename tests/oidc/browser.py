"""A person logging in through a real browser: headless Chromium driven by selenium
(Debian's python3-selenium, chromium, chromium-driver). Opens URL, answers the
oidc-provider development login form (login alice, any password) and its consent
page, and waits for the app's page; prints what the page shows and the URL it is on.

usage: browser.py URL PROXY_HOST_RULE   (e.g. "MAP app.test 127.0.0.1")
"""
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

url, rule = sys.argv[1], sys.argv[2]
with tempfile.TemporaryDirectory() as profile:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 # The test PKI's CA is not in Chromium's store; the proxy's name resolves
                 # to loopback.
                 "--ignore-certificate-errors", f"--host-resolver-rules={rule}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_page_load_timeout(30)
        wait = WebDriverWait(driver, 30)
        driver.get(url)
        wait.until(ec.presence_of_element_located((By.NAME, "login")))
        driver.find_element(By.NAME, "login").send_keys("alice")
        driver.find_element(By.NAME, "password").send_keys("x")
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        # The consent page, then back to the app.
        wait.until(lambda d: "/interaction/" not in d.current_url
                   or "Authorize" in d.page_source or "consent" in d.page_source.lower())
        if "/interaction/" in driver.current_url:
            driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: d.current_url.startswith("https://app.test"))
        wait.until(lambda d: "@" in d.find_element(By.TAG_NAME, "body").text)
        print(driver.find_element(By.TAG_NAME, "body").text.strip())
        print(driver.current_url)
    finally:
        driver.quit()
