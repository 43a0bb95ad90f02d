"""Load on loopback: `loradex serve` on the example project (packaged models, the shipped adapters),
N concurrent clients for a bounded time each, against the same requests run one after another.

Each client loops over the example project's 30 customer questions (model `auto`: routed, retrieved,
generated with the domain's adapter, citations checked), `max_tokens` fixed. Reported per level:
requests/s, p50/p99 latency, errors (must be 0: the levels stay under the queue limit), the batcher's
largest batch. The baseline is one client, i.e. the requests one after another.

  python benchmarks/server_load.py [--clients 1 4 16] [--seconds 60] [--max-tokens 32] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO,
    RESULTS,
    STDERR,
    LoadMonitor,
    example_project,
    machine_info,
    markdown_table,
    now_iso,
    write_json,
)


def level(url: str, questions: list[str], clients: int, seconds: float, max_tokens: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()

    def client(i: int) -> None:
        n = i
        with httpx.Client(timeout=600) as http:
            while time.perf_counter() < stop_at:
                body = {"model": "auto", "max_tokens": max_tokens,
                        "messages": [{"role": "user", "content": questions[n % len(questions)]}]}
                t0 = time.perf_counter()
                r = http.post(url + "/v1/chat/completions", json=body)
                dt = time.perf_counter() - t0
                with lock:
                    (latencies.append(dt) if r.status_code == 200 else errors.append(str(r.status_code)))
                n += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "error_codes": sorted(set(errors)),
            "seconds": round(wall, 1), "requests_per_s": round(len(latencies) / wall, 3),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from loradex.server.app import create_app
    from loradex.testing import ThreadedServer

    monitor = LoadMonitor()
    lines = (REPO / "examples/insurance/questions.jsonl").read_text().splitlines()
    questions = [json.loads(line)["question"] for line in lines]
    with tempfile.TemporaryDirectory() as tmp:
        proj = example_project(Path(tmp))
        for domain in ("claims", "policy", "billing"):
            ref = proj.registry.register(REPO / "examples/insurance/adapters" / domain, domain,
                                         {"imported_from": "examples"})
            proj.registry.activate(domain, ref.version)
        app = create_app(proj)
        running = ThreadedServer(app)
        url = running.url
        level(url, questions[:3], 1, 0.1, args.max_tokens)  # warm up: adapters loaded, first batch compiled
        rows = []
        for n in args.clients:
            rows.append(level(url, questions, n, args.seconds, args.max_tokens))
            rows[-1]["largest_batch_so_far"] = app.state.loradex.batcher.stats["largest_batch"]
            STDERR.print(f"{n} clients: {rows[-1]}")
        running.stop()
    base = next((r for r in rows if r["clients"] == 1), rows[0])
    for r in rows:
        ratio = r["requests_per_s"] / base["requests_per_s"] if base["requests_per_s"] else None
        r["throughput_vs_one_after_another"] = round(ratio, 2) if ratio is not None else None
    payload = {"benchmark": "server_load", "date": now_iso(), "settings": vars(args), "levels": rows,
               "batcher": app.state.loradex.batcher.stats, "load": monitor.report(), "machine": machine_info()}
    write_json(RESULTS / "server_load.json", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    print(markdown_table(["clients", "requests", "errors", "requests/s", "x one after another", "p50 ms", "p99 ms"],
                         [(r["clients"], r["requests"], r["errors"], r["requests_per_s"],
                           r["throughput_vs_one_after_another"], r["p50_ms"], r["p99_ms"]) for r in rows]))


if __name__ == "__main__":
    main()
