"""ComfyUI's own frontend in a real headless browser, against the session's ComfyUI server: Debian's chromium driven by
playwright (scripts/test.sh installs chromium with apt-get when it is missing and it runs as root). The template
browser lists Tandem's templates under ComfyUI-Tandem, each opens without the missing-nodes dialog, the node search
finds every Tandem node by "Tandem", and the CPU demo template runs to its frames with the progress bar on screen.
Screenshots go to pytest's tmp dir; their paths are printed."""
import json
import re
import time
from pathlib import Path

import pytest

from tandem.tests.server import CLONE_NAME, ComfyServer
from tandem.tests.test_templates import TITLES, WORKFLOWS

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright: pip install -r tests/requirements.txt")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM}: scripts/test.sh installs Debian's "
                                "chromium when it runs as root where apt-get exists (else: apt-get install chromium)")
DEMO = next(path for path in WORKFLOWS if path.stem == "Tandem demo (CPU)")


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory):
    """``shots(page, name)`` saves a screenshot under pytest's tmp dir and prints its path."""
    directory = tmp_path_factory.mktemp("screenshots")

    def shot(page, name: str) -> None:
        path = directory / f"{name}.png"
        page.screenshot(path=path)
        print(f"screenshot: {path}")

    return shot


@pytest.fixture(scope="module")
def page(comfy_server: ComfyServer):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(comfy_server.url)
        page.wait_for_function("window.app && window.app.graph", timeout=120_000)
        page.wait_for_load_state("networkidle")
        yield page
        browser.close()


def close_dialogs(page) -> None:
    """Escape closes ComfyUI's dialogs (missing models, the search box), not the template browser."""
    for _ in range(3):
        if page.get_by_role("dialog").count() == 0:
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)


def tandem_templates(page):
    """The template browser (ComfyUI opens it on a first visit; else the sidebar's Templates button) at
    ComfyUI-Tandem: its template cards."""
    close_dialogs(page)
    if page.get_by_role("dialog").count() == 0:
        page.get_by_role("button", name="Templates", exact=True).click()
    page.get_by_role("dialog").get_by_text(CLONE_NAME, exact=True).first.click()   # the side bar, then its heading
    cards = page.locator("[data-testid^='template-workflow-']")
    cards.first.wait_for()
    return cards


def open_template(page, path: Path) -> list[str]:
    """Click the template's card, wait until its nodes are on the canvas; the texts of the dialogs open then."""
    nodes = len(json.loads(path.read_text())["nodes"])
    tandem_templates(page)
    page.evaluate("() => app.graph.clear()")   # else a previous template of as many nodes passes the wait below
    page.get_by_test_id(f"template-workflow-{path.stem}").click()
    page.wait_for_function("n => app.graph.nodes.length === n", arg=nodes)
    page.wait_for_timeout(500)
    return [page.get_by_role("dialog").nth(i).inner_text() for i in range(page.get_by_role("dialog").count())]


def test_template_browser_lists_tandem_templates(page, shots):
    cards = tandem_templates(page)
    shots(page, "template browser")
    listed = sorted(cards.nth(i).get_attribute("data-testid").removeprefix("template-workflow-")
                    for i in range(cards.count()))
    assert listed == sorted(TITLES)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[path.stem for path in WORKFLOWS])
def test_template_opens_without_missing_nodes(page, path: Path):
    """Its card opens it with every node a known type; ComfyUI's missing-models dialog (the real models are not here)
    may show, its missing-nodes dialog may not."""
    dialogs = open_template(page, path)
    assert not [text for text in dialogs if "missing nodes" in text.lower()], dialogs
    types = sorted(node["type"] for node in json.loads(path.read_text())["nodes"])
    assert page.evaluate("() => app.graph.nodes.map(n => n.type).sort()") == types
    assert page.evaluate("() => app.graph.nodes.filter(n => !LiteGraph.registered_node_types[n.type]).length") == 0


def test_node_search_finds_every_tandem_node(page, comfy_server, shots):
    """Double-click on the canvas, type "Tandem": every node of Tandem's package is among the results."""
    tandem = sorted(node["display_name"] for node in comfy_server.object_info().values()
                    if node["python_module"] == f"custom_nodes.{CLONE_NAME}")
    open_template(page, DEMO)
    close_dialogs(page)
    page.mouse.dblclick(900, 920)             # below the demo's nodes, left of the minimap
    page.keyboard.type("Tandem")
    options = page.get_by_role("option")
    options.filter(has_text=tandem[0]).wait_for()
    shots(page, "node search")
    found = [options.nth(i).inner_text().split("\n")[0].strip() for i in range(options.count())]
    print(f"search 'Tandem': {found}")
    assert [name for name in tandem if name not in found] == []
    page.keyboard.press("Escape")
    options.first.wait_for(state="hidden")


def test_demo_template_runs_with_progress_bar(page, comfy_server, demo_models, shots):
    """Run pressed on the demo template: the progress bar of the running KSampler shows, and the prompt ends in 9
    saved frames. (Another seed than the template's, so that test_demo's run of the template as it is is not
    answered from ComfyUI's cache.)"""
    open_template(page, DEMO)
    close_dialogs(page)
    page.evaluate("() => app.graph.nodes.find(n => n.type === 'KSampler').widgets.find(w => w.name === 'seed')"
                  ".value = 2")
    before = set(comfy_server.history())
    started = time.monotonic()
    page.get_by_role("button", name="Run", exact=True).click()
    bar = page.get_by_text(re.compile(r"^Current node:\s*KSampler\s*[1-9]\d*%$"))   # under the queue's progress bar
    bar.wait_for(state="visible", timeout=300_000)
    shots(page, "demo progress")
    deadline = time.monotonic() + 300
    while not (new := set(comfy_server.history()) - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    seconds = time.monotonic() - started
    assert len(new) == 1, f"prompts finished since Run: {new}"
    entry = comfy_server.wait(new.pop())
    page.wait_for_timeout(1000)
    shots(page, "demo done")
    images = next(output["images"] for output in entry["outputs"].values())
    print(f"demo template from Run to its frames: {seconds:.1f} s")
    assert len(images) == 9
