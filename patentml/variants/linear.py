"""TF-IDF + one-vs-rest logistic regression: the cheap challenger our deep models must beat.

Stored without pickle: the vectorizer's vocabulary (JSON), its idf and the coefficients (a sparse
matrix as three arrays) in safetensors; loading rebuilds the scikit-learn objects from them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from patentml.exceptions import ArtifactError
from patentml.text import MAX_TOKENS
from patentml.variants.base import Backend, Corpus, EpochLog, FitContext, collect

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

VOCAB_FILE = "tfidf_vocabulary.json"
WEIGHTS_FILE = "weights.safetensors"
#: A linear SVM's margins are about +-1 where logistic scores would be about +-3: stretched by this
#: before the sigmoid, so thresholds and blends treat both alike.
SVM_MARGIN_SCALE = 3.0
#: Logits beyond this saturate the sigmoid anyway; clipping keeps exp() finite.
LOGIT_CLIP = 50.0


def _sigmoid(z: "np.ndarray") -> "np.ndarray":
    import numpy as np

    return 1.0 / (1.0 + np.exp(-np.clip(z, -LOGIT_CLIP, LOGIT_CLIP)))


def _fit_per_label(x: Any, y: "np.ndarray", C: float, class_weight: Any, classifier: str = "logreg",
                   n_jobs: int = 2) -> tuple["np.ndarray", "np.ndarray"]:
    """One linear model per label column: coefficients (labels, features) and intercepts (labels,).

    liblinear regularises the intercept; scaling it up (intercept_scaling=10) made each fit 30-80x
    slower on the sample data, so the default is kept.
    """
    import numpy as np
    from joblib import Parallel, delayed
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    # scikit-learn checks X with X.max(), which canonicalises a sparse matrix *in place*; threads
    # sharing one non-canonical matrix then corrupt it (seen: "indices array has fewer than nnz").
    x = x.tocsr()
    x.sum_duplicates()
    x.sort_indices()

    def fit(j: int) -> tuple["np.ndarray", float]:
        if not y[:, j].any():  # no training patent has this label (a label space from elsewhere, a fold)
            return np.zeros(x.shape[1], dtype=np.float32), -LOGIT_CLIP
        if classifier == "svm":
            model: Any = LinearSVC(C=C, class_weight=class_weight)
        else:
            model = LogisticRegression(C=C, solver="liblinear", class_weight=class_weight, max_iter=200)
        model.fit(x, y[:, j])
        return model.coef_[0].astype(np.float32), float(model.intercept_[0])

    results = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(fit)(j) for j in range(y.shape[1]))
    return np.vstack([r[0] for r in results]), np.asarray([r[1] for r in results], dtype=np.float32)


class TfidfFeatures:
    """Word n-gram TF-IDF on the paper's tokens: fitted with scikit-learn, applied without it.

    Stored as the vocabulary (JSON, one term per column) and the idf array, no pickle.
    """

    PARAMS = ("max_features", "min_df", "ngram_max", "sublinear_tf", "max_tokens")

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = {k: params[k] for k in self.PARAMS}
        self.vocabulary: dict[str, int] = {}
        self.idf: "np.ndarray | None" = None

    def fit_transform(self, texts: Sequence[str]) -> Any:
        import numpy as np
        from sklearn.feature_extraction.text import TfidfVectorizer

        from patentml.text import tokenize

        max_tokens = int(self.params["max_tokens"])
        vectorizer = TfidfVectorizer(
            # The paper's tokens (lower-cased words, 250 cap), so every variant sees the same text.
            tokenizer=lambda t: tokenize(t, max_tokens),
            token_pattern=None,
            lowercase=False,
            ngram_range=(1, int(self.params["ngram_max"])),
            min_df=int(self.params["min_df"]),
            max_features=int(self.params["max_features"]),
            sublinear_tf=bool(self.params["sublinear_tf"]),
            dtype=np.float32,
        )
        x = vectorizer.fit_transform(texts)
        self.vocabulary = {t: int(i) for t, i in vectorizer.vocabulary_.items()}
        self.idf = vectorizer.idf_.astype(np.float32)
        return x

    def transform(self, texts: Sequence[str]) -> Any:
        """TF-IDF rows (n, features), l2-normalised: scikit-learn's transform, without importing it.

        Prediction only needs the vocabulary and idf; doing it here keeps a cold start free of
        scikit-learn's import time. A test checks it against ``TfidfVectorizer.transform``.
        """
        import numpy as np
        import scipy.sparse as sp

        from patentml.text import tokenize

        max_tokens = int(self.params["max_tokens"])
        ngram_max = int(self.params["ngram_max"])
        vocab = self.vocabulary
        assert self.idf is not None, "fit or load the features first"
        indptr, indices, data = [0], [], []
        for text in texts:
            words = tokenize(text, max_tokens)
            counts: dict[int, int] = {}
            for n in range(1, ngram_max + 1):
                for i in range(len(words) - n + 1):
                    j = vocab.get(words[i] if n == 1 else " ".join(words[i : i + n]))
                    if j is not None:
                        counts[j] = counts.get(j, 0) + 1
            cols = np.fromiter(counts.keys(), dtype=np.int32, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
            if self.params["sublinear_tf"]:
                tf = 1.0 + np.log(tf)
            w = tf * self.idf[cols]
            norm = float(np.sqrt((w * w).sum()))
            indices.append(cols)
            data.append(w / norm if norm > 0 else w)
            indptr.append(indptr[-1] + len(cols))
        return sp.csr_matrix(
            (np.concatenate(data) if data else np.zeros(0, np.float32),
             np.concatenate(indices) if indices else np.zeros(0, np.int32),
             np.asarray(indptr)),
            shape=(len(texts), len(self.idf)),
        )

    @property
    def terms(self) -> list[str]:
        """Feature index -> term (word or n-gram), the inverse of the vocabulary."""
        if len(getattr(self, "_terms", ())) != len(self.vocabulary):
            self._terms = [""] * len(self.vocabulary)
            for term, idx in self.vocabulary.items():
                self._terms[idx] = term
        return self._terms

    def save(self, folder: Path) -> dict[str, "np.ndarray"]:
        """Writes the vocabulary; returns the arrays for the caller to store beside its own."""
        (folder / VOCAB_FILE).write_text(json.dumps(self.terms))
        assert self.idf is not None
        return {"idf": self.idf}

    def load(self, folder: Path, arrays: dict[str, "np.ndarray"]) -> None:
        terms = json.loads((folder / VOCAB_FILE).read_text())
        self.vocabulary = {t: i for i, t in enumerate(terms)}
        self.idf = arrays["idf"]
        if len(self.idf) != len(terms):
            raise ArtifactError(f"{folder / VOCAB_FILE}: {len(terms)} terms but {len(self.idf)} idf values")


class TfidfLinear(Backend):
    """Word uni+bigram TF-IDF, one logistic regression per label."""

    name = "tfidf"
    classifier = "logreg"
    predict_batch = 1024
    explains = True
    #: Multiplies the linear scores before the sigmoid (see :data:`SVM_MARGIN_SCALE`).
    score_scale = 1.0
    DEFAULTS: dict[str, Any] = {
        "max_features": 200_000,
        "min_df": 2,
        "ngram_max": 2,
        "sublinear_tf": True,
        "C": 10.0,
        "class_weight": None,
        #: Coefficients below this magnitude are dropped: on the sample data 0.05 keeps 5 % of them
        #: (214 MB -> ~10 MB) with validation P@1 and F1 unchanged to 3 decimals.
        "prune": 0.05,
        "max_tokens": MAX_TOKENS,
    }

    def __init__(self, labels: Sequence[str], params: dict[str, Any] | None = None) -> None:
        super().__init__(labels, params)
        self.features = TfidfFeatures(self.params)
        self.coef: Any = None  # scipy.sparse.csr_matrix (labels, features)
        self.intercept: "np.ndarray | None" = None
        self._coef_t: Any = None  # coef.T as CSR, made once (see predict_scores)

    @property
    def vocabulary(self) -> dict[str, int]:
        return self.features.vocabulary

    @property
    def idf(self) -> "np.ndarray | None":
        return self.features.idf

    def transform(self, texts: Sequence[str]) -> Any:
        return self.features.transform(texts)

    def _fit(self, train: Corpus, valid: Corpus, ctx: FitContext) -> None:
        import numpy as np
        import scipy.sparse as sp

        from patentml.labels import multi_hot

        started = time.perf_counter()
        _, texts, doc_labels = collect(train)
        y = multi_hot(doc_labels, self.labels, dtype="int8")
        x = self.features.fit_transform(texts)
        # One binary model per label, fitted here rather than by OneVsRestClassifier: that wrapper
        # was measured ranking labels near-randomly on this multi-label matrix (P@1 0.001 where
        # the same per-label fits give 0.999 on train), and a plain loop is easier to store anyway.
        coef, intercept = _fit_per_label(x, y, float(self.params["C"]), self.params["class_weight"], self.classifier)
        coef[np.abs(coef) < float(self.params["prune"])] = 0.0
        self.coef, self._coef_t = sp.csr_matrix(coef), None
        self.intercept = intercept
        seconds = time.perf_counter() - started
        ctx.on_epoch(EpochLog(1, None, None, None, None, seconds, len(texts) / max(seconds, 1e-9)))

    def predict_scores(self, texts: Sequence[str], batch_size: int | None = None) -> "np.ndarray":
        import numpy as np

        assert self.idf is not None and self.coef is not None, "fit or load the model first"
        batch_size = batch_size or self.predict_batch
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            x = self.transform(texts[start : start + batch_size])
            z = (x @ self._weights()).toarray() + self.intercept  # (batch, labels)
            out[start : start + batch_size] = _sigmoid(z * self.score_scale)
        return out

    def explain(self, texts: Sequence[str], labels_per_text: Sequence[Sequence[str]],
                top_n: int = 5) -> list[dict[str, dict[str, Any]]]:
        """The terms of each text that add most to a label's score: TF-IDF weight x coefficient, the term's
        share of the label's logit (``weight``; the logit is their sum plus the label's ``bias``)."""
        import numpy as np

        assert self.coef is not None and self.intercept is not None, "fit or load the model first"
        index = {label: j for j, label in enumerate(self.labels)}
        terms, x = self.features.terms, self.transform(texts).tocsr()
        out = []
        for i, labels in enumerate(labels_per_text):
            row = x[i]
            cols, values = row.indices, row.data
            explained = {}
            for label in labels:
                j = index[label]
                weights = self.coef[j, cols].toarray().ravel() * values * self.score_scale  # (terms in text,)
                best = [t for t in np.argsort(-weights, kind="stable")[:top_n] if weights[t] > 0]
                explained[label] = {"method": "terms", "bias": round(float(self.intercept[j] * self.score_scale), 4),
                                    "terms": [{"term": terms[cols[t]], "weight": round(float(weights[t]), 4)}
                                              for t in best]}
            out.append(explained)
        return out

    def _weights(self) -> Any:
        """The coefficients as a (features, labels) CSR matrix. ``x @ coef.T`` converts the transposed
        matrix anew on every call: measured 160 ms per single abstract for tfidf-svm-full on the sample
        data (1.1M coefficients), 3 ms with the conversion done once."""
        if self._coef_t is None or self._coef_t.shape[::-1] != self.coef.shape:
            self._coef_t = self.coef.T.tocsr()
        return self._coef_t

    def n_params(self) -> int:
        return 0 if self.coef is None else int(self.coef.nnz + len(self.intercept))

    def _save(self, folder: Path) -> None:
        import numpy as np

        from patentml.artifact import save_arrays

        save_arrays(
            folder / WEIGHTS_FILE,
            {
                **self.features.save(folder),
                "coef_data": self.coef.data.astype(np.float32),
                "coef_indices": self.coef.indices.astype(np.int32),
                "coef_indptr": self.coef.indptr.astype(np.int64),
                "intercept": self.intercept,
            },
        )

    def _load(self, folder: Path) -> None:
        import scipy.sparse as sp

        from patentml.artifact import load_arrays

        arrays = load_arrays(folder / WEIGHTS_FILE)
        self.features.load(folder, arrays)
        self.coef = sp.csr_matrix(
            (arrays["coef_data"], arrays["coef_indices"], arrays["coef_indptr"]),
            shape=(len(self.labels), len(self.features.idf)),
        )
        self.intercept = arrays["intercept"]


class TfidfSVM(TfidfLinear):
    """TF-IDF + one linear SVM per label; margins pass through a sigmoid so thresholds and ranks apply."""

    name = "tfidf-svm"
    classifier = "svm"
    score_scale = SVM_MARGIN_SCALE
    DEFAULTS = {**TfidfLinear.DEFAULTS, "C": 0.5}
