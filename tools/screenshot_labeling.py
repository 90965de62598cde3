#!/usr/bin/env python3
"""Screenshot of the Label Studio labeling interface of one review or study task, with headless Chromium.

    python tools/screenshot_labeling.py --url http://127.0.0.1:8080 --workdir W --out shot.png
        [--task ID | --sample SAMPLE_ID] [--email E --password P] [--chromium chromium]
    python tools/screenshot_labeling.py --url ... --study STUDY --out shot.png     (a `study push` task)

Label Studio's pages need a logged-in browser session, and a headless ``chromium --screenshot``
cannot log in. So this script logs in with the e-mail and password (default:
``$LABEL_STUDIO_USERNAME`` / ``$LABEL_STUDIO_PASSWORD``), then runs a small reverse proxy on
127.0.0.1 that adds the session cookie to every request, and points Chromium at the proxy.
The project and task come from ``WORKDIR/review/project.json`` (written by ``review push``), or
``STUDY/study_state.json`` (written by ``study push``).

It then loads the page once more with ``--dump-dom`` and checks that it shows the source and
candidate images, the highlighted referring and edit phrases and the candidate choice (a study:
the outputs, a quality and a consistency rating per output, the preference, and no word of the
blind mapping: no method label, editor or run folder) - exit 1 when something is missing.

Chromium: Debian's ``chromium`` (``apt-get install -y chromium``), run with ``--headless
--no-sandbox --disable-gpu`` and no background networking, in a fresh profile.
Only the standard library is used.
"""
from __future__ import annotations

import argparse
import http.client
import http.cookiejar
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, Optional, Tuple

HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "content-encoding", "content-length"}


def login(url: str, email: str, password: str) -> Dict[str, str]:
    """Log into Label Studio's web UI; returns the session cookies (name -> value)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(url + "/user/login/", timeout=30) as r:
        page = r.read().decode("utf-8", "replace")
    m = re.search(r'name="csrfmiddlewaretoken"\s+value="([^"]+)"', page)
    if not m:
        raise SystemExit("screenshot: no CSRF token on the login page")
    body = urllib.parse.urlencode({"csrfmiddlewaretoken": m.group(1), "email": email, "password": password}).encode()
    req = urllib.request.Request(url + "/user/login/", data=body, method="POST",
                                 headers={"Referer": url + "/user/login/",
                                          "Content-Type": "application/x-www-form-urlencoded"})
    with opener.open(req, timeout=30):
        pass
    cookies = {c.name: c.value for c in jar}
    if "sessionid" not in cookies:
        raise SystemExit("screenshot: logging in failed (wrong e-mail or password?)")
    return cookies


def make_proxy(upstream: str, cookies: Dict[str, str]) -> Tuple[http.server.ThreadingHTTPServer, int]:
    """A reverse proxy on 127.0.0.1 that forwards to ``upstream`` with the session cookies."""
    up = urllib.parse.urlsplit(upstream)
    cookie_header = "; ".join(f"{k}={v}" for k, v in cookies.items())

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS | {"host", "cookie", "accept-encoding"}}
            headers["Cookie"] = cookie_header
            if "csrftoken" in cookies:
                headers["X-CSRFToken"] = cookies["csrftoken"]
            headers["Host"] = up.netloc
            conn = http.client.HTTPConnection(up.hostname, up.port or 80, timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() in HOP_HEADERS or k.lower() == "set-cookie":
                    continue
                if k.lower() == "location":
                    v = v.replace(upstream, "")
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return server, int(server.server_address[1])


def screenshot(page_url: str, out: Path, chromium: str = "chromium", size: str = "1600,1500",
               budget_ms: int = 30000) -> None:
    """Load ``page_url`` in headless Chromium (fresh profile) and save a PNG screenshot."""
    exe = shutil.which(chromium) or chromium
    with tempfile.TemporaryDirectory(prefix="rce-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={size}",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", page_url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"screenshot: chromium failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def dump_dom(page_url: str, chromium: str = "chromium", size: str = "1600,1500", budget_ms: int = 30000) -> str:
    """The page's DOM after its scripts ran (headless Chromium ``--dump-dom``)."""
    exe = shutil.which(chromium) or chromium
    with tempfile.TemporaryDirectory(prefix="rce-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", f"--window-size={size}", f"--virtual-time-budget={budget_ms}",
               "--dump-dom", page_url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"screenshot: chromium --dump-dom failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def check_dom(dom: str, num_candidates: int) -> Dict[str, bool]:
    """What the labeling page must show: the images, the highlighted phrases, the candidate choice."""
    images = re.findall(r'<img[^>]+src="([^"]*local-files[^"]*)"', dom)
    return {
        "source and candidate images": len(set(images)) >= 1 + num_candidates,
        "highlighted referring phrase": 'class="rce-referring"' in dom,
        "highlighted edit phrase": 'class="rce-edit"' in dom,
        "candidate choice": all(f"Candidate {i + 1}" in dom for i in range(num_candidates)) and "Reject" in dom,
    }


def check_study_dom(dom: str, state: Dict) -> Dict[str, bool]:
    """What a study's rating page must show, and must not: the methods' identities."""
    n = int(state.get("num_slots", 2))
    images = re.findall(r'<img[^>]+src="([^"]*local-files[^"]*)"', dom)
    secrets = [w for m in state.get("methods", {}).values()
               for w in (m["label"], m["editor"], m["run"], Path(m["run"]).name) if w]
    # what a rater can read: the page without its style sheets and scripts (Label Studio's own CSS
    # says "blur", its scripts say many things); text, attributes and image addresses stay
    visible = re.sub(r"<(style|script)\b[^>]*>.*?</\1>", "", dom, flags=re.S | re.I)
    found = sorted({w for w in secrets if w in visible})
    return {
        "source and output images": len(set(images)) >= 1 + n,
        "highlighted referring phrase": 'class="rce-referring"' in dom,
        "highlighted edit phrase": 'class="rce-edit"' in dom,
        "outputs titled Output 1..n": all(f"Output {k + 1}" in dom for k in range(n)),
        "quality and consistency ratings": dom.count("Quality") >= n and dom.count("Consistency") >= n,
        "best-output preference": "No preference" in dom,
        "no method identity in the page" + (f" (found: {', '.join(found)})" if found else ""): not found,
    }


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="Label Studio URL")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--workdir", help="the pushed workspace (review/project.json)")
    which.add_argument("--study", help="the pushed study folder (study_state.json)")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--task", type=int, help="task id (default: the first pushed task)")
    ap.add_argument("--sample", help="sample id (instead of --task)")
    ap.add_argument("--email", default=os.environ.get("LABEL_STUDIO_USERNAME"))
    ap.add_argument("--password", default=os.environ.get("LABEL_STUDIO_PASSWORD"))
    ap.add_argument("--chromium", default="chromium")
    ap.add_argument("--size", default="1600,1500", help="window size W,H")
    args = ap.parse_args(argv)
    if not (args.email and args.password):
        ap.error("give --email/--password or set LABEL_STUDIO_USERNAME/LABEL_STUDIO_PASSWORD")
    if args.study:
        state = json.loads((Path(args.study) / "study_state.json").read_text())
        tasks = {sid: t["task_id"] for sid, t in state["tasks"].items()}
    else:
        state = json.loads((Path(args.workdir) / "review" / "project.json").read_text())
        tasks = state["tasks"]
    task = args.task or (tasks[args.sample] if args.sample else min(tasks.values()))
    url = args.url.rstrip("/")
    cookies = login(url, args.email, args.password)
    server, port = make_proxy(url, cookies)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page = f"http://127.0.0.1:{port}/projects/{state['project_id']}/data?task={task}"
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(page, out, args.chromium, args.size)
        dom = dump_dom(page, args.chromium, args.size)
        checks = check_study_dom(dom, state) if args.study else check_dom(dom, int(state.get("num_candidates", 1)))
    finally:
        server.shutdown()
    print(f"wrote {out} (project {state['project_id']}, task {task})")
    for what, ok in checks.items():
        print(f"  {'ok ' if ok else 'MISSING'} {what}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
