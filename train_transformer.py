"""Stage 2: train a GPT over the code indices of a frozen stage-1 VQGAN.

    python train_transformer.py [--config configs/shapes_gpt.yaml] [--resume [CKPT]] [section.key=value ...]
    torchrun --nproc_per_node=N train_transformer.py ...

The dataset is encoded once into token grids, cached under {run.out_dir}/cache/ and shared by runs;
training never runs the VQGAN encoder.
"""
import math
import os
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torchvision.utils import make_grid
from tqdm import tqdm

from transformer.gpt import GPT, GPTConfig
from transformer.sampling import sample_grid
from transformer.tokens import cache_path, dataset_key, file_sha256, load_or_encode
from utils.checkpoint import FORMAT, save_run_checkpoint
from utils.config import Stage2Config, dump_yaml, to_dict
from utils.data import ResumableSampler, build_datasets
from utils.distributed import all_reduce_sum, gather_rng_states, init_distributed, select_device
from utils.errors import UserError
from utils.logging import RunLogger, setup_logging
from utils.run import (StopSignal, autocast_context, lr_factor, main_guard, parse_args, prepare_run_dir,
                       resolve_config, start_position, wrap_ddp)
from vqgan.model import VQGAN


def load_stage1(path: str, device, recorded: dict = None):
    """The frozen VQGAN, its content hash and the description a transformer checkpoint records.
    `recorded` (from a checkpoint) must describe the same model; a changed file is refused."""
    vq = VQGAN.from_checkpoint(path, map_location="cpu").to(device)
    sha = file_sha256(path)
    info = {"checkpoint": path, "sha256": sha, "model": to_dict(vq.cfg),
            "data": {"image_size": vq.image_size, "channels": vq.channels}}
    if recorded is not None and recorded["sha256"] != sha:
        raise UserError(f"the stage-1 checkpoint '{path}' has changed since this run started (sha256 "
                        f"{recorded['sha256'][:12]} then, {sha[:12]} now); the cached tokens no longer match it: "
                        f"restore that file, or start a new run (run.name=...) on the new stage-1 model")
    return vq, sha, info


def crop_windows(grids: torch.Tensor, window, generator=None) -> torch.Tensor:
    """grids: (B, H, W) -> (B, wh*ww) raster sequences of one random wh x ww crop each."""
    B, H, W = grids.shape
    wh, ww = window
    if (wh, ww) == (H, W):
        return grids.reshape(B, -1)
    top = torch.randint(0, H - wh + 1, (B,), generator=generator)
    left = torch.randint(0, W - ww + 1, (B,), generator=generator)
    rows = (top[:, None] + torch.arange(wh))[:, :, None]  # (B, wh, 1)
    cols = (left[:, None] + torch.arange(ww))[:, None, :]  # (B, 1, ww)
    return grids[torch.arange(B)[:, None, None], rows, cols].reshape(B, -1)  # (B, wh*ww)


def make_inputs(seq: torch.Tensor, labels: torch.Tensor, gcfg: GPTConfig, pkeep: float = 1.0,
                class_dropout: float = 0.0, generator=None) -> torch.Tensor:
    """seq: (B, L) codes -> (B, L) inputs [prefix, seq[:-1]], with pkeep corruption and class dropout."""
    B = seq.shape[0]
    if gcfg.num_classes:
        prefix = gcfg.codebook_size + labels.clone()
        if class_dropout > 0:
            drop = torch.rand(B, generator=generator) < class_dropout
            prefix[drop] = gcfg.null_class_token
    else:
        prefix = torch.full((B,), gcfg.start_token, dtype=torch.long)
    body = seq[:, :-1]
    if pkeep < 1.0:
        keep = torch.rand(body.shape, generator=generator) < pkeep
        body = torch.where(keep, body, torch.randint_like(body, gcfg.codebook_size, generator=generator))
    return torch.cat([prefix[:, None], body], 1)


@torch.no_grad()
def evaluate_loss(model, grids, labels, gcfg, window, batch_size, device, ctx, max_batches, rank, world):
    """Validation cross-entropy (nats per token) over this rank's share, summed over ranks."""
    model.eval()
    g = torch.Generator().manual_seed(1234)  # the same crops at every evaluation
    idx = torch.arange(rank, len(grids), world)
    tot = torch.zeros(2, device=device, dtype=torch.float64)
    for b, s in enumerate(range(0, len(idx), batch_size)):
        if max_batches and b >= max_batches:
            break
        sel = idx[s:s + batch_size]
        seq = crop_windows(grids[sel].long(), window, g)
        inp = make_inputs(seq, labels[sel], gcfg)
        with ctx:
            _, loss = model(inp.to(device), seq.to(device))
        tot[0] += loss.double() * seq.numel()
        tot[1] += seq.numel()
    all_reduce_sum(tot)
    model.train()
    return (tot[0] / tot[1].clamp_min(1)).item()


@torch.no_grad()
def sample_images(gpt, vq, grid, window, n, scfg, seed, device, tokens=None, labels=None):
    """n decoded samples (n, C, H, W) in [0, 1]; with `tokens`, the bottom halves are completed."""
    classes = None
    if gpt.cfg.num_classes:
        classes = labels[:n].tolist() if labels is not None else list(range(gpt.cfg.num_classes))
    g = torch.Generator(device=device).manual_seed(seed)
    kw = dict(temperature=scfg.temperature, top_k=scfg.top_k, top_p=scfg.top_p, cfg_scale=scfg.cfg_scale,
              generator=g)
    start = 0
    if tokens is not None:
        tokens, start = tokens[:n].long().to(device), (grid[0] // 2) * grid[1]
    out = sample_grid(gpt, n, grid, window, classes, tokens=tokens, start=start, **kw)
    return ((vq.decode_indices(out).float().clamp(-1, 1) + 1) / 2).cpu()


def train(argv=None):
    args = parse_args(argv, "configs/shapes_gpt.yaml", "Train the transformer (stage 2) over VQGAN codes.")
    dist_info = init_distributed()
    log = setup_logging(dist_info.is_main)
    cfg, ckpt = resolve_config(Stage2Config, args, "transformer")
    device = select_device(cfg.train.device, dist_info)
    t, d = cfg.train, cfg.data

    # ---------------------------------------------------------------- frozen stage 1 and the token cache
    vq, sha, stage1_info = load_stage1(cfg.stage1.checkpoint, device, ckpt["stage1"] if ckpt else None)
    if d.channels is not None and d.channels != vq.channels:
        raise UserError(f"data.channels={d.channels} but the stage-1 model takes {vq.channels}; "
                        "leave data.channels unset (null) to use the stage-1 value")
    d.channels = vq.channels
    f = vq.cfg.downsample_factor
    if d.image_size is None:
        d.image_size = vq.image_size
    elif d.image_size % f:  # the autoencoder is convolutional: larger images give larger grids
        raise UserError(f"data.image_size={d.image_size} is not a multiple of the stage-1 downsampling factor {f}")
    run_dir = prepare_run_dir(cfg, resuming=ckpt is not None, is_main=dist_info.is_main)
    train_set, val_set = build_datasets(d, cfg.run.seed, augment=False)  # encoded once: no random crops
    cache_dir = os.path.join(cfg.run.out_dir, "cache")
    key = dataset_key(d, cfg.run.seed)
    meta = {"stage1_sha256": sha, "codebook_size": vq.cfg.codebook_size,
            "grid": [d.image_size // f, d.image_size // f], "dataset": key}
    data = {}
    for split, ds in (("train", train_set), ("val", val_set)):
        path = cache_path(cache_dir, sha, key, split)
        if dist_info.is_main:  # one process encodes; the others wait, then read
            data[split] = load_or_encode(path, vq, ds, device, {**meta, "split": split}, log)
        if dist_info.enabled:
            dist.barrier()
        if not dist_info.is_main:
            data[split] = load_or_encode(path, vq, ds, device, {**meta, "split": split})
    train_grids, train_labels = data["train"]["tokens"], data["train"]["labels"]
    val_grids, val_labels = data["val"]["tokens"], data["val"]["labels"]
    grid = tuple(train_grids.shape[1:])
    window = tuple(cfg.model.window) if cfg.model.window else grid
    if window[0] > grid[0] or window[1] > grid[1]:
        raise UserError(f"model.window={list(window)} is larger than the {grid[0]}x{grid[1]} token grid of "
                        f"the stage-1 model; use at most [{grid[0]}, {grid[1]}] or [] for the whole grid")
    num_classes = 0
    if cfg.model.class_conditional:
        names = getattr(train_set, "class_names", None)
        if not names or int(train_labels.min()) < 0:
            raise UserError(f"data.dataset={d.dataset} has no class labels; set model.class_conditional=false")
        num_classes = len(names)

    # ---------------------------------------------------------------- model
    gcfg = GPTConfig(codebook_size=vq.cfg.codebook_size, block_size=window[0] * window[1], num_classes=num_classes,
                     n_layer=cfg.model.n_layer, n_head=cfg.model.n_head, n_embd=cfg.model.n_embd,
                     dropout=cfg.model.dropout)
    torch.manual_seed(cfg.run.seed)
    model = GPT(gcfg).to(device)
    opt = model.configure_optimizer(t.lr, t.betas, t.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    if ckpt is not None:
        if ckpt["gpt_config"] != to_dict(gcfg):
            raise UserError(f"the checkpoint's model {ckpt['gpt_config']} differs from the one this config and the "
                            f"stage-1 model give {to_dict(gcfg)}; resume with the original settings")
        model.load_state_dict(ckpt["model"], strict=True)
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
    step, epoch, batch_in_epoch = start_position(ckpt, cfg.run.seed, dist_info.rank, device)
    del ckpt
    if dist_info.is_main:
        dump_yaml(cfg, os.path.join(run_dir, "config.yaml"))
    fwd = torch.compile(model) if t.compile else model
    if dist_info.enabled:
        fwd = wrap_ddp(fwd, device)
    ctx = autocast_context(device, t.precision)
    logger = RunLogger(run_dir, dist_info.is_main)
    stop = StopSignal()
    micro = d.batch_size
    sampler = ResumableSampler(len(train_grids), cfg.run.seed, dist_info.rank, dist_info.world_size)
    if sampler.per_rank < micro:
        raise UserError(f"data.batch_size={micro} is larger than the {sampler.per_rank} token grids per process")
    n_params = sum(p.numel() for p in model.parameters())
    log.info(f"run folder {run_dir} | {device} {t.precision} x{dist_info.world_size} | GPT {n_params / 1e6:.2f}M "
             f"params, {gcfg.n_layer} layers x {gcfg.n_embd} | grid {grid[0]}x{grid[1]}, window "
             f"{window[0]}x{window[1]}, {gcfg.codebook_size} codes, {num_classes or 'no'} classes | "
             f"{len(train_grids)} train / {len(val_grids)} val grids")

    def save(at_step: int) -> None:
        rng = gather_rng_states(device)
        if not dist_info.is_main:
            return
        state = {"kind": "transformer", "format": FORMAT, "config": to_dict(cfg), "gpt_config": to_dict(gcfg),
                 "model": model.state_dict(), "step": at_step, "optimizer": opt.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rng, "data": {"epoch": epoch, "batch": batch_in_epoch},
                 "stage1": stage1_info, "window": list(window), "grid": list(grid)}
        save_run_checkpoint(state, run_dir, at_step, t.keep_last)

    def validate(at_step: int) -> dict:
        rng = torch.get_rng_state()
        val_loss = evaluate_loss(model, val_grids, val_labels, gcfg, window, micro, device, ctx,
                                 t.eval_batches, dist_info.rank, dist_info.world_size)
        metrics = {"step": at_step, "val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0))}
        if dist_info.is_main:
            model.eval()
            n = cfg.sample.num
            imgs = sample_images(model, vq, grid, window, n, cfg.sample, cfg.run.seed, device)
            logger.image("val/samples", make_grid(imgs, nrow=min(n, 8), padding=1), at_step)
            k = min(n, len(val_grids))
            done = sample_images(model, vq, grid, window, k, cfg.sample, cfg.run.seed, device,
                                 tokens=val_grids, labels=val_labels)
            real = ((vq.decode_indices(val_grids[:k].long().to(device)).float().clamp(-1, 1) + 1) / 2).cpu()
            logger.image("val/completions_real_above_completed", make_grid(torch.cat([real, done]), nrow=k,
                                                                           padding=1), at_step)
            model.train()
        torch.set_rng_state(rng)
        logger.scalars("val", {"loss": val_loss, "perplexity": metrics["val_perplexity"]}, at_step)
        logger.metrics(metrics)
        return metrics

    # ---------------------------------------------------------------- the loop
    model.train()
    sums, n_sums, t_log, tokens_since = torch.zeros((), device=device), 0, time.time(), 0
    metrics = {}
    bar = tqdm(total=t.max_steps, initial=step, disable=not dist_info.is_main, dynamic_ncols=True, desc="stage 2")
    sampler.set_epoch(epoch, batch_in_epoch * micro)
    order = iter(sampler)
    while step < t.max_steps:
        scale = lr_factor(step, t.warmup_steps, t.max_steps, t.lr_schedule, t.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = t.lr * scale
        for k in range(t.grad_accum):
            sel = [i for _, i in zip(range(micro), order)]
            if len(sel) < micro:  # epoch exhausted (the tail shorter than a batch is dropped)
                epoch, batch_in_epoch = epoch + 1, 0
                sampler.set_epoch(epoch)
                order = iter(sampler)
                sel = [i for _, i in zip(range(micro), order)]
            batch_in_epoch += 1
            seq = crop_windows(train_grids[sel].long(), window)
            inp = make_inputs(seq, train_labels[sel], gcfg, t.pkeep, t.class_dropout)
            last = k == t.grad_accum - 1
            with nullcontext() if last or not dist_info.enabled else fwd.no_sync():
                with ctx:
                    _, loss = fwd(inp.to(device, non_blocking=True), seq.to(device, non_blocking=True))
                scaler.scale(loss / t.grad_accum).backward()
            sums += loss.detach()
            n_sums += 1
        flags = torch.stack([(~torch.isfinite(loss.detach())).float(),
                             torch.tensor(float(stop.received is not None), device=device)])
        all_reduce_sum(flags)
        if flags[0].item() > 0:
            raise UserError(f"non-finite loss at step {step + 1} (cross-entropy={loss.item():.4g}); nothing was saved "
                            f"from this step, '{run_dir}/checkpoints/last.pt' is the last good state; lower "
                            f"train.lr, or use train.precision=fp32")
        if t.grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_since += micro * t.grad_accum * dist_info.world_size * gcfg.block_size
        bar.update(1)
        if step % t.log_every == 0 or step == t.max_steps:
            avg = (all_reduce_sum(sums.clone()) / (n_sums * dist_info.world_size)).item()
            elapsed = max(time.time() - t_log, 1e-9)
            logger.scalars("train", {"loss": avg, "lr": opt.param_groups[0]["lr"],
                                     "tokens_per_sec": tokens_since / elapsed}, step)
            bar.set_postfix(loss=f"{avg:.4f}", tok_s=f"{tokens_since / elapsed:.0f}")
            sums, n_sums, t_log, tokens_since = torch.zeros((), device=device), 0, time.time(), 0
        stopping = flags[1].item() > 0
        if step % t.eval_every == 0 or step == t.max_steps:
            metrics = validate(step)
            log.info(f"step {step}: val_loss {metrics['val_loss']:.4f}, val_perplexity {metrics['val_perplexity']:.2f}")
        if step % t.ckpt_every == 0 or step == t.max_steps or stopping:
            save(step)
        if stopping:
            bar.close()
            log.info(f"stopped by {stop.received or 'a signal on another rank'} at step {step}; checkpoint saved, "
                     f"continue with: python train_transformer.py --resume {run_dir}/checkpoints/last.pt")
            logger.close()
            return
    bar.close()
    if not metrics:
        metrics = validate(step)
        save(step)
    logger.close()
    log.info(f"done: {step} steps; val_loss {metrics['val_loss']:.4f}, val_perplexity "
             f"{metrics['val_perplexity']:.2f}; run folder {run_dir}")


if __name__ == "__main__":
    main_guard(train)
