"""`dataset caption` with tiny random-weight captioners built from config: the whole path writes captions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lorapipe.cli.main import main
from lorapipe.dataset.caption import caption_dataset
from lorapipe.dataset.captioners import load_captioner
from lorapipe.dataset.captioners.tiny import make_tiny_captioner
from lorapipe.errors import ModelLoadError
from lorapipe.file_names import DATASET_CONFIG_NAME


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    return make_tiny_captioner(tmp_path_factory.mktemp("captioners") / "blip", "blip")


def _dataset(root, images=5):
    """A prepared-looking dataset: config with caption_extension .txt, one subset, one reg folder."""
    dataset = root / "0001-dataset"
    subset = dataset / "10_sks dog"
    subset.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in range(images):
        Image.fromarray(rng.integers(0, 255, (40 + 8 * n, 48, 3), dtype=np.uint8)).save(subset / f"p{n}.png")
    (subset / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 4)
    (dataset / DATASET_CONFIG_NAME).write_text(
        'caption_extension = ".txt"\nresolution = "64,64"\ntrain_data_dir = "/opt/ml/input/data/train"\n',
        encoding="utf-8",
    )
    return dataset, subset


def test_caption_writes_trigger_first_batched_and_never_overwrites(tiny_blip, tmp_path):
    dataset, subset = _dataset(tmp_path)
    (subset / "p0.txt").write_text("sks dog, my own words\n", encoding="utf-8")
    ticks = []
    summary = caption_dataset(
        dataset,
        model=str(tiny_blip),
        batch_size=2,
        device="cpu",
        progress=lambda done, total: ticks.append((done, total)),
    )
    assert ticks == [(2, 4), (4, 4)]  # four images to caption, two per model call
    assert summary.captioned == 4 and [p.name for p in summary.kept] == ["p0.png"]
    assert [f.path.name for f in summary.failed] == ["broken.jpg"]
    assert summary.captioner == f"blip {tiny_blip}"
    for n in range(1, 5):
        text = (subset / f"p{n}.txt").read_text(encoding="utf-8")
        assert text.startswith("sks dog, ") and text.endswith("\n") and text.count("\n") == 1
        assert len(text.split(", ", 1)[1].split()) >= 3  # the model's words after the folder tokens
    assert (subset / "p0.txt").read_text(encoding="utf-8") == "sks dog, my own words\n"
    assert not [p for p in subset.iterdir() if ".tmp-" in p.name]

    again = caption_dataset(dataset, model=str(tiny_blip), device="cpu")
    assert again.captioned == 0 and len(again.kept) == 5
    replaced = caption_dataset(dataset, model=str(tiny_blip), device="cpu", overwrite=True, batch_size=8)
    assert replaced.captioned == 5 and (subset / "p0.txt").read_text(encoding="utf-8").startswith("sks dog, ")
    assert (subset / "p0.txt").read_text(encoding="utf-8") != "sks dog, my own words\n"


@pytest.fixture(scope="module")
def tiny_captioners(tiny_blip, tmp_path_factory):
    root = tmp_path_factory.mktemp("more-captioners")
    return {"blip": tiny_blip, **{kind: make_tiny_captioner(root / kind, kind) for kind in ("florence2", "wd14")}}


@pytest.mark.parametrize("kind", ["blip", "florence2", "wd14"])
def test_each_family_loads_its_folder_and_batches_like_single_images(kind, tiny_captioners):
    captioner = load_captioner(kind, tiny_captioners[kind], device="cpu")
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (32 + 8 * n, 40, 3), dtype=np.uint8)) for n in range(3)]
    batched = captioner.caption([captioner.prepare(image) for image in images])
    assert len(batched) == 3 and all(text.strip() for text in batched)
    assert batched == [captioner.caption([captioner.prepare(image)])[0] for image in images]


@pytest.mark.parametrize("kind", ["blip", "florence2"])
def test_prepare_shrinks_a_photo_as_the_processor_would(kind, tiny_captioners):
    """`prepare` (in the decoding threads) resizes like the model's own image processor: same pixels to the model."""
    captioner = load_captioner(kind, tiny_captioners[kind], device="cpu")
    rng = np.random.default_rng(4)
    photo = Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)).resize((600, 900))
    prepared = captioner.prepare(photo)
    assert prepared.size == (captioner.input_side, captioner.input_side) and captioner.input_side < 600

    def pixels(image):
        return captioner.processor.image_processor(images=[image], return_tensors="np")["pixel_values"]

    assert np.array_equal(pixels(photo), pixels(prepared))


def test_wd14_batched_captions_are_byte_identical_to_one_at_a_time(tiny_captioners, tmp_path):
    """Through the whole path (threaded JPEG draft decoding, per-image preparation, one model call per batch)."""
    dataset = tmp_path / "0001-dataset"
    subset = dataset / "10_sks dog"
    subset.mkdir(parents=True)
    (dataset / DATASET_CONFIG_NAME).write_text('caption_extension = ".txt"\nresolution = "64,64"\n', encoding="utf-8")
    rng = np.random.default_rng(2)
    for n in range(5):  # JPEGs big enough to decode at a reduced scale, one of them upright only through EXIF
        image = Image.fromarray(rng.integers(0, 255, (24, 18, 3), dtype=np.uint8)).resize((300 + 40 * n, 400))
        exif = Image.Exif()
        exif[0x0112] = 6 if n == 0 else 1
        image.save(subset / f"p{n}.jpg", quality=90, exif=exif)
    model = str(tiny_captioners["wd14"])
    texts = []
    for batch_size in (1, 3, 8):
        summary = caption_dataset(
            dataset, captioner="wd14", model=model, overwrite=True, batch_size=batch_size, device="cpu"
        )
        assert summary.captioned == 5 and not summary.failed
        texts.append([(subset / f"p{n}.txt").read_bytes() for n in range(5)])
    assert texts[0] == texts[1] == texts[2]
    assert len(set(texts[0])) > 1  # different photos get different tags: the comparison can fail


def test_wd14_tags_thresholds_order_and_underscores(tiny_captioners):
    from lorapipe.dataset.captioners.wd14 import CHARACTER, GENERAL, Tag, WD14Tagger

    tags = (
        Tag("rating_general", 9),
        Tag("long_hair", GENERAL),
        Tag("^_^", GENERAL),
        Tag("smile", GENERAL),
        Tag("sks_(dog)", CHARACTER),
        Tag("blue_sky", GENERAL),
    )
    tagger = WD14Tagger("wd14 test", None, tags)
    row = [0.99, 0.5, 0.9, 0.2, 0.4, 0.35]
    assert tagger._tags_of(row) == ["sks (dog)", "^_^", "long hair", "blue sky"]  # character first, then confidence
    written = (tiny_captioners["wd14"] / "selected_tags.csv").read_text().splitlines()
    assert written[0] == "tag_id,name,category,count" and ",9," in written[1]


def test_wd14_graph_with_a_fixed_batch_of_one_still_takes_batches(tiny_captioners, tmp_path):
    """Some tagger exports fix the batch axis at 1: a batch then runs as one model call per image, same tags."""
    import shutil

    import onnx

    fixed = tmp_path / "wd14-fixed"
    shutil.copytree(tiny_captioners["wd14"], fixed)
    graph = onnx.load(fixed / "model.onnx")
    for value in (graph.graph.input[0], graph.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(graph, fixed / "model.onnx")
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 255, (40, 30 + 6 * n, 3), dtype=np.uint8)) for n in range(3)]
    dynamic = load_captioner("wd14", tiny_captioners["wd14"], device="cpu")
    one = load_captioner("wd14", fixed, device="cpu")
    assert one.model_batch == 1 and dynamic.model_batch is None
    assert one.caption([one.prepare(image) for image in images]) == dynamic.caption(
        [dynamic.prepare(image) for image in images]
    )


def test_wd14_tag_list_must_match_the_model(tiny_captioners, tmp_path):
    import shutil

    broken = tmp_path / "wd14"
    shutil.copytree(tiny_captioners["wd14"], broken)
    with (broken / "selected_tags.csv").open("a") as handle:
        handle.write("999,extra_tag,0,1\n")
    with pytest.raises(ModelLoadError, match="selected_tags.csv: lists .* tags but .*model.onnx predicts"):
        load_captioner("wd14", broken, device="cpu")
    (broken / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="model.onnx: not a loadable ONNX model"):
        load_captioner("wd14", broken, device="cpu")


def test_cli_caption_and_model_errors(tiny_blip, tmp_path, capsys):
    dataset, _ = _dataset(tmp_path, images=2)
    assert main(["dataset", "caption", str(dataset), "--captioner-model", str(tiny_blip), "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "2 captioned, 0 kept, 1 failed" in out and "broken.jpg" in out
    with pytest.raises(ModelLoadError, match=f"{tmp_path / 'missing'}: no such blip captioner folder"):
        caption_dataset(dataset, model=str(tmp_path / "missing"), overwrite=True)
    with pytest.raises(ModelLoadError, match="unknown captioner"):
        caption_dataset(dataset, captioner="llava", overwrite=True)


def test_cli_caption_with_the_tagger_overwrites_only_when_asked(tiny_captioners, tmp_path, capsys):
    dataset, subset = _dataset(tmp_path, images=2)
    args = [
        "dataset",
        "caption",
        str(dataset),
        "--captioner",
        "wd14",
        "--captioner-model",
        str(tiny_captioners["wd14"]),
        "--device",
        "cpu",
    ]
    assert main(args) == 1  # broken.jpg fails; the two good images are tagged
    tags = (subset / "p0.txt").read_text(encoding="utf-8").strip().split(", ")
    assert tags[:2] == ["sks dog", "dwjz (robot)"] and "rating" not in tags and len(tags) > 3
    main(args)
    assert "0 captioned, 2 kept (--overwrite replaces them)" in capsys.readouterr().out


def test_photos_to_lora_prepare_caption_check_train(tiny_blip, tiny_model_dir, tmp_path, capsys):
    """The README's path for your own photos, with a user preset file: no extra flags at train time."""
    from importlib import resources

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(2)
    for n in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 80 + 16 * n, 3), dtype=np.uint8)).save(photos / f"IMG_{n}.jpg")
    preset = tmp_path / "tiny-preset.toml"  # the sample dataset's tiny-model settings, as a user's own preset
    preset.write_text(resources.files("lorapipe.dataset").joinpath("templates", DATASET_CONFIG_NAME).read_text())
    dataset = tmp_path / "0001-dataset"
    assert (
        main(
            [
                "dataset",
                "prepare",
                str(photos),
                "--trigger",
                "sks",
                "--class",
                "dog",
                "--out",
                str(dataset),
                "--preset",
                str(preset),
                "--steps",
                "2",
                "--base-model",
                str(tiny_model_dir),
            ]
        )
        == 0
    )
    assert main(["dataset", "caption", str(dataset), "--captioner-model", str(tiny_blip), "--device", "cpu"]) == 0
    assert main(["dataset", "check", str(dataset), "--no-tokens"]) == 0
    capsys.readouterr()
    assert main(["train", str(dataset)]) == 0
    lora = tmp_path / "output" / "0001-dataset" / "sks_dog.safetensors"
    assert lora.is_file()
