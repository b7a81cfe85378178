"""Stage 1: train a VQGAN (autoencoder + codebook, with LPIPS and a PatchGAN discriminator).

    python train_vqgan.py [--config configs/shapes_vqgan.yaml] [--resume [CKPT]] [section.key=value ...]
    torchrun --nproc_per_node=N train_vqgan.py ...
"""
import time
from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader
from torchvision.utils import make_grid

from utils.core.distributed import all_reduce_sum
from utils.core.errors import UserError
from utils.core.precision import autocast_context
from utils.core.runlog import RunLogger
from utils.data.conditions import IGNORE, as_picture, class_targets
from utils.data.registry import build_datasets, layout_palette
from utils.eval.metrics import InceptionFeatures
from utils.eval.reconstruction import evaluate
from utils.train.batches import Batches, ResumableSampler
from utils.train.loop import (EMA, Pace, StopSignal, check_step, clip_gradients, due, end_of_run, figures,
                              keeps_signal_handlers, optimizer_step, rng_kept, save_then_validate, set_lr)
from utils.train.run import (load_init, main_guard, prepare_run_dir, restore, save_checkpoint, start_position,
                             start_run, wrap_ddp, write_config)
from utils.train.stage1_config import Stage1Config
from vqgan.discriminator import PatchDiscriminator
from vqgan.losses import LossWeights, discriminator_loss, generator_backward
from vqgan.lpips import LPIPS
from vqgan.model import VQGAN


@keeps_signal_handlers
def train(argv=None):
    run = start_run(argv, Stage1Config, "vqgan", "train_vqgan.py", "configs/shapes_vqgan.yaml",
                    "Train a VQGAN (stage 1).")
    cfg, ckpt, device, dist_info, log = run.cfg, run.ckpt, run.device, run.dist, run.log
    prepare_run_dir(run)
    t, lc = cfg.train, cfg.loss

    # ---------------------------------------------------------------- data
    train_set, val_set = build_datasets(cfg.data, cfg.run.seed)
    micro = cfg.data.batch_size
    sampler = ResumableSampler(len(train_set), cfg.run.seed, dist_info.rank, dist_info.world_size)
    if sampler.per_rank < micro:
        raise UserError(f"data.batch_size={micro} is larger than the {sampler.per_rank} training images per process")
    # own generators: creating an iterator must not draw from the training RNG (exact resume);
    # augmentation is seeded by (seed, epoch, index) in the datasets themselves
    loader_kw = dict(num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                     persistent_workers=False, generator=torch.Generator())
    train_loader = DataLoader(train_set, micro, sampler=sampler, drop_last=True, **loader_kw)
    val_sampler = ResumableSampler(len(val_set), 0, dist_info.rank, dist_info.world_size, shuffle=False)
    val_loader = DataLoader(val_set, micro, sampler=val_sampler, **loader_kw)

    # ---------------------------------------------------------------- models and losses
    torch.manual_seed(cfg.run.seed)  # identical initialisation on every rank
    model = VQGAN(cfg.model).to(device)
    disc = PatchDiscriminator(cfg.model.channels, lc.disc_channels, lc.disc_layers).to(device)
    if run.init is not None:
        load_init(run, model=model, disc=disc)
        model.codebook.reset_usage()  # a new run counts code use afresh
    lpips = LPIPS(lc.lpips_vgg_weights).to(device) if lc.perceptual_weight > 0 else None  # fails here when offline
    inception = InceptionFeatures().to(device) if t.rfid else None
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    d_lr = lc.disc_lr if lc.disc_lr is not None else t.lr
    d_opt = torch.optim.Adam(disc.parameters(), lr=d_lr, betas=tuple(t.betas))
    scaler = torch.amp.GradScaler(device.type, enabled=run.precision == "fp16")
    d_scaler = torch.amp.GradScaler(device.type, enabled=run.precision == "fp16")
    ema = EMA(model, t.ema_decay) if t.ema_decay > 0 else None
    if ckpt is not None:
        restore(ckpt, model=model, disc=disc, optimizer=opt, disc_optimizer=d_opt, scaler=scaler,
                disc_scaler=d_scaler)
        if ema is not None:
            ema.load_state_dict(ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"])
    step, epoch, batch_in_epoch = start_position(run)
    del ckpt
    write_config(run)
    fwd_model = torch.compile(model) if t.compile else model
    if dist_info.enabled:
        # the codebook keeps its own counters in sync (step_update), so buffers are not broadcast
        fwd_model = wrap_ddp(fwd_model, device, broadcast_buffers=False)
        d_train = wrap_ddp(disc, device)
    else:
        d_train = disc
    ctx = autocast_context(device, run.precision)
    weights = LossWeights(lc.l1_weight, lc.l2_weight, lc.perceptual_weight, lc.codebook_weight, lc.disc_weight)
    class_maps = cfg.data.tokenize == "condition" and cfg.data.condition == "segmentation"  # cross-entropy on classes
    stop = StopSignal()
    n_params = sum(p.numel() for p in model.parameters())
    log.info(f"run folder {run.dir} | {device} {run.precision} x{dist_info.world_size} | VQGAN {n_params / 1e6:.2f}M "
             f"params, {cfg.model.codebook_size} codes x {cfg.model.codebook_dim} | {len(train_set)} train / "
             f"{len(val_set)} val images | {'resuming at step ' + str(step) if step else 'from scratch'}")
    logger = RunLogger(run.dir, dist_info.is_main, t.max_steps, step, "stage 1")

    def save(at_step: int) -> None:
        save_checkpoint(run, at_step, batches.epoch, batches.batch, model_args=model.model_args, model=model.state_dict(),
                        optimizer=opt.state_dict(), disc=disc.state_dict(), disc_optimizer=d_opt.state_dict(),
                        scaler=scaler.state_dict(), disc_scaler=d_scaler.state_dict(),
                        ema=ema.state_dict() if ema else None)

    def validate(at_step: int) -> dict:
        with rng_kept():
            net = ema.model if ema is not None else model
            metrics, (x, x_rec) = evaluate(net, val_loader, device, ctx, lpips, inception, t.eval_batches, class_maps,
                                           cfg.data.crop_size)
        model.train()
        metrics = {"step": at_step, **metrics}
        logger.scalars("val", {k: v for k, v in metrics.items() if k != "step"}, at_step)
        if cfg.data.tokenize == "condition":  # maps as pictures: class maps in colour
            colours = layout_palette(cfg.data.dataset, cfg.data.condition_classes)
            x, x_rec = (as_picture(m, cfg.data.condition, logits, colours) * 2 - 1
                        for m, logits in ((x, False), (x_rec, class_maps)))
        grid = make_grid(torch.cat([x, x_rec.clamp(-1, 1)]).add(1).div(2), nrow=x.shape[0], padding=1)
        logger.image("val/inputs_above_reconstructions", grid, at_step)
        logger.metrics(metrics)
        log.info(f"step {at_step}: {figures(metrics)}")
        return metrics

    # ---------------------------------------------------------------- the loop
    model.train()
    disc.train()
    last_layer = model.decoder.last_layer
    sums, n_sums = {}, 0
    t_log, images_since = time.time(), 0
    metrics = {}
    batches = Batches(train_loader, sampler, micro, epoch, batch_in_epoch, datasets=(train_set,))
    if step >= t.max_steps:  # resumed at or past the end: no step to take, but a checkpoint and an evaluation
        metrics = save_then_validate(step, t, save, validate, metrics, at_end=True)
    pace = Pace(step, t.max_steps, "configs/custom_cpu_vqgan.yaml")  # one line when the run would take more than a day
    stopping = False
    while step < t.max_steps and not stopping:
        set_lr(step, t, (opt, t.lr), (d_opt, d_lr))
        gan_on = step >= lc.disc_start
        micro_terms = []
        for k in range(t.grad_accum):
            x, _ = next(batches)
            x = x.to(device, non_blocking=True)
            last_micro = k == t.grad_accum - 1
            sync = nullcontext() if last_micro or not dist_info.enabled else fwd_model.no_sync()
            with sync:
                with ctx:
                    x_rec, vq_loss, _ = fwd_model(x)
                grad_scale = scaler.scale(torch.ones((), device=device)) / t.grad_accum if scaler.is_enabled() \
                    else 1.0 / t.grad_accum
                # the generator pass uses the bare discriminator: its weights get no update from it
                terms = generator_backward(x, x_rec, vq_loss, last_layer, weights, lpips=lpips,
                                           disc=disc if gan_on else None, grad_scale=grad_scale, autocast=ctx,
                                           class_targets=class_targets(x) if class_maps else None,
                                           ignore_index=IGNORE)
            if gan_on:
                d_sync = nullcontext() if last_micro or not dist_info.enabled else d_train.no_sync()
                with d_sync:
                    with ctx:
                        d_terms = discriminator_loss(d_train, x, x_rec, lc.disc_loss)
                    d_scaler.scale(d_terms["d_loss"] / t.grad_accum).backward()
                terms.update(d_terms)
            micro_terms.append(terms)
            for name, v in terms.items():
                sums[name] = sums.get(name, 0.0) + v.detach().float()
            n_sums += 1

        norms = {"grad_norm": clip_gradients(opt, scaler, model.parameters(), t.grad_clip)}
        if gan_on:
            norms["disc_grad_norm"] = clip_gradients(d_opt, d_scaler, disc.parameters(), t.grad_clip)
        stopping = check_step(run, stop, step, micro_terms, norms)  # before anything of this step is applied
        optimizer_step(opt, scaler)
        if gan_on:
            optimizer_step(d_opt, d_scaler)
        restarted = model.codebook.step_update()
        if ema is not None:
            ema.update(model)
        step += 1
        images_since += micro * t.grad_accum * dist_info.world_size
        logger.bar.update(1)
        slow = pace.estimate(step)
        if slow:
            log.info(slow)

        if due(step, t.log_every, t.max_steps):
            names = sorted(sums)
            vals = all_reduce_sum(torch.stack([sums[k] for k in names])) / (n_sums * dist_info.world_size)
            logged = dict(zip(names, vals.tolist()))
            used, ppl = model.codebook.usage_stats(reset=True)
            elapsed = time.time() - t_log
            logged.update(lr=opt.param_groups[0]["lr"], images_per_sec=images_since / max(elapsed, 1e-9),
                          codebook_usage=used, perplexity=ppl, restarted_codes=restarted)
            logger.scalars("train", logged, step)
            rec = "ce" if class_maps else "l1"
            logger.bar.set_postfix({"loss": f"{logged['total']:.4f}", rec: f"{logged[rec]:.4f}", "usage": f"{used:.2f}",
                                    "img_s": f"{logged['images_per_sec']:.0f}"})
            sums, n_sums, t_log, images_since = {}, 0, time.time(), 0
        metrics = save_then_validate(step, t, save, validate, metrics, stopping)
    end_of_run(run, logger, step, stop if stopping else None, metrics)


if __name__ == "__main__":
    main_guard(train)
