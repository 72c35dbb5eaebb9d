"""A loopback internet for download tests: the real hosts' names, answered by one HTTPS server on 127.0.0.1.

Every client tlkeras downloads through - Keras's `get_file` (urllib), tensorflow_hub's resolver (urllib with its own
SSL context), huggingface_hub (httpx2) and kagglehub (requests) - connects by host name. While a `Loopback` is
active, `socket.getaddrinfo` answers the hosts it serves with the server's address and refuses every other name (as
a machine without network does), and the server shows a certificate for those names signed by a test CA that
SSL_CERT_FILE / REQUESTS_CA_BUNDLE make trusted. So the URLs are the real ones, TLS is verified, redirects are
followed as they would be, and a wrong URL is a 404 here as it is there. Nothing reaches the real network.

The `serve_*` methods put files where each host serves them, in its formats and with the headers its client reads
(tests/conftest.py's `internet` fixture: a Loopback on a machine whose download caches are empty):

    internet.serve_keras_weights(url, legacy_weights(model))   # storage.googleapis.com, keras.applications
    internet.serve_hub_module(TFHUB_URL, module_archive(folder))  # tfhub.dev -> Kaggle -> Cloud Storage
    internet.serve_hf_repo("org/name", preset_folder)          # huggingface.co
    internet.serve_kaggle_model("owner/model/keras/variation/1", preset_folder)  # api.kaggle.com -> Cloud Storage
    internet.requests                                          # ["GET https://...", ...], in order
    with internet.offline(): ...                               # no name resolves: what was cached must do
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import socket
import ssl
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

HOSTS = (
    "storage.googleapis.com",  # keras.applications weights; Kaggle's and TF Hub's module archives
    "tfhub.dev",
    "www.kaggle.com",
    "kaggle.com",
    "api.kaggle.com",  # kagglehub's API (kagglesdk)
    "huggingface.co",
)
# tfhub.dev sends a handle to Kaggle Models, which serves the archive from Cloud Storage (both redirects followed).
TFHUB_URL = "https://tfhub.dev/google/imagenet/efficientnet_v2_imagenet1k_b0/feature_vector/2"
KAGGLE_MODELS = "https://www.kaggle.com/models/"
COMPRESSED = "?tf-hub-format=compressed"  # what tensorflow_hub appends to ask for the .tar.gz


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    cut_after: Optional[int] = None  # send the full Content-Length, then close the connection after this many bytes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, with_body: bool):
        owner: Loopback = self.server.owner  # type: ignore[attr-defined]
        if owner._offline:  # a connection a client kept open from before: the network is gone for it too
            self._hang_up()
            return
        host = (self.headers.get("Host") or "").split(":")[0]
        url = f"https://{host}{self.path}"
        length = int(self.headers.get("Content-Length") or 0)
        request_body = self.rfile.read(length) if length else b""
        owner.requests.append(f"{self.command} {url}")
        reply = owner.route(self.command, url, request_body) or Reply(404, b"Not Found", {"Content-Type": "text/plain"})
        self.send_response(reply.status)
        for key, value in {"Content-Length": str(len(reply.body)), **reply.headers}.items():
            self.send_header(key, value)
        if reply.cut_after is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if not with_body:
            return
        if reply.cut_after is None:
            self.wfile.write(reply.body)
            return
        self.wfile.write(reply.body[: reply.cut_after])
        self.wfile.flush()
        self._hang_up()

    def _hang_up(self):
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self):
        self._reply(True)

    def do_POST(self):
        self._reply(True)

    def do_HEAD(self):
        self._reply(False)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


_AUTHORITY = None


def _authority():
    """One test CA per process, its certificate file, and a server certificate of it for every host (trustme)."""
    global _AUTHORITY
    if _AUTHORITY is None:
        import trustme

        ca = trustme.CA()
        server_cert = ca.issue_cert(*HOSTS, "localhost", "127.0.0.1")
        ca_file = os.path.join(tempfile.mkdtemp(prefix="loopback-ca-"), "ca.pem")
        ca.cert_pem.write_to_path(ca_file)
        _AUTHORITY = (server_cert, ca_file)
    return _AUTHORITY


class Loopback:
    """The loopback internet: a context manager that runs the server and answers host names while it is open."""

    def __init__(self, monkeypatch):
        self._monkeypatch = monkeypatch
        self._routes: dict[tuple[str, str], Callable[[bytes], Reply]] = {}
        self._prefixes: list[tuple[str, Callable]] = []
        self._keras_files: dict[str, str] = {}  # weights file name -> sha256 of the bytes served
        self.requests: list[str] = []
        self._offline = False

    # === Routes ===

    def serve(self, url: str, body: bytes, *, status: int = 200, headers: Optional[dict] = None,
              cut_after: Optional[int] = None) -> None:
        """GET and HEAD of `url` (with the query the client sends, if the host needs one) answer `body`."""
        reply = Reply(status, body, {"Content-Type": "application/octet-stream", **(headers or {})}, cut_after)
        for method in ("GET", "HEAD"):
            self._routes[(method, url)] = lambda _body, reply=reply: reply

    def redirect(self, url: str, to: str, status: int = 302) -> None:
        for method in ("GET", "HEAD"):
            self._routes[(method, url)] = lambda _body, to=to: Reply(status, b"", {"Location": to})

    def handle(self, method: str, url: str, answer: Callable[[bytes], Reply]) -> None:
        """`answer(request_body) -> Reply` for requests that need more than a fixed body (an API)."""
        self._routes[(method, url)] = answer

    def handle_prefix(self, prefix: str, answer: Callable[[str, str, bytes], Optional[Reply]]) -> None:
        """`answer(method, url, body)` for every URL under `prefix` that no exact route takes (a host's own 404s)."""
        self._prefixes.append((prefix, answer))

    def route(self, method: str, url: str, body: bytes) -> Optional[Reply]:
        answer = self._routes.get((method, url))
        if answer is None and "?" in url:  # a query the route does not name: the path decides
            answer = self._routes.get((method, url.split("?", 1)[0]))
        if answer is not None:
            return answer(body)
        for prefix, by_prefix in self._prefixes:
            if url.startswith(prefix):
                return by_prefix(method, url, body)
        return None

    # === What each host serves, as it serves it ===

    def serve_keras_weights(self, url: str, data: bytes, **options) -> None:
        """A keras.applications weights file at its storage.googleapis.com URL. Keras checks a download against the
        real file's hash; these files are made by the tests, so for them (only) it is checked against what was
        served, still byte for byte."""
        self._keras_files[url.rsplit("/", 1)[-1]] = hashlib.sha256(data).hexdigest()
        self.serve(url, data, **options)

    def serve_hub_module(self, handle_url: str, archive: bytes, **options) -> str:
        """A compressed TF Hub module (`module_archive`) at a tfhub.dev or Kaggle Models URL, as those hosts serve
        it now: tfhub.dev redirects to Kaggle Models, which redirects to the archive on Cloud Storage. Returns the
        archive's URL."""
        path = handle_url.split("://", 1)[1].split("/", 1)[1]
        digest = hashlib.sha1(path.encode()).hexdigest()[:8]
        bucket = f"https://storage.googleapis.com/kaggle-models-data/{digest}.tar.gz"
        kaggle = handle_url
        if handle_url.startswith("https://tfhub.dev/"):
            kaggle = KAGGLE_MODELS + "google/tfhub/tensorFlow2/" + path.replace("/", "-")
            self.redirect(handle_url + COMPRESSED, kaggle + COMPRESSED)
        self.redirect(kaggle + COMPRESSED, bucket)
        self.serve(bucket, archive, headers={"Content-Type": "application/x-tar"}, **options)
        return bucket

    def serve_hf_repo(self, repo: str, folder: str) -> None:
        """The files of `folder` as the Hugging Face Hub serves a model repo's files: HEAD and GET on
        /{repo}/resolve/main/{file} with the commit and ETag headers huggingface_hub reads; any other file of the
        repo is the Hub's 404 EntryNotFound (which KerasHub takes for an optional file that is not there)."""
        commit = hashlib.sha1(repo.encode()).hexdigest()
        base = f"https://huggingface.co/{repo}/resolve/main/"
        for name, data in _files(folder).items():
            self.serve(base + name, data, headers={"X-Repo-Commit": commit,
                                                   "ETag": f'"{hashlib.sha256(data).hexdigest()}"'})
        self.handle_prefix(base, lambda method, url, body: Reply(
            404, b"Entry not found", {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                                      "X-Repo-Commit": commit}))

    def serve_kaggle_model(self, handle: str, folder: str) -> None:
        """The files of `folder` as Kaggle Models serves a model instance version ("owner/model/framework/variation/
        version") to kagglehub: its API (POST api.kaggle.com/v1/models.ModelApiService/...) answers a file's
        download with a redirect to Cloud Storage, which sends the bytes with their MD5 in x-goog-hash (kagglehub
        checks it); a file the version does not hold is the API's 404."""
        owner, model, framework, variation, version = handle.split("/")
        files = _files(folder)
        bucket = f"https://storage.googleapis.com/kaggle-models-data/{owner}-{model}/{framework}/{variation}/{version}/"
        for name, data in files.items():
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            self.serve(bucket + name, data, headers={"x-goog-hash": f"crc32c=AAAAAA==,md5={md5}"})
        instance = {"ownerSlug": owner, "modelSlug": model, "framework": f"MODEL_FRAMEWORK_{framework.upper()}",
                    "instanceSlug": variation}
        not_found = Reply(404, b'{"code": 404, "message": "Not found"}', {"Content-Type": "application/json"})

        def download(body: bytes) -> Reply:
            asked = json.loads(body)
            path = asked.pop("path", None)
            if asked != {**instance, "versionNumber": int(version)} or path not in files:
                return not_found
            return Reply(302, b"", {"Location": bucket + path})

        def latest(body: bytes) -> Reply:
            if json.loads(body) != instance:
                return not_found
            return Reply(200, json.dumps({**instance, "versionNumber": int(version)}).encode(),
                         {"Content-Type": "application/json"})

        api = "https://api.kaggle.com/v1/models.ModelApiService/"
        self.handle("POST", api + "DownloadModelInstanceVersion", download)
        self.handle("POST", api + "GetModelInstance", latest)

    # === The network ===

    @contextlib.contextmanager
    def offline(self):
        """No host name resolves (a machine without network) inside the block; connections that clients keep open
        are dropped, as a new process would have none."""
        self._offline = True
        _drop_kept_connections()
        try:
            yield self
        finally:
            self._offline = False

    def __enter__(self):
        server_cert, ca_file = _authority()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_cert.configure_cert(server_context)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self._server.socket = server_context.wrap_socket(self._server.socket, server_side=True)
        port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

        real_getaddrinfo = socket.getaddrinfo

        def getaddrinfo(host, port_asked, *args, **kwargs):
            name = host.decode() if isinstance(host, bytes) else host
            if name in (None, "localhost", "127.0.0.1", "::1"):
                return real_getaddrinfo(host, port_asked, *args, **kwargs)
            if name in HOSTS and not self._offline:
                return real_getaddrinfo("127.0.0.1", port, *args, **kwargs)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        mp = self._monkeypatch
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        mp.setenv("SSL_CERT_FILE", ca_file)  # urllib's default context, httpx2
        mp.setenv("REQUESTS_CA_BUNDLE", ca_file)  # requests (kagglehub)
        _trust_in_open_contexts(ca_file)
        self._check_keras_files(mp)
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        _drop_kept_connections()

    def _check_keras_files(self, monkeypatch) -> None:
        from keras.src.utils import file_utils

        real = file_utils.validate_file

        def validate_file(fpath, file_hash, algorithm="auto", chunk_size=65535):
            served = self._keras_files.get(os.path.basename(fpath))
            if served is not None:
                return file_utils.hash_file(fpath, "sha256", chunk_size) == served
            return real(fpath, file_hash, algorithm, chunk_size)

        monkeypatch.setattr(file_utils, "validate_file", validate_file)


def _files(folder: str) -> dict[str, bytes]:
    files = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            files[name] = f.read()
    return files


def _trust_in_open_contexts(ca_file: str) -> None:
    """SSL contexts made before the test (tensorflow_hub's resolvers make theirs when it is imported) trust the test
    CA too; huggingface_hub's client is made again (under SSL_CERT_FILE) at its next request."""
    with contextlib.suppress(ImportError):
        from tensorflow_hub import registry

        for impl in getattr(registry.resolver, "_impls", []):
            context = getattr(impl, "_context", None)
            if isinstance(context, ssl.SSLContext):
                context.load_verify_locations(ca_file)
    _drop_kept_connections()


def _drop_kept_connections() -> None:
    """huggingface_hub keeps one HTTP client (and its pool of open connections) per process."""
    with contextlib.suppress(ImportError):
        from huggingface_hub.utils import _http

        _http.close_session()


# === Files in the hosts' formats ===


def legacy_weights(model) -> bytes:
    """`model`'s weights as keras.applications' files hold them: Keras 2's HDF5 layout (layer_names, weight_names)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return buffer.getvalue()


def module_archive(folder: str) -> bytes:
    """A SavedModel folder as the hosts serve a module: a .tar.gz of its files at the archive's root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for entry in sorted(os.listdir(folder)):
            tar.add(os.path.join(folder, entry), arcname=entry)
    return buffer.getvalue()
