"""The prediction service (``patentml serve``): a FastAPI app over the champion, run by uvicorn.

``GET /healthz``, ``GET /v1/model``, ``POST /v1/predict``, Prometheus ``GET /metrics``, OpenAPI at
``/docs``. Bad requests get a 4xx JSON ``{"error": ...}`` that names the field; the champion is
followed without a restart (:class:`~patentml.serve.holder.ModelHolder`).
"""

from __future__ import annotations

import hmac
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Union

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from patentml.predict import DEFAULT_TOP_K, EXPLAIN_TOP_N, MAX_CHARS
from patentml.serve.holder import Loaded, ModelHolder
from patentml.serve.metrics import ServeMetrics
from patentml.textio import lone_surrogate, undecodable

if TYPE_CHECKING:
    from patentml.settings import Settings

log = logging.getLogger(__name__)

#: Most labels one request may ask scores for (a model has about 630).
MAX_TOP_K = 1000
#: Request bodies beyond this many bytes per allowed patent are refused before they are parsed.
BODY_BYTES_PER_PATENT = 8 * MAX_CHARS


class PatentIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: Union[int, str, None] = Field(None, description="Echoed back; defaults to the patent's position (1, 2, ...)")
    abstract: str = Field(..., description="The abstract (or any text) to classify")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patents: list[PatentIn] = Field(..., min_length=1,
                                    description="The patents to classify, at most PATENTML_SERVE_MAX_BATCH")
    top_k: int = Field(DEFAULT_TOP_K, ge=0, le=MAX_TOP_K, description="Label scores to return per patent")
    explain: bool = Field(False, description="Also say why, for each label named")
    top_n: int = Field(EXPLAIN_TOP_N, ge=1, le=100, description="Reasons per label when explaining")


class PredictionOut(BaseModel):
    id: Union[int, str]
    labels: list[str] = Field(..., description="The labels the model's decision rule picks, best first")
    scores: dict[str, float] = Field(..., description="The top-k label scores, best first")
    warning: str | None = None
    explanation: dict[str, Any] | None = None


class PredictResponse(BaseModel):
    model: str
    predictions: list[PredictionOut]


def _where(loc: Any) -> str:
    """``("body", "patents", 0, "abstract")`` -> ``patents[0].abstract``."""
    out = ""
    for part in loc:
        if part == "body":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        return JSONResponse({"error": f"the body is not valid JSON: {e.get('ctx', {}).get('error', e['msg'])}"}, 400)
    if any(tuple(e["loc"]) == ("body",) for e in errors):  # not an object at all (or not sent as JSON)
        kind = request.headers.get("content-type", "none")
        hint = "" if "json" in kind else f" (it came as {kind}: send Content-Type: application/json)"
        return JSONResponse({"error": 'the body must be a JSON object {"patents": [{"id", "abstract"}, ...]}'
                                      + hint}, 422)
    problems = [f"{_where(e['loc'])}: {e['msg']}" for e in errors]
    return JSONResponse({"error": "; ".join(problems),
                         "detail": [{"field": _where(e["loc"]), "problem": e["msg"]} for e in errors]}, 422)


def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError) and isinstance(cause.object, bytes):  # FastAPI's "error parsing"
        return JSONResponse({"error": f"the body is not valid UTF-8: {undecodable(cause.object, cause)}"}, 400)
    return JSONResponse({"error": exc.detail}, exc.status_code, headers=getattr(exc, "headers", None))


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("Request %s %s failed", request.method, request.url.path)
    return JSONResponse({"error": f"internal error ({exc.__class__.__name__}); see the service's log"}, 500)


def create_app(settings: "Settings | None" = None, *, model_id: str | None = None,
               artifact: Path | str | None = None) -> FastAPI:
    """The service for ``settings``: the store's champion, followed as its pointer moves (or a fixed
    ``model_id`` / local ``artifact``)."""
    from patentml.settings import get_settings

    settings = settings or get_settings()
    metrics = ServeMetrics()
    holder = ModelHolder(settings, model_id=model_id, artifact=artifact, on_swap=metrics.swapped,
                         on_failure=metrics.load_failed)
    max_batch, token = settings.serve_max_batch, settings.serve_token or ""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder.start()
        try:
            yield
        finally:
            holder.stop()

    app = FastAPI(title="PatentML", summary="CPC subclasses for patent abstracts, from the promoted champion",
                  lifespan=lifespan)
    app.state.holder, app.state.metrics = holder, metrics
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)
    bearer = HTTPBearer(auto_error=False, description="PATENTML_SERVE_TOKEN, when the service sets one")

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not token:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "a valid bearer token is required (Authorization: Bearer ...)",
                                headers={"WWW-Authenticate": "Bearer"})

    def model() -> Loaded:
        loaded = holder.current
        if loaded is None:
            raise HTTPException(503, f"no model to answer with: {holder.error or 'still loading'}")
        return loaded

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Response:
        limit = max_batch * BODY_BYTES_PER_PATENT
        length = request.headers.get("content-length", "")
        started = time.perf_counter()
        if length.isdigit() and int(length) > limit:
            response: Response = JSONResponse({"error": f"the body has {int(length):,} bytes, over the limit of "
                                                        f"{limit:,} for {max_batch} patents"}, 413)
        else:
            try:
                response = await call_next(request)
            except Exception:  # answered as a 500 by the error handler outside this middleware
                metrics.observe(request.method, getattr(request.scope.get("route"), "path", "unmatched"), 500,
                                time.perf_counter() - started)
                raise
        metrics.observe(request.method, getattr(request.scope.get("route"), "path", "unmatched"),
                        response.status_code, time.perf_counter() - started)
        return response

    @app.get("/healthz", summary="Whether the service has a model to answer with (200) or not (503)")
    def healthz() -> JSONResponse:
        loaded = holder.current
        if loaded is None:
            return JSONResponse({"status": "unavailable", "error": holder.error or "still loading"}, 503)
        return JSONResponse({"status": "ok", "model": loaded.predictor.model_id})

    @app.get("/v1/model", summary="The model answering: id, variant, decision rule, its test metrics",
             dependencies=[Depends(authorized)])
    def model_info() -> dict[str, Any]:
        return model().describe()

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True,
              summary="CPC subclasses (and optionally the reasons) for a batch of abstracts",
              dependencies=[Depends(authorized)],
              responses={400: {"description": "The body is not JSON"}, 413: {"description": "Batch over the limit"},
                         422: {"description": "A field is missing, of the wrong type, or an abstract is unusable"}})
    def predict(body: PredictRequest) -> dict[str, Any]:
        if len(body.patents) > max_batch:
            raise HTTPException(413, f"{len(body.patents)} patents in one request, over the limit of {max_batch} "
                                     "(PATENTML_SERVE_MAX_BATCH): split the batch")
        loaded = model()
        predictor = loaded.predictor
        ids = [p.id if p.id is not None else i for i, p in enumerate(body.patents, 1)]
        problems = [f"patents[{i}] (id {pid!r}): {error}" for i, (pid, p) in enumerate(zip(ids, body.patents))
                    for error in [predictor.check_text(p.abstract)[2]] if error]
        # Ids are echoed back: one that UTF-8 cannot carry (JSON "\ud800") would fail the answer itself.
        problems[:0] = [f'patents[{i}]: "id" is not valid Unicode: {problem}' for i, pid in enumerate(ids)
                        for problem in [lone_surrogate(pid) if isinstance(pid, str) else None] if problem]
        if problems:
            raise HTTPException(422, "; ".join(problems))
        with loaded.lock:
            out = predictor.predict([p.abstract for p in body.patents], top_k=body.top_k, ids=ids,
                                    explain=body.explain, top_n=body.top_n)
        failed = [o for o in out if "error" in o]
        if failed:  # the model itself failed: not the client's doing
            raise RuntimeError(failed[0]["error"])
        metrics.predicted(len(out))
        return {"model": predictor.model_id, "predictions": out}

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app


def serve(settings: "Settings", *, model_id: str | None = None, artifact: Path | str | None = None) -> None:
    """Run the service with uvicorn on ``settings.serve_host``/``serve_port`` until interrupted."""
    import uvicorn

    host, port = settings.serve_host, settings.serve_port
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.serve_token:
        log.warning("Listening on %s without PATENTML_SERVE_TOKEN: anyone who reaches the port can use the model",
                    host)
    app = create_app(settings, model_id=model_id, artifact=artifact)
    log.info("PatentML service on http://%s:%d (API docs at /docs)", host, port)
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), access_log=True)


__all__ = ["ModelHolder", "create_app", "serve"]
