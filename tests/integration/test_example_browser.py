"""The example chat in a real browser: pages on two server processes talk, also across a restart.

The example's launcher starts its two uvicorn processes, as ``example/run`` does, on a Valkey
server of the test's own (so that the test can restart it on the same port). Two headless
Chromium browsers, driven by Selenium, open the same room: page A on server A, page B on server
B. What is typed in one page appears in the other, marked as having crossed processes. Then
Valkey restarts and the chat carries on through the same two server processes:

* ``valkey-keeps-data`` (append-only file): the room's members survive the restart, so the
  pages are left alone; the channel layer reconnects and the same websockets carry on.
* ``valkey-loses-data`` (no persistence, like the private server ``example/run`` starts): the
  restart forgets who is in the room. The websockets stay open, but nothing sent to the room
  reaches them any more, not even their own messages, so the pages reload: their new
  websockets join the room again.

The channel layer is channels_valkey's whatever CHANNEL_LAYER_BACKEND says: riding out the
restart is what is tested here. (channels_redis 4.3's layer does not: its consumers fail when
the connection drops, which closes the pages' websockets.)

Chromium and its driver are Debian's ``chromium`` and ``chromium-driver`` (``scripts/test``
installs them). Selenium is given both paths, so it never looks for or downloads a browser.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from support.servers import ValkeyServer

pytestmark = pytest.mark.slow

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "example"
WAIT = 10.0  # seconds for any one thing the pages should show

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # tests may run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=900,700",
    "--no-first-run",
    "--no-default-browser-check",
    # Only loopback: without these Chromium keeps reaching out to the network.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-proxy-server",
)


def _load_launcher() -> Any:
    # The module test_example.py loads, if it already did.
    name = "example_launcher"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE_DIR / "launcher.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


launcher = _load_launcher()


@pytest.fixture
def valkey(request: pytest.FixtureRequest) -> Iterator[ValkeyServer]:
    with ValkeyServer(name="example", persistence=request.param) as server:
        yield server


@pytest.fixture
def example(valkey: ValkeyServer) -> Iterator[Any]:
    # The servers' output goes to stdout, which pytest shows when the test fails.
    running = launcher.Example(ports=[0, 0], valkey_url=f"{valkey.url}/0", sink=print)
    try:
        try:
            running.start()
        except launcher.StartupError as exc:
            pytest.fail(f"the example did not start: {exc}")
        yield running
    finally:
        running.stop()


@pytest.fixture
def browsers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[WebDriver, WebDriver]]:
    """Two headless Chromium browsers, each with a fresh profile; both quit afterwards."""
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.fail(
            "chromium and chromedriver must be on PATH: run the suite through ./scripts/test, "
            "which installs Debian's chromium and chromium-driver packages"
        )
    # Selenium Manager is not needed with both paths given; should it run, it stays offline.
    monkeypatch.setenv("SE_OFFLINE", "true")
    # Selenium talks to chromedriver on localhost: never through a proxy from the environment.
    no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    monkeypatch.setenv("no_proxy", ",".join(filter(None, (no_proxy, "localhost,127.0.0.1"))))
    with contextlib.ExitStack() as stack:
        drivers = []
        for _ in range(2):
            profile = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True)
            )
            options = webdriver.ChromeOptions()
            options.binary_location = chromium
            for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile}"):
                options.add_argument(arg)
            driver = webdriver.Chrome(
                options=options, service=Service(executable_path=chromedriver)
            )
            stack.callback(driver.quit)  # before the profile is removed
            drivers.append(driver)
        yield drivers[0], drivers[1]


def _page_text(driver: WebDriver) -> str:
    try:
        return str(driver.find_element(By.TAG_NAME, "body").text)
    except WebDriverException as exc:
        return f"(could not read the page: {exc!r})"


def _wait(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    """What ``condition`` returns once it is truthy, waiting at most WAIT seconds."""
    wait = WebDriverWait(driver, WAIT, ignored_exceptions=[StaleElementReferenceException])
    try:
        return wait.until(condition)
    except TimeoutException:
        pass
    pytest.fail(f"waited {WAIT:.0f} s for {what}; the page shows:\n{_page_text(driver)}")


def _process(server: Any) -> str:
    """A process as the page names it."""
    return f"pid {server.pid} on port {server.port}"


def _wait_connected(driver: WebDriver, server: Any) -> None:
    """Wait until the page's websocket is open and in the room (the welcome has arrived)."""
    expected = f"Socket: connected to process {_process(server)}."
    _wait(
        driver,
        lambda d: d.find_element(By.ID, "socket-status").text == expected,
        f"{expected!r} on the page of server {server.name}",
    )


def _open_room(driver: WebDriver, server: Any, room: str) -> None:
    driver.get(f"{server.url}room/{room}/")
    _wait_connected(driver, server)


def _say(driver: WebDriver, text: str) -> None:
    def enabled_box(d: WebDriver) -> WebElement | None:
        box: WebElement = d.find_element(By.ID, "text")
        return box if box.is_enabled() else None  # disabled once the websocket closes

    _wait(driver, enabled_box, f"the page to take {text!r}").send_keys(text)
    driver.find_element(By.CSS_SELECTOR, "#send button").click()
    # The page empties the box once the message is on the socket.
    _wait(
        driver,
        lambda d: d.find_element(By.ID, "text").get_attribute("value") == "",
        f"the page to send {text!r}",
    )


def _received(driver: WebDriver, text: str) -> WebElement:
    """The message ``text`` in the page's list, once it is there."""

    def find(d: WebDriver) -> WebElement | None:
        for item in d.find_elements(By.CSS_SELECTOR, "#messages li"):
            if item.text.split("\n", 1)[0] == text:
                return item
        return None

    item: WebElement = _wait(driver, find, f"the message {text!r}")
    return item


def _check_exchange(pages: dict[Any, WebDriver], sender: Any, receiver: Any, text: str) -> None:
    """``sender``'s page says ``text``; ``receiver``'s page shows it came from the other process."""
    _say(pages[sender], text)
    item = _received(pages[receiver], text)
    route = item.find_element(By.CLASS_NAME, "meta").text
    assert route == (
        f"sent via {_process(sender)}, delivered by {_process(receiver)}: crossed processes"
    )
    assert item.get_attribute("class") == "crossed"
    # The sender's own page gets it back from its own process.
    own = _received(pages[sender], text).find_element(By.CLASS_NAME, "meta").text
    assert own == f"sent and delivered by {_process(sender)}"


@pytest.mark.parametrize(
    "valkey", [True, False], ids=["valkey-keeps-data", "valkey-loses-data"], indirect=True
)
def test_pages_on_two_processes_chat_and_recover_from_a_valkey_restart(
    valkey: ValkeyServer, example: Any, browsers: tuple[WebDriver, WebDriver]
) -> None:
    a, b = example.servers
    assert a.pid != b.pid
    pages = dict(zip((a, b), browsers, strict=True))
    room = f"browser-{uuid.uuid4().hex[:12]}"
    for server, page in pages.items():
        _open_room(page, server, room)

    _check_exchange(pages, a, b, "hello from A")
    _check_exchange(pages, b, a, "hello from B")

    valkey.restart()  # stop, then start on the same port

    if not valkey.persistence:
        # Gone with the rest of the data: which channels are in the room's group.
        assert valkey.client().dbsize() == 0
        for server, page in pages.items():
            page.refresh()
            _wait_connected(page, server)  # the same process as before, by pid
    assert example.dead_child() is None

    _check_exchange(pages, a, b, "A again, after the restart")
    _check_exchange(pages, b, a, "B again, after the restart")
