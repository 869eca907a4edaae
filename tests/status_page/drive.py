#!/usr/bin/env python3
"""Drives headless Chromium for tests/status_page.rs: one command per stdin line (JSON),
one JSON answer per stdout line. The Rust test holds the logic; this only clicks and reads.

Commands: {"op": "open", "url": ...}, {"op": "text", "css": ...}, {"op": "count", "css": ...},
{"op": "wait_text", "css": ..., "contains": ..., "timeout": s}, {"op": "type", "css": ..., "text": ...},
{"op": "click", "css": ...}, {"op": "submit", "css": ...}, {"op": "cookies"}, {"op": "resources"},
{"op": "reload"}, {"op": "size", "w": ..., "h": ...}, {"op": "fullsize", "w": ...},
{"op": "screenshot", "path": ...}, {"op": "source"}, {"op": "js", "script": "return ..."},
{"op": "quit"}.
"""
import json
import os
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def browser(profile):
    options = webdriver.ChromeOptions()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)


def texts(driver, css):
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def run(driver, cmd):
    op = cmd["op"]
    if op == "open":
        driver.get(cmd["url"])
        return {"url": driver.current_url, "title": driver.title}
    if op == "reload":
        driver.refresh()
        return {"url": driver.current_url, "title": driver.title}
    if op == "text":
        return {"texts": texts(driver, cmd["css"])}
    if op == "count":
        return {"count": len(driver.find_elements(By.CSS_SELECTOR, cmd["css"]))}
    if op == "wait_text":
        deadline = time.time() + cmd.get("timeout", 15)
        while True:
            found = texts(driver, cmd["css"])
            if any(cmd["contains"] in t for t in found):
                return {"texts": found}
            if time.time() > deadline:
                return {"error": "timeout", "texts": found}
            time.sleep(0.2)
    if op == "type":
        element = driver.find_element(By.CSS_SELECTOR, cmd["css"])
        element.clear()
        element.send_keys(cmd["text"])
        return {}
    if op == "click":
        driver.find_element(By.CSS_SELECTOR, cmd["css"]).click()
        time.sleep(0.3)
        return {"url": driver.current_url}
    if op == "submit":
        driver.find_element(By.CSS_SELECTOR, cmd["css"]).submit()
        time.sleep(0.3)
        return {"url": driver.current_url}
    if op == "cookies":
        return {"cookies": driver.get_cookies()}
    if op == "resources":
        # Every URL the page fetched (document, stylesheet, script, XHR/fetch).
        urls = driver.execute_script(
            "return [location.href].concat(performance.getEntriesByType('resource')"
            ".map(function (e) { return e.name; }));")
        return {"urls": urls}
    if op == "size":
        driver.set_window_size(cmd["w"], cmd["h"])
        return {}
    if op == "fullsize":
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(cmd["w"], max(cmd.get("min_h", 0), height + 140))
        return {"height": height}
    if op == "screenshot":
        driver.save_screenshot(cmd["path"])
        return {"path": cmd["path"]}
    if op == "js":
        return {"value": driver.execute_script(cmd["script"])}
    if op == "source":
        return {"html": driver.page_source}
    return {"error": f"unknown op {op}"}


def main():
    with tempfile.TemporaryDirectory(prefix="cloakroom-chromium-") as profile:
        driver = browser(profile)
        try:
            print(json.dumps({"ready": True}), flush=True)
            for line in sys.stdin:
                cmd = json.loads(line)
                if cmd["op"] == "quit":
                    break
                try:
                    answer = run(driver, cmd)
                except Exception as error:  # reported to the test, which fails with it
                    answer = {"error": f"{type(error).__name__}: {error}"}
                print(json.dumps(answer), flush=True)
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
