"""SageMaker's POST /invocations vs A1111's POST /sdapi/v1/txt2img on the same server process (tiny model, CPU).

Target: /invocations costs at most 2 % more per image. One uvicorn process serves both routes around one Generator
and job queue (the hosting router and its LoRA folder added to the A1111 app), so the difference is what hosting
adds: reading the body itself, picking txt2img or img2img, validating, and resolving the prompt's LoRAs. The
studio's training-busy guard, which only the A1111 routes pass through (a hosting endpoint has no studio), is off
(policy `share`) so that it does not slow the baseline.
Also timed: `Accept: image/png` (the PNG itself instead of base64 in JSON).

Sound on a shared, noisy machine: first it checks that the routes do the same work (the same seed gives
byte-identical PNGs on all three), then it runs many short rounds, each calling every route once back to back in
an order that cycles through all permutations (warm-up rounds discarded), and compares within each round. It
prints the median and IQR of the per-round ratios and their mean with a bootstrap 95 % CI; the verdict reads the
median, which one slow outlier cannot move.
Run: python bench/invocations.py [--steps 8] [--size 128] [--rounds 30] [--warmup 3]
"""

from __future__ import annotations

import argparse
import base64
import statistics

from generate_common import balanced_rounds, paired_ratios, tiny_generator, tiny_setup

TARGET = 1.02


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds (a multiple of 6 balances the orders)")
    parser.add_argument("--warmup", type=int, default=3, help="rounds run first and discarded")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import httpx
    from generate_fixtures import RunningServer

    from lorapipe.hosting_contract import HostedModel
    from lorapipe.server.app import create_app
    from lorapipe.server.deps import keep_hosted_loras
    from lorapipe.server.hosted_loras import HostedLoras
    from lorapipe.server.hosting import router
    from lorapipe.server.settings import ServerSettings
    from lorapipe.server.studio_settings import StudioSettings

    generator = tiny_generator(args.threads)
    model_dir, lora_dir = tiny_setup()
    studio = StudioSettings(home=str(model_dir.parent / "home"), busy_policy="share")
    app = create_app(ServerSettings(studio=studio), generator=generator)
    app.include_router(router)
    keep_hosted_loras(app, HostedLoras(lora_dir, HostedModel(base_model=str(model_dir))))
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
            """A call answering the PNG bytes of the one image, whichever way the route sends it."""

            def call() -> bytes:
                response = client.post(path, json=body, headers=headers)
                assert response.status_code == 200, response.text
                if response.headers["content-type"] == "image/png":
                    return response.content
                return base64.b64decode(response.json()["images"][0])

            return call

        calls = {
            "txt2img": post("/sdapi/v1/txt2img"),
            "invocations": post("/invocations"),
            "invocations_png": post("/invocations", accept="image/png"),
        }
        pngs = {name: call() for name, call in calls.items()}  # also the first warm-up (LoRA fused, schedulers built)
        differing = [name for name, png in pngs.items() if png != pngs["txt2img"]]
        if differing:
            raise SystemExit(f"not the same work: {', '.join(differing)} answered other PNG bytes than txt2img")
        rounds = balanced_rounds(calls, args.rounds, warmup=args.warmup)

    txt2img_ms = statistics.median(r["txt2img"] for r in rounds) * 1000
    extra_ms = statistics.median(r["invocations"] - r["txt2img"] for r in rounds) * 1000
    print(
        f"same work: the three routes answered byte-identical PNGs for seed {body['seed']} "
        f"({args.steps} steps, {args.size}px, Euler, LoRA toy)"
    )
    print(
        f"/sdapi/v1/txt2img median {txt2img_ms:.1f} ms/image; /invocations minus txt2img within a round: "
        f"median {extra_ms:+.2f} ms"
    )
    for name in ("invocations", "invocations_png"):
        print(f"{name} / txt2img per round: {paired_ratios(rounds, name, 'txt2img').describe()}")
    summary = paired_ratios(rounds, "invocations", "txt2img")
    verdict = "PASS" if summary.median <= TARGET else "FAIL"
    print(
        f"/invocations overhead: {(summary.median - 1) * 100:+.2f}% (median of per-round ratios; target <= "
        f"{(TARGET - 1) * 100:.0f}%: {verdict}; the mean's 95% CI upper bound is {(summary.ci_high - 1) * 100:+.2f}%)"
    )


if __name__ == "__main__":
    main()
