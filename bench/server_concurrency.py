"""20 concurrent clients against a queue of 8: no failures besides 503s, memory flat across 200 requests.

Clients retry a 503 after its Retry-After (capped to keep the run short). RSS of this process (server + model)
is sampled as requests complete; "flat" means the last quarter's median is within a few MB of the second quarter's.
Run: python bench/server_concurrency.py [--requests 200] [--clients 20] [--queue 8]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import statistics
import threading
import time

from generate_common import serving, tiny_generator


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import httpx

    generator = tiny_generator(args.threads)
    statuses: collections.Counter = collections.Counter()
    rss_samples: list[float] = []
    lock = threading.Lock()
    remaining = iter(range(args.requests))

    def client_loop(client_no: int) -> None:
        with httpx.Client(timeout=300) as client:
            while True:
                with lock:
                    index = next(remaining, None)
                if index is None:
                    return
                prompt = "toy <lora:toy:0.8>" if index % 2 else "toy"  # alternate sets: fuse/unfuse under load
                body = {"prompt": prompt, "steps": 1, "width": 64, "height": 64, "seed": index}
                while True:
                    response = client.post(f"{server.url}/sdapi/v1/txt2img", json=body)
                    with lock:
                        statuses[response.status_code] += 1
                    if response.status_code != 503:
                        break
                    time.sleep(min(float(response.headers.get("retry-after", 1)), 0.5))
                with lock:
                    rss_samples.append(rss_mib())

    with serving(generator, queue_size=args.queue) as server:
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client_loop, range(args.clients)))
        elapsed = time.perf_counter() - started
    failures = {code: n for code, n in statuses.items() if code not in (200, 503)}
    quarter = max(1, len(rss_samples) // 4)
    early = statistics.median(rss_samples[quarter : 2 * quarter])
    late = statistics.median(rss_samples[-quarter:])
    print(
        f"{args.requests} requests from {args.clients} clients, queue {args.queue}: {dict(statuses)} in {elapsed:.1f} s"
    )
    print(f"failures other than 503: {failures or 'none'}  ({'PASS' if not failures else 'FAIL'})")
    print(
        f"RSS median 2nd quarter {early:.1f} MiB, last quarter {late:.1f} MiB, growth {late - early:+.1f} MiB "
        f"({'PASS' if late - early < 20 else 'CHECK'}: flat = under 20 MiB)"
    )


if __name__ == "__main__":
    main()
