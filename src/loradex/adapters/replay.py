"""Replay against forgetting: general prompts answered by the base model itself, mixed into training.

A domain adapter trained only on its domain learns to answer everything in the domain's layout, and
measurably loses general answers (benchmarks/adapter_effect.py). Mixing in a share of general prompts
whose targets are the unchanged base model's own greedy answers (self-distillation) teaches the adapter
to leave non-domain behaviour alone, without any outside data. The answers are generated once per base
model and system message and cached under the project's state folder.

The prompt pool below is written for this purpose and is disjoint from the general prompts the benchmark
scores (a test checks that).
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from .data import Example

PROMPTS = (
    "What is the boiling point of water at sea level in Celsius?",
    "How many legs does a spider have?",
    "What is 9 times 6?",
    "Name the longest river in Africa.",
    "What gas do plants take in from the air?",
    "Who painted the Mona Lisa?",
    "What is the capital of Japan?",
    "How many minutes are in an hour?",
    "What is the chemical symbol for gold?",
    "Which ocean is the largest?",
    "Give me a synonym for 'happy'.",
    "What is the plural of 'mouse'?",
    "How many continents are there?",
    "What is 100 divided by 4?",
    "Which planet is known as the Red Planet?",
    "What language is mainly spoken in Brazil?",
    "What do bees make?",
    "How many sides does a triangle have?",
    "What is the capital of Italy?",
    "Write one sentence about autumn.",
    "What is the square root of 81?",
    "Name a primary color.",
    "Which month comes after March?",
    "What is the tallest mountain on Earth?",
    "Explain in one sentence what a noun is.",
    "How many hours are in a day?",
    "What is frozen water called?",
    "Who was the first person to walk on the Moon?",
    "What is the capital of Canada?",
    "Translate 'good morning' into French.",
    "What is 15 minus 8?",
    "Which animal is known as the king of the jungle?",
    "What is the main ingredient of guacamole?",
    "How many strings does a standard guitar have?",
    "What instrument has 88 keys?",
    "Suggest a name for a pet goldfish.",
    "What shape has four equal sides and four right angles?",
    "What is the largest mammal?",
    "In which country are the pyramids of Giza?",
    "What is the opposite of 'early'?",
    "Give a short tip for sleeping better.",
    "What is the currency of the United States?",
    "How many players are on a football (soccer) team on the field?",
    "What does a thermometer measure?",
    "What is 3 squared?",
    "Name a fruit that is yellow.",
    "Which season comes after winter?",
    "What do caterpillars turn into?",
    "What is the capital of Germany?",
    "Write a polite way to decline an invitation.",
    "How many days are in a leap year?",
    "What organ pumps blood through the body?",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "What is H2O commonly called?",
    "Name the author of 'Pride and Prejudice'.",
    "What is the first letter of the English alphabet?",
    "How many wheels does a bicycle have?",
    "What is the speed of light, roughly, in kilometres per second?",
    "Summarise in one sentence why exercise is healthy.",
    "What is 12 plus 30?",
)


def _cache_key(base_sha: str, system: str, max_new_tokens: int) -> str:
    blob = json.dumps([base_sha, system, max_new_tokens])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def replay_prompts(n_examples: int, share: float, seed: int = 0, prompts: tuple[str, ...] = PROMPTS) -> tuple[str, ...]:
    """The general prompts mixed into a training set of `n_examples`: round(share * n_examples) of `prompts`
    (at least 1, at most all of them) drawn with `seed`; none when `share` is 0."""
    return tuple(random.Random(seed).sample(list(prompts), _count(n_examples, share, len(prompts))))


def _count(n_examples: int, share: float, pool: int) -> int:
    """Replay examples for `n_examples` of the domain's own: round(share * n_examples), at least 1, at most `pool`;
    0 when `share` is 0."""
    return min(pool, max(1, round(share * n_examples))) if share > 0 else 0


def base_answers(engine, system: str, cache_dir: Path | None = None, base_sha: str = "",
                 prompts: tuple[str, ...] = PROMPTS, max_new_tokens: int = 96, batch: int = 8,
                 engine_factory=None) -> list[tuple[str, str]]:
    """(prompt, the base model's greedy answer) for each of `prompts` whose answer is not empty, in order.
    Answers are cached per base model and system message, prompt by prompt: only prompts never answered
    before are generated (a first training run with 3 replay examples answers 3 prompts, not the pool of 60).

    `engine` must serve the bare base model (no adapter); with `engine_factory` instead, the engine is only
    built when some answer is not cached.
    """
    from ..atomic import write_text
    from ..engine import GenerationRequest

    path = cache_dir / f"replay-{_cache_key(base_sha, system, max_new_tokens)}.json" if cache_dir else None
    known: dict[str, str] = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    missing = [p for p in dict.fromkeys(prompts) if p not in known]
    if missing:
        engine = engine if engine is not None else engine_factory()
        requests = [GenerationRequest(({"role": "system", "content": system}, {"role": "user", "content": p}),
                                      max_new_tokens) for p in missing]
        for s in range(0, len(requests), batch):
            known.update((p, g.text.strip()) for p, g in zip(missing[s:s + batch],
                                                             engine.generate(requests[s : s + batch])))
        if path is not None:
            write_text(path, json.dumps(known))
    return [(p, known[p]) for p in prompts if known.get(p)]


def mix_replay(examples: list[Example], pairs: list[tuple[str, str]], share: float, seed: int = 0) -> list[Example]:
    """`examples` plus round(share * len(examples)) replay examples (at most the whole pool), shuffled in."""
    if share <= 0 or not pairs:
        return list(examples)
    chosen = random.Random(seed).sample(pairs, _count(len(examples), share, len(pairs)))
    start = max((e.line for e in examples), default=0) + 1
    extra = [Example(({"role": "user", "content": p}, {"role": "assistant", "content": a}), start + i)
             for i, (p, a) in enumerate(chosen)]
    return list(examples) + extra


def with_replay(examples: list[Example], share: float, seed: int, system: str, cache: Path | None, base_sha: str,
                base_dir: Path) -> list[Example]:
    """`examples` with `share` of general prompts answered greedily by the bare base model in `base_dir`
    (cached per base model and system message under `cache`). Across processes (`loradex.adapters.distributed`)
    rank 0 answers them first and the others then read its cache."""
    if share <= 0:
        return examples
    import torch

    from ..engine.local import LocalEngine
    from .distributed import current

    dist = current()
    if not dist.main:
        dist.barrier(torch)  # rank 0 is writing the cache
    pairs = base_answers(None, system, cache, base_sha, prompts=replay_prompts(len(examples), share, seed),
                         engine_factory=lambda: LocalEngine(base_dir))
    if dist.main:
        dist.barrier(torch)
    return mix_replay(examples, pairs, share, seed)
