"""A spoken question to text: Whisper's log-mel, the ASR encoder, then a greedy decode of the transcript.

Over a turn's stage call (ensemble/pipeline.py `StageCall`). Where the asr_decoder keeps its sessions (the gpu
variant) the whole transcript is one request, decoded on the server on the utterance's cross-attention keys/values
(`decode_greedy`); elsewhere a request a token, the cache shipped with each (`start_decoder`), picked by the same
rule (export/contract/sampling.py `greedy`).
"""
from __future__ import annotations

import numpy as np

from ensemble.decoding import decode_greedy, start_decoder
from ensemble.features import whisper_log_mel
from export.contract import media, spec
from export.contract.presets import Preset
from export.contract.sampling import greedy

# Transcript tokens allowed per second of speech (plus a few): far above real speech (~3-4 Whisper tokens/s),
# it stops the repetition loops Whisper can fall into (and random weights always do) early.
ASR_TOKENS_PER_SECOND = 6
ASR_EXTRA_TOKENS = 8


async def transcribe(infer, tokenizers, preset: Preset, audio16k: np.ndarray, *, server_side: bool) -> str:
    """The transcript of 16 kHz speech. `tokenizers`: ensemble.pipeline.Tokenizers (its asr tokenizer and ids);
    `server_side`: the asr_decoder keeps its sessions."""
    mel = whisper_log_mel(audio16k)[None]
    features = (await spec.ASR_ENCODER.call(infer, mel=mel))["audio_features"]
    tok, special = tokenizers.asr, tokenizers.ids
    prompt, eot = list(special.asr_prompt), special.asr_end
    vocab = tok.get_vocab_size()  # never pick an id the tokenizer cannot decode
    seconds = audio16k.size / media.INPUT_SAMPLE_RATE
    limit = min(preset.asr.n_text_ctx // 2, spec.ASR_DECODER.axis("past").max - len(prompt),
                int(seconds * ASR_TOKENS_PER_SECOND) + ASR_EXTRA_TOKENS)
    extra = spec.ASR_DECODER.request(audio_features=features)
    if server_side:
        suppress = [*special.asr_banned, *range(vocab, preset.asr.n_vocab)]
        out = await decode_greedy(infer, spec.ASR_DECODER, prompt, limit, eot, suppress, extra)
        return tok.decode(out).strip()
    decoder, scores = await start_decoder(infer, spec.ASR_DECODER, preset, prompt, server_cache=False, extra=extra)
    out = []
    try:
        while len(out) < limit:
            token = greedy(scores, banned=special.asr_banned, vocab=vocab)
            if token == eot:
                break
            out.append(token)
            scores = await decoder.feed([token])
    finally:
        await decoder.close()
    return tok.decode(out).strip()
