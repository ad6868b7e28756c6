"""Train minijarvis: LLaVA's two stages, with JARVIS's masked latent prediction in stage 1.

Tiny model, built-in synthetic data, offline, CPU (under a minute each):

    python train.py --stage align
    python train.py --stage finetune --init runs/tiny-jarvis-align

Gemma2-2B on one GPU (LLaVA-1.5 data; global batch 256 / 128 by gradient accumulation):

    python train.py --stage align --preset gemma2-2b --bf16 --gradient-checkpointing \\
        --data data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json --image-folder data/LLaVA-Pretrain/images
    python train.py --stage finetune --init runs/gemma2-2b-jarvis-align --bf16 --gradient-checkpointing \\
        --data data/llava_v1_5_mix665k.json --image-folder data

A 7B LLM on 8 GPUs (stage 1: DDP over what trains; stage 2: FSDP2 shards the LLM):

    torchrun --nproc_per_node 8 train.py --stage align --preset vicuna-7b --bf16 \\
        --gradient-checkpointing --data data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json \\
        --image-folder data/LLaVA-Pretrain/images
    torchrun --nproc_per_node 8 train.py --stage finetune --init runs/vicuna-7b-jarvis-align \\
        --bf16 --gradient-checkpointing --data data/llava_v1_5_mix665k.json --image-folder data

Other rows of the paper's table: ``--method llava|nomask|viral`` (VIRAL: stage 1 ``llava``,
stage 2 ``--method viral``). A run writes ``OUTPUT/`` (final model), ``OUTPUT/checkpoint/``
(resumable state, every ``--save-every`` steps and on Ctrl-C), ``OUTPUT/log.jsonl`` and
``OUTPUT/loss.png``. ``--resume`` continues exactly where the checkpoint stopped, with the
plan it started with (flags that would change it are refused: minijarvis/training/resume.py).

A bad flag value or an unusable file ends the run with one line and exit status 2 (usage) or 1
(file); ``--debug`` shows the Python traceback instead (minijarvis/errors.py).
"""
from __future__ import annotations

import argparse
import json
import math
import signal
from contextlib import nullcontext
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from minijarvis.training import runtime
from minijarvis.training import trackers
from minijarvis.training.cli import build_run, output_dir, parse_args
from minijarvis.training.lock import output_lock
from minijarvis.data.llava import format_skips
from minijarvis.errors import InputError, UsageError, run_main
from minijarvis.training.runtime import print0
from minijarvis.data.sampler import epoch_batches
from minijarvis.training.checkpoint import save_checkpoint


def _visper_keys(out: dict) -> list[str]:
    """VisPer-LM's logged terms: visper_loss and visper/<task>/l<layer>."""
    return [k for k in out if k.startswith("visper")]


class Trainer:
    """One stage of training: the step, the checkpoints, the log. Built by :func:`main`."""

    def __init__(self, model, dataset, collate, tcfg, info, output: Path):
        self.model, self.dataset, self.collate, self.tcfg, self.info = model, dataset, collate, tcfg, info
        self.output, self.ckpt_dir, self.log_path = output, output / "checkpoint", output / "log.jsonl"
        self.params = [p for p in model.parameters() if p.requires_grad]
        # The lambda coin: one seed on every rank, so all ranks take the same branch (the
        # release draws it per rank: --lambda-per-rank). Masks: each rank its own, as the release.
        lam_seed = tcfg.seed + (info.rank if tcfg.lambda_per_rank else 0)
        self.lambda_gen = torch.Generator().manual_seed(lam_seed)
        self.mask_gen = torch.Generator().manual_seed(tcfg.seed + 7919 * (info.rank + 1))
        self.per_rank = len(dataset) // info.world_size
        self.micro_per_epoch = self.per_rank // tcfg.batch_size
        if self.micro_per_epoch < tcfg.grad_accum:
            raise UsageError(f"{len(dataset)} usable records cannot fill one optimizer step of "
                             f"{tcfg.batch_size} x {tcfg.grad_accum} x {info.world_size}; "
                             "lower --batch-size or --grad-accum, or add data")
        steps_per_epoch = self.micro_per_epoch // tcfg.grad_accum
        self.total = tcfg.max_steps if tcfg.max_steps > 0 else max(1, math.floor(tcfg.epochs * steps_per_epoch))
        self.step, self.position, self.num_skipped = 0, (0, 0), 0
        self.stop_requested = False
        self.tracker = None  # --report-to: set by main() on rank 0 (minijarvis.training.trackers)
        self.wrapped = self._wrap()
        self.optimizer = torch.optim.AdamW(_param_groups(model, tcfg.weight_decay), lr=tcfg.lr,
                                           betas=(0.9, 0.999), fused=info.device.type in ("cuda", "cpu"))

    # ---------------------------------------------------------------- parallelism
    def _wrap(self):
        """Stage 1: DDP over the trainable parameters (the frozen LLM is never reduced).
        Stage 2: FSDP2, one shard unit per decoder layer plus the root."""
        if not self.info.distributed:
            return self.model
        if self.model.stage == "align":
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.info.local_rank] if self.info.device.type == "cuda" else None
            # z and proj_tgt sit out the lambda steps (on every rank alike): find_unused.
            return DDP(self.model, device_ids=ids, find_unused_parameters=True)
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if self.tcfg.bf16 else MixedPrecisionPolicy()
        for layer in self.model.llm.model.layers:
            fully_shard(layer, mp_policy=mp)
        return fully_shard(self.model, mp_policy=mp)

    # ---------------------------------------------------------------- data
    def _batches(self):
        """Micro-batches forever from ``self.position`` = (epoch, micro-batch): each epoch's
        order from the seed and the epoch alone (grouped by modality and length in stage 2, as
        the release), split evenly over ranks (``sampler.epoch_batches``); the position is
        saved for resuming."""
        epoch, start = self.position
        grouping = self.dataset.modality_lengths() if self.tcfg.group_by_modality_length else None
        while True:
            mine = epoch_batches(len(self.dataset), grouping, batch_size=self.tcfg.batch_size,
                                 grad_accum=self.tcfg.grad_accum, rank=self.info.rank,
                                 world_size=self.info.world_size, seed=self.tcfg.seed, epoch=epoch)
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=mine[start:],
                                                 collate_fn=self.collate,
                                                 num_workers=self.tcfg.num_workers)
            for k, batch in enumerate(loader, start=start):
                self.position = (epoch, k + 1)
                yield batch
            epoch, start = epoch + 1, 0
            self.position = (epoch, 0)

    def _next_batch(self, stream):
        """The next micro-batch with at least one usable record; bad records are counted. An
        epoch's worth of micro-batches without one means no record is usable: InputError."""
        for _ in range(2 * self.micro_per_epoch + 1):  # any 2m + 1 in a row hold a whole epoch
            batch = next(stream)
            self.num_skipped += len(batch["skipped"])
            if batch["skipped"]:
                tqdm.write(f"[rank {self.info.rank}] " + format_skips(batch["skipped"]))
            if "input_ids" in batch:
                return {k: v.to(self.info.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        raise InputError(f"{self.tcfg.data or 'the data'}: none of the {len(self.dataset)} records "
                         "that passed the checks at load could be loaded (reasons above)")

    # ---------------------------------------------------------------- the loop
    def fit(self, on_step=None) -> int:
        """Train to ``self.total`` optimizer steps. Returns the exit code: 0 done, 1 non-finite
        loss (nothing written over the last good checkpoint), 130 interrupted (checkpointed)."""
        tcfg, info = self.tcfg, self.info
        self._install_signal_handlers()
        stream = self._batches()
        bar = tqdm(total=self.total, initial=self.step, disable=info.rank != 0, desc=f"{self.model.stage}",
                   unit="step", dynamic_ncols=True)
        while self.step < self.total:
            t0 = time.perf_counter()
            lr = runtime.cosine_lr(self.step, self.total, tcfg.lr, tcfg.warmup_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            sums, samples, tokens = {}, 0, 0
            for micro in range(tcfg.grad_accum):
                batch = self._next_batch(stream)
                with self._sync_context(last=micro == tcfg.grad_accum - 1), self._autocast():
                    out = self.wrapped(batch, generator=self.lambda_gen, mask_generator=self.mask_gen)
                (out["loss"] / tcfg.grad_accum).backward()
                for key in ("loss", "ntp_loss", "jepa_loss", "align_loss", *_visper_keys(out)):
                    if out.get(key) is not None:
                        sums[key] = sums.get(key, 0.0) + float(out[key].detach()) / tcfg.grad_accum
                sums["jepa_ran"] = sums.get("jepa_ran", 0.0) + float(out["jepa_ran"]) / tcfg.grad_accum
                samples += batch["input_ids"].shape[0]
                tokens += int(batch["attention_mask"].sum()) + int(batch["has_image"].sum()) * (self.model.num_slots - 1)
            norm = torch.nn.utils.clip_grad_norm_(self.params, tcfg.max_grad_norm) if self.params else torch.zeros(())
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            if not self._all_finite(sums["loss"], float(norm)):
                print0(f"\nnon-finite loss or gradient at step {self.step + 1} "
                       f"({', '.join(f'{k}={v:.4g}' for k, v in sums.items())}); stopping. "
                       f"Last good checkpoint: {self.ckpt_dir if self.ckpt_dir.exists() else 'none'}")
                bar.close()
                return 1
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            elapsed = time.perf_counter() - t0
            row = dict(step=self.step, **{k: round(v, 6) for k, v in sums.items()}, lr=lr,
                       grad_norm=round(float(norm), 6), samples_per_s=round(samples * info.world_size / elapsed, 2),
                       tokens_per_s=round(tokens * info.world_size / elapsed, 1),
                       peak_mem_mb=round(runtime.peak_memory_mb(info.device), 1), skipped=self.num_skipped)
            if info.rank == 0 and (self.step % tcfg.log_every == 0 or self.step == self.total):
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                if self.tracker is not None:
                    self.tracker.log(row)
            bar.set_postfix(loss=f"{sums['loss']:.3f}", lr=f"{lr:.2e}")
            bar.update(1)
            if on_step is not None:  # tests and notebooks look in here (trainer, log row)
                on_step(self, row)
            if tcfg.save_every and self.step % tcfg.save_every == 0 and self.step < self.total:
                self.save()
            if self._stop_agreed():
                print0(f"\ninterrupted: checkpoint of step {self.step} in {self.ckpt_dir}; "
                       "continue with --resume")
                self.save()
                bar.close()
                return 130
        bar.close()
        self.save()
        self.save_final()
        return 0

    def _sync_context(self, last: bool):
        no_sync = getattr(self.wrapped, "no_sync", None)
        if no_sync is not None and not last:
            return no_sync()  # DDP: reduce gradients once per optimizer step
        if hasattr(self.wrapped, "set_requires_gradient_sync"):
            self.wrapped.set_requires_gradient_sync(last)  # FSDP2's no_sync
        return nullcontext()

    def _autocast(self):
        if not self.tcfg.bf16:
            return nullcontext()
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16)

    def _all_finite(self, loss: float, norm: float) -> bool:
        ok = torch.tensor(float(math.isfinite(loss) and math.isfinite(norm)), device=self.info.device)
        if self.info.distributed:
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        return bool(ok.item())

    # ---------------------------------------------------------------- stopping and saving
    def _install_signal_handlers(self):
        """First Ctrl-C (or SIGTERM from a scheduler): finish the step, checkpoint, exit.
        A second Ctrl-C aborts at once."""
        def handler(signum, frame):
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested = True
            print0("\nstopping after this step (Ctrl-C again to abort without saving)")
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. inside a notebook runner)
                pass

    def _stop_agreed(self) -> bool:
        flag = torch.tensor(float(self.stop_requested), device=self.info.device)
        if self.info.distributed:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _positions(self) -> list:
        """Every rank's data position (ranks skipping bad records may drift apart)."""
        if not self.info.distributed:
            return [self.position]
        positions = [None] * self.info.world_size
        torch.distributed.all_gather_object(positions, self.position)
        return positions

    def _full_states(self):
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(self.model, options=opts),
                get_optimizer_state_dict(self.model, self.optimizer, options=opts))

    def save(self) -> None:
        """Resumable checkpoint at a step boundary: weights, configs, optimizer, step, every
        rank's data position, RNGs. Written to a temporary directory, then renamed."""
        model_state, optim_state = self._full_states()  # collective under FSDP: every rank
        positions = self._positions()
        if self.info.rank == 0:
            with runtime.write_dir_atomically(self.ckpt_dir) as tmp:
                save_checkpoint(self.model, tmp, state=model_state, **self._configs())
                progress = dict(step=self.step, positions=positions, total=self.total,
                                skipped=self.num_skipped)
                runtime.save_trainer_state(tmp, optim_state, progress, self._generators())
            runtime.plot_log(self.log_path, self.output / "loss.png", self._title())
        self._barrier()

    def save_final(self) -> None:
        """The trained model in ``output`` itself (what --init and eval.py take)."""
        model_state, _ = self._full_states()
        if self.info.rank == 0:
            save_checkpoint(self.model, self.output, state=model_state, **self._configs())
        self._barrier()

    def resume(self) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        optim_state, progress = runtime.load_trainer_state(self.ckpt_dir, self._generators())
        runtime.check_progress(progress, self.ckpt_dir)
        self._check_plan(progress)
        set_optimizer_state_dict(self.model, self.optimizer, optim_state,
                                 options=StateDictOptions(full_state_dict=True))
        self.step = progress["step"]
        self.position = tuple(progress["positions"][self.info.rank])
        self.num_skipped = progress["skipped"]
        if self.info.rank == 0:
            runtime.truncate_log(self.log_path, self.step)
        print0(f"resumed at step {self.step}/{progress['total']} from {self.ckpt_dir}")
        if self.step >= self.total:
            print0(f"the checkpoint already holds all {self.total} planned steps: nothing left to "
                   "train (to train longer, start a new run in another --output-dir)")

    def _check_plan(self, progress: dict) -> None:
        """The saved run's process count (else UsageError) and planned total (else InputError: the
        data changed) must be this run's; resume.py has checked the flags. Both name the values."""
        world = len(progress["positions"])
        if world != self.info.world_size:
            raise UsageError(f"--resume: {self.ckpt_dir} was written by {world} processes, this run "
                             f"has {self.info.world_size} (the data split and global batch would change); "
                             f"resume with torchrun --nproc_per_node {world}")
        if progress["total"] != self.total:
            raise InputError(f"{self.tcfg.data or 'the built-in data'}: {len(self.dataset)} usable records "
                             f"plan {self.total} optimizer steps, but {self.ckpt_dir} planned "
                             f"{progress['total']} (the data changed?); restore the data, or start a new "
                             "run in another --output-dir")

    def _generators(self) -> dict:
        return {"lambda": self.lambda_gen, "mask": self.mask_gen}

    def _configs(self) -> dict:
        return dict(train=self.tcfg)

    def _title(self) -> str:
        return f"{self.model.cfg.method} - {self.model.stage}"

    def _barrier(self):
        if self.info.distributed:
            torch.distributed.barrier()


def _param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices decay, biases / norms / the latent z do not (LLaVA uses 0 anyway)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [g for g in (dict(params=decay, weight_decay=weight_decay),
                        dict(params=no_decay, weight_decay=0.0)) if g["params"]]


def main(argv=None, on_step=None) -> int:
    args = parse_args(argv)
    trackers.require(args.report_to)  # a missing package fails now, not after loading a model
    info = runtime.dist_info()
    output = output_dir(args)
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: a file, not a folder (--output-dir)")
    # One run per output folder (rank 0 writes it): taken before a leftover checkpoint is touched.
    with output_lock(output) if info.rank == 0 else nullcontext():
        return _train(args, info, on_step)


def _train(args, info, on_step) -> int:
    run = build_run(args, info)  # model, data, configs, output dir (see minijarvis/training/cli.py)
    trainer = Trainer(run.model, run.dataset, run.collate, run.train_cfg, info, run.output)
    if args.resume:
        trainer.resume()
    tcfg = run.train_cfg
    print0(f"{run.model.cfg.method} / {run.model.stage}: {len(run.dataset)} records "
           f"({run.dataset.num_invalid} rejected at load), {trainer.total} optimizer steps; global batch = "
           f"{tcfg.batch_size} per device x {tcfg.grad_accum} accumulation x {info.world_size} "
           f"devices = {tcfg.batch_size * tcfg.grad_accum * info.world_size}; "
           f"{sum(p.numel() for p in trainer.params):,} trainable parameters; output {run.output}")
    if info.rank == 0:
        trainer.tracker = trackers.open_tracker(
            tcfg.report_to, run.output, dict(model=run.model.cfg, mask=run.model.mask_cfg, train=tcfg),
            done_steps=trainer.step)
    start = time.perf_counter()
    try:
        code = trainer.fit(on_step)
    finally:
        if trainer.tracker is not None:
            trainer.tracker.close()
    rows = runtime.read_log(trainer.log_path)
    if info.rank == 0 and rows:
        last = rows[-1]
        aux = next((f", {k} {last[k]:.4f}" for k in ("jepa_loss", "align_loss", "visper_loss") if last.get(k) is not None), "")
        status = {0: "done", 1: "stopped (non-finite loss)", 130: "interrupted"}[code]
        print(f"{status}: {trainer.step} steps in {time.perf_counter() - start:.1f}s; last loss "
              f"{last['loss']:.4f} (ntp {last['ntp_loss']:.4f}{aux}); skipped {trainer.num_skipped} "
              f"records in batches, {run.dataset.num_invalid} at load; model in {run.output}", flush=True)
    if info.distributed:
        torch.distributed.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(run_main(main, prog="train.py"))
