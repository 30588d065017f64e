"""A text haystack for the memory: timestamped camera-log observations, a few of them facts.

Shared by the real-model test (``test_haystack.py``) and ``bench/bench_memory_haystack.py``.
Each observation is one block (``"[10:04] a man in a red coat walks past the door\\n"``); each
fact has a question whose answer is a distinctive string only that observation holds. The same
model answers with the memory (retrieval over the blocks) and with the whole haystack in its
context, and both are scored the same way.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from stream_agent.answers import AnswerFinal
from stream_agent.memory import FrameStamp, Memory, MemoryOptions, text_chunk
from stream_agent.models.base import LanguageModel
from stream_agent.models.records import DecodeOptions, LMChunk

PEOPLE = (
    "a man in a red coat",
    "a woman with a blue umbrella",
    "two teenagers",
    "an old man with a cane",
    "a cyclist in a yellow jacket",
    "a jogger",
    "a mail carrier",
    "a woman pushing a stroller",
    "a boy with a backpack",
    "a man carrying groceries",
    "a couple holding hands",
    "a worker in an orange vest",
    "a girl walking a small dog",
    "a man talking on his phone",
)
ACTIONS = (
    "walks past the door",
    "crosses the street",
    "waits at the bus stop",
    "looks into the window",
    "sits on the bench",
    "ties a shoelace near the fence",
    "walks toward the parking lot",
    "stops to check the mailbox",
    "enters the corner shop",
    "leaves the corner shop",
    "stands under the tree",
    "walks along the sidewalk",
)
SCENES = (
    "a white van drives by slowly",
    "the street light flickers",
    "a bus stops and leaves",
    "a cat runs under a parked car",
    "rain starts to fall lightly",
    "the wind moves the trees",
    "a car honks twice",
    "pigeons land on the roof",
    "the shop lights turn on",
    "a taxi waits at the corner",
    "leaves blow across the road",
    "a truck reverses into the alley",
)

#: (observation text, question, accepted answers); each answer string appears nowhere else.
FACTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("the delivery driver says the gate code is 4812", "What is the gate code?", ("4812",)),
    (
        "a woman parks a green truck with license plate KX-209",
        "What is the license plate of the green truck?",
        ("KX-209", "KX209", "KX 209"),
    ),
    (
        "a tag on the lost dog says its name is Biscuit",
        "What is the name of the lost dog?",
        ("Biscuit",),
    ),
    (
        "a man drops a red wallet belonging to Mr. Okafor next to the bench",
        "Whose red wallet was dropped next to the bench?",
        ("Okafor",),
    ),
    (
        "the sign on the bakery now says it closes at 7 pm",
        "When does the bakery close?",
        ("7 pm", "7pm", "7:00", "seven"),
    ),
    (
        "a courier leaves a parcel addressed to apartment 14B",
        "Which apartment is the parcel for?",
        ("14B",),
    ),
    (
        "a man in a chef hat writes the word pistachio on the cafe chalkboard",
        "What word was written on the cafe chalkboard?",
        ("pistachio",),
    ),
    (
        "the fire alarm test is announced for Thursday",
        "On which day is the fire alarm test?",
        ("Thursday",),
    ),
    (
        "a blue drone lands on the roof of the pharmacy",
        "Where did the blue drone land?",
        ("pharmacy",),
    ),
    (
        "a woman in a purple scarf buys a bouquet of sunflowers",
        "What flowers did the woman in the purple scarf buy?",
        ("sunflower",),
    ),
    (
        "the parking meter on the corner is broken and shows error E7",
        "What error does the broken parking meter show?",
        ("E7",),
    ),
    (
        "a boy loses a kite shaped like a dragon in the oak tree",
        "What shape was the kite stuck in the oak tree?",
        ("dragon",),
    ),
)


@dataclass(frozen=True, slots=True)
class Observation:
    index: int
    clock: str
    text: str
    wall: float
    fact: int | None = None

    @property
    def line(self) -> str:
        return f"[{self.clock}] {self.text}\n"


@dataclass(frozen=True, slots=True)
class Haystack:
    observations: tuple[Observation, ...]
    facts: tuple[int, ...]  # FACTS indices used, in question order

    def fact_block(self, fact: int) -> int:
        return next(o.index for o in self.observations if o.fact == fact)


def build_haystack(count: int, facts: Sequence[int], *, seed: int = 0) -> Haystack:
    """``count`` observations one minute apart from 08:00, with ``facts`` at random places
    (never among the last 10%, so that they are not simply the recent blocks)."""
    rng = random.Random(seed)
    slots = rng.sample(range(count * 9 // 10), len(facts))
    where = dict(zip(slots, facts, strict=True))
    observations = []
    for i in range(count):
        minutes = 8 * 60 + i
        clock = f"{minutes // 60:02d}:{minutes % 60:02d}"
        fact = where.get(i)
        if fact is not None:
            text = FACTS[fact][0]
        elif rng.random() < 0.6:
            text = f"{rng.choice(PEOPLE)} {rng.choice(ACTIONS)}"
        else:
            text = rng.choice(SCENES)
        observations.append(Observation(i, clock, text, 1_700_000_000.0 + 60.0 * i, fact))
    return Haystack(tuple(observations), tuple(facts))


def is_correct(answer: str, fact: int) -> bool:
    return any(a.lower() in answer.lower() for a in FACTS[fact][2])


@dataclass(frozen=True, slots=True)
class QuestionResult:
    fact: int
    answer: str
    correct: bool
    layer_hits: float  # share of layers whose top-k held the fact's block (memory only)
    ttft_s: float


@dataclass(frozen=True, slots=True)
class ArmResult:
    name: str
    questions: tuple[QuestionResult, ...]
    encode_s: float

    @property
    def accuracy(self) -> float:
        return sum(q.correct for q in self.questions) / len(self.questions)

    @property
    def recall(self) -> float:
        """Mean over questions of the share of layers that retrieved the fact's block."""
        return sum(q.layer_hits for q in self.questions) / len(self.questions)

    def recall_majority(self) -> float:
        """Share of questions whose fact block was retrieved by at least half the layers."""
        return sum(q.layer_hits >= 0.5 for q in self.questions) / len(self.questions)


SYSTEM = (
    "You read a camera log. Each line is a timestamped observation. Answer the question with "
    "the exact detail from the log, in a few words."
)


def run_memory(
    model: LanguageModel,
    haystack: Haystack,
    store: Path,
    *,
    window_tokens: int,
    top_k: int,
    retrievals: Sequence[str] = ("internal", "embedding", "hybrid"),
    recent_blocks: int = 4,
    sketch_vectors: int = 8,
    max_new_tokens: int = 20,
) -> dict[str, ArmResult]:
    """Stream the haystack through a memory, one block per observation, and ask every fact
    with each retrieval mode."""
    options = MemoryOptions(
        store_dir=store,
        window_tokens=window_tokens,
        top_k=top_k,
        recent_blocks=recent_blocks,
        sketch_vectors=sketch_vectors,
        system_prompt=SYSTEM,
        fsync=False,
    )
    began = time.perf_counter()
    out: dict[str, ArmResult] = {}
    with Memory(model, options) as memory:
        for obs in haystack.observations:
            stamp = FrameStamp(seq=obs.index, pts=60.0 * obs.index, wall=obs.wall)
            memory.append("log", text_chunk(model, obs.line), stamp)
        encode_s = time.perf_counter() - began
        for mode in retrievals:
            results = []
            for fact in haystack.facts:
                question = FACTS[fact][1]
                events = list(
                    memory.answer(
                        question,
                        options=DecodeOptions(max_new_tokens=max_new_tokens),
                        retrieval=mode,  # type: ignore[arg-type]
                    )
                )
                final = events[-1]
                assert isinstance(final, AnswerFinal)
                hit = next((e for e in final.evidence if e.seq == haystack.fact_block(fact)), None)
                results.append(
                    QuestionResult(
                        fact,
                        final.text,
                        is_correct(final.text, fact),
                        0.0 if hit is None or hit.recent else hit.score,
                        final.timings.ttft_s or 0.0,
                    )
                )
            out[mode] = ArmResult(f"memory {mode} top-{top_k}", tuple(results), encode_s)
    return out


@torch.no_grad()
def run_full_context(
    model: LanguageModel, haystack: Haystack, *, max_new_tokens: int = 20
) -> ArmResult:
    """The same model with the whole haystack in its context (prefix, every line, question);
    the haystack's KV is computed once and copied for each question."""
    layout = model.build_prompt("?", system=SYSTEM)
    began = time.perf_counter()
    cache = model.new_cache()
    chunks = [model.text_chunk(layout.prefix_ids, 0)]
    position = chunks[0].next_position
    for obs in haystack.observations:
        chunk = text_chunk(model, obs.line)
        chunks.append(
            LMChunk(chunk.embeds, chunk.positions + position, chunk.next_position + position)
        )
        position += chunk.next_position
    model.prefill(cache, LMChunk.concat(chunks))
    encode_s = time.perf_counter() - began
    results = []
    for fact in haystack.facts:
        question = FACTS[fact][1]
        suffix_ids = model.build_prompt(question, system=SYSTEM).suffix_ids
        own = model.new_cache()
        for i, layer in enumerate(cache.layers):
            own.update(layer.keys.clone(), layer.values.clone(), i)
        start = time.perf_counter()
        logits = model.prefill(own, model.text_chunk(suffix_ids, position), want_logits=True)
        assert logits is not None
        steps = list(
            model.decode(
                own,
                logits,
                position + len(suffix_ids),
                DecodeOptions(max_new_tokens=max_new_tokens),
            )
        )
        ttft = time.perf_counter() - start
        text = "".join(s.text for s in steps)
        results.append(QuestionResult(fact, text, is_correct(text, fact), 1.0, ttft))
    return ArmResult("full context", tuple(results), encode_s)
