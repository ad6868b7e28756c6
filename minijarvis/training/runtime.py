"""What a training run needs around the model: processes, schedule, resumable state, logs.

* :func:`dist_info` / :func:`print0`: one helper for (is_distributed, rank, local_rank,
  world_size, device), nanochat-style; torchrun sets the environment, NCCL on CUDA, gloo on CPU.
* :func:`set_cpu_threads` / :func:`keep_freed_memory`: CPU runs (threads; glibc's allocator).
* :func:`cosine_lr`: LLaVA's cosine schedule with linear warm-up, as a pure function.
* :func:`save_trainer_state` / :func:`load_trainer_state`: optimizer, scheduler, step, data
  position and every RNG, as safetensors + JSON (no pickle), so a resumed run is exact.
* :func:`write_dir_atomically` / :func:`recover_checkpoint`: a checkpoint directory appears
  whole or not at all, and what a crash at any point of the write leaves is cleaned up.
* :func:`plot_log`: the loss curves of a JSONL log as a PNG.
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import sys
import random
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from minijarvis.errors import InputError, brief, read_json


@dataclass(frozen=True)
class DistInfo:
    distributed: bool
    rank: int
    local_rank: int
    world_size: int
    device: torch.device


def dist_info() -> DistInfo:
    """Initialise torch.distributed when launched by torchrun; describe this process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    return DistInfo(world > 1, rank, local, world, device)


def set_cpu_threads(model: torch.nn.Module, device: torch.device, threads: int = 0) -> None:
    """``threads`` > 0: use that many. 0 (auto): one thread for a small model on the CPU.

    A tiny model's matrices are too small to gain from intra-op threads, and OpenMP threads
    that spin-wait collapse when the cores are busy with anything else (measured here: 16
    tiny steps took 3.3 s with one thread and 111 s with two on a loaded 2-core machine).
    An explicit OMP_NUM_THREADS is respected. On the CPU it also calls :func:`keep_freed_memory`.
    """
    if device.type == "cpu":
        keep_freed_memory()
    if threads > 0:
        torch.set_num_threads(threads)
    elif (device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ
          and sum(p.numel() for p in model.parameters()) < 50_000_000):
        torch.set_num_threads(1)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameters (malloc.h)


def keep_freed_memory() -> bool:
    """CPU training on glibc: keep freed memory in the process instead of returning it to the OS.

    glibc hands out blocks above a moving threshold (128 KiB up to 32 MiB) with mmap and gives
    them back on free, and trims the heap's free top; the next step's tensors then page-fault
    their memory in again, zero-filled by the kernel. A step that frees and reallocates tens of
    MiB each time (VisPer-LM's predictors and their gradients) spent 2,500-87,000 minor faults
    per step on it, 6-13% of the step (``bench.py --methods llava,visper``, README). Fixing the
    mmap threshold at its 32 MiB maximum and trimming only above 1 GiB keeps those pages: the
    process's resident memory stays at its peak, which a training step reaches every time anyway.

    Skipped (returns False) off Linux, under another allocator (``LD_PRELOAD``, e.g. jemalloc or
    tcmalloc), when ``MALLOC_*`` variables already tune glibc, or where mallopt is absent (musl)."""
    if (not sys.platform.startswith("linux") or "LD_PRELOAD" in os.environ
            or any(k.startswith("MALLOC_") for k in os.environ)):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) & bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def print0(*args, **kwargs) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


def cosine_lr(step: int, total: int, base: float, warmup_ratio: float = 0.03) -> float:
    """Learning rate at optimizer step ``step`` (0-based) of ``total``: linear warm-up over
    ceil(warmup_ratio * total) steps, then cosine decay to 0 (HF's cosine schedule, as LLaVA)."""
    warmup = math.ceil(warmup_ratio * total)
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------- resumable state
def rng_state(generators: dict[str, torch.Generator]) -> tuple[dict, dict]:
    """(tensors, json) holding every random state a run consumes."""
    tensors = {"rng.torch": torch.get_rng_state()}
    tensors.update({f"rng.gen.{k}": g.get_state() for k, g in generators.items()})
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    py = random.getstate()
    npy = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [npy[0], npy[1].tolist(), int(npy[2]), int(npy[3]), float(npy[4])]}
    return tensors, meta


def set_rng_state(tensors: dict, meta: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    for k, g in generators.items():
        g.set_state(tensors[f"rng.gen.{k}"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def save_trainer_state(directory: Path, optimizer_state: dict, progress: dict,
                       generators: dict[str, torch.Generator]) -> None:
    """Optimizer state (flattened to safetensors; keyed by parameter name, as
    ``torch.distributed.checkpoint.state_dict`` gives it), progress (step, data position, ...)
    and RNGs."""
    tensors, meta = rng_state(generators)
    scalars = {}
    for pid, state in optimizer_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{pid}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}/{key}"] = value
    save_tensors(tensors, directory / "trainer.safetensors")
    payload = {"progress": progress, "rng": meta, "optim_scalars": scalars,
               "param_groups": optimizer_state["param_groups"]}
    (directory / "trainer.json").write_text(json.dumps(payload, indent=1))


def save_tensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """safetensors' save_file, whose own error type (a full disk, ...) becomes an InputError
    naming ``path``."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001  safetensors.SafetensorError wraps the OS's error
        raise InputError(f"{path}: cannot write the tensors ({brief(e)})") from e


def check_progress(progress: dict, directory: Path) -> dict:
    """``progress`` if it holds what train.py saves (step, total, skipped, one [epoch, batch]
    per rank), else an InputError naming ``directory``'s trainer.json."""
    bad = next((f"progress {k} must be an integer >= 0, got {progress.get(k)!r}" for k in ("step", "total", "skipped")
                if not isinstance(progress.get(k), int) or progress[k] < 0), "")
    positions = progress.get("positions")
    if not bad and not (isinstance(positions, list) and positions and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) and v >= 0 for v in p)
            for p in positions)):
        bad = f"progress positions must be one [epoch, batch] per rank, got {positions!r}"
    if bad:
        raise InputError(f"{Path(directory) / 'trainer.json'}: damaged trainer state ({bad})")
    return progress


def load_trainer_state(directory: Path, generators: dict[str, torch.Generator]) -> tuple[dict, dict]:
    """Inverse of :func:`save_trainer_state`: returns (optimizer_state, progress); restores RNGs.
    A damaged trainer.json / trainer.safetensors is an InputError naming the file."""
    directory = Path(directory)
    try:
        tensors = load_file(str(directory / "trainer.safetensors"))
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001  safetensors raises its own error type
        raise InputError(f"{directory / 'trainer.safetensors'}: damaged trainer state ({brief(e)})") from e
    payload = read_json(directory / "trainer.json", "trainer state")
    try:
        if not isinstance(payload["progress"], dict):
            raise TypeError("progress is not an object")
        state: dict = {}
        for name, value in tensors.items():
            if name.startswith("optim/"):
                pid, key = name[len("optim/"):].rsplit("/", 1)
                state.setdefault(pid, {})[key] = value
        for name, value in payload["optim_scalars"].items():
            pid, key = name.rsplit("/", 1)
            state.setdefault(pid, {})[key] = value
        set_rng_state(tensors, payload["rng"], generators)
        return {"state": state, "param_groups": payload["param_groups"]}, payload["progress"]
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        what = f"no {e}" if isinstance(e, KeyError) else brief(e)
        raise InputError(f"{directory / 'trainer.json'}: damaged trainer state ({what})") from None


def _siblings(final: Path) -> tuple[Path, Path]:
    return final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")


@contextmanager
def write_dir_atomically(final: Path):
    """Yield a temporary directory ``final.tmp``; on success it replaces ``final`` in two renames
    (``final`` -> ``final.old``, ``.tmp`` -> ``final``), then ``.old`` is removed. A crash at any
    moment leaves the old checkpoint or the new one, never half of one, plus leftovers that
    :func:`recover_checkpoint` cleans (it runs first here, so a leftover never blocks a write)."""
    final = Path(final)
    tmp, old = _siblings(final)
    recover_checkpoint(final)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def recover_checkpoint(final: Path) -> None:
    """Clean what :func:`write_dir_atomically` can leave when killed, keeping a whole checkpoint:

    * killed while filling ``.tmp``: ``final`` is intact; the partial ``.tmp`` is removed;
    * killed between the two renames: ``final`` is missing, ``.old`` is whole: renamed back
      (the new ``.tmp``, never committed, is removed);
    * killed while removing ``.old``: ``final`` is the new checkpoint; the rest of ``.old`` goes.
    """
    final = Path(final)
    tmp, old = _siblings(final)
    if not final.exists() and old.exists():
        os.rename(old, final)
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)


# ----------------------------------------------------------------- logs
def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def read_log(path: Path) -> list[dict]:
    """The rows of a JSONL log. A log is not needed to continue: a damaged line (a run killed
    while appending one) is skipped with a warning naming the file and the line."""
    if not Path(path).exists():
        return []
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            row = "damaged"
        if isinstance(row, dict) and isinstance(row.get("step", 0), int):
            rows.append(row)
        elif row is not None:
            print(f"warning: {path}: line {n} is not a log row (damaged?); skipped", file=sys.stderr)
    return rows


def truncate_log(path: Path, step: int) -> None:
    """Keep the log lines up to ``step`` (a resumed run rewrites what came after)."""
    rows = [r for r in read_log(path) if r.get("step", 0) <= step]
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


def plot_log(log_path: Path, png_path: Path, title: str = "") -> list[str]:
    """Loss curves (total, NTP, JEPA/alignment, VisPer-LM's terms) against the optimizer step.
    Returns the keys drawn, in order."""
    from matplotlib.figure import Figure  # no pyplot: the process's backend stays untouched

    rows = [r for r in read_log(log_path) if "loss" in r]
    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.subplots()
    terms = sorted({k for r in rows for k in r if k.startswith("visper/")})  # visper/<task>/l<j>
    drawn = []
    for key in ("loss", "ntp_loss", "jepa_loss", "align_loss", "visper_loss", *terms):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=key.replace("_", " "), lw=0.8 if key in terms else 1.5)
            drawn.append(key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7 if terms else None, ncol=2 if terms else 1)
    fig.tight_layout()
    fig.savefig(png_path)
    return drawn
