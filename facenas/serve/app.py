"""The face verification service: `create_app(settings)` builds the FastAPI app.

Model, detector and gallery are opened in the lifespan (not at import), so tests and workers pay for them once.
Every `/v1` route goes through the guard (API key or loopback, then the rate limit); one handler turns domain
errors into `{"error": {"code", "message"}}` with the right status, and anything unexpected into a bare 500 that
leaks nothing. Prometheus metrics count requests, latencies, errors and the gallery's size.
"""

# No `from __future__ import annotations` here: FastAPI must see the route annotations (the dependency aliases are
# local to create_app) as objects, not strings.
import errno
import json
import logging
import socket
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Optional

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facenas import __version__
from facenas.serve import schemas as S
from facenas.serve.engine import FaceEngine, decode_upload, parse_landmarks
from facenas.serve.errors import GalleryError, NoFaceFound, PayloadTooLarge, ServiceError, StartupError
from facenas.serve.gallery import Gallery, check_subject_id
from facenas.serve.security import Guard
from facenas.serve.settings import ServeSettings

log = logging.getLogger("facenas.serve")
MAX_FILES = 16


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("facenas_requests_total", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("facenas_request_seconds", "request latency", ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.errors = Counter("facenas_errors_total", "error responses", ["code"], registry=self.registry)
        self.faces = Gauge("facenas_gallery_faces", "faces in the gallery", registry=self.registry)
        self.subjects = Gauge("facenas_gallery_subjects", "subjects in the gallery", registry=self.registry)


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
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_error(send, PayloadTooLarge(f"request body over the limit of {self.limit} bytes"))
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise PayloadTooLarge(f"request body over the limit of {self.limit} bytes")
            return message

        await self.app(scope, counted, send)


async def _send_error(send: Send, exc: ServiceError) -> None:
    body = json.dumps(exc.body()).encode()
    await send({"type": "http.response.start", "status": exc.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _error(exc: ServiceError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if hasattr(exc, "retry_after") else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


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
    """Open the model and the gallery once before serving, so that a bad model, a missing threshold or another
    model's gallery stop `facenas serve` with one clear line instead of a failed start-up inside uvicorn."""
    open_gallery(settings, FaceEngine(settings)).close()


def create_app(settings: ServeSettings) -> FastAPI:
    state: dict[str, Any] = {}
    metrics = _Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = FaceEngine(settings)
        gallery = open_gallery(settings, engine)
        state.update(engine=engine, gallery=gallery, guard=Guard(settings))
        _gauges()
        log.info("serving %s (threshold %.3f from %s), gallery %s with %d faces", settings.model, engine.threshold,
                 engine.threshold_source, settings.db, gallery.size)
        try:
            yield
        finally:
            gallery.close()
            state.clear()

    def _gauges() -> None:
        gallery: Gallery = state["gallery"]
        metrics.faces.set(gallery.size)
        metrics.subjects.set(len(gallery.subjects()))

    app = FastAPI(title="facenas face verification", version=__version__, lifespan=lifespan,
                  description="Embeddings, 1:1 verification, and 1:N identification against an enrolled gallery, "
                              "served from a recognition ONNX model with insightface's contract.",
                  responses={400: {"model": S.ErrorBody}, 401: {"model": S.ErrorBody}, 403: {"model": S.ErrorBody},
                             413: {"model": S.ErrorBody}, 422: {"model": S.ErrorBody}, 429: {"model": S.ErrorBody}})
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        began = time.perf_counter()
        try:
            response = await call_next(request)
        except ServiceError as exc:  # raised while the body streamed in (BodyLimit)
            response = _error(exc)
        path = route_label(app, request.scope)
        metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - began)
        return response

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        metrics.errors.labels(exc.code).inc()
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = sorted({".".join(str(p) for p in e.get("loc", ())[1:]) or "body" for e in exc.errors()})
        metrics.errors.labels("invalid_request").inc()
        return JSONResponse({"error": {"code": "invalid_request", "message": f"invalid or missing: "
                                       f"{', '.join(fields)}"}}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        metrics.errors.labels("internal").inc()
        return JSONResponse({"error": {"code": "internal", "message": "internal error"}}, status_code=500)

    def guard(request: Request) -> None:
        g: Guard = state["guard"]
        who = g.identify(request.headers.get("x-api-key"), request.client.host if request.client else None)
        g.spend(who)

    def engine() -> FaceEngine:
        return state["engine"]

    def gallery() -> Gallery:
        return state["gallery"]

    EngineDep = Annotated[FaceEngine, Depends(engine)]
    GalleryDep = Annotated[Gallery, Depends(gallery)]

    def read_face(upload: UploadFile, landmarks: Any, eng: FaceEngine, field: str) -> Any:
        """The face of one upload; every refusal names the upload's field, in the message and as `error.field`."""
        data = upload.file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise PayloadTooLarge(f"{field}: over the limit of {settings.max_upload_bytes} bytes", field)
        try:
            rgb = decode_upload(data, settings, field)
            return eng.face(rgb, parse_landmarks(landmarks, field))
        except NoFaceFound as exc:  # the detector knows nothing of fields
            raise NoFaceFound(f"{field}: {exc.message}", field) from None
        except ServiceError as exc:  # decoding and landmark errors already say the field in words
            exc.field = exc.field or field
            raise

    def many(files: list[UploadFile], eng: FaceEngine, landmarks: Optional[str]) -> list[Any]:
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
        return [read_face(f, p, eng, f"files[{i}]") for i, (f, p) in enumerate(zip(files, points))]

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(guard)])

    @v1.post("/embed", response_model=S.EmbedResponse, tags=["faces"])
    def embed(eng: EngineDep, files: list[UploadFile] = File(..., description="one or more images"),
              landmarks: Optional[str] = Form(None, description="JSON: per file five [x, y] pairs or null")
              ) -> S.EmbedResponse:
        """Embeddings (L2-normalised) of the face in each image."""
        faces = many(files, eng, landmarks)
        vectors = eng.embed_faces(faces)
        return S.EmbedResponse(model=eng.model_id, embeddings=[
            S.Embedding(embedding=v.tolist(), **f.describe()) for f, v in zip(faces, vectors)])

    @v1.post("/verify", response_model=S.VerifyResponse, tags=["faces"])
    def verify(eng: EngineDep, image1: UploadFile = File(...), image2: UploadFile = File(...),
               threshold: Optional[float] = Form(None, ge=-1.0, le=1.0, description="cosine; default: the model's"),
               landmarks1: Optional[str] = Form(None), landmarks2: Optional[str] = Form(None)) -> S.VerifyResponse:
        """Cosine similarity of two faces and the same-person decision at a threshold."""
        faces = [read_face(image1, landmarks1, eng, "image1"), read_face(image2, landmarks2, eng, "image2")]
        a, b = eng.embed_faces(faces)
        similarity = float(np.dot(a, b))
        used = eng.threshold if threshold is None else threshold
        return S.VerifyResponse(similarity=similarity, same_person=similarity >= used, threshold=used,
                                threshold_source="request" if threshold is not None else eng.threshold_source,
                                faces=[S.FaceInfo(**f.describe()) for f in faces])

    @v1.post("/subjects", response_model=S.Subject, status_code=201, tags=["gallery"])
    def create_subject(body: S.SubjectCreate, gal: GalleryDep) -> S.Subject:
        created = S.Subject(**gal.create_subject(body.id, body.name))
        _gauges()
        return created

    @v1.get("/subjects", response_model=S.SubjectList, tags=["gallery"])
    def list_subjects(gal: GalleryDep) -> S.SubjectList:
        return S.SubjectList(subjects=[S.Subject(**s) for s in gal.subjects()])

    @v1.delete("/subjects/{subject_id}", status_code=204, tags=["gallery"])
    def delete_subject(subject_id: str, gal: GalleryDep) -> Response:
        gal.delete_subject(subject_id)
        _gauges()
        return Response(status_code=204)

    @v1.post("/subjects/{subject_id}/faces", response_model=S.EnrolResponse, status_code=201, tags=["gallery"])
    def enrol(subject_id: str, eng: EngineDep, gal: GalleryDep, files: list[UploadFile] = File(...),
              landmarks: Optional[str] = Form(None)) -> S.EnrolResponse:
        """Enrol one or more images of a subject (all or none)."""
        check_subject_id(subject_id)
        faces = many(files, eng, landmarks)
        ids = gal.enrol(subject_id, eng.embed_faces(faces))
        _gauges()
        return S.EnrolResponse(subject=subject_id, face_ids=ids, faces=[S.FaceInfo(**f.describe()) for f in faces])

    @v1.post("/identify", response_model=S.IdentifyResponse, tags=["gallery"])
    def identify(eng: EngineDep, gal: GalleryDep, image: UploadFile = File(...),
                 top_k: Optional[int] = Form(None, ge=1, le=100), threshold: Optional[float] = Form(None, ge=-1.0,
                                                                                                   le=1.0),
                 landmarks: Optional[str] = Form(None)) -> S.IdentifyResponse:
        """The enrolled subjects most similar to the face, and "unknown" below the threshold."""
        face = read_face(image, landmarks, eng, "image")
        matches = gal.identify(eng.embed_faces([face])[0], top_k or settings.top_k)
        used = eng.threshold if threshold is None else threshold
        best = matches[0] if matches and matches[0].similarity >= used else None
        return S.IdentifyResponse(subject=best.subject if best else None, unknown=best is None,
                                  candidates=[S.Candidate(subject=m.subject, similarity=m.similarity)
                                              for m in matches], threshold=used, face=S.FaceInfo(**face.describe()))

    @v1.get("/model", response_model=S.ModelInfo, tags=["service"])
    def model_info(eng: EngineDep) -> S.ModelInfo:
        card = None
        if eng.card is not None:
            from dataclasses import asdict

            card = asdict(eng.card)
        return S.ModelInfo(model_sha256=eng.model_id, embedding_size=eng.embedding_size, threshold=eng.threshold,
                           threshold_source=eng.threshold_source, card=card)

    app.include_router(v1)

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"])
    def readyz() -> JSONResponse:
        ready = "engine" in state and "gallery" in state
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("facenas.serve").joinpath("static/index.html").read_text())

    return app
