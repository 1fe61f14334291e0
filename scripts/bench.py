#!/usr/bin/env python3
"""Benchmark of the running pair: write latency and throughput on command-service, how long the
projection takes to catch up, and read latency and throughput on query-service.

    scripts/run.sh &            # or: docker compose up -d
    python3 scripts/bench.py --writes 2000 --reads 5000 --concurrency 8

Loopback only, bounded in count and time; prints figures, asserts nothing about speed.
Standard library only (one keep-alive HTTP connection per worker thread).
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class Client:
    def __init__(self, base):
        url = urllib.parse.urlparse(base)
        self.host, self.port = url.hostname, url.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def request(self, method, path, body=None):
        headers = {"content-type": "application/json"} if body is not None else {}
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                payload = response.read()
                return response.status, payload
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise


def run(workers, total, task):
    """Runs task(client_index, i) for i in range(total) over `workers` threads; returns
    (latencies in ms, failures, wall seconds)."""
    latencies, failures, lock = [], [], threading.Lock()
    counter = iter(range(total))

    def worker(w):
        local = []
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            started = time.perf_counter()
            ok, what = task(w, i)
            local.append((time.perf_counter() - started) * 1000)
            if not ok:
                with lock:
                    failures.append(what)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failures, time.perf_counter() - started


def report(name, latencies, failures, wall):
    print(
        f"{name:<28} {len(latencies):>6} req  {len(latencies) / wall:>8.1f} req/s  "
        f"p50 {percentile(latencies, 50):6.2f} ms  p95 {percentile(latencies, 95):6.2f} ms  "
        f"p99 {percentile(latencies, 99):6.2f} ms  max {max(latencies, default=float('nan')):7.2f} ms  "
        f"errors {len(failures)}"
    )
    for f in failures[:3]:
        print(f"    e.g. {f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--command-url", default="http://127.0.0.1:5001")
    ap.add_argument("--query-url", default="http://127.0.0.1:5002")
    ap.add_argument("--writes", type=int, default=2000)
    ap.add_argument("--reads", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--catch-up-timeout", type=float, default=120.0)
    args = ap.parse_args()

    writers = [Client(args.command_url) for _ in range(args.concurrency)]
    readers = [Client(args.query_url) for _ in range(args.concurrency)]
    created = [None] * args.writes

    def create(w, i):
        status, body = writers[w].request("POST", "/todos", {"title": f"bench {i}"})
        if status == 201:
            created[i] = json.loads(body)["id"]
            return True, None
        return False, f"POST /todos -> {status} {body[:120]!r}"

    print(f"pair: {args.command_url} (writes), {args.query_url} (reads); concurrency {args.concurrency}")
    lat, fail, wall = run(args.concurrency, args.writes, create)
    writes_done = time.perf_counter()
    report("POST /todos", lat, fail, wall)

    ids = [i for i in created if i is not None]
    if not ids:
        print("no todo created; stopping")
        return 1
    # Projection catch-up: from the last write's answer until every created todo is readable.
    probe = Client(args.query_url)
    pending = set(ids)
    deadline = time.perf_counter() + args.catch_up_timeout
    while pending and time.perf_counter() < deadline:
        for todo_id in list(pending)[:200]:
            status, _ = probe.request("GET", f"/todos/{todo_id}")
            if status == 200:
                pending.discard(todo_id)
        if pending:
            time.sleep(0.05)
    caught_up = time.perf_counter() - writes_done
    if pending:
        print(f"projection catch-up          {len(pending)} of {len(ids)} todos still missing after {caught_up:.1f} s")
    else:
        print(f"projection catch-up          all {len(ids)} todos readable {caught_up * 1000:.0f} ms after the last write answered")

    def read(w, i):
        todo_id = ids[i % len(ids)]
        status, body = readers[w].request("GET", f"/todos/{todo_id}")
        return (True, None) if status == 200 else (False, f"GET /todos/{todo_id} -> {status} {body[:120]!r}")

    lat, fail, wall = run(args.concurrency, args.reads, read)
    report("GET /todos/{id}", lat, fail, wall)

    def read_with_version(w, i):
        todo_id = ids[i % len(ids)]
        status, body = readers[w].request("GET", f"/todos/{todo_id}?min_version=1")
        return (True, None) if status == 200 else (False, f"{status} {body[:120]!r}")

    lat, fail, wall = run(args.concurrency, min(args.reads, 2000), read_with_version)
    report("GET /todos/{id}?min_version", lat, fail, wall)

    def list_page(w, i):
        status, body = readers[w].request("GET", "/todos?limit=50&sort=-id")
        return (True, None) if status == 200 else (False, f"{status} {body[:120]!r}")

    lat, fail, wall = run(args.concurrency, min(args.reads, 2000), list_page)
    report("GET /todos?limit=50", lat, fail, wall)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
