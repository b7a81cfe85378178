"""Stage 2: train a GPT over the code indices of a frozen stage-1 VQGAN.

    python train_transformer.py [--config configs/shapes_gpt.yaml] [--resume [CKPT]] [section.key=value ...]
    torchrun --nproc_per_node=N train_transformer.py ...

The dataset is encoded once into token grids, cached under {run.out_dir}/cache/ and shared by runs;
training never runs the VQGAN encoder.
"""
import math
import time
from contextlib import nullcontext
from dataclasses import asdict

import torch
import torch.distributed as dist

from torch.utils.data import BatchSampler
from torchvision.utils import make_grid

from transformer.draw import draw
from transformer.gpt import GPT, GPTConfig, legacy_gpt_config, model_args_of
from transformer.loading import load_stage1
from transformer.sampling import decode_images, top_half
from transformer.sequences import crop_windows, training_pair
from transformer.tokens import cache_path, dataset_key, load_or_encode
from utils.core.checkpoint import cache_dir
from utils.core.distributed import all_reduce_sum
from utils.core.errors import UserError
from utils.core.precision import autocast_context
from utils.core.runlog import RunLogger
from utils.data.conditions import as_picture
from utils.data.registry import build_datasets, cache_settings, layout_palette
from utils.train.batches import Batches, ResumableSampler
from utils.train.loop import (Pace, StopSignal, check_step, clip_gradients, due, end_of_run, figures,
                              keeps_signal_handlers, optimizer_step, rng_kept, save_then_validate, set_lr)
from utils.train.optim import stage2_optimizer
from utils.train.run import (load_init, main_guard, prepare_run_dir, restore, save_checkpoint, start_position,
                             start_run, wrap_ddp, write_config)
from utils.train.stage2_config import Stage2Config, check_init_layout, complete_from_stage1, gpt_config


@torch.no_grad()
def evaluate_loss(model, grids, labels, gcfg, batch_size, device, ctx, max_batches, rank, world, conds=None):
    """Validation cross-entropy (nats per image token) over this rank's share, summed over ranks; for a masked model,
    per masked token, with the same masks at every evaluation."""
    model.eval()
    g = torch.Generator().manual_seed(1234)  # the same crops at every evaluation
    idx = torch.arange(rank, len(grids), world)
    tot = torch.zeros(2, device=device, dtype=torch.float64)
    for b, s in enumerate(range(0, len(idx), batch_size)):
        if max_batches and b >= max_batches:
            break
        sel = idx[s:s + batch_size]
        seq, *cond = crop_windows(gcfg.window, g, grids[sel].long(), *([conds[sel].long()] if conds is not None else []))
        inp, targets = training_pair(seq, labels[sel], gcfg, generator=g, cond=cond[0] if cond else None)
        with ctx:
            _, loss = model(inp.to(device), targets.to(device))
        scored = (targets != -100).sum()
        tot[0] += loss.double() * scored
        tot[1] += scored
    all_reduce_sum(tot)
    model.train()
    return (tot[0] / tot[1].clamp_min(1)).item()


@keeps_signal_handlers
def train(argv=None):
    run = start_run(argv, Stage2Config, "transformer", "train_transformer.py", "configs/shapes_gpt.yaml",
                    "Train the transformer (stage 2) over VQGAN codes.")
    cfg, ckpt, device, dist_info, log = run.cfg, run.ckpt, run.device, run.dist, run.log
    t, d = cfg.train, cfg.data

    # ---------------------------------------------------------------- frozen stage 1 and the model: every check
    # comes before the run folder is made and before any image is encoded
    vq, stage1_record = load_stage1(cfg.stage1.checkpoint, device, ckpt["stage1"] if ckpt else None)
    cond_vq, cond_record = None, None
    if cfg.stage1.condition_checkpoint:
        cond_vq, cond_record = load_stage1(cfg.stage1.condition_checkpoint, device,
                                           ckpt["stage1_condition"] if ckpt else None)
    grid = complete_from_stage1(cfg, vq.cfg, cond_record)
    train_set, val_set = build_datasets(d, cfg.run.seed, augment=False)  # encoded once: no random crops
    gcfg = gpt_config(cfg, vq.cfg, grid, train_set.class_names, cond_vq.cfg if cond_vq is not None else None)
    class_names = list(train_set.class_names)[:gcfg.num_classes] if gcfg.num_classes else None
    if ckpt is not None and GPTConfig(**model_args_of(ckpt)) != gcfg:
        raise UserError(f"the checkpoint's model {model_args_of(ckpt)} differs from the one this config and the "
                        f"stage-1 model give {asdict(gcfg)}; resume with the original settings")
    trained_with = ckpt["config"]["train"].get("optimizer", "adamw") if ckpt is not None else t.optimizer
    if trained_with != t.optimizer:  # checkpoints from before train.optimizer were AdamW's
        raise UserError(f"train.optimizer={t.optimizer}, but the checkpoint was trained with train.optimizer="
                        f"{trained_with}, whose state it holds; resume with that optimizer, or start a new run from "
                        f"its weights with train.init_from")
    if run.init is not None:
        check_init_layout(GPTConfig(**model_args_of(run.init)), gcfg, t.init_from)
        if run.init["stage1"]["sha256"] != stage1_record["sha256"]:
            log.warning(f"warning: train.init_from '{t.init_from}' was trained over another stage-1 checkpoint "
                        f"('{run.init['stage1']['checkpoint']}'); its codes mean what that model's codes meant")
    micro = d.batch_size
    sampler = ResumableSampler(len(train_set), cfg.run.seed, dist_info.rank, dist_info.world_size)
    if sampler.per_rank < micro:
        raise UserError(f"data.batch_size={micro} is larger than the {sampler.per_rank} token grids per process")
    prepare_run_dir(run)

    # ---------------------------------------------------------------- the token cache
    cache = cache_dir(cfg.run.out_dir)
    key = dataset_key(d.dataset, cache_settings(d, cfg.run.seed), (train_set, val_set))
    shas = [stage1_record["sha256"]] + ([cond_record["sha256"]] if cond_record else [])
    meta = {"stage1_sha256": shas, "codebook_size": vq.cfg.codebook_size, "grid": list(grid), "dataset": key,
            "files": len(train_set.sources) + len(val_set.sources)}
    data, token_cache = {}, {}
    for split, ds in (("train", train_set), ("val", val_set)):
        path = token_cache[split] = cache_path(cache, shas, key, split)
        if dist_info.is_main:  # one process encodes; the others wait, then read
            data[split] = load_or_encode(path, vq, ds, device, {**meta, "split": split}, log, d.num_workers, cond_vq)
        if dist_info.enabled:
            dist.barrier()
        if not dist_info.is_main:
            data[split] = load_or_encode(path, vq, ds, device, {**meta, "split": split}, cond_vq=cond_vq)
    train_grids, train_labels = data["train"]["tokens"], data["train"]["labels"]
    val_grids, val_labels = data["val"]["tokens"], data["val"]["labels"]
    train_conds, val_conds = data["train"].get("cond_tokens"), data["val"].get("cond_tokens")
    window = gcfg.window

    # ---------------------------------------------------------------- model
    torch.manual_seed(cfg.run.seed)
    model = GPT(gcfg).to(device)
    if run.init is not None:
        load_init(run, model=model)
    opt = stage2_optimizer(model, t)
    scaler = torch.amp.GradScaler(device.type, enabled=run.precision == "fp16")
    if ckpt is not None:
        restore(ckpt, model=model, optimizer=opt, scaler=scaler)
    step, epoch, batch_in_epoch = start_position(run)
    del ckpt
    write_config(run)
    fwd = torch.compile(model) if t.compile else model
    if dist_info.enabled:
        fwd = wrap_ddp(fwd, device)
    ctx = autocast_context(device, run.precision)
    stop = StopSignal()
    n_params = sum(p.numel() for p in model.parameters())
    log.info(f"run folder {run.dir} | {device} {run.precision} x{dist_info.world_size} | {gcfg.kind} {n_params / 1e6:.2f}M "
             f"params, {gcfg.n_layer} layers x {gcfg.n_embd} | grid {grid[0]}x{grid[1]}, window "
             f"{window[0]}x{window[1]}, {gcfg.codebook_size} codes, {gcfg.num_classes or 'no'} classes | "
             f"{len(train_grids)} train / {len(val_grids)} val grids")
    sc = cfg.sample
    logger = RunLogger(run.dir, dist_info.is_main, t.max_steps, step, "stage 2")

    def save(at_step: int) -> None:
        save_checkpoint(run, at_step, batches.epoch, batches.batch, model_args=model.model_args,
                        gpt_config=legacy_gpt_config(gcfg), model=model.state_dict(), optimizer=opt.state_dict(),
                        scaler=scaler.state_dict(), stage1=stage1_record, stage1_condition=cond_record,
                        window=list(window), grid=list(grid), class_names=class_names, token_cache=token_cache)

    def validate(at_step: int) -> dict:
        with rng_kept():
            val_loss = evaluate_loss(model, val_grids, val_labels, gcfg, micro, device, ctx, t.eval_batches,
                                     dist_info.rank, dist_info.world_size, val_conds)
            metrics = {"step": at_step, "val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0))}
            if dist_info.is_main:
                model.eval()
                n, k = sc.num, min(sc.num, len(val_grids))
                conds = None if val_conds is None else val_conds[:k].long().to(device)  # the val images' maps
                toks = draw(model, n if conds is None else k, sc, grid, cond=conds,
                            generator=torch.Generator(device).manual_seed(cfg.run.seed))
                shown = decode_images(vq, toks)
                if conds is not None:  # each condition map above the sample drawn for it
                    maps = as_picture(cond_vq.decode_indices(conds).float(), d.condition, logits=True,
                                      colours=layout_palette(d.dataset, d.condition_classes)).cpu()
                    shown = torch.cat([maps.expand(-1, shown.shape[1], -1, -1), shown])
                logger.image("val/samples", make_grid(shown, nrow=min(n, 8) if conds is None else k, padding=1),
                             at_step)
                real = val_grids[:k].long().to(device)
                classes = val_labels[:k].tolist() if gcfg.num_classes else None
                done = draw(model, k, sc, grid, classes, cond=conds, tokens=real,
                            keep=top_half(grid),
                            generator=torch.Generator(device).manual_seed(cfg.run.seed))
                images = torch.cat([decode_images(vq, real), decode_images(vq, done)])
                logger.image("val/completions_real_above_completed", make_grid(images, nrow=k, padding=1), at_step)
                model.train()
        logger.scalars("val", {"loss": val_loss, "perplexity": metrics["val_perplexity"]}, at_step)
        logger.metrics(metrics)
        log.info(f"step {at_step}: {figures(metrics)}")
        return metrics

    # ---------------------------------------------------------------- the loop
    model.train()
    sums, n_sums, t_log, tokens_since = torch.zeros((), device=device), 0, time.time(), 0
    metrics = {}
    batches = Batches(BatchSampler(sampler, micro, drop_last=True), sampler, micro, epoch, batch_in_epoch)
    if step >= t.max_steps:  # resumed at or past the end: no step to take, but a checkpoint and an evaluation
        metrics = save_then_validate(step, t, save, validate, metrics, at_end=True)
    pace = Pace(step, t.max_steps, "configs/custom_cpu_gpt.yaml")  # one line when the run would take more than a day
    stopping = False
    while step < t.max_steps and not stopping:
        set_lr(step, t, (opt, t.lr))
        micro_terms = []
        for k in range(t.grad_accum):
            sel = next(batches)
            seq, *cond = crop_windows(window, None, train_grids[sel].long(),
                                      *([train_conds[sel].long()] if train_conds is not None else []))
            inp, targets = training_pair(seq, train_labels[sel], gcfg, t.pkeep, t.class_dropout,
                                         cond=cond[0] if cond else None)
            last = k == t.grad_accum - 1
            with nullcontext() if last or not dist_info.enabled else fwd.no_sync():
                with ctx:
                    _, loss = fwd(inp.to(device, non_blocking=True), targets.to(device, non_blocking=True))
                scaler.scale(loss / t.grad_accum).backward()
            micro_terms.append({"cross_entropy": loss.detach()})
            sums += loss.detach()
            n_sums += 1
        norm = clip_gradients(opt, scaler, model.parameters(), t.grad_clip)
        stopping = check_step(run, stop, step, micro_terms, {"grad_norm": norm})  # before the weights change
        optimizer_step(opt, scaler)
        step += 1
        tokens_since += micro * t.grad_accum * dist_info.world_size * gcfg.block_size
        logger.bar.update(1)
        slow = pace.estimate(step)
        if slow:
            log.info(slow)
        if due(step, t.log_every, t.max_steps):
            avg = (all_reduce_sum(sums.clone()) / (n_sums * dist_info.world_size)).item()
            elapsed = max(time.time() - t_log, 1e-9)
            logger.scalars("train", {"loss": avg, "lr": opt.param_groups[0]["lr"],
                                     "tokens_per_sec": tokens_since / elapsed}, step)
            logger.bar.set_postfix(loss=f"{avg:.4f}", tok_s=f"{tokens_since / elapsed:.0f}")
            sums, n_sums, t_log, tokens_since = torch.zeros((), device=device), 0, time.time(), 0
        metrics = save_then_validate(step, t, save, validate, metrics, stopping)
    end_of_run(run, logger, step, stop if stopping else None, metrics)


if __name__ == "__main__":
    main_guard(train)
