"""What the blend's re-ranker costs at prediction: its second stage against the members' own pass.

Issue 15 asks for quality without giving back issue 13's speed. A re-ranked blend predicts in two
steps: the members score every label (one MiniLM pass shared by the kNN and the MLP head, plus TF-IDF
+ SVM), then ``Ensemble.combine`` builds the candidate features and evaluates the trees. This times
both on the same abstracts, in batches and one patent at a time, and prints the second stage's share
next to the limit it is held to (10 % of the members' pass).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/rerank.py --model <home>/cache/models/<re-ranked ensemble>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from encoder import sample  # noqa: E402  (the benchmarks' shared sample of abstracts)

LIMIT = 0.10


def timed(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    """Median seconds of ``rounds`` calls."""
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a re-ranked ensemble's model folder")
    ap.add_argument("--n", type=int, default=600, help="abstracts")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--singles", type=int, default=50, help="abstracts timed one at a time")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    from patentml.variants.base import load_backend

    model = load_backend(args.model)
    if getattr(model, "trees", None) is None:
        raise SystemExit(f"{args.model} is not a re-ranked ensemble (no {getattr(model, 'name', '?')} trees)")
    drawn, _ = sample(args.n + 8)
    texts = drawn[: args.n]
    model.member_scores(drawn[args.n :])  # load encoders and indexes before timing, on other abstracts
    batches = [texts[s : s + args.batch] for s in range(0, len(texts), args.batch)]
    # Once only: the members keep the vectors of texts they have seen (an in-process memo).
    started = time.perf_counter()
    scores = [model.member_scores(b) for b in batches]
    members = time.perf_counter() - started
    second = timed(lambda: [model.combine(s) for s in scores], args.rounds)
    one = [model.member_scores([t]) for t in texts[: args.singles]]
    single = timed(lambda: [model.combine(s) for s in one], args.rounds) / len(one)
    per = 1000 / len(texts)
    print(f"{len(texts)} abstracts in batches of {args.batch}: members {members * per:.1f} ms per patent, "
          f"second stage {second * per:.2f} ms per patent; one patent alone: second stage {single * 1000:.2f} ms")
    share = second / members
    print(f"second stage / members' pass: {share:.1%} (limit <= {LIMIT:.0%}): {'ok' if share <= LIMIT else 'OVER'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
