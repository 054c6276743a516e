"""Multi-hot label matrices: the one way PatentML turns label lists into training targets and truth.

scikit-learn's ``MultiLabelBinarizer`` does the same, but it warns on labels outside its classes
(every test split has some) and its import costs a prediction's cold start a second; these few lines
of numpy do not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np


def multi_hot_rows(rows: Sequence[Sequence[int]], n_labels: int, dtype: str = "float32") -> "np.ndarray":
    """(len(rows), n_labels) with ones at each row's label indices."""
    import numpy as np

    y = np.zeros((len(rows), n_labels), dtype=dtype)
    for i, idx in enumerate(rows):
        y[i, np.asarray(idx, dtype=np.int64)] = 1
    return y


def multi_hot(doc_labels: Sequence[Sequence[str]], labels: Sequence[str], dtype: str = "float32") -> "np.ndarray":
    """Multi-hot (n, len(labels)); labels outside the label space are left out (and counted elsewhere)."""
    index = {label: i for i, label in enumerate(labels)}
    return multi_hot_rows([[index[l] for l in ls if l in index] for ls in doc_labels], len(labels), dtype)


def truth_matrix(doc_labels: Sequence[Sequence[str]], labels: Sequence[str]) -> tuple["np.ndarray", list[str]]:
    """(n, L + U) bool truth over a model's labels plus the U labels outside them, and all L + U names.

    Test labels that training never saw stay in the truth as columns no model can predict, so recall
    is not flattered by dropping them.
    """
    known = set(labels)
    names = list(labels) + sorted({l for ls in doc_labels for l in ls if l not in known})
    return multi_hot(doc_labels, names, dtype="bool"), names
