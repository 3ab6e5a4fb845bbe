"""One run split over processes (torchrun, Slurm's srun): which images each rank attacks, how its finished chunks
survive a crash, and how rank 0 gets everything.

Each rank takes a contiguous range of whole batches of the run's batch grid, so every batch is the batch a single
process would attack; with per-image and per-batch seeds (attacks/seeds.py) the run is then the same whatever the
number of processes. No image is padded or repeated (DistributedSampler pads the last shard with repeats, which
would count images twice). A rank writes each chunk it finishes to the case's scratch folder and skips chunks it
finds there, so a restarted or rerun job recomputes only what was lost. Rank 0 gathers the chunks' per-image
records, checks them against the all-reduced flip counts, and alone writes the run.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save

from ..attacks import AttackResult
from ..errors import ConfigError
from ..storage.atomic import atomic_write_files

# Long enough for rank 0 to finish a large case while the others wait at the barrier that follows it.
TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one job: rank `rank` of `size`, `local_rank` on its host."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(environ: dict[str, str] | None = None) -> World:
    """torchrun's RANK/WORLD_SIZE/LOCAL_RANK, else, inside an srun step, Slurm's SLURM_PROCID/SLURM_STEP_NUM_TASKS/
    SLURM_LOCALID (with MASTER_ADDR and MASTER_PORT exported), else a single process. A batch script or an salloc
    shell is not a step: a plain command there is one process."""
    env = os.environ if environ is None else environ
    names = (("RANK", "WORLD_SIZE", "LOCAL_RANK") if "WORLD_SIZE" in env
             else ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID") if "SLURM_STEP_NUM_TASKS" in env
             else None)
    if names is None:
        return World()
    if names[0] not in env:
        raise ConfigError(f"{names[1]} is set but {names[0]} is not: start the processes with torchrun or srun")
    try:
        rank, size, local = (int(env.get(name, "0")) for name in names)
    except ValueError:
        raise ConfigError(f"{'/'.join(names)} must be whole numbers, got "
                          f"{', '.join(repr(env.get(n)) for n in names)}") from None
    if not 0 <= rank < size or local < 0:
        raise ConfigError(f"rank {rank} is not one of the {size} processes ({'/'.join(names)})")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in env]
    if size > 1 and missing:
        raise ConfigError(f"{' and '.join(missing)} not set: export MASTER_ADDR (the first node's hostname) and "
                          "MASTER_PORT; docs/distributed.md has a Slurm script")
    return World(rank, size, local)


def init_world(world: World, device: str) -> None:
    """Join the job's process group: gloo on CPUs; on GPUs nccl beside gloo, which carries what labelflip
    exchanges (flip counts and per-image records live in CPU memory), each rank on its local GPU."""
    if not world.distributed or dist.is_initialized():
        return
    if (world.main and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            and os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") != "0"):
        # Seen here: 4 of 4 restarted 2-process jobs failed to connect (gloo: Connection refused) or hung, 0 of 4
        # with the variable set.
        print("labelflip run: torchrun restarts reuse one rendezvous store, where a restarted process can find its "
              "predecessor's address (pytorch#135712); export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun",
              file=sys.stderr, flush=True)
    backend = "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(world.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=TIMEOUT)


def leave_world(world: World) -> None:
    """Leave the process group once every rank is done with it: a process that exits still in it may abort in
    gloo's teardown ("terminate called without an active exception")."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(world: World, device: str) -> str:
    """`cuda` means this rank's local GPU; ConfigError for one GPU named for every rank of a job."""
    if not world.distributed or device == "cpu":
        return device
    if device != "cuda":
        raise ConfigError(f"device {device!r} would put every process on one GPU; use cuda (each process its local "
                          "GPU) or cpu")
    return f"cuda:{world.local_rank}"


def shard(n_images: int, batch: int, world: World) -> range:
    """The positions (into the run's image list) that `world.rank` attacks: a contiguous range of whole batches,
    the batches dealt out as evenly as they go."""
    batches = -(-n_images // batch)
    first, last = (batches * world.rank) // world.size, (batches * (world.rank + 1)) // world.size
    return range(min(first * batch, n_images), min(last * batch, n_images))


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast(value: Any, world: World) -> Any:
    """Rank 0's `value` on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_values(value: Any, world: World) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not world.distributed:
        return [value]
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def gather(parts: list[AttackResult], world: World) -> list[AttackResult] | None:
    """On rank 0 every rank's chunks in rank order (the run's image order); None on the others."""
    if not world.distributed:
        return parts
    received: list[list[AttackResult]] | None = [[] for _ in range(world.size)] if world.main else None
    dist.gather_object(parts, received, dst=0)
    return None if received is None else [part for rank_parts in received for part in rank_parts]


def flip_counts(parts: list[AttackResult], num_classes: int, world: World) -> torch.Tensor:
    """The K×K counts of (true class, landed class) over the whole run, summed over ranks (all_reduce)."""
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device="cpu")
    for part in parts:
        counts += torch.bincount(part.labels * num_classes + part.landed, minlength=num_classes * num_classes)
    if world.distributed:
        dist.all_reduce(counts)
    return counts.view(num_classes, num_classes)


def check_gathered(parts: list[AttackResult], counts: torch.Tensor, n_images: int) -> None:
    """RuntimeError unless the gathered records hold every image once and agree with the reduced counts."""
    n = sum(len(p.labels) for p in parts)
    gathered = flip_counts(parts, counts.shape[0], World())
    if n != n_images or not torch.equal(gathered, counts):
        raise RuntimeError(f"the ranks' records hold {n} of {n_images} images, or disagree with the all-reduced "
                           "flip counts: a rank's chunks were lost or duplicated")


# --------------------------------------------------------------------------------------------- finished chunks

_TENSORS = ("images", "labels", "raw", "clipped", "success", "attacked", "clean_pred", "adv_pred", "broken_by",
            "rounded_pred")


def chunk_path(scratch: Path, start: int, stop: int) -> Path:
    return scratch / f"chunk-{start:09d}-{stop:09d}.safetensors"


def save_chunk(part: AttackResult, ids: torch.Tensor, path: Path) -> None:
    """The chunk's tensors, its images' ids and its scalars, in one file written atomically: present means
    complete."""
    tensors = {name: getattr(part, name).contiguous() for name in _TENSORS if getattr(part, name) is not None}
    tensors["ids"] = ids.contiguous()
    if part.raw is part.clipped and part.raw is not None:  # AutoAttack's are one tensor: stored once
        del tensors["raw"]
    tensors |= {f"measured.{k}": v.contiguous() for k, v in (part.measured or {}).items()}
    meta = {"epsilon": part.epsilon, "norm": part.norm, "seconds": part.seconds, "params": part.params}
    atomic_write_files({path: save(tensors, metadata={"labelflip": json.dumps(meta)})})


def load_chunk(path: Path, ids: torch.Tensor) -> AttackResult | None:
    """The chunk a rank finished earlier for the images `ids`, or None if there is none at `path` (or one of other
    images)."""
    if not path.exists():
        return None
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["labelflip"])
    tensors = load_file(path)
    if not torch.equal(tensors.pop("ids"), ids):
        return None
    measured = {k.removeprefix("measured."): v for k, v in tensors.items() if k.startswith("measured.")} or None
    fields = {name: tensors.get(name) for name in _TENSORS}
    fields["raw"] = tensors.get("raw", fields["clipped"])
    return AttackResult(**meta, **fields, measured=measured)
