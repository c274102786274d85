"""The offline SDXL tokenizers encode exactly as the real SDXL 1.0 tokenizers do."""

from transformers import CLIPTokenizer


def test_vocab_and_known_ids(tiny_model_dir):
    tok = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    assert len(tok) == 49408
    assert tok("a photo of").input_ids == [49406, 320, 1125, 539, 49407]
    assert tok("a photo of dwjz tiger").input_ids == [49406, 320, 1125, 539, 8455, 73, 345, 6531, 49407]


def test_second_tokenizer_pads_with_exclamation_mark(tiny_model_dir):
    tok1 = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    tok2 = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer_2")
    ids1 = tok1("a photo", padding="max_length", max_length=77).input_ids
    ids2 = tok2("a photo", padding="max_length", max_length=77).input_ids
    assert ids1[:4] == ids2[:4] == [49406, 320, 1125, 49407]
    assert tok2.pad_token == "!" and ids2[4:] == [tok2.convert_tokens_to_ids("!")] * 73
    assert ids1[4:] == [49407] * 73
