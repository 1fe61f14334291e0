#!/usr/bin/env python3
"""The live page in headless Chromium, against the running pair (query-service on 5002,
command-service on 5001; PAGE_URL names another page, whose query-service's
COMMAND_SERVICE_URL names its command-service): it opens http://127.0.0.1:5002/, creates a todo from the form, sees
it appear in the list, completes and deletes it, checks the projection figures moved and that
the page reported how long the read side took, and saves a screenshot at desktop and at phone
width in .local/screenshots/. With `--first-rows` it only opens the page and prints how long
after navigation its first rows showed and how many requests went to query-service before
they did (`scripts/bench.sh` runs it at each read model size); it fails when none show within
10 s. Driven over the Chrome DevTools Protocol (a websocket), so it
needs only Debian's `chromium` and the `websockets` package. Exits non-zero on a failure."""

import asyncio, json, os, shutil, subprocess, sys, tempfile, time, urllib.request, uuid, base64

import websockets

PAGE = os.environ.get("PAGE_URL", "http://127.0.0.1:5002/")
PORT = int(os.environ.get("CDP_PORT", "9333"))
OUT = os.path.join(os.path.dirname(__file__), "..", ".local", "screenshots")


def fail(message):
    print(f"[browser] FAILED: {message}", file=sys.stderr)
    sys.exit(1)


class Page:
    def __init__(self, ws):
        self.ws, self.next_id, self.events = ws, 0, None

    async def call(self, method, **params):
        self.next_id += 1
        my = self.next_id
        await self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if self.events is not None and message.get("method") == "Network.requestWillBeSent":
                self.events.append(message["params"]["request"]["url"])
            if message.get("id") == my:
                if "error" in message:
                    fail(f"{method}: {message['error']}")
                return message.get("result", {})

    async def js(self, expression):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            fail(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression, what, within=20):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await self.js(expression):
                return
            await asyncio.sleep(0.1)
        fail(f"not within {within} s: {what}")

    async def screenshot(self, width, height, name):
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1, mobile=width < 600)
        await asyncio.sleep(0.3)
        shot = await self.call("Page.captureScreenshot", format="png")
        os.makedirs(OUT, exist_ok=True)
        path = os.path.join(OUT, name)
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        print(f"[browser] screenshot {os.path.normpath(path)} ({width}x{height})")


async def run(ws_url):
    async with websockets.connect(ws_url, max_size=32 * 1024 * 1024) as ws:
        page = Page(ws)
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        await page.call("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1, mobile=False)
        await page.call("Page.navigate", url=PAGE)
        await page.until("document.getElementById('stream-status')?.textContent === 'live'", "the stream is live")
        await page.until("document.getElementById('s-applied').textContent !== '–'", "the figures shown")
        applied_before = int(await page.js("document.getElementById('s-applied').textContent"))

        title = f"from the browser {uuid.uuid4().hex[:8]}"
        await page.js(f"document.getElementById('title').value = {json.dumps(title)};"
                      "document.querySelector('#new button[type=submit]').click(); true")
        find = f"[...document.querySelectorAll('#todos li')].find(li => li.querySelector('.title')?.textContent === {json.dumps(title)})"
        await page.until(f"!!{find}", "the new todo in the list")
        await page.until("document.getElementById('log').textContent.includes('readable on the read side')",
                         "the page timed the read side")
        await page.js(f"{find}.querySelector('.toggle').click(); true")
        await page.until(f"{find}?.classList.contains('done')", "the todo shown done")
        await page.screenshot(1280, 800, "page-desktop.png")
        await page.screenshot(390, 844, "page-phone.png")
        await page.call("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1, mobile=False)
        await page.js(f"{find}.querySelector('.delete').click(); true")
        await page.until(f"!{find}", "the todo gone from the list")
        await page.until(f"Number(document.getElementById('s-applied').textContent) >= {applied_before + 3}",
                         "the applied figure moved by the three writes")
        print(f"[browser] created, completed and deleted {title!r} from the page; applied {applied_before} -> "
              + str(await page.js("document.getElementById('s-applied').textContent")))


async def first_rows(ws_url):
    """Time from navigation to the first rows on screen, and the requests to the page's own
    origin before them (the Network domain's events)."""
    async with websockets.connect(ws_url, max_size=32 * 1024 * 1024) as ws:
        page = Page(ws)
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        await page.call("Network.enable")
        await page.call("Network.setCacheDisabled", cacheDisabled=True)
        origin = PAGE.split("/", 3)[:3]
        origin = "/".join(origin)
        requests = []
        page.events = requests
        started = time.monotonic()
        await page.call("Page.navigate", url=PAGE)
        deadline = started + 10
        while time.monotonic() < deadline:
            if await page.js("document.querySelectorAll('#todos li').length > 0"):
                break
        else:
            fail("no rows within 10 s of navigation")
        took = time.monotonic() - started
        rows = await page.js("document.querySelectorAll('#todos li').length")
        ours = [u for u in requests if u.startswith(origin)]
        print(f"[browser] first rows after {took * 1000:.0f} ms ({rows} rows); "
              f"{len(ours)} requests to query-service before them: {', '.join(u[len(origin):] for u in ours)}")


def main():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        fail("chromium is not installed (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="browser-test-")
    browser = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--remote-debugging-port={PORT}", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ws_url = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/json/list", timeout=1) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    ws_url = pages[0]["webSocketDebuggerUrl"]
                    break
            except OSError:
                pass
            time.sleep(0.2)
        if not ws_url:
            fail("chromium did not open its debugging port")
        asyncio.run(first_rows(ws_url) if "--first-rows" in sys.argv[1:] else run(ws_url))
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
        shutil.rmtree(profile, ignore_errors=True)
    print("[browser] ok")


if __name__ == "__main__":
    main()
