"""Web joiners in a real browser: headless Chromium (Debian's, via Selenium) on a shared session.

The owner is the real OpenSSH client in tmux; one browser and one gateway
serve the whole module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.support.browser import chromium
from tests.support.gateway import ClientKey, GatewayThread, Tmux, wait_until
from tests.support.png import brightness_rows
from tests.support.sshd import free_port
from tests.support.web import control, share_options, wait_for_participants, web_gateway, web_links


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, client_key: ClientKey) -> Iterator[GatewayThread]:
    with web_gateway(tmp_path_factory.mktemp("web-gw"), client_key, {"sharing": {"open": True}}) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture
def page(browser: webdriver.Chrome) -> Iterator[webdriver.Chrome]:
    yield browser
    browser.get("about:blank")  # closes this test's WebSocket


@pytest.fixture
def owner(gw: GatewayThread, tmp_path: Path) -> Iterator[Tmux]:
    directory = tmp_path / "owner"
    directory.mkdir()
    term = Tmux("owner", directory).start(gw.ssh_argv(options=share_options()), 90, 25)
    yield term
    term.close()


def status(page: webdriver.Chrome) -> str:
    return str(page.find_element(By.ID, "status").text)


def text_rows(page: webdriver.Chrome) -> list[str]:
    """The terminal's rows as the page draws them."""
    rows = page.find_elements(By.CSS_SELECTOR, ".xterm-rows > div")
    return [row.text.replace("\xa0", " ").rstrip() for row in rows]


def wait_text(page: webdriver.Chrome, pattern: str) -> None:
    try:
        wait_until(
            lambda: re.search(pattern, "\n".join(text_rows(page))), message=f"page to show {pattern!r}"
        )
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- page ---\n" + "\n".join(text_rows(page))) from None


def keyboard(page: webdriver.Chrome) -> ActionChains:
    page.find_element(By.CLASS_NAME, "xterm-screen").click()  # focus: keys go to xterm.js
    return ActionChains(page)


def test_late_joiner_sees_a_full_screen_program_started_before(
    gw: GatewayThread, owner: Tmux, page: webdriver.Chrome, tmp_path: Path
) -> None:
    document = tmp_path / "doc.txt"
    document.write_text("".join(f"line {n:03d} of the document\n" for n in range(1, 400)))
    links = web_links(owner)
    owner.type(f"less {document}\n")
    owner.wait_for("line 001 of the document")
    owner.send("G")
    owner.wait_for(r"line 399 of the document\s*\n\(END\)")
    page.get(links["ro"])
    wait_text(page, "line 399 of the document")
    assert "shared by user:alice · read-only · connected" in status(page)
    owner.wait_for("web viewer joined \\(read-only\\)")

    def document_rows(rows: list[str]) -> list[str]:
        return [row.rstrip() for row in rows if "of the document" in row]

    # The owner's join notice takes one row for a few seconds; then both show the same page.
    wait_until(
        lambda: (
            document_rows(text_rows(page)) == document_rows(owner.screen().splitlines())
            and len(document_rows(text_rows(page))) == 24
        ),
        message="the same 24 lines on the page as in the owner's terminal",
    )
    rows = text_rows(page)
    assert len(rows) == 25 and rows[0] == "line 376 of the document" and rows[24].startswith("(END)")
    assert "line 001" not in "\n".join(rows)

    # The screenshot: text on each of the 24 document rows, and less's reverse-video
    # "(END)" on the last one (bright cells, dark glyphs).
    shot = brightness_rows(page.find_element(By.CLASS_NAME, "xterm-screen").screenshot_as_png)
    (tmp_path / "late-joiner.png").write_bytes(page.get_screenshot_as_png())
    cell_height = len(shot) / 25
    cell_width = len(shot[0]) / 90

    def lit_share(row: int, first_col: int, last_col: int) -> float:
        pixels = [
            value
            for line in shot[int(row * cell_height) : int((row + 1) * cell_height)]
            for value in line[int(first_col * cell_width) : int(last_col * cell_width)]
        ]
        return sum(value > 128 for value in pixels) / len(pixels)

    for row in range(24):
        assert 0.03 < lit_share(row, 0, 24) < 0.5, f"row {row} does not look like a line of text"
    assert lit_share(24, 0, 5) > 0.5, "no reverse-video (END) on the last row"
    assert lit_share(24, 10, 80) < 0.02, "the last row has more than (END)"
    owner.type("q")


def test_typing_into_a_read_only_page_changes_nothing(
    gw: GatewayThread, owner: Tmux, page: webdriver.Chrome, tmp_path: Path
) -> None:
    record = tmp_path / "typed.txt"
    links = web_links(owner)
    owner.type(f"clear; cat > {record}\n")
    page.get(links["ro"])
    wait_for_participants(gw, 1)
    keyboard(page).send_keys("from-web-ro").send_keys(Keys.ENTER).key_down(Keys.CONTROL).send_keys(
        "d"
    ).key_up(Keys.CONTROL).perform()
    owner.type("from-owner\r")
    wait_text(page, "from-owner")  # live output reaches the read-only page
    owner.send("C-d")
    wait_until(lambda: record.exists() and "from-owner" in record.read_text(), message="recorded input")
    assert "from-web-ro" not in record.read_text()
    assert "from-web-ro" not in owner.screen()


def test_read_write_page_types_into_the_owners_terminal(
    gw: GatewayThread, owner: Tmux, page: webdriver.Chrome
) -> None:
    links = web_links(owner)
    page.get(links["rw"])
    wait_until(lambda: "read-write · connected" in status(page), message="rw page connected")
    keyboard(page).send_keys("echo WEB$((6*7))").send_keys(Keys.ENTER).perform()
    owner.wait_for("WEB42")
    # Arrows reach the shell (history), and Ctrl-C interrupts the program.
    keyboard(page).send_keys(Keys.ARROW_UP).send_keys(Keys.ENTER).perform()
    wait_until(lambda: owner.screen().count("WEB42") == 2, message="the command again from history")
    keyboard(page).send_keys("sleep 1000").send_keys(Keys.ENTER).perform()
    owner.wait_for("sleep 1000")
    keyboard(page).key_down(Keys.CONTROL).send_keys("c").key_up(Keys.CONTROL).perform()
    keyboard(page).send_keys("echo after-$((2+3))").send_keys(Keys.ENTER).perform()
    owner.wait_for("after-5")
    # A paste (as the browser delivers one: a paste event with the clipboard's text).
    page.execute_script(
        """const data = new DataTransfer();
        data.setData("text/plain", arguments[0]);
        document.querySelector(".xterm-helper-textarea").dispatchEvent(
            new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true}));""",
        "echo pasted-$((8*8))",
    )
    keyboard(page).send_keys(Keys.ENTER).perform()
    owner.wait_for("pasted-64")


def test_kick_ends_the_page_with_a_message(gw: GatewayThread, owner: Tmux, page: webdriver.Chrome) -> None:
    links = web_links(owner)
    page.get(links["ro"])
    (viewer,) = wait_for_participants(gw, 1)
    control(gw, "kick", viewer)
    wait_until(
        lambda: "ended: you were removed from the session by its owner" in status(page), message="ended"
    )
    wait_text(page, "pairpod: you were removed from the session by its owner")
    owner.wait_for("web viewer was removed")
    # The page does not come back: the link is still valid, but nobody rejoined.
    owner.type("echo still-$((1+1))\n")
    owner.wait_for("still-2")
    assert wait_for_participants(gw, 0) == []
    assert "ended" in status(page)


def test_a_revoked_links_page_says_so(gw: GatewayThread, owner: Tmux, page: webdriver.Chrome) -> None:
    web_links(owner)
    minted = control(gw, "mint", "web-ro")
    link_id, url = re.search(r"link (\w+): (http://\S+)", minted).groups()
    assert f"link {link_id}  read-only  (web)" in control(gw, "list")
    control(gw, "revoke", link_id)
    page.get(url)
    assert "pairpod: invalid or expired session" in page.find_element(By.TAG_NAME, "body").text


def test_a_dropped_socket_reconnects_by_itself(
    page: webdriver.Chrome, tmp_path: Path, client_key: ClientKey
) -> None:
    # A listener on a fixed port: stopping and starting it drops the page's socket.
    overrides = {"sharing": {"open": True, "web": {"listen": f"127.0.0.1:{free_port()}"}}}
    with web_gateway(tmp_path / "gw", client_key, overrides) as gateway:
        term = Tmux("reconnect", tmp_path).start(gateway.ssh_argv(options=share_options("ro")), 90, 25)
        try:
            page.get(web_links(term)["ro"])
            wait_until(lambda: "read-only · connected" in status(page), message="connected")
            assert gateway.gateway.web is not None
            gateway.call(gateway.gateway.web.stop())
            wait_until(lambda: "disconnected: reconnecting" in status(page), message="disconnected")
            gateway.call(gateway.gateway.web.start())
            term.type("echo back-$((9*9))\n")
            wait_text(page, "back-81")
            assert "read-only · connected" in status(page)
        finally:
            term.close()
