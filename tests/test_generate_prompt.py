"""A1111 prompt syntax, chunking, samplers and infotext, checked against A1111's documented behaviour."""

from __future__ import annotations

import pytest

from lorapipe.errors import GenerationError
from lorapipe.generate.infotext import create_infotext, lora_hashes_value, parse_infotext, quote
from lorapipe.generate.prompt_syntax import LoraTag, parse_attention, parse_extra_networks
from lorapipe.generate.samplers import build_scheduler, resolve_sampler, sampler_listing, schedule_listing


@pytest.mark.parametrize(
    "prompt, tag",
    [
        ("<lora:toy>", LoraTag("toy", 1.0, 1.0)),
        ("<lora:toy:0.7>", LoraTag("toy", 0.7, 0.7)),
        ("<lora:toy:0.5:1.0>", LoraTag("toy", 0.5, 1.0)),
        ("<lora:toy:te=0:unet=1.2>", LoraTag("toy", 0.0, 1.2)),
        ("<lora:toy:0.3:unet=0.9>", LoraTag("toy", 0.3, 0.9)),
        ("<lyco:toy:0.4>", LoraTag("toy", 0.4, 0.4)),
    ],
)
def test_lora_tag_forms(prompt, tag):
    parsed = parse_extra_networks(f"a photo {prompt} of a toy")
    assert parsed.loras == (tag,)
    assert parsed.text == "a photo  of a toy"


def test_all_extra_network_tags_are_removed_and_several_loras_kept():
    parsed = parse_extra_networks("x <lora:a:1> <hypernet:h:1> y <lora:b:0.5>")
    assert [t.name for t in parsed.loras] == ["a", "b"]
    assert parsed.other_tags == ("<hypernet:h:1>",)
    assert "<" not in parsed.text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        ("[unbalanced", [("unbalanced", 1 / 1.1)]),
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ],
)
def test_attention_matches_a1111_examples(text, expected):
    got = parse_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")


def test_short_prompt_is_one_chunk_like_diffusers(tokenizer):
    from lorapipe.generate.encode import chunk_prompt

    chunks = chunk_prompt("a photo of dwjz toy", tokenizer)
    expected = tokenizer("a photo of dwjz toy", padding="max_length", max_length=77).input_ids
    assert len(chunks) == 1 and list(chunks[0].ids) == expected
    assert set(chunks[0].weights) == {1.0}


def test_long_prompts_break_and_emphasis_chunk_as_a1111(tokenizer):
    from lorapipe.generate.encode import chunk_prompt

    long_prompt = " ".join(["cat"] * 100)
    chunks = chunk_prompt(long_prompt, tokenizer)
    assert len(chunks) == 2 and all(len(c.ids) == 77 for c in chunks)
    assert chunks[0].ids[1:76].count(tokenizer.convert_tokens_to_ids("cat</w>")) == 75

    broken = chunk_prompt("a dog BREAK a cat", tokenizer)
    assert len(broken) == 2
    weighted = chunk_prompt("a (dog:1.5)", tokenizer)
    assert weighted[0].weights[2] == 1.5 and weighted[0].weights[1] == 1.0

    # A chunk boundary within 20 tokens of a comma moves the words after the comma to the next chunk.
    comma_prompt = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    first, second = chunk_prompt(comma_prompt, tokenizer)
    dog = tokenizer.convert_tokens_to_ids("dog</w>")
    assert dog not in first.ids and second.ids[1:11].count(dog) == 10


def test_sampler_names_and_schedules():
    assert resolve_sampler(None).sampler.name == "Euler"
    dpm = resolve_sampler("DPM++ 2M")
    assert dpm.schedule_label == "Karras"
    assert resolve_sampler("Euler a", "automatic").schedule_label == "Automatic"
    legacy = resolve_sampler("DPM++ 2M Karras")
    assert legacy.sampler.name == "DPM++ 2M" and legacy.schedule_label == "Karras"
    assert resolve_sampler("k_euler_a").sampler.name == "Euler a"
    assert resolve_sampler("Euler", "SGMUniform").schedule_label == "SGM Uniform"
    with pytest.raises(GenerationError, match="Sampler not found"):
        resolve_sampler("Bogus Sampler")
    names = {s["name"] for s in sampler_listing()}
    assert {"Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DDIM", "UniPC"} <= names
    assert {"automatic", "karras", "exponential"} <= {s["name"] for s in schedule_listing()}


def test_every_listed_sampler_builds_a_diffusers_scheduler():
    from lorapipe.sdxl.presets import SCHEDULER_CONFIG

    for spec in sampler_listing():
        for schedule in ("automatic", "karras", "sgm_uniform"):
            scheduler = build_scheduler(resolve_sampler(spec["name"], schedule), SCHEDULER_CONFIG)
            scheduler.set_timesteps(4)
            assert len(scheduler.timesteps) >= 4


def test_infotext_layout_quoting_and_round_trip():
    text = create_infotext(
        "a castle, dusk <lora:pixel:0.8>",
        "blurry, lowres",
        {
            "Steps": 30,
            "Sampler": "DPM++ 2M",
            "Schedule type": "Karras",
            "CFG scale": 7.0,
            "Seed": 12,
            "Size": "1024x768",
            "Model hash": "31e35c80fc",
            "Model": "sd_xl_base_1.0",
            "Variation seed": None,
        },
        {"Lora hashes": lora_hashes_value([("pixel", "1a2b3c4d5e6f"), ("de:tail,", "0a9b8c7d6e5f")])},
    )
    lines = text.split("\n")
    assert lines[0] == "a castle, dusk <lora:pixel:0.8>"
    assert lines[1] == "Negative prompt: blurry, lowres"
    assert lines[2].startswith("Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 12, ")
    assert 'Lora hashes: "pixel: 1a2b3c4d5e6f, detail: 0a9b8c7d6e5f"' in lines[2]
    assert "Variation seed" not in text
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == lines[0] and parsed["Negative prompt"] == "blurry, lowres"
    assert parsed["Size-1"] == "1024" and parsed["Size-2"] == "768"
    assert parsed["Lora hashes"] == "pixel: 1a2b3c4d5e6f, detail: 0a9b8c7d6e5f"
    assert parsed["Clip skip"] == "1"
    assert quote("a, b") == '"a, b"' and quote("plain") == "plain"
