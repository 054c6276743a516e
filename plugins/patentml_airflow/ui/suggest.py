"""The "paste an abstract" box: the champion loaded once per model id in the api-server, its suggestions, and
their explanations rendered as readable HTML whatever their shape."""

from __future__ import annotations

import inspect
import json
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any

from markupsafe import Markup, escape

if TYPE_CHECKING:
    from patentml.predict import Predictor
    from patentml.settings import Settings

log = logging.getLogger(__name__)

TOP_K = 5
#: Characters accepted from the box (an abstract is ~150 words; longer text is refused, not truncated).
MAX_CHARS = 20_000
#: Items of one explanation list shown before "... N more".
MAX_ITEMS = 10
MAX_DEPTH = 4


class NoChampion(LookupError):
    """The model store has no champion pointer yet."""


class ChampionCache:
    """The champion's Predictor for this process: reloaded only when the store's pointer names another model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, str] | None = None
        self._predictor: Predictor | None = None

    def get(self, settings: "Settings") -> "Predictor":
        from patentml.predict import Predictor
        from patentml.store import open_store

        store = open_store(settings)
        model_id = store.get_pointer()  # one small read per request: a new champion is seen at once
        if model_id is None:
            raise NoChampion(store.uri)
        key = (store.uri, model_id)
        with self._lock:  # one load at a time; the others wait for it and then share it
            if self._key != key or self._predictor is None:
                started = time.monotonic()
                predictor = Predictor.open(settings, model_id=model_id)
                old, self._key, self._predictor = self._predictor, key, predictor
                log.info("PatentML page: loaded champion %s in %.1f s", model_id, time.monotonic() - started)
                if old is not None:
                    old.close()
            return self._predictor

    def loaded(self) -> str | None:
        """The model id held now (None before the first suggestion)."""
        return self._key[1] if self._key else None


def takes_explain(predictor: Any) -> bool:
    """Whether this Predictor's ``predict`` accepts ``explain`` (added by the prediction service work)."""
    try:
        params = inspect.signature(predictor.predict).parameters
    except (TypeError, ValueError):
        return False
    return "explain" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def suggest(predictor: "Predictor", text: str, top_k: int = TOP_K) -> dict[str, Any]:
    """The champion's answer for one abstract: ranked labels with scores, decided ones marked, explanations."""
    started = time.monotonic()
    if takes_explain(predictor):
        (pred,) = predictor.predict([text], top_k=top_k, explain=True)
    else:
        (pred,) = predictor.predict([text], top_k=top_k)
    seconds = time.monotonic() - started
    manifest = getattr(predictor, "manifest", {}) or {}
    out: dict[str, Any] = {"model_id": predictor.model_id, "variant": manifest.get("variant"), "seconds": seconds,
                           "error": pred.get("error"), "warning": pred.get("warning"), "rows": [], "explanation": None}
    if out["error"]:
        return out
    chosen = set(pred.get("labels") or [])
    explanation = pred.get("explanation")
    per_label = explanation if isinstance(explanation, dict) and set(explanation) & set(pred["scores"]) else None
    for label, score in pred["scores"].items():
        why = per_label.get(label) if per_label else None
        out["rows"].append({"label": label, "score": float(score), "selected": label in chosen,
                            "why": render_explanation(why) if why is not None else None})
    if explanation is not None and per_label is None:
        out["explanation"] = render_explanation(explanation)
    return out


# -- explanations, whatever their shape ----------------------------------------------------------------
def _scalar(value: Any) -> Markup:
    if isinstance(value, bool) or value is None:
        return escape("yes" if value else ("no" if value is False else "–"))
    if isinstance(value, float):
        return escape("–" if not math.isfinite(value) else f"{value:.3f}")
    return escape(str(value))


def _key(name: Any) -> Markup:
    return escape(str(name).replace("_", " "))


def _is_pair(item: Any) -> bool:
    """A (word, weight) pair: a 2-list or a 2-key dict holding one text and one number."""
    values = list(item.values()) if isinstance(item, dict) else item
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        return False
    kinds = {type(v) for v in values}
    return any(k is str for k in kinds) and any(k in (int, float) for k in kinds)


def _chip(item: Any) -> Markup:
    values = list(item.values()) if isinstance(item, dict) else list(item)
    word = next(v for v in values if isinstance(v, str))
    weight = next(v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
    return Markup('<span class="chip">{} <small>{}</small></span>').format(word, _scalar(float(weight)))


def _more(items: list[Any]) -> Markup:
    left = len(items) - MAX_ITEMS
    return Markup(f' <span class="muted">… {left} more</span>') if left > 0 else Markup("")


def render_explanation(value: Any, depth: int = 0) -> Markup:
    """Readable HTML for any JSON-like explanation: pairs as word chips, lists of records as small tables,
    mappings as definition lists; every text escaped, long lists cut, deep nesting shown as JSON."""
    if depth > MAX_DEPTH:
        return Markup("<code>{}</code>").format(json.dumps(value, default=str)[:300])
    if isinstance(value, dict):
        if not value:
            return Markup('<span class="muted">–</span>')
        rows = Markup("").join(Markup("<dt>{}</dt><dd>{}</dd>").format(_key(k), render_explanation(v, depth + 1))
                               for k, v in list(value.items())[:MAX_ITEMS * 2])
        return Markup('<dl class="why">{}</dl>').format(rows)
    if isinstance(value, (list, tuple)):
        items = list(value)
        if not items:
            return Markup('<span class="muted">none</span>')
        shown = items[:MAX_ITEMS]
        if all(_is_pair(i) for i in shown):
            return Markup(" ").join(_chip(i) for i in shown) + _more(items)
        if all(isinstance(i, dict) for i in shown):
            keys = list(dict.fromkeys(k for i in shown for k in i))[:8]
            head = Markup("").join(Markup("<th>{}</th>").format(_key(k)) for k in keys)
            body = Markup("").join(
                Markup("<tr>{}</tr>").format(Markup("").join(
                    Markup("<td>{}</td>").format(render_explanation(i.get(k), depth + 1)) for k in keys))
                for i in shown)
            return Markup('<table class="why"><tr>{}</tr>{}</table>').format(head, body) + _more(items)
        return Markup(", ").join(render_explanation(i, depth + 1) for i in shown) + _more(items)
    return _scalar(value)


__all__ = ["MAX_CHARS", "TOP_K", "ChampionCache", "NoChampion", "render_explanation", "suggest", "takes_explain"]
