"""Another website's page posting to the gateway from its visitor's browser (RELIABILITY.md, "A tenth pass").

Headless Chromium (Debian's chromium and chromium-driver, as `tests/test_gateway_browser.py` drives them) opens a page
of another origin, which makes a real offer with its own RTCPeerConnection and then POSTs it to the gateway's
`/offer`, and the demo portrait to its `/avatar`, with `fetch(..., {mode: "no-cors"})`: what any website can do
without asking, its visitor none the wiser. The page cannot read the answers; the question is what the gateway did
with them. Afterwards the visitor itself (this process, from the same address, as the gateway's own page would)
asks for a session and uploads an avatar. Last, DNS rebinding: a page whose own name now points at the gateway's
loopback address reads `/config` and posts an offer as the gateway's own page would.

    python -m loadtests.cross_site [--gateway-tree /tmp/before10] [--out results.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
from aiohttp import web

from deploy.processes import free_ports, server_ports
from deploy.server import EmbeddedServer, ServerOptions
from ensemble.avatar import demo_avatar_png
from export.contract.layout import BUILD
from loadtests.gateway_peer import Peer
from loadtests.run import checkout_commit

ROOT = Path(__file__).resolve().parents[1]

MAKE_OFFER = """
async function makeOffer() {
  const pc = new RTCPeerConnection();
  pc.createDataChannel("events");
  pc.addTransceiver("audio");
  pc.addTransceiver("video", {direction: "recvonly"});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
  });
  return JSON.stringify({type: "offer", sdp: pc.localDescription.sdp});
}
"""

PAGE = """<!doctype html><title>an unrelated website</title><script>""" + MAKE_OFFER + """
window.result = null;
(async () => {
  const q = new URLSearchParams(location.search), gw = q.get("gw");
  const offer = await makeOffer();
  const image = await (await fetch("/face.png")).blob();
  const sent = {offers: 0, uploads: 0, network_errors: 0};
  const post = async (path, body) => {
    try { await fetch(gw + path, {method: "POST", mode: "no-cors", body}); return 1; }
    catch (e) { sent.network_errors++; return 0; }
  };
  for (let i = 0; i < Number(q.get("offers")); i++) sent.offers += await post("/offer", offer);
  for (let i = 0; i < Number(q.get("uploads")); i++) sent.uploads += await post("/avatar", new Blob([image]));
  window.result = sent;
})().catch((e) => { window.result = {error: String(e)}; });
</script>"""


# DNS rebinding: the script a website's page runs once its name points at the gateway's address (here Chromium is
# told so: --host-resolver-rules), in that page's origin, which is now the gateway's
REBOUND = MAKE_OFFER + """
const finish = arguments[arguments.length - 1];
(async () => {
  const config = await fetch("/config");
  const r = await fetch("/offer", {method: "POST", headers: {"Content-Type": "application/json"},
                                    body: await makeOffer()});
  const text = await r.text();
  finish({config: [config.status, (await config.text()).slice(0, 100)], offer: r.status,
          answer_read: r.ok && text.includes('"sdp"'), said: r.ok ? "" : text.slice(0, 140)});
})().catch((e) => finish({error: String(e)}));
"""


def chromium(profile: Path, *flags: str):
    """Headless Chromium (Debian's chromium and chromium-driver) driven by selenium, with a profile of its own and
    `flags` added (the browser test adds a fake microphone)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", *flags):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def run_page(page_url: str, timeout_s: float = 60.0) -> dict:
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(Path(profile))
        try:
            driver.get(page_url)
            deadline = time.monotonic() + timeout_s
            while (result := driver.execute_script("return window.result")) is None:
                assert time.monotonic() < deadline, "the page did not finish"
                time.sleep(0.2)
            return result
        finally:
            driver.quit()


def run_rebound(port: int, name: str = "rebinding.example", timeout_s: float = 60.0) -> dict:
    """The REBOUND script in a page of http://`name`:`port`, `name` resolving to 127.0.0.1 (the gateway's port)."""
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(Path(profile), f"--host-resolver-rules=MAP {name} 127.0.0.1")
        try:
            driver.set_script_timeout(timeout_s)
            driver.get(f"http://{name}:{port}/")
            return driver.execute_async_script(REBOUND)
        finally:
            driver.quit()


def stats(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/stats") as r:
        return json.load(r)


async def as_the_visitor(base: str) -> dict:
    """What the visitor gets from the gateway right after: a session, an avatar upload (from the same address)."""
    async with aiohttp.ClientSession(base) as http:
        peer = Peer()
        status, text = await peer.connect(http, wait_open_s=0)
        await peer.close()
        async with http.post("/avatar", data=demo_avatar_png()) as r:
            upload = (r.status, (await r.text())[:140])
    return {"offer": [status, text[:140] if status != 200 else "answered"], "upload": list(upload)}


async def serve_page(port: int) -> web.AppRunner:
    """The other website, on 127.0.0.1:`port` (its pages are loaded as http://localhost:`port`: another site)."""
    async def page(_) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def face(_) -> web.Response:
        return web.Response(body=demo_avatar_png(), content_type="image/png")

    app = web.Application()
    app.router.add_get("/page.html", page)
    app.router.add_get("/face.png", face)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", type=Path, default=BUILD / "tiny_repository")
    ap.add_argument("--gateway-tree", type=Path, default=ROOT, help="run `python -m deploy.gateway` from this tree")
    ap.add_argument("--offers", type=int, default=8, help="offers the page posts")
    ap.add_argument("--uploads", type=int, default=8, help="avatars the page posts")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = ap.parse_args(argv)
    options = ServerOptions(repository=args.repository, workdir=BUILD / "cross-site", **server_ports())
    port, site_port = free_ports(2)
    base = f"http://127.0.0.1:{port}"
    with EmbeddedServer(options) as server:
        gateway = subprocess.Popen([sys.executable, "-m", "deploy.gateway", "--triton", server.options.grpc_url,
                                    "--port", str(port), "--stats-port", str(port), "--ice-host", "127.0.0.1"],
                                   cwd=args.gateway_tree, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        loop = asyncio.new_event_loop()
        try:
            print(gateway.stdout.readline().strip(), flush=True)
            site = loop.run_until_complete(serve_page(site_port))
            before = stats(base)["sessions_started"]
            page = f"http://localhost:{site_port}/page.html?gw={base}&offers={args.offers}&uploads={args.uploads}"
            sent = loop.run_in_executor(None, run_page, page)
            sent = loop.run_until_complete(sent)
            started = stats(base)["sessions_started"] - before
            visitor = loop.run_until_complete(as_the_visitor(base))
            deadline = time.monotonic() + 60  # the page's sessions end unconnected (20 s): the client's slots free
            while stats(base)["active_sessions"] and time.monotonic() < deadline:
                time.sleep(1)
            rebound = loop.run_until_complete(loop.run_in_executor(None, run_rebound, port))
            loop.run_until_complete(site.cleanup())
        finally:
            loop.close()
            gateway.terminate()
            gateway.wait(30)
    figures = {"gateway_commit": checkout_commit(args.gateway_tree), "page_sent": sent,
               "sessions_the_gateway_started": started, "then_the_visitor": visitor, "dns_rebinding": rebound}
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
