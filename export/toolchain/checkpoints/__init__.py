"""Real checkpoints into our modules: Whisper (ASR) and Qwen2 / LLaMA (LLM).

    from export.toolchain.checkpoints import load_whisper, load_llm
    asr, asr_tok = load_whisper("openai/whisper-tiny")          # or a local folder / OpenAI .pt
    llm, tok, template = load_llm("Qwen/Qwen2.5-0.5B-Instruct")  # or a local folder

Hub ids are downloaded only when a network is there (see `common.resolve`); every problem
with a checkpoint is a `CheckpointError` whose message says what and where.
"""
from export.toolchain.checkpoints.common import (
    CheckpointError,
    load_state_dict_strict,
    load_tokenizer,
    read_safetensors,
    read_state_dict,
    read_torch,
    resolve,
    save_safetensors,
)
from export.toolchain.checkpoints.qwen2 import config_from_hf, load_chat_template, load_llm
from export.toolchain.checkpoints.whisper import dims_from_hf_config, load_whisper

__all__ = [
    "CheckpointError", "config_from_hf", "dims_from_hf_config",
    "load_chat_template", "load_llm", "load_state_dict_strict", "load_tokenizer", "load_whisper",
    "read_safetensors", "read_state_dict", "read_torch", "resolve", "save_safetensors",
]
