"""`serve` over real HTTP on 127.0.0.1: answers as `predict` does, hostile uploads are one-line 4xx JSON errors,
concurrent requests are batched without being lost or mixed up, and the server stops cleanly."""

from __future__ import annotations

import http.client
import io
import json
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import Served, jpeg_of_many_scans, png, run_cli, served
from PIL import Image

from alexnet_cifar10 import load_model
from alexnet_cifar10.data.images import MAX_IMAGE_SIDE
from alexnet_cifar10.evaluation import predict


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    with served("--weights", "seed") as s:
        yield s


def request(url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def multipart(data: bytes, field: str = "file", filename: str = "image.png") -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def upload(url: str, data: bytes, path: str = "/predict", **form: str) -> tuple[int, object]:
    body, headers = multipart(data, **form)
    status, _, answer = request(url, "POST", path, body, headers)
    return status, json.loads(answer)


def image_bytes(seed: int) -> bytes:
    """A distinct 32x32 image per seed (stripes and colours vary), so that answers cannot be swapped unnoticed."""
    image = Image.new("RGB", (32, 32), ((37 * seed) % 256, (91 * seed) % 256, (53 * seed) % 256))
    for x in range(0, 32, 2 + seed % 5):
        for y in range(32):
            image.putpixel((x, y), ((17 * seed) % 256, 255 - (29 * seed) % 256, (61 * seed) % 256))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_predict_answers_as_the_predict_command_does(server: Served, tmp_path: Path) -> None:
    status, headers, body = request(server.url, "GET", "/healthz")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["weights"] == "seed"
    assert health["model"] == "alexnet_narrow_bn" and len(health["classes"]) == 10
    model = load_model("seed")
    for seed in (1, 2):
        (tmp_path / f"{seed}.png").write_bytes(image_bytes(seed))
        [expected] = predict(model, [tmp_path / f"{seed}.png"], top_k=5)
        status, answer = upload(server.url, image_bytes(seed), path="/predict?top_k=5")
        assert status == 200
        assert [a["label"] for a in answer] == [label for label, _ in expected.top]
        assert [a["score"] for a in answer] == pytest.approx([p for _, p in expected.top], abs=1e-5)
    status, answer = upload(server.url, png((640, 480)))  # any size, resized to 32x32 as predict does
    assert status == 200 and len(answer) == 3 and answer[0]["score"] >= answer[1]["score"] >= answer[2]["score"]


def test_explain_answers_the_top_classes_and_the_gradcam_of_the_first(server: Served) -> None:
    """The overlay is the map of the top class: the one GradCam computes here for it, not another class's."""
    import base64

    import numpy as np
    import torch

    from alexnet_cifar10.evaluation import decode_image_bytes
    from alexnet_cifar10.explain import GradCam
    from alexnet_cifar10.reporting import overlay

    status, answer = upload(server.url, image_bytes(3), path="/explain")
    assert status == 200 and len(answer["top"]) == 3 and answer["layer"] == "features.15"
    _, predicted = upload(server.url, image_bytes(3))
    assert [t["label"] for t in answer["top"]] == [p["label"] for p in predicted]
    header, _, data = answer["gradcam"].partition(",")
    assert header == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        served_overlay = np.asarray(image.convert("RGB")).astype(int)
    model = load_model("seed")
    x = decode_image_bytes(image_bytes(3), "x")[0]
    cam = GradCam(model)
    for rank, label in enumerate(t["label"] for t in answer["top"]):
        heatmap = cam.maps(x[None], torch.tensor([model.classes.index(label)]))[0]
        difference = np.abs(overlay(x, heatmap).astype(int) - served_overlay).mean()
        assert (difference < 2) == (rank == 0), (rank, difference)  # the first class's map, and only it


HOSTILE = [  # what a client may upload, and the status and words of the one-line error it gets
    ("eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nshowpage\n", 400, "not a readable PNG or JPEG"),
    ("bmp", None, 400, "not a readable PNG or JPEG"),
    ("text", b"hello", 400, "not a readable PNG or JPEG"),
    ("truncated", png((32, 32))[:60], 400, "not a readable PNG or JPEG"),
    ("wide", png((MAX_IMAGE_SIDE + 1, 2)), 400, f"at most {MAX_IMAGE_SIDE} pixels a side"),
    ("scans", jpeg_of_many_scans(5000), 400, "decoding is limited to 64 scans"),
    ("empty", b"", 400, "the upload is empty"),
]


@pytest.mark.parametrize(("name", "data", "status", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_uploads_are_one_line_json_errors(server: Served, name: str, data: bytes | None, status: int,
                                                  message: str) -> None:
    if data is None:
        out = io.BytesIO()
        Image.new("RGB", (32, 32)).save(out, format="BMP")
        data = out.getvalue()
    for path in ("/predict", "/explain"):
        got, answer = upload(server.url, data, path=path)
        assert got == status and list(answer) == ["error"] and message in answer["error"], (path, answer)
        assert "\n" not in answer["error"]


def test_malformed_requests_are_one_line_json_errors(server: Served) -> None:
    big = b"\0" * (8 * 1024 * 1024 + 1)
    body, headers = multipart(png((32, 32)))
    cases = [  # (method, path, body, headers) -> status, words
        (("POST", "/predict", body, {**headers, "Content-Type": "text/plain"}), 422, "file: Field required"),
        (("POST", "/predict", multipart(png((32, 32)), field="image")[0], headers), 400, ""),  # another boundary
        (("POST", "/predict", *multipart(png((32, 32)), field="image")), 422, "file: Field required"),
        (("POST", "/predict?top_k=0", body, headers), 422, "top_k"),
        (("POST", "/predict?top_k=lots", body, headers), 422, "top_k"),
        (("POST", "/predict", multipart(big)[0], multipart(big)[1]), 413, "request body over 8 MiB"),
        (("GET", "/predict", None, {}), 405, "Method Not Allowed"),
        (("GET", "/nothing-here", None, {}), 404, "Not Found"),
    ]
    for (method, path, data, head), status, words in cases:
        got, _, answer = request(server.url, method, path, data, head)
        error = json.loads(answer)
        assert got == status and list(error) == ["error"] and words in error["error"], (path, got, error)
    # a body without Content-Length is counted as it arrives
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    chunked, chunked_headers = multipart(big)
    connection.request("POST", "/predict", body=iter([chunked[i:i + 65536] for i in range(0, len(chunked), 65536)]),
                       headers=chunked_headers, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read()) == {"error": "request body over 8 MiB"}
    connection.close()


def test_fifty_concurrent_requests_are_batched_and_each_gets_its_own_answer(server: Served) -> None:
    singles = {seed: upload(server.url, image_bytes(seed))[1] for seed in range(50)}
    before = json.loads(request(server.url, "GET", "/healthz")[2])["batches"]
    start = threading.Barrier(50)

    def one(seed: int) -> tuple[int, object]:
        body, headers = multipart(image_bytes(seed))
        start.wait()
        status, _, answer = request(server.url, "POST", "/predict", body, headers)
        return status, json.loads(answer)

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(one, range(50)))
    after = json.loads(request(server.url, "GET", "/healthz")[2])["batches"]
    for seed, (status, answer) in enumerate(answers):
        assert status == 200
        assert [a["label"] for a in answer] == [a["label"] for a in singles[seed]]
        assert [a["score"] for a in answer] == pytest.approx([a["score"] for a in singles[seed]], abs=1e-5)
    assert len({json.dumps(singles[s]) for s in singles}) > 10  # the images do get different answers
    assert after - before < 50, (before, after)  # some requests shared a forward pass


def test_the_page_is_served(server: Served) -> None:
    status, headers, body = request(server.url, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'id="files"' in body and b"/explain" in body


@contextmanager
def in_process(app: object) -> Iterator[int]:
    """``app`` behind a real uvicorn on 127.0.0.1, in a thread of this process; yields the port."""
    import uvicorn

    from alexnet_cifar10.serve import listen

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def half_sent(port: int, body: bytes, headers: dict[str, str]) -> socket.socket:
    """A POST /predict whose headers and first 10 body bytes are sent, the rest held back."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {headers['Content-Type']}\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
    return s


def seed_app(**limits: int) -> object:
    from alexnet_cifar10.serve import create_app

    return create_app(load_model("seed"), weights="seed", model_name="alexnet_narrow_bn", **limits)


def test_uploads_past_the_cap_get_503_and_the_rest_go_on() -> None:
    """The concurrency cap, with an app made in this process (the cap is not a flag)."""
    body, headers = multipart(png((32, 32)))
    with in_process(seed_app(max_in_flight=2)) as port:
        url = f"http://127.0.0.1:{port}/"
        slow = [half_sent(port, body, headers) for _ in range(2)]
        try:
            time.sleep(0.5)
            status, _, answer = request(url, "POST", "/predict", body, headers)
            assert status == 503 and json.loads(answer) == {
                "error": "busy: 2 requests in progress; try again shortly"}
            assert request(url, "GET", "/healthz")[0] == 200  # the page and the health check still answer
            for s in slow:
                s.sendall(body[10:])
                assert s.recv(65536).startswith(b"HTTP/1.1 200")
            assert request(url, "POST", "/predict", body, headers)[0] == 200
        finally:
            for s in slow:
                s.close()


def test_a_body_that_stops_coming_is_answered_408(monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet_cifar10 import serve

    monkeypatch.setattr(serve, "BODY_TIMEOUT", 1)
    body, headers = multipart(png((32, 32)))
    with in_process(seed_app()) as port:
        s = half_sent(port, body, headers)
        try:
            s.settimeout(30)
            response = http.client.HTTPResponse(s)
            response.begin()
            status, answer = response.status, json.loads(response.read())
        finally:
            s.close()
    assert status == 408 and answer == {"error": "no part of the request body came for 1 s"}


def test_a_model_that_fails_answers_500_in_one_line_and_the_server_goes_on() -> None:
    """A batch or a Grad-CAM that raises (here: on an all-white image) fails its own request only."""
    model = load_model("seed")

    def fail_on_white(_module: object, inputs: tuple) -> None:  # a normalised white image is about 2 everywhere
        if bool((inputs[0] > 1.9).all()):
            raise RuntimeError("cannot allocate memory")

    model.features[0].register_forward_pre_hook(fail_on_white)
    from alexnet_cifar10.serve import create_app

    app = create_app(model, weights="seed", model_name="alexnet_narrow_bn")
    with in_process(app) as port:
        url = f"http://127.0.0.1:{port}/"
        for path in ("/predict", "/explain"):
            status, answer = upload(url, png((32, 32), (255, 255, 255)), path=path)
            assert status == 500 and list(answer) == ["error"] and "cannot allocate memory" in answer["error"]
            status, answer = upload(url, png((32, 32), (20, 90, 200)), path=path)
            assert status == 200, answer


@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGTERM, 143, "terminated"),
                                                   (signal.SIGINT, 130, "interrupted")])
def test_a_signal_stops_the_server_in_one_line(sig: signal.Signals, code: int, word: str) -> None:
    with served("--weights", "seed") as s:
        assert request(s.url, "GET", "/healthz")[0] == 200
        s.process.send_signal(sig)
        assert s.process.wait(timeout=60) == code
    stderr = "".join(s.stderr)
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith(f"alexnet-cifar10: {word}")


def test_a_port_in_use_and_a_bad_host_are_one_line() -> None:
    held = socket.create_server(("127.0.0.1", 0))
    port = held.getsockname()[1]
    try:
        result = run_cli("serve", "--weights", "seed", "--port", str(port), "--device", "cpu")
        assert result.returncode == 1
        assert result.stderr.strip().startswith(f"alexnet-cifar10: error: cannot listen on 127.0.0.1:{port}: ")
    finally:
        held.close()
    for flags, words in ((["--host", "no.such.host.invalid"], "cannot listen on no.such.host.invalid:8000"),
                         (["--port", "70000"], "--port")):
        result = run_cli("serve", "--weights", "seed", *flags, "--device", "cpu")
        assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1 and words in result.stderr


def test_serve_binds_loopback_unless_told(server: Served) -> None:
    assert urlsplit(server.url).hostname == "127.0.0.1" and "this machine only" in server.banner
    with served("--weights", "seed", "--host", "0.0.0.0") as anywhere:
        assert "anyone who can reach this address can use it" in anywhere.banner
        assert request(f"http://127.0.0.1:{urlsplit(anywhere.url).port}/", "GET", "/healthz")[0] == 200
