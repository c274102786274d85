"""SageMaker's POST /invocations vs A1111's POST /sdapi/v1/txt2img on the same server process (tiny model, CPU).

Target: /invocations costs at most 2 % more per image. One uvicorn process serves both routes around one Generator
and job queue (the hosting router and its LoRA check added to the A1111 app), so the difference is what hosting
adds: reading the body itself, picking txt2img or img2img, validating, and resolving the prompt's LoRAs.
Also timed: `Accept: image/png` (raw PNG instead of base64 in JSON).
Run: python bench/invocations.py [--steps 8] [--size 128] [--repeats 25]
"""

from __future__ import annotations

import argparse

from generate_common import interleaved, tiny_generator, tiny_setup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import httpx
    from generate_fixtures import RunningServer

    from lorapipe.hosting_contract import HostedModel
    from lorapipe.server.app import create_app
    from lorapipe.server.hosting import HostedLoras, router
    from lorapipe.server.settings import ServerSettings

    generator = tiny_generator(args.threads)
    model_dir, lora_dir = tiny_setup()
    app = create_app(ServerSettings(), generator=generator)
    app.include_router(router)
    app.state.hosted_loras = HostedLoras(lora_dir, HostedModel(base_model=str(model_dir)))
    body = {
        "prompt": "a photo of dwjz toy <lora:toy:0.8>",
        "steps": args.steps,
        "width": args.size,
        "height": args.size,
        "seed": 5,
        "sampler_name": "Euler",
    }
    with RunningServer(app) as server, httpx.Client(base_url=server.url, timeout=120) as client:

        def post(path: str, **headers):
            def call():
                response = client.post(path, json=body, headers=headers)
                assert response.status_code == 200, response.text

            return call

        calls = {
            "txt2img": post("/sdapi/v1/txt2img"),
            "invocations": post("/invocations"),
            "invocations_png": post("/invocations", accept="image/png"),
        }
        for call in calls.values():
            call()  # warm-up: LoRA fused, schedulers built
        times = interleaved(calls, args.repeats)
    ratio = times["invocations"] / times["txt2img"]
    print(
        f"/sdapi/v1/txt2img: {times['txt2img'] * 1000:.1f} ms/image   /invocations: "
        f"{times['invocations'] * 1000:.1f} ms/image   /invocations (Accept: image/png): "
        f"{times['invocations_png'] * 1000:.1f} ms/image  ({args.steps} steps, {args.size}px, median of "
        f"{args.repeats}, interleaved)"
    )
    print(
        f"/invocations / txt2img: ratio {ratio:.3f}, overhead {(ratio - 1) * 100:+.1f}%  (target <= 2%: "
        f"{'PASS' if ratio <= 1.02 else 'FAIL'})"
    )


if __name__ == "__main__":
    main()
