"""Second stage of the blend: re-rank each patent's top candidates with features the members cannot see.

The first stage (the weighted blend of :mod:`patentml.variants.ensemble`) ranks all labels; this stage
takes each patent's ``depth`` best labels and scores every (patent, candidate) pair with gradient-boosted
trees on:

* the blend's score, the candidate's rank, its share of the patent's best score, the best and second
  scores;
* each member's score for the label and the label's rank in that member;
* the label's prior (log share of training patents that carry it);
* co-occurrence with the other candidates, from the training labels: P(label | the top candidate) and
  the sum over the five best candidates of score x P(label | that candidate);
* the CPC hierarchy: whether the label shares the section and the class of the top candidate, and the
  blend score of the other candidates in its class and in its section.

The trees are fitted on validation (the members never trained on it); the scores the decision rule is
chosen on are out-of-fold (:func:`fit_out_of_fold`), because trees score their own training rows too
well. Labels outside a patent's ``depth`` candidates score 0.

The trees travel as plain arrays (safetensors, no pickle) and are evaluated here in numpy: every split
of every tree compared at once, then one sparse matrix product finds each tree's leaf: 2.1 ms per patent
in batches of 32, 1.5 ms alone, 2.6 % of the members' own pass (benchmarks/rerank.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

#: Feature columns, in order (per member: ``score`` and ``rank`` follow these, member by member).
FEATURES = ("blend", "rank", "share_of_top", "top", "second", "log_prior", "cooc_top5", "cooc_top1",
            "same_section", "same_class", "class_rest", "section_rest", "n_near_top")
MEMBER_FEATURES = ("score", "rank")
#: Member ranks above this count as this (a label a member ranks 300th is as unlikely as one it ranks 50th).
RANK_CAP = 50
#: Co-occurrence support is summed over this many best candidates.
COOC_TOP = 5
#: "near the top": candidates scoring at least this share of the patent's best score.
NEAR_TOP = 0.5
#: The trees (scikit-learn's HistGradientBoostingClassifier). Chosen on the CPC-labelled part of
#: validation, out of fold (benchmarks/quality.py); 150-500 trees and 7-31 leaves read within 0.5 points.
TREE_PARAMS = {"max_iter": 300, "learning_rate": 0.05, "max_leaf_nodes": 15, "min_samples_leaf": 40,
               "l2_regularization": 1.0}


@dataclass
class LabelStats:
    """What the training labels say about each label: log prior, P(j | i), section and class ids."""

    log_prior: "np.ndarray"  # (L,)
    cond: "np.ndarray"  # (L, L): P(label j | label i), 0 on the diagonal
    section: "np.ndarray"  # (L,) int: first character of the code (A-H, Y)
    klass: "np.ndarray"  # (L,) int: first three characters (A01)

    @classmethod
    def from_labels(cls, truth: "np.ndarray", labels: Sequence[str]) -> "LabelStats":
        """From the (patents, labels) multi-hot of the training split; add-one smoothing."""
        import numpy as np

        y = np.asarray(truth, dtype=np.float32)
        count = y.sum(axis=0)
        log_prior = np.log((count + 1.0) / (len(y) + 2.0)).astype(np.float32)
        prior = np.exp(log_prior)
        cond = ((y.T @ y) + prior[None, :]) / (count[:, None] + 1.0)
        np.fill_diagonal(cond, 0.0)
        return cls(log_prior, cond.astype(np.float32), hierarchy(labels, 1), hierarchy(labels, 3))

    def arrays(self) -> dict[str, "np.ndarray"]:
        return {"log_prior": self.log_prior, "cond": self.cond, "section": self.section, "klass": self.klass}

    @classmethod
    def from_arrays(cls, a: dict[str, "np.ndarray"]) -> "LabelStats":
        return cls(a["log_prior"], a["cond"], a["section"], a["klass"])


def hierarchy(labels: Sequence[str], chars: int) -> "np.ndarray":
    """Integer id of each label's first ``chars`` characters (1: CPC section, 3: class)."""
    import numpy as np

    return np.unique([label[:chars] for label in labels], return_inverse=True)[1].astype(np.int32)


def candidate_features(members: Sequence["np.ndarray"], blend: "np.ndarray", stats: LabelStats,
                       depth: int) -> tuple["np.ndarray", "np.ndarray"]:
    """(order (n, depth) label indices, best blend score first; features (n * depth, columns)), rows
    patent by patent, the columns of :data:`FEATURES` then each member's :data:`MEMBER_FEATURES`."""
    import numpy as np

    blend = np.asarray(blend, dtype=np.float32)
    n, n_labels = blend.shape
    depth = min(depth, n_labels)
    order = np.argsort(-blend, axis=1, kind="stable")[:, :depth]
    b = np.take_along_axis(blend, order, axis=1)
    top = b[:, :1]
    share = np.divide(b, top, out=np.zeros_like(b), where=top > 0)
    second = b[:, 1:2] if depth > 1 else np.zeros_like(top)
    head = order[:, :COOC_TOP]
    cooc_top5 = np.einsum("nk,nkc->nc", b[:, :COOC_TOP], stats.cond[head[:, :, None], order[:, None, :]])
    cooc_top1 = stats.cond[order[:, :1], order]
    sec, cls = stats.section[order], stats.klass[order]
    same_sec = sec == sec[:, :1]
    same_cls = cls == cls[:, :1]
    class_rest = ((cls[:, :, None] == cls[:, None, :]) * b[:, None, :]).sum(axis=2) - b
    section_rest = ((sec[:, :, None] == sec[:, None, :]) * b[:, None, :]).sum(axis=2) - b
    near = (share >= NEAR_TOP).sum(axis=1, keepdims=True)
    columns = [b, np.broadcast_to(np.arange(depth), b.shape), share, np.broadcast_to(top, b.shape),
               np.broadcast_to(second, b.shape), stats.log_prior[order], cooc_top5, cooc_top1, same_sec, same_cls,
               class_rest, section_rest, np.broadcast_to(near, b.shape)]
    for scores in members:
        scores = np.asarray(scores, dtype=np.float32)
        own = np.take_along_axis(scores, order, axis=1)
        # A label's rank in this member: how many labels it scores higher (ties share the better rank).
        rank = (scores[:, None, :] > own[:, :, None]).sum(axis=2)
        columns += [own, np.minimum(rank, RANK_CAP)]
    features = np.stack([np.asarray(c, dtype=np.float32) for c in columns], axis=2)
    return order, features.reshape(n * depth, -1)


def scatter(order: "np.ndarray", probs: "np.ndarray", n_labels: int) -> "np.ndarray":
    """Candidate probabilities (n * depth,) back into (n, n_labels) scores; non-candidates score 0."""
    import numpy as np

    out = np.zeros((order.shape[0], n_labels), dtype=np.float32)
    np.put_along_axis(out, order, probs.reshape(order.shape).astype(np.float32), axis=1)
    return out


@dataclass
class Trees:
    """A fitted binary gradient-boosted tree ensemble as arrays, (trees, nodes) each, padded."""

    feature: "np.ndarray"
    threshold: "np.ndarray"
    left: "np.ndarray"
    right: "np.ndarray"
    leaf: "np.ndarray"
    missing_left: "np.ndarray"
    value: "np.ndarray"
    baseline: float
    _matrices: "tuple[Any, ...] | None" = field(default=None, repr=False, compare=False)

    @classmethod
    def fit(cls, x: "np.ndarray", y: "np.ndarray", seed: int = 0) -> "Trees":
        import numpy as np
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(**TREE_PARAMS, early_stopping=False, random_state=seed).fit(x, y)
        nodes = [tree[0].nodes for tree in model._predictors]  # binary: one tree per iteration
        width = max(len(t) for t in nodes)

        def pad(field: str, dtype: type) -> np.ndarray:
            out = np.zeros((len(nodes), width), dtype=dtype)
            for i, t in enumerate(nodes):
                out[i, : len(t)] = t[field]
            return out

        # Padding nodes are never reached: every left/right index points at a node of its own tree.
        return cls(pad("feature_idx", np.int32), pad("num_threshold", np.float64), pad("left", np.int32),
                   pad("right", np.int32), pad("is_leaf", bool), pad("missing_go_to_left", bool),
                   pad("value", np.float64),
                   float(np.ravel(model._baseline_prediction)[0]))

    def _paths(self) -> tuple[Any, ...]:
        """The trees as matrices (built once, from each root down): every split node's feature, threshold
        and side for missing values, and ``turns`` (split node x leaf: +1 where the leaf lies left of the
        node, -1 right, 0 off its path). A row reaches the leaf where ``left decisions @ turns`` equals the
        leaf's number of left turns: it took every left turn on the path and no right turn the wrong way."""
        import numpy as np
        import scipy.sparse as sp

        if self._matrices is not None:
            return self._matrices
        feature, threshold, missing_left, blocks, lefts, value = [], [], [], [], [], []
        for t in range(self.feature.shape[0]):
            splits: list[int] = []
            leaves: list[tuple[int, tuple[tuple[int, bool], ...]]] = []
            stack: list[tuple[int, tuple[tuple[int, bool], ...]]] = [(0, ())]
            while stack:
                node, path = stack.pop()
                if self.leaf[t, node]:
                    leaves.append((node, path))
                    continue
                col = len(splits)
                splits.append(node)
                stack += [(int(self.left[t, node]), (*path, (col, True))),
                          (int(self.right[t, node]), (*path, (col, False)))]
            turns = np.zeros((len(splits), len(leaves)), dtype=np.float32)
            for j, (_, path) in enumerate(leaves):
                for col, went_left in path:
                    turns[col, j] = 1.0 if went_left else -1.0
            feature.append(self.feature[t, splits])
            threshold.append(self.threshold[t, splits])
            missing_left.append(self.missing_left[t, splits])
            blocks.append(sp.csr_matrix(turns))
            lefts.append([sum(went_left for _, went_left in path) for _, path in leaves])
            value.append(self.value[t, [node for node, _ in leaves]])
        self._matrices = (np.concatenate(feature).astype(np.int64), np.concatenate(threshold),
                          np.concatenate(missing_left), sp.block_diag(blocks, format="csr"),
                          np.concatenate(lefts).astype(np.float32), np.concatenate(value))
        return self._matrices

    def predict(self, x: "np.ndarray", chunk: int = 1024) -> "np.ndarray":
        """P(candidate is a true label) for feature rows (rows, columns), ``chunk`` rows at a time: every
        split of every tree is compared at once, and one sparse matrix product finds each tree's leaf."""
        import numpy as np

        feature, threshold, missing_left, turns, lefts, value = self._paths()
        x = np.asarray(x)
        raw = np.full(len(x), self.baseline)
        for lo in range(0, len(x), chunk):
            part = x[lo : lo + chunk][:, feature]  # (rows, trees x splits); compared in float64 as sklearn does
            left = part <= threshold[None]
            missing = np.isnan(part)
            if missing.any():
                left = np.where(missing, missing_left[None], left)
            reached = np.asarray((turns.T @ left.T.astype(np.float32)).T) == lefts[None]  # (rows, trees x leaves)
            raw[lo : lo + chunk] += reached.astype(np.float64) @ value
        return 1.0 / (1.0 + np.exp(-raw))

    @property
    def n_nodes(self) -> int:
        """Split nodes and leaves of all trees (a binary tree of s splits has s + 1 leaves)."""
        splits = len(self._paths()[0])
        return 2 * splits + self.feature.shape[0]

    def arrays(self) -> dict[str, "np.ndarray"]:
        import numpy as np

        return {"feature": self.feature, "threshold": self.threshold, "left": self.left, "right": self.right,
                "leaf": self.leaf.astype(np.uint8), "missing_left": self.missing_left.astype(np.uint8),
                "value": self.value, "baseline": np.array([self.baseline])}

    @classmethod
    def from_arrays(cls, a: dict[str, "np.ndarray"]) -> "Trees":
        return cls(a["feature"], a["threshold"], a["left"], a["right"], a["leaf"].astype(bool),
                   a["missing_left"].astype(bool), a["value"], float(a["baseline"][0]))


def fit_out_of_fold(features: "np.ndarray", truth: "np.ndarray", n_patents: int, folds: int,
                    seed: int) -> tuple[Trees, "np.ndarray"]:
    """Trees fitted on every row, and out-of-fold probabilities for those rows: patents are dealt into
    ``folds`` folds at random (``seed``) and each fold is scored by trees fitted on the others."""
    import numpy as np

    from patentml.exceptions import DataError

    depth = len(features) // n_patents
    fold_of = np.repeat(np.random.default_rng(seed).permutation(n_patents) % folds, depth)
    held_out = np.zeros(len(features))
    for k in range(folds):
        fit_rows = fold_of != k
        if len(set(truth[fit_rows].tolist())) < 2:
            raise DataError("re-ranking needs true and false candidates in every fold; too few validation patents")
        held_out[~fit_rows] = Trees.fit(features[fit_rows], truth[fit_rows], seed).predict(features[~fit_rows])
    return Trees.fit(features, truth, seed), held_out
