"""The retrain DAG's Params: typed and validated by the trigger form, with choices from the variant registry."""

from __future__ import annotations

from airflow.sdk import Param

from patentml import variants as registry
from patentml_airflow.config import DagConfig


def _array(default: list[str], allowed: list[str], title: str, description: str) -> Param:
    return Param(default, type="array", items={"type": "string", "enum": allowed}, uniqueItems=True, title=title,
                 description=description)


def retrain_params(config: DagConfig) -> dict[str, Param]:
    """Every Param of ``patent_retrain``; defaults from the operator's ``PATENTML_*`` settings."""
    trainable = registry.encoders(trainable=True)
    loss_free = ", ".join(e for e in trainable if not registry.backend_class(e).has_loss)
    return {
        "variants": Param(
            config.default_variants, type="array", items={"type": "string", "enum": registry.known_variants(trainable=True)},
            uniqueItems=True, title="Variants",
            description="Exact variants to train, e.g. glove-wbce-full, bert-bce-subset, tfidf-full. "
            "Empty: the matrix of encoders x losses x datasets below.",
        ),
        "encoders": _array(["glove", "bert"], trainable, "Encoders", "Used when 'variants' is empty."),
        "losses": _array(list(registry.LOSSES), list(registry.LOSSES), "Losses",
                         f"bce or weighted bce (wbce); {loss_free} take none."),
        "datasets": _array(["full"], list(registry.DATASETS), "Datasets", "full (USPTO-2M-like) and/or the 15 % subset."),
        "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=500, title="Epochs",
                        description="Empty: the library default (paper: 20, with early stopping)."),
        "batch_size": Param(None, type=["null", "integer"], minimum=1, maximum=65536, title="Batch size",
                            description="Empty: the library default."),
        "alpha": Param(2.0, type="number", exclusiveMinimum=0, maximum=100, title="Alpha (weighted BCE)",
                       description="Weight of the positive term for the wbce loss (paper: 2)."),
        "seed": Param(0, type="integer", minimum=0, title="Seed"),
        "device": Param(None, type=["null", "string"], enum=[None, "auto", "cpu", "cuda"], title="Device",
                        description="Empty: PATENTML_DEVICE (auto uses CUDA when present)."),
        "model_overrides": Param(
            config.default_overrides, type="object", title="Model overrides",
            description='Extra model settings passed to training, e.g. {"num_filters": 128, "dropout": 0.3}; '
            'a key naming an encoder or variant scopes its settings, e.g. {"glove": {"trainable_embeddings": true}}.',
        ),
        "promotion_margin": Param(
            None, type=["null", "number"], minimum=0, exclusiveMaximum=1, title="Promotion margin",
            description="Example-F1 points (0-1) a challenger must win by; empty: PATENTML_PROMOTION_MARGIN.",
        ),
        "only_if_changed": Param(config.only_if_changed, type=["null", "boolean"], title="Only if the corpus changed",
                                 description="Skip training when the rebuilt snapshot equals the previous one. Empty "
                                 "(default, PATENTML_RETRAIN_ONLY_IF_CHANGED): the nightly schedule skips, a manual run trains."),
        "approve_promotion": Param(False, type="boolean", title="A person approves the promotion",
                                   description="Hold a winning challenger (uploaded and verified) until someone approves it "
                                   "under Required actions; a rejection or no answer keeps the champion."),
        "blend": Param(
            config.blend, type="boolean", title="Blend the variants",
            description="After evaluation, train and evaluate a score-level blend of the runs evaluated in this run "
            "(for each dataset with at least two), and let it compete for promotion. Default: PATENTML_RETRAIN_BLEND.",
        ),
        "fail_on_variant_failure": Param(True, type="boolean", title="Mark the run failed when a variant or the blend failed",
                                         description="Promotion still runs on the variants that finished."),
    }

