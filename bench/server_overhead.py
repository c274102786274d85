"""Per-image latency through the HTTP API vs the Generator called in-process (tiny model, CPU).

Target: overhead <= 5 % or <= 30 ms. The server runs in this process (uvicorn thread) around the same Generator,
so the difference is HTTP + JSON + PNG/base64 + queue hand-off.
Run: python bench/server_overhead.py [--steps 8] [--size 128] [--repeats 9]
"""

from __future__ import annotations

import argparse

from generate_common import interleaved, serving, tiny_generator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import httpx

    from lorapipe.generate.generator import GenerationRequest

    generator = tiny_generator(args.threads)
    body = {
        "prompt": "a photo of dwjz toy <lora:toy:0.8>",
        "steps": args.steps,
        "width": args.size,
        "height": args.size,
        "seed": 5,
        "sampler_name": "Euler",
    }
    request = GenerationRequest(
        body["prompt"], steps=args.steps, width=args.size, height=args.size, seed=5, sampler_name="Euler"
    )
    with serving(generator) as server, httpx.Client() as client:

        def over_http():
            response = client.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=120)
            assert response.status_code == 200, response.text

        over_http()
        times = interleaved({"http": over_http, "in_process": lambda: generator.generate(request)}, args.repeats)
    overhead = times["http"] - times["in_process"]
    ratio = times["http"] / times["in_process"]
    ok = ratio <= 1.05 or overhead <= 0.030
    print(
        f"in-process: {times['in_process'] * 1000:.1f} ms/image   HTTP API: {times['http'] * 1000:.1f} ms/image "
        f"({args.steps} steps, {args.size}px, median of {args.repeats})"
    )
    print(
        f"overhead: {overhead * 1000:.1f} ms, ratio {ratio:.3f}  (target <= 5% or <= 30 ms: {'PASS' if ok else 'FAIL'})"
    )


if __name__ == "__main__":
    main()
