"""How often the exported LLM's reply names the right answer, per sampling temperature, over seeds.

    python -m loadtests.sampling [--question Q --expect WORD] [--temperatures 0 0.2 0.7] [--seeds 16]

The orchestrator's own decoding (ensemble/decoding.py: the chat template, banned tokens, top-k sampling with a seeded
generator) over the exported `llm` graph on ONNX Runtime, in this process (no server): what sets the default
`temperature` of a turn (ensemble/options.py). Prints, per temperature, how many seeds' replies contain the expected
word, and the first replies.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from ensemble.decoding import KVDecoder, Sampling, sampled_reply
from ensemble.service import Service
from export.contract import spec
from export.contract.layout import MODEL_REPOSITORY
from export.runtime.batching import onnx_runner


async def reply(service: Service, runner, question: str, temperature: float, top_k: int, seed: int,
                max_tokens: int) -> str:
    tok = service.tokenizers

    async def infer(model, inputs, timeout_s=None):
        (out,) = runner.run([inputs])
        if isinstance(out, Exception):
            raise out
        return out

    ids = tok.llm.encode(tok.chat_prompt(question), add_special_tokens=False).ids
    decoder = KVDecoder(infer, spec.LLM, service.preset)
    scores = await decoder.feed(ids)
    sampling = Sampling(temperature, top_k, seed, tok.llm.get_vocab_size())
    out = [t async for t in sampled_reply(decoder, scores, sampling, stops=tok.ids.llm_stop,
                                          banned=tok.ids.llm_banned, limit=max_tokens)]
    return tok.llm.decode(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=MODEL_REPOSITORY, help="an exported repository (default: "
                    "the demo's, `python -m export`)")
    ap.add_argument("--question", default="What is the capital of France?")
    ap.add_argument("--expect", default="paris", help="a reply is right when it contains this (any case)")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.2, 0.3, 0.5, 0.7])
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=16, help="seeds 0..N-1 per temperature (one for temperature 0)")
    ap.add_argument("--max-tokens", type=int, default=24)
    args = ap.parse_args(argv)
    llm = args.repository / spec.LLM.name / "1" / "model.onnx"
    if not llm.is_file():
        raise SystemExit(f"{llm} is missing: export first (`python -m export`)")
    with tempfile.TemporaryDirectory() as avatars:
        service = Service.load(args.repository / spec.TALKING_HEAD.name / "1", avatar_dir=Path(avatars))
        runner = onnx_runner(spec.LLM, llm)
        print(f"question {args.question!r}, right when the reply contains {args.expect!r}; top_k {args.top_k}")
        for t in args.temperatures:
            seeds = range(1 if t == 0 else args.seeds)
            replies = [asyncio.run(reply(service, runner, args.question, t, args.top_k, s, args.max_tokens))
                       for s in seeds]
            right = sum(args.expect.lower() in r.lower() for r in replies)
            print(f"temperature {t:g}: {right}/{len(replies)} right")
            for r in replies[:4]:
                print(f"    {r[:100]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
