"""The face verification service: `create_app(settings)` builds the FastAPI app.

Model, detector and gallery are opened in the lifespan (not at import), so tests and workers pay for them once.
Every `/v1` route goes through the guard (API key or loopback, then the rate limit); `/metrics` and the API docs
go through it too unless configured open (or off). One handler turns domain errors into
`{"error": {"code", "message", "request_id"}}` with the right status, and anything unexpected into a bare 500
that leaks nothing. Every request gets an id (the client's `x-request-id` where it is sane), sent back in the
`x-request-id` header and error bodies and written in the access log. Behind trusted proxies
(`forwarded_allow_ips`) uvicorn's ProxyHeadersMiddleware puts the real client address in the request.

The routes that embed faces are async: the upload is read on the event loop. Aligned 112x112 crops are decoded
and embedded right there (about a millisecond, less than two thread hops; `--workers` uses the other cores).
Photos are decoded, detected and aligned on the engine's decoding threads, and their embedding waits on the
batcher, which runs the faces of concurrent requests in one model call.
"""

# No `from __future__ import annotations` here: FastAPI must see the route annotations (the dependency aliases are
# local to create_app) as objects, not strings.
import asyncio
import errno
import json
import logging
import os
import re
import socket
import time
import uuid
from concurrent.futures import Future
from contextlib import asynccontextmanager
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Callable, Optional

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facenas import __version__
from facenas.serve import schemas as S
from facenas.serve.engine import Face, FaceEngine, crop_sized, decode_upload, parse_landmarks
from facenas.serve.errors import GalleryError, NoFaceFound, PayloadTooLarge, ServiceError, StartupError, error_body
from facenas.serve.gallery import Gallery, check_subject_id
from facenas.serve.security import Guard, carries_forwarded_headers, check_exposure, load_key_hashes, request_key
from facenas.serve.settings import ServeSettings
from facenas.serve.thresholds import Decision

log = logging.getLogger("facenas.serve")
MAX_FILES = 16
REQUEST_ID = ContextVar("facenas_request_id", default=None)
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")


class _Metrics:
    """The Prometheus metrics. With `--workers N` (PROMETHEUS_MULTIPROC_DIR set by `facenas serve`), the counters
    and histograms live in prometheus_client's per-process files and /metrics sums every worker's, dead ones
    included; the gauges are read when scraped (`gauges`): the gallery's size is the same on every worker (shared),
    the batching figure is the answering worker's."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()  # what /metrics exposes
        counted: Optional[CollectorRegistry] = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry)
            counted = None  # their values reach /metrics through the collector of the workers' files
        self.requests = Counter("facenas_requests_total", "HTTP requests", ["route", "method", "status"],
                                registry=counted)
        self.latency = Histogram("facenas_request_seconds", "request latency", ["route"], registry=counted,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.errors = Counter("facenas_errors_total", "error responses", ["code"], registry=counted)
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.registry.register(self)

    def describe(self) -> list[Any]:
        return []  # the gauges are known once the app starts: nothing to check against at registration

    def collect(self) -> Any:
        """The gauges, read now (a prometheus_client custom collector)."""
        from prometheus_client.core import GaugeMetricFamily

        for name, (text, read) in self.gauges.items():
            yield GaugeMetricFamily(name, text, value=float(read()))


def request_id(scope: Scope) -> str:
    """The client's `x-request-id` when it is short and plain (it may tie our log to theirs), else a new one."""
    for name, value in scope.get("headers") or []:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(given):
                return given
    return uuid.uuid4().hex


class RequestContext:
    """Per request: its id (context variable, `x-request-id` response header), the worker that answered
    (`x-facenas-worker`, a random name per process: with `--workers N`, which of them), the Prometheus counters and
    latency by route template, and one access-log line. Plain ASGI: Starlette's BaseHTTPMiddleware would cost a
    task and a stream copy per request."""

    def __init__(self, app: ASGIApp, metrics: _Metrics, label: Callable[[Scope], str], worker: str) -> None:
        self.app, self.metrics, self.label = app, metrics, label
        self.worker = worker.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        token = REQUEST_ID.set(rid)
        began, status = time.perf_counter(), 500  # until a response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode()),
                                      (b"x-facenas-worker", self.worker)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # noqa: BLE001 - the last stop: the client gets a bare 500, the log gets the cause
            log.exception("unexpected error on %s %s request_id=%s", scope["method"], scope["path"], rid)
            self.metrics.errors.labels("internal").inc()
            if status != 500:  # a response had started: nothing more can be sent
                raise
            await _send_json(send_with_id, 500, error_body("internal", "internal error", request_id=rid))
        finally:
            elapsed = time.perf_counter() - began
            route = self.label(scope)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            client = scope.get("client")
            log.info("%s %s %s %d %.1fms request_id=%s", client[0] if client else "-", scope["method"],
                     scope["path"], status, 1000 * elapsed, rid)
            REQUEST_ID.reset(token)


class BodyLimit:
    """Refuses request bodies over `limit` bytes, declared (Content-Length) or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_large = PayloadTooLarge(f"request body over the limit of {self.limit} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_error(send, too_large)
            return
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except PayloadTooLarge:
            if started:
                raise
            await _send_error(send, too_large)


async def _send_error(send: Send, exc: ServiceError) -> None:
    await _send_json(send, exc.status, exc.body(REQUEST_ID.get()))


async def _send_json(send: Send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def answer(body: BaseModel, status: int = 200) -> Response:
    """A response model's JSON, sent as is: it was validated when built, and FastAPI would validate and serialise
    it again against the route's `response_model` (which stays, for the OpenAPI schema)."""
    return Response(body.model_dump_json(), status_code=status, media_type="application/json")


def _error(exc: ServiceError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if hasattr(exc, "retry_after") else None
    return JSONResponse(exc.body(REQUEST_ID.get()), status_code=exc.status, headers=headers)


def route_label(app: FastAPI, scope: Scope) -> str:
    """The template of the route that took the request, for bounded metric labels. FastAPI's own routes (the schema,
    the docs) are plain Starlette routes that do not record themselves in the scope, so they are matched here as the
    router would; only a request that no route matches is "unmatched" (never its raw path)."""
    route = scope.get("route")
    if route is None:
        partial = None
        for candidate in app.router.routes:
            match, _ = candidate.matches(scope)
            if match == Match.FULL:
                route = candidate
                break
            if match == Match.PARTIAL and partial is None:
                partial = candidate  # the path exists with another method: a 405, still a known route
        route = route or partial
    return getattr(route, "path", None) or "unmatched"


def check_port(host: str, port: int) -> None:
    """Bind host:port as uvicorn will (every address the host resolves to, SO_REUSEADDR) and let it go again, so that
    a port in use stops `facenas serve` in one line before the model loads, not with an errno after start-up."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot serve on {host}: the host name does not resolve ({exc.strerror}); give an "
                           "address such as 127.0.0.1 or 0.0.0.0") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StartupError(f"port {port} on {host} is already in use (another `facenas serve`?); stop "
                                       "that process or choose another --port") from None
                if exc.errno == errno.EACCES:
                    raise StartupError(f"port {port} on {host} needs privileges this user lacks; choose a port from "
                                       "1024 on") from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise StartupError(f"{host} is not an address of this machine; bind 127.0.0.1, 0.0.0.0 or one "
                                       "of its addresses") from None
                raise StartupError(f"cannot bind port {port} on {host}: {exc.strerror}") from None
    finally:
        for sock in sockets:
            sock.close()


def open_gallery(settings: ServeSettings, engine: FaceEngine) -> Gallery:
    """The gallery, its folder created first: the default (runs/serve/) does not exist in a fresh checkout."""
    folder = Path(settings.db).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GalleryError(f"cannot create the gallery's folder {folder}: {exc.strerror}") from None
    return Gallery(settings.db, engine.model_id, engine.embedding_size, settings.faiss_min_faces)


def preflight(settings: ServeSettings) -> None:
    """Check what may face the network, then open the model and the gallery once before serving, so that a keyless
    public bind, a bad model, an operating point the card lacks or another model's gallery stop `facenas serve` with
    one clear line instead of a failed start-up inside uvicorn."""
    check_exposure(settings, load_key_hashes(settings))
    engine = FaceEngine(settings)
    try:
        open_gallery(settings, engine).close()
    finally:
        engine.close()


def _decision(decision: Decision, requested: Optional[float]) -> dict[str, Any]:
    """The threshold an answer used and where it came from: the request's own, else the service's operating point."""
    if requested is not None:
        return {"threshold": requested, "threshold_source": "request", "far": None}
    return {"threshold": decision.threshold, "threshold_source": decision.source, "far": decision.far}


SETTINGS_ENV = "FACENAS_SERVE_SETTINGS"  # the settings, as JSON, for the worker processes of `--workers N`
LOG_LEVEL_ENV = "FACENAS_SERVE_LOG_LEVEL"


def app_from_environment() -> FastAPI:
    """The app of one worker process of `facenas serve --workers N` (uvicorn's factory): the settings that the
    parent validated, passed as JSON in the environment, since uvicorn starts workers as fresh processes."""
    logging.basicConfig(level=getattr(logging, os.environ.get(LOG_LEVEL_ENV, "INFO").upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    data = os.environ.get(SETTINGS_ENV)
    if data is None:
        raise StartupError(f"{SETTINGS_ENV} is not set: worker processes are started by `facenas serve --workers N`")
    return create_app(ServeSettings.model_validate_json(data))


def create_app(settings: ServeSettings) -> FastAPI:
    state: dict[str, Any] = {}
    metrics = _Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        guard = Guard(settings)  # first: a keyless public service stops before the model loads
        engine = FaceEngine(settings)
        try:
            gallery = open_gallery(settings, engine)
        except BaseException:
            engine.close()
            raise
        state.update(engine=engine, gallery=gallery, guard=guard)
        metrics.gauges.update({
            "facenas_gallery_faces": ("faces in the gallery", lambda: gallery.size),
            "facenas_gallery_subjects": ("subjects in the gallery", gallery.subject_count),
            "facenas_batch_mean_faces": ("mean faces per model call (dynamic batching), of the answering worker",
                                         lambda: engine.batcher.faces / max(engine.batcher.calls, 1))})
        v, i = engine.verify_decision, engine.identify_decision
        log.info("serving %s: verify at %.3f (%s), identify at %.3f (%s); gallery %s with %d faces", settings.model,
                 v.threshold, v.source, i.threshold, i.source, settings.db, gallery.size)
        try:
            yield
        finally:
            metrics.gauges.clear()
            engine.close()
            gallery.close()
            state.clear()

    app = FastAPI(title="facenas face verification", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None,  # added below, as settings.docs says
                  description="Embeddings, 1:1 verification, and 1:N identification against an enrolled gallery, "
                              "served from a recognition ONNX model with insightface's contract.",
                  responses={400: {"model": S.ErrorBody}, 401: {"model": S.ErrorBody}, 403: {"model": S.ErrorBody},
                             413: {"model": S.ErrorBody}, 422: {"model": S.ErrorBody}, 429: {"model": S.ErrorBody}})
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    app.add_middleware(RequestContext, metrics=metrics, label=lambda scope: route_label(app, scope),
                       worker=uuid.uuid4().hex[:8])
    if settings.forwarded_allow_ips:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.proxy_networks)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        metrics.errors.labels(exc.code).inc()
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ServiceError):  # FastAPI wraps what the body's reading raised (BodyLimit)
            return await service_error(request, exc.__cause__)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        metrics.errors.labels(code).inc()
        return JSONResponse(error_body(code, str(exc.detail), request_id=REQUEST_ID.get()),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = sorted({".".join(str(p) for p in e.get("loc", ())[1:]) or "body" for e in exc.errors()})
        metrics.errors.labels("invalid_request").inc()
        return JSONResponse(error_body("invalid_request", f"invalid or missing: {', '.join(fields)}",
                                       request_id=REQUEST_ID.get()), status_code=422)

    # The dependencies are async although they never wait: FastAPI runs a plain `def` dependency in its thread
    # pool, a hop per request that costs more than their work
    async def guard(request: Request) -> None:
        g: Guard = state["guard"]
        who = g.identify(request_key(request.headers), request.client.host if request.client else None,
                         forwarded=carries_forwarded_headers(request.headers))
        g.spend(who)

    async def engine() -> FaceEngine:
        return state["engine"]

    async def gallery() -> Gallery:
        return state["gallery"]

    EngineDep = Annotated[FaceEngine, Depends(engine)]
    GalleryDep = Annotated[Gallery, Depends(gallery)]

    def face_of(data: bytes, points: Optional[np.ndarray], eng: FaceEngine, field: str) -> Face:
        """Decode, detect, align one upload (in a worker thread); every refusal names the upload's field, in the
        message and as `error.field`."""
        try:
            return eng.face(decode_upload(data, settings, field), points)
        except NoFaceFound as exc:  # the detector knows nothing of fields
            raise NoFaceFound(f"{field}: {exc.message}", field) from None
        except ServiceError as exc:  # decoding errors already say the field in words
            exc.field = exc.field or field
            raise

    async def embedded(uploads: list[tuple[UploadFile, Any, str]], eng: FaceEngine) -> tuple[list[Face], np.ndarray]:
        """The faces of (upload, landmarks, field) triples and their embeddings. The bytes are read on the event
        loop; one hop to the engine's decoding threads decodes, detects, aligns and hands the crops to the batcher
        (announced to it while decoding, so that a batch waits for them briefly rather than leave without them),
        and the loop waits for the embeddings: photos never hold up the loop."""
        work = []
        for upload, landmarks, field in uploads:
            data = await upload.read(settings.max_upload_bytes + 1)
            if len(data) > settings.max_upload_bytes:
                raise PayloadTooLarge(f"{field}: over the limit of {settings.max_upload_bytes} bytes", field)
            try:
                points = parse_landmarks(landmarks, field)
            except ServiceError as exc:
                exc.field = exc.field or field
                raise
            work.append((data, points, field))

        if all(points is None and crop_sized(data) for data, points, _ in work):
            # Aligned crops: decoding and embedding them takes about a millisecond, less than the two thread hops
            # (decoding thread, batcher) would cost; and several workers, not threads, use the other cores
            faces = [face_of(data, points, eng, field) for data, points, field in work]
            return faces, eng.batcher.embed_here(np.stack([f.crop for f in faces]))

        def decode_and_submit() -> tuple[list[Face], Future]:
            with eng.batcher.coming():
                faces = [face_of(data, points, eng, field) for data, points, field in work]
                return faces, eng.submit_faces(faces)

        faces, future = await asyncio.get_running_loop().run_in_executor(eng.decoders, decode_and_submit)
        return faces, await asyncio.wrap_future(future)

    def many(files: list[UploadFile], landmarks: Optional[str]) -> list[tuple[UploadFile, Any, str]]:
        if not files:
            raise ServiceError("send at least one image in 'files'", "files")
        if len(files) > MAX_FILES:
            raise ServiceError(f"at most {MAX_FILES} images per request", "files")
        points: list[Any] = [None] * len(files)
        if landmarks:
            try:
                parsed = json.loads(landmarks)
            except ValueError:
                raise ServiceError("landmarks must be a JSON list with one entry (five [x, y] pairs or null) per "
                                   "file", "landmarks") from None
            if not isinstance(parsed, list) or len(parsed) != len(files):
                raise ServiceError("landmarks must have one entry per file", "landmarks")
            points = parsed
        return [(f, p, f"files[{i}]") for i, (f, p) in enumerate(zip(files, points))]

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(guard)])

    @v1.post("/embed", response_model=S.EmbedResponse, tags=["faces"])
    async def embed(eng: EngineDep, files: list[UploadFile] = File(..., description="one or more images"),
                    landmarks: Optional[str] = Form(None, description="JSON: per file five [x, y] pairs or null")
                    ) -> Response:
        """Embeddings (L2-normalised) of the face in each image."""
        faces, vectors = await embedded(many(files, landmarks), eng)
        return answer(S.EmbedResponse(model=eng.model_id, embeddings=[
            S.Embedding(embedding=v.tolist(), **f.describe()) for f, v in zip(faces, vectors)]))

    @v1.post("/verify", response_model=S.VerifyResponse, tags=["faces"])
    async def verify(eng: EngineDep, image1: UploadFile = File(...), image2: UploadFile = File(...),
                     threshold: Optional[float] = Form(None, ge=-1.0, le=1.0,
                                                       description="cosine; default: the service's verification "
                                                                   "operating point"),
                     landmarks1: Optional[str] = Form(None), landmarks2: Optional[str] = Form(None)
                     ) -> Response:
        """Cosine similarity of two faces and the same-person decision at a threshold (stated in the answer)."""
        faces, (a, b) = await embedded([(image1, landmarks1, "image1"), (image2, landmarks2, "image2")], eng)
        similarity = float(np.dot(a, b))
        used = _decision(eng.verify_decision, threshold)
        return answer(S.VerifyResponse(similarity=similarity, same_person=similarity >= used["threshold"], **used,
                                       faces=[S.FaceInfo(**f.describe()) for f in faces]))

    @v1.post("/subjects", response_model=S.Subject, status_code=201, tags=["gallery"])
    def create_subject(body: S.SubjectCreate, gal: GalleryDep) -> S.Subject:
        return S.Subject(**gal.create_subject(body.id, body.name))

    @v1.get("/subjects", response_model=S.SubjectList, tags=["gallery"])
    def list_subjects(gal: GalleryDep) -> S.SubjectList:
        return S.SubjectList(subjects=[S.Subject(**s) for s in gal.subjects()])

    @v1.delete("/subjects/{subject_id}", status_code=204, tags=["gallery"])
    def delete_subject(subject_id: str, gal: GalleryDep) -> Response:
        gal.delete_subject(subject_id)
        return Response(status_code=204)

    @v1.post("/subjects/{subject_id}/faces", response_model=S.EnrolResponse, status_code=201, tags=["gallery"])
    async def enrol(subject_id: str, eng: EngineDep, gal: GalleryDep, files: list[UploadFile] = File(...),
                    landmarks: Optional[str] = Form(None)) -> Response:
        """Enrol one or more images of a subject (all or none)."""
        check_subject_id(subject_id)
        faces, embeddings = await embedded(many(files, landmarks), eng)
        ids = await run_in_threadpool(gal.enrol, subject_id, embeddings)
        return answer(S.EnrolResponse(subject=subject_id, face_ids=ids,
                                      faces=[S.FaceInfo(**f.describe()) for f in faces]), 201)

    @v1.post("/identify", response_model=S.IdentifyResponse, tags=["gallery"])
    async def identify(eng: EngineDep, gal: GalleryDep, image: UploadFile = File(...),
                       top_k: Optional[int] = Form(None, ge=1, le=100),
                       threshold: Optional[float] = Form(None, ge=-1.0, le=1.0, description="cosine; default: the "
                                                         "service's identification operating point"),
                       landmarks: Optional[str] = Form(None)) -> Response:
        """The enrolled subjects most similar to the face, and "unknown" below the identification threshold (stated
        in the answer)."""
        (face,), (query,) = await embedded([(image, landmarks, "image")], eng)
        matches = await run_in_threadpool(gal.identify, query, top_k or settings.top_k)
        used = _decision(eng.identify_decision, threshold)
        best = matches[0] if matches and matches[0].similarity >= used["threshold"] else None
        return answer(S.IdentifyResponse(subject=best.subject if best else None, unknown=best is None,
                                         candidates=[S.Candidate(subject=m.subject, similarity=m.similarity)
                                                     for m in matches], **used, face=S.FaceInfo(**face.describe())))

    @v1.get("/model", response_model=S.ModelInfo, tags=["service"])
    def model_info(eng: EngineDep) -> S.ModelInfo:
        card = None
        if eng.card is not None:
            from dataclasses import asdict

            card = asdict(eng.card)
        point = lambda d: S.OperatingPointInfo(threshold=d.threshold, source=d.source, far=d.far)  # noqa: E731
        return S.ModelInfo(model_sha256=eng.model_id, embedding_size=eng.embedding_size,
                           verify=point(eng.verify_decision), identify=point(eng.identify_decision), card=card)

    app.include_router(v1)

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"])
    def readyz() -> JSONResponse:
        ready = "engine" in state and "gallery" in state
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    def exposed(setting: str) -> Optional[list[Any]]:
        """The dependencies of a route that settings may open, guard or switch off (None)."""
        return None if setting == "off" else [Depends(guard)] if setting == "guarded" else []

    metrics_deps = exposed(settings.metrics)
    if metrics_deps is not None:
        @app.get("/metrics", tags=["service"], response_class=PlainTextResponse, dependencies=metrics_deps)
        def prometheus() -> PlainTextResponse:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    docs_deps = exposed(settings.docs)
    if docs_deps is not None:
        @app.get("/openapi.json", include_in_schema=False, dependencies=docs_deps)
        def openapi_schema() -> JSONResponse:
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False, dependencies=docs_deps)
        def swagger() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title + " - docs",
                                       oauth2_redirect_url="/docs/oauth2-redirect")

        @app.get("/docs/oauth2-redirect", include_in_schema=False, dependencies=docs_deps)
        def swagger_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

        @app.get("/redoc", include_in_schema=False, dependencies=docs_deps)
        def redoc() -> HTMLResponse:
            return get_redoc_html(openapi_url="/openapi.json", title=app.title + " - ReDoc")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("facenas.serve").joinpath("static/index.html").read_text())

    return app
