"""``serve``: a local demo page and an HTTP API over one loaded model (FastAPI and uvicorn: the ``[serve]`` extra).

``POST /predict`` (a multipart upload, field ``file``) answers ``[{"label": ..., "score": ...}]``, best first;
``POST /explain`` adds the Grad-CAM overlay of the top class as a PNG data URL; ``GET /healthz`` says what is
served; ``GET /`` is the page. Uploads are bounded before they are read (``MAX_REQUEST_BYTES``) and decoded with
the CLI's image limits; at most ``MAX_IN_FLIGHT`` requests are taken at once; every error is a 4xx (503 when busy)
with a one-line JSON body ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from typing import Any

import torch
from torch import nn

from alexnet_cifar10.checkpoint import require
from alexnet_cifar10.errors import ConfigError, DataError
from alexnet_cifar10.evaluation import decode_image_bytes, top_classes

INSTALL = "'alexnet-cifar10[serve]'"
for _module in ("fastapi", "uvicorn", "python_multipart", "captum"):
    require(_module, INSTALL)

import uvicorn  # noqa: E402
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

MAX_REQUEST_BYTES = 8 * 1024 * 1024  # the largest request body read; an upload's image limits apply after it
MAX_IN_FLIGHT = 64  # requests taken at once; the next ones get 503 until some finish
MAX_BATCH = 64  # waiting images classified in one forward pass
MAX_TOP_K = 10
MAX_DECODING = 4  # uploads decoded at once: a 4096x4096 image takes about 130 MB while it is decoded
BODY_TIMEOUT = 30  # seconds a client may take between two parts of its request body (408 after it)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("alexnet_cifar10.serve")


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


class Classifier:
    """The model, loaded once. Images of concurrent requests wait in one queue and are classified together, one
    batch at a time, on one thread (the model's own threads work inside each batch)."""

    def __init__(self, model: nn.Module, device: torch.device, tta: bool, tta_shift: int,
                 layer: str | None = None) -> None:
        from alexnet_cifar10.explain import GradCam

        self.model, self.device, self.tta, self.tta_shift = model, device, tta, tta_shift
        self.cam = GradCam(model, layer, tta=tta, tta_shift=tta_shift)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue()
        self.batches = 0  # forward passes run, for /healthz and the tests

    async def classify(self, x: torch.Tensor, k: int) -> list[tuple[str, float]]:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((x, future))
        return (await future)[:k]

    async def explain(self, x: torch.Tensor) -> tuple[list[tuple[str, float]], torch.Tensor]:
        """The top 3 classes and the Grad-CAM map of the first (one image at a time: it needs a backward pass)."""
        def run() -> tuple[list[tuple[str, float]], torch.Tensor]:
            explanation = self.cam.explain(x[None].to(self.device), k=3, mapped=1)[0]
            return explanation.top, explanation.heatmaps[0]

        return await asyncio.get_running_loop().run_in_executor(self.executor, run)

    async def run(self) -> None:
        """Take what waits (at most MAX_BATCH images) and classify it in one pass, until cancelled. A batch that
        fails (out of memory, a broken model) fails its requests with a logged error; the loop goes on."""
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            while len(waiting) < MAX_BATCH and not self.queue.empty():
                waiting.append(self.queue.get_nowait())
            try:
                batch = torch.stack([x for x, _ in waiting]).to(self.device)
                tops: list = await loop.run_in_executor(self.executor, partial(
                    top_classes, self.model, batch, MAX_TOP_K, tta=self.tta, tta_shift=self.tta_shift))
            except Exception as e:  # noqa: BLE001 - handed to each waiting request, which answers 500 in one line
                log.exception("classifying a batch of %d images failed", len(waiting))
                tops = [ModelFailed(f"the model failed on this request's batch: {str(e)[:160]}")] * len(waiting)
            self.batches += 1
            for (_, future), top in zip(waiting, tops, strict=True):
                if future.done():  # its client went away
                    continue
                if isinstance(top, Exception):
                    future.set_exception(top)
                else:
                    future.set_result(top)


class ModelFailed(Exception):
    """The model raised while it classified or explained a request's image (answered as 500, logged)."""


class Limits:
    """ASGI middleware: at most ``max_in_flight`` uploads (POST requests) at once (503 past it; the page and
    /healthz always answer), request bodies of at most ``max_bytes`` (413), counted as they arrive, so a body
    without Content-Length is bounded too, and at most BODY_TIMEOUT seconds between two parts of a body (408)."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int, max_in_flight: int) -> None:
        self.app, self.max_bytes, self.max_in_flight = app, max_bytes, max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        refusal = None
        counted = scope["method"] == "POST"
        if counted and self.in_flight >= self.max_in_flight:
            refusal = error_response(503, f"busy: {self.in_flight} requests in progress; try again shortly")
        elif length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            refusal = error_response(413, f"request body over {self.max_bytes // 2**20} MiB") if length.isdigit() \
                else error_response(400, "Content-Length is not a number")
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        received = 0

        async def bounded_receive() -> dict[str, Any]:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), BODY_TIMEOUT)
            except TimeoutError:
                raise HTTPException(408, f"no part of the request body came for {BODY_TIMEOUT} s") from None
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, f"request body over {self.max_bytes // 2**20} MiB")
            return message

        self.in_flight += counted
        try:
            await self.app(scope, bounded_receive, send)
        finally:
            self.in_flight -= counted


def scored(top: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """(class, probability) pairs as the API answers them: [{"label": ..., "score": ...}], best first."""
    return [{"label": label, "score": score} for label, score in top]


def png_data_url(pixels: Any) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def create_app(model: nn.Module, *, weights: str, model_name: str, device: torch.device | str = "cpu",
               tta: bool = False, tta_shift: int = 0, layer: str | None = None, max_bytes: int = MAX_REQUEST_BYTES,
               max_in_flight: int = MAX_IN_FLIGHT) -> FastAPI:
    """The ASGI app serving ``model`` (``load_model``'s); /healthz names its ``weights`` and network."""
    from alexnet_cifar10.reporting import overlay

    classifier = Classifier(model, torch.device(device), tta, tta_shift, layer)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        worker = asyncio.create_task(classifier.run())
        yield
        worker.cancel()
        classifier.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="alexnet-cifar10", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.add_middleware(Limits, max_bytes=max_bytes, max_in_flight=max_in_flight)
    app.state.classifier = classifier

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, e.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query"))
        return error_response(422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(ModelFailed)
    async def model_failed(_request: Request, e: ModelFailed) -> JSONResponse:
        return error_response(500, str(e))

    decoding = asyncio.Semaphore(MAX_DECODING)

    async def image_of(upload: UploadFile) -> torch.Tensor:
        data = await upload.read()
        if not data:
            raise HTTPException(400, "the upload is empty")
        try:
            async with decoding:
                return (await run_in_threadpool(decode_image_bytes, data, "the uploaded file"))[0]
        except DataError as e:
            raise HTTPException(400, str(e)) from None

    @app.post("/predict")
    async def predict(file: UploadFile = File(...),  # noqa: B008 - FastAPI's way of declaring an upload
                      top_k: int = Query(3, ge=1, le=MAX_TOP_K)) -> list[dict[str, Any]]:
        return scored(await classifier.classify(await image_of(file), top_k))

    @app.post("/explain")
    async def explain(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        x = await image_of(file)
        try:
            top, heatmap = await classifier.explain(x)
        except RuntimeError as e:  # out of memory, a broken model: logged, answered in one line
            log.exception("Grad-CAM failed")
            raise ModelFailed(f"the model failed on this image: {str(e)[:160]}") from None
        return {"top": scored(top), "gradcam": png_data_url(overlay(x, heatmap)), "layer": classifier.cam.layer}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "weights": weights, "model": model_name,
                "classes": list(getattr(model, "classes", ())), "tta": tta, "tta_shift": tta_shift,
                "batches": classifier.batches}

    page = resources.files("alexnet_cifar10").joinpath("static/index.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: any free port), or one line saying why not."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:  # in use, not an address of this machine, no permission for a low port
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(app: FastAPI, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C or SIGTERM."""
    config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=5, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
