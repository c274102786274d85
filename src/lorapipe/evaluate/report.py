"""eval.json (every number) and eval.html (one self-contained page: image grid, metric curves, recommendation).

The page embeds everything as data URIs (JPEG thumbnails, matplotlib PNG curves), so it can be mailed or opened
from an artifact store without the images beside it; the full-size PNGs go to `images/<checkpoint>/` beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict
from pathlib import Path
from statistics import fmean

from lorapipe.atomic import atomic_target, atomic_write_text

JSON_NAME = "eval.json"
HTML_NAME = "eval.html"
IMAGES_DIR = "images"
BASE_IMAGES = "no-lora"  # the folder of the base model's images (the label has a space)
THUMBNAIL_SIDE = 384  # grid cells; the full images would make the page tens of MB
METRICS = (
    ("dino_i", "DINO-I (subject)"),
    ("clip_i", "CLIP-I (subject)"),
    ("clip_t", "CLIP-T (prompt)"),
    ("leakage", "leakage"),
)


def write_report(result, out_dir: Path, options) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = report_data(result, options)
    json_path, html_path = out_dir / JSON_NAME, out_dir / HTML_NAME
    files = _image_files(result)
    for (label, index), rendered in result.images.items():
        for image, seed in zip(rendered.images, rendered.seeds):
            path = out_dir / files[(label, index, seed)]
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_target(path, suffix=".png") as tmp:
                image.save(tmp, format="PNG")
    atomic_write_text(json_path, json.dumps(data, indent=2))
    atomic_write_text(html_path, report_html(result, data))
    return json_path, html_path


def report_data(result, options) -> dict:
    checkpoints = []
    for checkpoint, score in zip(result.checkpoints, result.scores):
        checkpoints.append(
            {
                "label": checkpoint.label,
                "file": str(checkpoint.path) if checkpoint.path else None,
                "kind": checkpoint.kind,
                "step": checkpoint.step,
                "epoch": checkpoint.epoch,
                **{key: getattr(score, key) for key, _title in METRICS},
                "validation_loss": result.validation_loss.get(checkpoint.label),
                "seconds_render": result.seconds_render.get(checkpoint.label),
            }
        )
    per_prompt = []
    for checkpoint in result.checkpoints:
        for prompt in result.prompts:
            rows = [r for r in result.image_scores if r.checkpoint == checkpoint.label and r.prompt == prompt.index]
            leaks = [r.leakage for r in rows if r.leakage is not None]
            per_prompt.append(
                {
                    "checkpoint": checkpoint.label,
                    "prompt": prompt.index,
                    "dino_i": fmean(r.dino_i for r in rows),
                    "clip_i": fmean(r.clip_i for r in rows),
                    "clip_t": fmean(r.clip_t for r in rows),
                    "leakage": fmean(leaks) if leaks else None,
                }
            )
    recommended = result.recommended
    return {
        "run": str(result.run.folder),
        "output_name": result.run.output_name,
        "subject": asdict(result.subject),
        "metric_models": dict(result.metric_models),
        "render": asdict(options.render),
        "prompts": [asdict(p) for p in result.prompts],
        "checkpoints": checkpoints,
        "per_prompt": per_prompt,
        "images": [
            {**asdict(r), "file": _image_files(result)[(r.checkpoint, r.prompt, r.seed)]} for r in result.image_scores
        ],
        "recommendation": {
            "checkpoint": recommended.label,
            "file": str(recommended.path),
            "step": recommended.step,
            "rule": result.recommendation.rule,
            "eligible": list(result.recommendation.eligible),
            "clip_t_margin": result.recommendation.clip_t_margin,
            "leakage_margin": result.recommendation.leakage_margin,
        },
        "refused": [
            {"checkpoint": r.checkpoint.label, "file": str(r.checkpoint.path), "reason": r.reason}
            for r in result.refused
        ],
        "seconds": {"render": result.seconds_render, "metrics": result.seconds_metrics},
    }


def report_html(result, data: dict) -> str:
    chosen = data["recommendation"]["checkpoint"]
    esc = html.escape
    head = "".join(
        f'<th class="{"recommended" if c["label"] == chosen else ""}" data-checkpoint="{esc(c["label"])}">'
        f"{esc(c['label'])}<br><small>step {c['step']}</small>"
        + ("<br><b>recommended</b>" if c["label"] == chosen else "")
        + "</th>"
        for c in data["checkpoints"]
    )
    metric_rows = "".join(
        f"<tr><th>{esc(title)}</th>"
        + "".join(
            f'<td class="{"recommended" if c["label"] == chosen else ""}">{_number(c[key])}</td>'
            for c in data["checkpoints"]
        )
        + "</tr>"
        for key, title in (*METRICS, ("validation_loss", "validation loss"))
    )
    per_prompt = {(row["checkpoint"], row["prompt"]): row for row in data["per_prompt"]}
    grid_rows = []
    for prompt in result.prompts:
        cells = []
        for checkpoint in result.checkpoints:
            rendered = result.images[(checkpoint.label, prompt.index)]
            images = "".join(
                f'<img src="{_jpeg_uri(image)}" alt="{esc(checkpoint.label)} seed {seed}" title="seed {seed}">'
                for image, seed in zip(rendered.images, rendered.seeds)
            )
            mark = "recommended" if checkpoint.label == chosen else ""
            numbers = per_prompt[(checkpoint.label, prompt.index)]
            caption = " · ".join(
                f"{title.split()[0]} {_number(numbers[key])}" for key, title in METRICS if numbers[key] is not None
            )
            cells.append(f'<td class="cell {mark}">{images}<small>{esc(caption)}</small></td>')
        kind = "subject" if prompt.with_trigger else "no trigger"
        grid_rows.append(
            f'<tr class="prompt"><th>{esc(prompt.text)}<br><small>{kind}</small></th>{"".join(cells)}</tr>'
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lorapipe eval: {esc(data["output_name"])}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse}} th,td{{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:center}}
th small{{color:#666}} td.cell img{{width:160px;height:auto;display:block;margin:2px auto}}
td.cell small{{display:block;max-width:170px;color:#444}} #curves{{max-width:100%}}
#refused{{color:#a50e0e}} .recommended{{background:#e6f4ea;outline:3px solid #1e8e3e}}
#recommendation{{font-size:1.1em;padding:.6em;border-left:6px solid #1e8e3e;background:#e6f4ea}}
</style></head><body>
<h1>Checkpoint evaluation: {esc(data["output_name"])}</h1>
<p id="recommendation">Recommended: <b>{esc(chosen)}</b> (step {data["recommendation"]["step"]}).
Rule: {esc(data["recommendation"]["rule"])}.</p>
<p>Subject: <code>{esc(result.subject.tokens)}</code> (trigger <code>{esc(result.subject.trigger)}</code>).
DINO-I / CLIP-I: mean cosine similarity to the training images (subject fidelity, higher is better);
CLIP-T: similarity to the prompt without the trigger (prompt fidelity); leakage: 1 - DINO similarity of no-trigger
images to the no-LoRA images (lower is better). Models: {esc(data["metric_models"]["clip"])},
{esc(data["metric_models"]["dino"])}.</p>
{_refused_html(data["refused"])}<h2>Metrics</h2>
<table id="metrics"><tr><th></th>{head}</tr>{metric_rows}</table>
<h2>Curves</h2>
<img id="curves" alt="metrics over training steps" src="{_curves_uri(data)}">
<h2>Images</h2>
<table id="grid"><tr><th>prompt</th>{head}</tr>{"".join(grid_rows)}</table>
</body></html>
"""


def _refused_html(refused: list[dict]) -> str:
    if not refused:
        return ""
    items = "".join(f"<li><code>{html.escape(r['file'])}</code>: {html.escape(r['reason'])}</li>" for r in refused)
    return (
        "<h2>Skipped checkpoints</h2><p>The generator refused these files; they are not scored.</p>"
        f'<ul id="refused">{items}</ul>\n'
    )


def _image_files(result) -> dict[tuple[str, int, int], str]:
    """(checkpoint label, prompt index, seed) -> path relative to the report folder."""
    files = {}
    for checkpoint in result.checkpoints:
        folder = BASE_IMAGES if checkpoint.is_base else checkpoint.label
        for prompt in result.prompts:
            for seed in result.images[(checkpoint.label, prompt.index)].seeds:
                files[(checkpoint.label, prompt.index, seed)] = f"{IMAGES_DIR}/{folder}/{prompt.index:02d}-{seed}.png"
    return files


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _jpeg_uri(image) -> str:
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _curves_uri(data: dict) -> str:
    # No pyplot: no global figure state, no GUI backend.
    from matplotlib.figure import Figure

    points = data["checkpoints"]
    steps = [c["step"] if c["step"] is not None else index for index, c in enumerate(points)]
    chosen = data["recommendation"]["checkpoint"]
    panels = [METRICS[:2], METRICS[2:3], METRICS[3:]]
    if any(c["validation_loss"] is not None for c in points):
        panels.append((("validation_loss", "validation loss"),))
    figure = Figure(figsize=(4 * len(panels), 3.2), layout="constrained")
    for axes, panel in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for key, title in panel:
            xs = [s for s, c in zip(steps, points) if c[key] is not None]
            ys = [c[key] for c in points if c[key] is not None]
            axes.plot(xs, ys, marker="o", label=title)
        for step, checkpoint in zip(steps, points):
            if checkpoint["label"] == chosen:
                axes.axvline(step, color="#1e8e3e", linestyle="--", linewidth=1)
        axes.set_xlabel("training step (0 = no LoRA)")
        better = "lower" if panel[0][0] in ("leakage", "validation_loss") else "higher"
        axes.set_title(f"{better} is better", fontsize="small")
        axes.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
