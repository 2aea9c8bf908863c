#!/usr/bin/env python3
"""The README's quick start from a clean checkout: `cargo run --release -- serve`
starts with no other server, prints a first admin key, answers /healthz, takes
one event and counts it, and stops cleanly on SIGTERM."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "keymeter-data")
BASE = "http://127.0.0.1:8080"


def request(method, path, key=None, body=None, content_type="application/json"):
    headers = {"content-type": content_type}
    if key:
        headers["authorization"] = "Bearer " + key
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
        return r.status, (json.loads(text) if text.strip().startswith(("{", "[")) else text)


def main():
    if os.path.exists(DATA):
        sys.exit(f"{DATA} exists: the quick start needs a fresh data directory")
    proc = subprocess.Popen(
        ["cargo", "run", "--locked", "--release", "--", "serve"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        key = None
        deadline = time.time() + 1800
        for line in proc.stdout:
            m = re.search(r"\b(km_[A-Za-z0-9_-]{20,})", line)
            if m:
                key = m.group(1)
                break
            if time.time() > deadline:
                sys.exit("serve printed no admin key")
        if key is None:
            sys.exit(f"serve exited before printing an admin key (exit {proc.wait()})")
        assert request("GET", "/healthz") == (200, "ok")
        status, meter = request("POST", "/api/v1/meters", key,
                                {"slug": "calls", "eventType": "api.call", "aggregation": "COUNT"})
        assert status == 201, (status, meter)
        event = {"specversion": "1.0", "id": "quickstart-1", "source": "ci",
                 "type": "api.call", "subject": "acme"}
        status, _ = request("POST", "/api/v1/events", key, event, "application/cloudevents+json")
        assert status in (200, 202, 204), status
        status, result = request("GET", "/api/v1/meters/calls/query", key)
        assert status == 200, status
        total = sum(row["value"] for row in result["data"])
        assert total == 1, result
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert code == 0, f"serve exited {code} on SIGTERM"
        print("quick start: serve started, took and counted one event, stopped cleanly")
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(DATA, ignore_errors=True)
        try:
            os.remove(DATA + ".master-key")
        except FileNotFoundError:
            pass


if __name__ == "__main__":
    main()
