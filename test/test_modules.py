import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model_config
from vqgan.codebook import Codebook, usage_from_counts
from vqgan.discriminator import PatchDiscriminator
from vqgan.losses import (LossWeights, adaptive_weight, discriminator_loss, generator_backward, generator_loss,
                          hinge_d_loss, vanilla_d_loss)
from vqgan.model import VQGAN, VQGANConfig


def count(m):
    return sum(p.numel() for p in m.parameters())


def test_imagenet_f16_parameter_counts():
    cfg = VQGANConfig(image_size=256, channels=3, ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2,
                      attn_resolutions=[16], z_channels=256, codebook_size=1024, codebook_dim=256,
                      codebook_l2_norm=False, codebook_restart_after=0)
    m = VQGAN(cfg)
    assert count(m.encoder) == 29_298_176
    assert count(m.decoder) == 42_449_795
    assert count(m) == 72_141_699
    # the usage counters are buffers, never parameters
    assert {n for n, _ in m.named_buffers()} == {"codebook.unused_steps", "codebook.window_counts",
                                                 "codebook._pending_counts"}


def test_shapes_and_grayscale():
    m = VQGAN(tiny_model_config(channels=1))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    x_rec, loss, info = m(x)
    assert x_rec.shape == x.shape and loss.ndim == 0 and info["indices"].shape == (2, 8, 8)
    assert m.latent_size == 8


def test_straight_through_reaches_encoder(tiny_vqgan):
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    x_rec, vq_loss, _ = tiny_vqgan(x)
    x_rec.pow(2).mean().backward()  # reconstruction only: the encoder can learn only through the estimator
    g = tiny_vqgan.encoder.conv_in.weight.grad
    assert g is not None and g.abs().sum() > 0
    assert tiny_vqgan.codebook.embedding.weight.grad is None  # codes learn from the codebook term only


def test_decode_indices_equals_decoder_on_quantized(tiny_vqgan):
    tiny_vqgan.eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z_q, _, idx = tiny_vqgan.encode(x)
        x_rec, _, info = tiny_vqgan(x)
        idx2 = tiny_vqgan.encode_to_indices(x)
        assert torch.equal(idx, idx2) and torch.equal(info["indices"], idx)
        assert torch.equal(tiny_vqgan.codebook.lookup(idx), z_q)
        assert torch.equal(tiny_vqgan.decode_indices(idx2), x_rec)  # exact: the straight-through adds exact zero
        assert torch.equal(tiny_vqgan.decode(z_q), x_rec)
        # indices -> images -> indices is stable for codes the decoder reproduces; round trip of the lookup itself:
        assert torch.equal(tiny_vqgan.codebook.nearest(tiny_vqgan.codebook.codes()), torch.arange(16))


def test_l2_mode_unit_norm_codes():
    cb = Codebook(32, 8, l2_norm=True)
    z = torch.randn(2, 8, 4, 4) * 5
    z_q, _, idx = cb(z)
    assert torch.allclose(z_q.norm(dim=1), torch.ones(2, 4, 4), atol=1e-6)
    assert torch.allclose(cb.codes().norm(dim=1), torch.ones(32), atol=1e-6)
    # cosine lookup: the chosen code maximises the cosine similarity
    zf = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 8), dim=1)
    assert torch.equal(idx.flatten(), (zf @ cb.codes().t()).argmax(1))


def test_chunked_lookup_matches_full_distance_matrix():
    torch.manual_seed(0)
    cb = Codebook(1000, 16, chunk_elements=3000)  # 3 rows per block
    cb.embedding.weight.data.normal_()
    z = torch.randn(50, 16)
    full = torch.cdist(z, cb.embedding.weight).argmin(1)
    assert torch.equal(cb.nearest(z), full)
    assert torch.equal(cb.nearest(z[:2]), full[:2])  # fewer rows than one block


def test_distances_fp32_under_autocast():
    cb = Codebook(64, 8)
    cb.embedding.weight.data.normal_()
    z = torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, loss, idx = cb(z.bfloat16())
    assert z_q.dtype == torch.float32 and loss.dtype == torch.float32
    ref = torch.cdist(z.bfloat16().float().permute(0, 2, 3, 1).reshape(-1, 8), cb.embedding.weight).argmin(1)
    assert torch.equal(idx.flatten(), ref)


def test_beta_weights_the_commitment_term():
    cb = Codebook(4, 2, beta=0.25)
    cb.embedding.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    z = torch.tensor([[0.5], [0.0]]).reshape(1, 2, 1, 1).requires_grad_()  # nearest code 0, difference (-0.5, 0)
    _, loss, idx = cb(z)
    loss.backward()
    assert idx.item() == 0
    # d/dz beta*mean((z-e)^2) = beta * 2 (z-e) / D ; d/de mean((e-z)^2) = 2 (e-z) / D
    assert torch.allclose(z.grad.flatten(), 0.25 * 2 * torch.tensor([-0.5, 0.0]) / 2)
    assert torch.allclose(cb.embedding.weight.grad[0], 2 * torch.tensor([0.5, 0.0]) / 2)
    assert torch.allclose(loss, torch.tensor(1.25 * 0.25 / 2))


def test_dead_code_restart_revives_codes_on_collapsed_batch():
    torch.manual_seed(0)
    cb = Codebook(16, 4, l2_norm=False, restart_after=2)
    cb.embedding.weight.data.normal_()
    cb.train()
    z = torch.randn(1, 4, 8, 8) * 0.01 + 10.0  # a collapsed batch: every vector picks the same code
    restarted = []
    for _ in range(3):
        cb(z)
        restarted.append(cb.step_update())
    assert restarted[0] == 0 and restarted[1] == 15  # 15 codes unused for 2 steps are re-seeded
    # re-seeded codes are encoder outputs, so the batch now spreads over many codes
    _, _, idx = cb(z + 0.01 * torch.randn_like(z))
    assert idx.unique().numel() > 5
    assert (cb.unused_steps < 2).all()


def test_restart_off_keeps_codes():
    cb = Codebook(16, 4, restart_after=0)
    cb.train()
    before = cb.embedding.weight.clone()
    for _ in range(5):
        cb(torch.randn(1, 4, 2, 2))
        assert cb.step_update() == 0
    assert torch.equal(before, cb.embedding.weight)


def test_usage_stats_over_a_window():
    cb = Codebook(8, 2)
    cb.train()
    cb.embedding.weight.data = torch.eye(2).repeat(4, 1) * torch.arange(1, 9).view(8, 1)
    cb(torch.tensor([[1.0, 0.0], [0.0, 2.0]]).t().reshape(1, 2, 1, 2))  # codes 0 and 1
    cb.step_update()
    used, ppl = cb.usage_stats(reset=True)
    assert used == pytest.approx(2 / 8) and ppl == pytest.approx(2.0)
    assert cb.usage_stats() == (0.0, 0.0)
    assert usage_from_counts(torch.tensor([1.0, 1, 1, 1])) == (1.0, pytest.approx(4.0))


def test_discriminator():
    d = PatchDiscriminator(in_channels=1, ch=8, n_layers=2)
    assert d(torch.randn(2, 1, 16, 16)).shape == (2, 1, 2, 2) and PatchDiscriminator.output_size(16, 2) == 2
    assert PatchDiscriminator.output_size(32, 3) == 2 and PatchDiscriminator.output_size(16, 3) == 0
    d3 = PatchDiscriminator(3, 64, 3)
    assert d3(torch.randn(1, 3, 32, 32)).shape == (1, 1, 2, 2)
    convs = [m for m in d3.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and all(c.kernel_size == (4, 4) for c in convs)
    w = torch.cat([c.weight.flatten() for c in convs])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    bns = [m for m in d3.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 3 and all(torch.equal(b.bias, torch.zeros_like(b.bias)) for b in bns)
    # the official 3-layer, 64-channel discriminator has 2,765,633 parameters
    assert count(d3) == 2_765_633


def test_gan_losses_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * ((0 + 0.5) / 2 + (0 + 1) / 2))
    sp = F.softplus
    assert vanilla_d_loss(real, fake).item() == pytest.approx(
        0.5 * ((sp(-real)).mean() + sp(fake).mean()).item())
    assert generator_loss(fake).item() == 1.0
    assert adaptive_weight(torch.full((4,), 3.0), torch.full((4,), 0.5)).item() == pytest.approx(6.0 / (1 + 1e-4))
    assert adaptive_weight(torch.full((4,), 3e-4), torch.zeros(4)).item() == pytest.approx(6.0)
    assert adaptive_weight(torch.ones(4) * 1e9, torch.zeros(4)).item() == 1e4  # clamped
    assert adaptive_weight(torch.ones(4), torch.ones(4)).item() == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("with_disc", [False, True])
def test_generator_backward_equals_naive_autograd(with_disc):
    """The single-pass adaptive weight gives the gradients of the textbook formulation."""
    torch.manual_seed(0)
    model = VQGAN(tiny_model_config())
    disc = PatchDiscriminator(3, 8, 2)
    lp = torch.nn.Conv2d(3, 3, 3, padding=1)  # a differentiable stand-in for LPIPS: (x, y) -> (N,)
    lpips = lambda a, b: (lp(a) - lp(b)).pow(2).mean(dim=(1, 2, 3))  # noqa: E731
    weights = LossWeights(l1=1.0, l2=0.5, perceptual=0.7, codebook=1.3, disc=0.8)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    params = list(model.parameters())

    x_rec, vq, _ = model(x)
    terms = generator_backward(x, x_rec, vq, model.decoder.last_layer, weights, lpips=lpips,
                               disc=disc if with_disc else None, grad_scale=4.0)
    ours = [p.grad.clone() / 4.0 for p in params]
    assert all(p.grad is None for p in disc.parameters())  # the generator step leaves the discriminator alone
    model.zero_grad()
    disc.zero_grad()

    x_rec, vq, _ = model(x)
    nll = (x - x_rec).abs().mean() + 0.5 * F.mse_loss(x_rec, x) + 0.7 * lpips(x_rec, x).mean()
    loss = nll + 1.3 * vq
    if with_disc:
        g = -disc(x_rec).mean()
        last = model.decoder.last_layer
        gn = torch.autograd.grad(nll, last, retain_graph=True)[0].norm()
        gg = torch.autograd.grad(g, last, retain_graph=True)[0].norm()
        lam = (gn / (gg + 1e-4)).clamp(0, 1e4).detach() * 0.8
        loss = loss + lam * g
        assert terms["adaptive_weight"].item() == pytest.approx(lam.item(), rel=1e-4)
    loss.backward()
    assert terms["total"].item() == pytest.approx(loss.item(), rel=1e-5)
    for a, p in zip(ours, params):
        assert torch.allclose(a, p.grad, atol=1e-6, rtol=1e-4)


def test_discriminator_loss_sends_no_gradient_to_generator(tiny_vqgan):
    disc = PatchDiscriminator(3, 8, 2)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    x_rec, _, _ = tiny_vqgan(x)
    out = discriminator_loss(disc, x, x_rec, "hinge")
    out["d_loss"].backward()
    assert all(p.grad is None for p in tiny_vqgan.parameters())
    assert all(p.grad is not None for p in disc.parameters())


def test_precision_and_recall_on_point_clouds_with_known_answers():
    from utils.eval.metrics import precision_recall
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 8, generator=g)
    assert precision_recall(a, a) == (1.0, 1.0)  # identical sets
    assert precision_recall(a, a + 100.0) == (0.0, 0.0)  # disjoint sets
    two = torch.cat([a, a + 100.0])  # real: two far clusters; fake: one of them
    p, r = precision_recall(two, a)
    assert p == 1.0 and r == 0.5
    p, r = precision_recall(a, torch.randn(300, 8, generator=g) * 0.5)  # a tighter cloud: faithful, less varied
    assert p > 0.9 and r < p
