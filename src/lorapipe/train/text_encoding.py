"""SDXL caption encoding for training, as sd-scripts does it (library/strategy_sdxl.py).

Context = TE1 hidden state 11 (penultimate) ++ TE2 penultimate hidden state along channels; pooled = TE2's
projected final state at the first EOS. With max_token_length 150/225 captions are cut into 75-token chunks
(BOS + 75 + EOS/PAD each), encoded separately and re-joined; the pooled vector comes from the first chunk.
`clip_skip` has no effect on SDXL training in sd-scripts (layer choice is fixed), so it is not a parameter here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorapipe.sdxl.constants import CLIP_CHUNK_TOKENS


@dataclass(frozen=True)
class EncodedPrompts:
    """Text-encoder outputs for a batch: context (B, L, C1+C2) and pooled TE2 vector (B, P)."""

    context: torch.Tensor
    pooled: torch.Tensor


def tokenize_chunks(tokenizer, captions: list[str], max_token_length: int) -> torch.Tensor:
    """Token ids of shape (B, n_chunks, 77), chunked and patched like sd-scripts' SDXL tokenize strategy."""
    n_chunks = max_token_length // CLIP_CHUNK_TOKENS
    ids = tokenizer(
        captions, padding="max_length", truncation=True, max_length=max_token_length + 2, return_tensors="pt"
    ).input_ids
    if n_chunks == 1:
        return ids.unsqueeze(1)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for i in range(1, max_token_length + 1, CLIP_CHUNK_TOKENS):
        chunk = torch.cat([ids[:, :1], ids[:, i : i + CLIP_CHUNK_TOKENS], ids[:, -1:]], dim=1)
        if pad != eos:
            # A chunk cut mid-caption must still end in EOS; a chunk that is all padding starts with EOS.
            cut = (chunk[:, -2] != eos) & (chunk[:, -2] != pad)
            chunk[cut, -1] = eos
            empty = chunk[:, 1] == pad
            chunk[empty, 1] = eos
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def _join_chunks(hidden: torch.Tensor, batch: int, max_token_length: int) -> torch.Tensor:
    """(B*n, 77, C) -> (B, max_token_length + 2, C): keep BOS of the first chunk, every chunk's 75, last EOS."""
    hidden = hidden.reshape(batch, -1, hidden.shape[-1])
    if max_token_length == CLIP_CHUNK_TOKENS:
        return hidden
    width = CLIP_CHUNK_TOKENS + 2
    parts = [hidden[:, :1]]
    for i in range(1, max_token_length, width):
        parts.append(hidden[:, i : i + width - 2])
    parts.append(hidden[:, -1:])
    return torch.cat(parts, dim=1)


def encode_prompts(
    text_encoder, text_encoder_2, tokenizer, tokenizer_2, captions: list[str], max_token_length: int = CLIP_CHUNK_TOKENS
) -> EncodedPrompts:
    """Encode captions with both encoders; gradients flow when the encoders carry trainable LoRA."""
    batch = len(captions)
    device = next(text_encoder.parameters()).device
    ids1 = tokenize_chunks(tokenizer, captions, max_token_length).flatten(0, 1).to(device)
    ids2 = tokenize_chunks(tokenizer_2, captions, max_token_length).flatten(0, 1).to(device)
    out1 = text_encoder(ids1, output_hidden_states=True)
    out2 = text_encoder_2(ids2, output_hidden_states=True)
    hidden1 = _join_chunks(out1.hidden_states[-2], batch, max_token_length)
    hidden2 = _join_chunks(out2.hidden_states[-2], batch, max_token_length)
    n_chunks = max_token_length // CLIP_CHUNK_TOKENS
    pooled = out2.text_embeds[::n_chunks]
    return EncodedPrompts(context=torch.cat([hidden1, hidden2.to(hidden1.dtype)], dim=-1), pooled=pooled)
