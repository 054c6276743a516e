"""A small separable corpus: each subclass has its own words, so tiny models can learn it in seconds."""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = {
    "A01H": "plant seed cultivar hybrid flower leaf breeding soybean maize variety",
    "B60W": "vehicle engine torque driver brake hybrid wheel speed control steering",
    "C07D": "compound heterocyclic ring alkyl substituted formula pharmaceutical salt derivative synthesis",
    "G06F": "memory processor data instruction cache computer storage program software register",
    "H04L": "network packet protocol node transmission router message client server encryption",
    "F16H": "gear shaft transmission planetary clutch bearing housing lever spring rotation",
}
FILLER = "the a of and to in is for with an on by said wherein which".split()


def toy_records(n: int = 240, seed: int = 0, second_label_every: int = 4) -> list[dict]:
    rng = random.Random(seed)
    codes = sorted(TOPICS)
    out = []
    for i in range(n):
        main = codes[i % len(codes)]
        labels = [main]
        words = TOPICS[main].split()
        if i % second_label_every == 0:
            other = codes[(i // len(codes) + 1 + codes.index(main)) % len(codes)]
            if other != main:
                labels.append(other)
                words = words + TOPICS[other].split()[:4]
        text = " ".join(rng.choice(words) if rng.random() < 0.6 else rng.choice(FILLER) for _ in range(rng.randint(20, 60)))
        out.append({"id": f"US{9000000 + i}", "title": f"Toy {i}", "abstract": text.capitalize() + ".",
                    "labels": labels, "label_scheme": "CPC", "date": "2015-01-06"})
    return out


def write_toy_jsonl(path: Path, n: int = 240, seed: int = 0) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in toy_records(n, seed)))
    return path
