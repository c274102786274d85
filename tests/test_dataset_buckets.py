"""Buckets, SDXL size conditioning, caption processing and epoch order with sd-scripts' arithmetic."""

import random
from pathlib import Path

import numpy as np
from PIL import Image

from lorapipe.dataset.batches import epoch_batches, load_sample
from lorapipe.dataset.blueprint import DatasetBlueprint, SubsetSpec
from lorapipe.dataset.buckets import BucketPlanner, crop_ltrb, make_bucket_resolutions
from lorapipe.dataset.build import blueprint_from_args
from lorapipe.dataset.captions import process_caption
from lorapipe.dataset.scan import scan_dataset


def test_bucket_list_matches_sd_scripts_counts():
    # Counts re-computed from sd-scripts' make_bucket_resolutions (library/model_util.py).
    assert len(make_bucket_resolutions((1024, 1024), 256, 1024, 64)) == 25
    gui = make_bucket_resolutions((1024, 1024), 256, 2048, 64)
    assert len(gui) == 41 and (832, 1216) in gui and (1216, 832) in gui
    assert len(make_bucket_resolutions((1024, 1024), 256, 2048, 32)) == 81


def test_select_bucket_and_crop_conditioning():
    blueprint = DatasetBlueprint(
        resolution=(1024, 1024),
        subsets=(),
        enable_bucket=True,
        min_bucket_reso=256,
        max_bucket_reso=2048,
        bucket_reso_steps=64,
    )
    planner = BucketPlanner(blueprint)
    choice = planner.select(3000, 2000)  # 1.5 -> nearest ratio bucket 1216x832 (1.4615)
    assert choice.bucket == (1216, 832)
    assert choice.resized == (1248, 832)  # heights matched: cover the bucket, then trim width
    left, top, _, _ = crop_ltrb(choice.bucket, (3000, 2000))
    assert left == 0  # image relatively wider than the bucket: fitted by width, so the offset is on top
    assert top == (832 - 1216 / 1.5) // 2
    no_upscale = BucketPlanner(
        DatasetBlueprint(
            resolution=(64, 64), subsets=(), enable_bucket=True, bucket_no_upscale=True, bucket_reso_steps=32
        )
    )
    assert no_upscale.select(100, 40).bucket == (96, 32)  # small image: own size floored to steps
    assert no_upscale.select(20, 100).bucket[0] == 0  # side below the step: reported by scan as an error


def test_load_sample_sizes_and_determinism(tmp_path):
    folder = tmp_path / "2_sks toy"
    folder.mkdir()
    for n, size in enumerate([(150, 100), (100, 150), (80, 80)]):
        Image.fromarray(np.random.default_rng(n).integers(0, 255, (size[1], size[0], 3), np.uint8)).save(
            folder / f"{n}.png"
        )
        (folder / f"{n}.txt").write_text("sks toy, red, blue, green, yellow\n")
    args = {
        "train_data_dir": str(tmp_path),
        "resolution": "64,64",
        "enable_bucket": True,
        "min_bucket_reso": 32,
        "max_bucket_reso": 128,
        "bucket_reso_steps": 32,
        "caption_extension": ".txt",
        "shuffle_caption": True,
        "keep_tokens": 1,
        "flip_aug": True,
        "train_batch_size": 2,
    }
    blueprint = blueprint_from_args(args, source="cfg.toml")
    scan = scan_dataset(blueprint)
    first = epoch_batches(scan, blueprint, 1, seed=7)
    assert first == epoch_batches(scan, blueprint, 1, seed=7)
    assert first != epoch_batches(scan, blueprint, 2, seed=7) or len(first) == 1
    assert sum(len(b) for b in first) == 6
    assert all(len({i.bucket for i in batch}) == 1 for batch in first)
    item = next(i for i in scan.items if i.path.name == "0.png")
    sample = load_sample(item, blueprint, 1, random.Random(3))
    again = load_sample(item, blueprint, 1, random.Random(3))
    assert np.array_equal(sample.pixels, again.pixels) and sample.caption == again.caption
    bucket_w, bucket_h = item.bucket
    assert sample.pixels.shape == (bucket_h, bucket_w, 3)
    assert sample.original_size == (100, 150) and sample.target_size == (bucket_h, bucket_w)
    assert sample.caption.startswith("sks toy, ") and sorted(sample.caption.split(", ")) == sorted(
        "sks toy, red, blue, green, yellow".split(", ")
    )
    assert sample.loss_weight == 1.0 and Path(sample.path) == item.path


def test_caption_processing_rules():
    subset = SubsetSpec(
        image_dir=Path("x"), caption_prefix="photo of", caption_suffix="4k", caption_dropout_every_n_epochs=3
    )
    assert process_caption("sks dog", subset, 1, random.Random(0)) == "photo of sks dog 4k"
    assert process_caption("sks dog", subset, 3, random.Random(0)) == ""
    keep = SubsetSpec(image_dir=Path("x"), shuffle_caption=True, keep_tokens_separator="|||")
    for seed in range(5):
        out = process_caption("sks, dog ||| a, b, c ||| best", keep, 1, random.Random(seed))
        assert out.startswith("sks, dog, ") and out.endswith(", best")
    tags = SubsetSpec(image_dir=Path("x"), caption_tag_dropout_rate=1.0, keep_tokens=1)
    assert process_caption("sks, a, b", tags, 1, random.Random(0)) == "sks"


def test_token_warmup_adds_one_tag_at_a_time():
    """sd-scripts: floor(step x (tags - min) / warmup) + min tags until step `warmup`, after keep_tokens."""
    caption = "sks, a, b, c, d, e"
    warm = SubsetSpec(image_dir=Path("x"), keep_tokens=1, token_warmup_min=1, token_warmup_step=5)

    def tags(step, subset=warm, total=None):
        return process_caption(caption, subset, 1, random.Random(0), step=step, total_steps=total)

    # 5 flexible tags, min 1, warm-up 5 steps: floor(step x 4 / 5) + 1 of them.
    assert [tags(s) for s in (0, 1, 2, 4, 5, 50)] == [
        "sks, a",
        "sks, a",
        "sks, a, b",
        "sks, a, b, c, d",
        caption,
        caption,
    ]
    fraction = SubsetSpec(image_dir=Path("x"), keep_tokens=1, token_warmup_step=0.5)  # half of 10 steps = 5
    assert tags(2, fraction, total=10) == tags(2)
    assert tags(None) == caption  # sample images and validation see the whole caption
