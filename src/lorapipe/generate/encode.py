"""Encode A1111-style prompts for SDXL: 75-token chunks, BREAK, comma backtracking and emphasis weights.

Follows A1111's `sd_hijack_clip` (tokenize_line / process_tokens) with the "Original" emphasis mode: each token's
hidden state is multiplied by its weight, then the whole output is rescaled back to its original mean. Both SDXL
text encoders get the same chunks; the second pads with its own pad token after the first EOS, as diffusers'
`tokenizer_2` does. A plain prompt of at most 75 tokens produces exactly what diffusers' `encode_prompt` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorapipe.generate.prompt_syntax import BREAK_MARK, parse_attention
from lorapipe.sdxl.constants import CLIP_CHUNK_TOKENS

# A1111's `comma_padding_backtrack` default: a chunk ending within 20 tokens of a comma breaks at the comma.
COMMA_BACKTRACK = 20


@dataclass(frozen=True)
class TokenChunk:
    """77 token ids (BOS, 75 content or padding, EOS) and one weight per id."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class PromptEmbeds:
    """One prompt's encoder output: (1, 77*chunks, dim) hidden states and (1, dim2) pooled output."""

    hidden: object  # torch.Tensor
    pooled: object  # torch.Tensor


def chunk_prompt(text: str, tokenizer) -> list[TokenChunk]:
    """Tokenize `text` into A1111 chunks of 75 tokens with BOS/EOS and per-token weights."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    # convert_tokens_to_ids is a dict lookup; get_vocab() would copy all 49408 entries on every prompt.
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    comma = None if comma == tokenizer.unk_token_id else comma
    fragments = parse_attention(text)
    ids_per_fragment = tokenizer([t for t, _ in fragments], add_special_tokens=False, truncation=False).input_ids
    chunks: list[TokenChunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal ids, weights, last_comma
        padding = CLIP_CHUNK_TOKENS - len(ids)
        chunks.append(
            TokenChunk(
                ids=(bos, *ids, *([eos] * padding), eos),
                weights=(1.0, *weights, *([1.0] * padding), 1.0),
            )
        )
        ids, weights, last_comma = [], [], -1

    for (fragment, weight), fragment_ids in zip(fragments, ids_per_fragment):
        if fragment == "BREAK" and weight == BREAK_MARK:
            close_chunk()
            continue
        for token in fragment_ids:
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == CLIP_CHUNK_TOKENS and last_comma != -1 and len(ids) - last_comma <= COMMA_BACKTRACK:
                # Move the words after the last comma into the next chunk so a phrase is not cut in two.
                moved_ids, moved_weights = ids[last_comma + 1 :], weights[last_comma + 1 :]
                ids, weights = ids[: last_comma + 1], weights[: last_comma + 1]
                close_chunk()
                ids, weights = moved_ids, moved_weights
            if len(ids) == CLIP_CHUNK_TOKENS:
                close_chunk()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close_chunk()
    return chunks


def encode_prompt(text: str, pipe) -> PromptEmbeds:
    """Encode one prompt with both SDXL text encoders (penultimate hidden states, pooled from the first chunk)."""
    import torch

    # A multi-vector embedding (a LoRA's bundled `bundle_emb.*`) is spelt `name name_1 ...` to the tokenizer.
    chunks = chunk_prompt(pipe.maybe_convert_prompt(text, pipe.tokenizer), pipe.tokenizer)
    device = pipe.text_encoder_2.device
    hidden_parts = []
    pooled = None
    with torch.no_grad():
        for chunk in chunks:
            ids_1 = torch.tensor([chunk.ids], device=device)
            ids_2 = torch.tensor(
                [_repad(chunk.ids, pipe.tokenizer.eos_token_id, pipe.tokenizer_2.pad_token_id)], device=device
            )
            weights = torch.tensor(chunk.weights, device=device)
            out_1 = pipe.text_encoder(ids_1, output_hidden_states=True)
            out_2 = pipe.text_encoder_2(ids_2, output_hidden_states=True)
            h_1 = _emphasize(out_1.hidden_states[-2], weights)
            h_2 = _emphasize(out_2.hidden_states[-2], weights)
            hidden_parts.append(torch.cat([h_1, h_2], dim=-1))
            if pooled is None:
                pooled = out_2[0]  # text_embeds: the projected EOS state, as diffusers' encode_prompt takes
    return PromptEmbeds(hidden=torch.cat(hidden_parts, dim=1), pooled=pooled)


def encode_pair(prompt: str, negative: str, pipe) -> tuple[PromptEmbeds, PromptEmbeds]:
    """Encode prompt and negative prompt to the same length (the shorter gets empty chunks, A1111 `pad_cond`)."""
    import torch

    positive, negative_embeds = encode_prompt(prompt, pipe), encode_prompt(negative, pipe)
    length = max(positive.hidden.shape[1], negative_embeds.hidden.shape[1])
    if positive.hidden.shape[1] == negative_embeds.hidden.shape[1]:
        return positive, negative_embeds
    empty = encode_prompt("", pipe).hidden

    def pad(embeds: PromptEmbeds) -> PromptEmbeds:
        missing = (length - embeds.hidden.shape[1]) // empty.shape[1]
        if missing == 0:
            return embeds
        return PromptEmbeds(torch.cat([embeds.hidden, empty.repeat(1, missing, 1)], dim=1), embeds.pooled)

    return pad(positive), pad(negative_embeds)


def _repad(ids: tuple[int, ...], eos: int, pad: int) -> list[int]:
    """Replace everything after the first EOS with `pad` (SDXL's second tokenizer pads with '!')."""
    if pad is None or pad == eos:
        return list(ids)
    first_eos = ids.index(eos)
    return list(ids[: first_eos + 1]) + [pad] * (len(ids) - first_eos - 1)


def _emphasize(hidden, weights):
    """A1111 "Original" emphasis: scale each token, then restore the original mean."""
    if bool((weights == 1.0).all()):
        return hidden  # skip the arithmetic so plain prompts match diffusers bit for bit
    original_mean = hidden.mean()
    scaled = hidden * weights.to(hidden.dtype).reshape(1, -1, 1)
    return scaled * (original_mean / scaled.mean())
