"""Muon (Jordan et al., 2024, "Muon: an optimizer for hidden layers in neural networks"): SGD with Nesterov momentum
whose update of each hidden weight matrix is replaced by the nearest semi-orthogonal matrix, computed by a few
Newton-Schulz iterations, and scaled by sqrt(max(1, rows / cols)). As in the reference, the query, key and value
matrices are orthogonalised each on its own, although the attention stores them as one fused (3C, C) weight; no
weight decay on the Muon matrices. The parameters that are not hidden matrices (embeddings, the output head, biases,
LayerNorms) are updated by AdamW in the same optimizer, so that a training loop, its gradient scaler and its
checkpoints see one optimizer.

`train.optimizer: muon` (stage 2): Muon for the transformer blocks' weight matrices at train.muon_lr, AdamW at
train.lr for the rest (README, Sample quality, has what it does for the shapes GPT).
"""
import math

import torch

from transformer.gpt import GPT

# The quintic iteration's coefficients: chosen (Jordan et al.) to push every singular value of a matrix of norm <= 1
# into about [0.7, 1.2] in five steps, fast rather than exactly to 1
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The matrix g (m, n) with its singular values brought near 1 (about U V^T of its SVD), by `steps` quintic
    Newton-Schulz iterations in fp32."""
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the wide orientation: the Gram matrix x x^T is the smaller one
        x = x.T
    x = x / (x.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def muon_update(g: torch.Tensor, parts: int = 1) -> torch.Tensor:
    """The Muon update of a (m, n) matrix's momentum-corrected gradient g: each of its `parts` equal blocks of rows
    (a fused query/key/value weight: 3) orthogonalised on its own and scaled by sqrt(max(1, rows / cols)) of that
    block."""
    blocks = g.chunk(parts, dim=0)
    return torch.cat([orthogonalize(b) * math.sqrt(max(1.0, b.shape[0] / b.shape[1])) for b in blocks])


class Muon(torch.optim.Optimizer):
    """Parameter groups with `muon=True` (2-D weights) take Muon steps: momentum buffer m <- mu m + g, update
    muon_update(g + mu m) (Nesterov), weight decay decoupled; `parts` maps a parameter to the number of matrices
    fused in it (default 1). The other groups take AdamW steps with their lr, betas, eps and weight_decay. A group's
    `base_lr` (the rate the schedule scales) is the one it was built with, not the one a loaded state dict holds, so
    that a changed rate applies on resume as a changed train.lr does."""

    def __init__(self, groups: list[dict], lr: float = 0.02, momentum: float = 0.95, betas=(0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.0, parts: dict = None):
        for g in groups:
            g.setdefault("muon", False)
            if g["muon"] and any(p.dim() != 2 for p in g["params"]):
                raise ValueError("Muon updates 2-D weight matrices only; put the others in an AdamW group")
        super().__init__(groups, dict(lr=lr, momentum=momentum, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))
        self.parts = parts or {}

    def load_state_dict(self, state_dict: dict) -> None:
        rates = [g.get("base_lr") for g in self.param_groups]
        super().load_state_dict(state_dict)
        for g, rate in zip(self.param_groups, rates):
            if rate is not None:
                g["base_lr"] = rate

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if wd:
                    p.mul_(1 - lr * wd)
                if group["muon"]:
                    if not state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    buf, mu = state["momentum_buffer"], group["momentum"]
                    buf.mul_(mu).add_(p.grad)
                    update = muon_update(p.grad.add(buf, alpha=mu), self.parts.get(p, 1))
                    p.add_(update.to(p.dtype), alpha=-lr)
                else:
                    if not state:
                        state["step"] = 0
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                    b1, b2 = group["betas"]
                    state["step"] += 1
                    t = state["step"]
                    state["exp_avg"].lerp_(p.grad, 1 - b1)
                    state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                    denom = (state["exp_avg_sq"] / (1 - b2 ** t)).sqrt_().add_(group["eps"])
                    p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - b1 ** t))
        return loss


def stage2_optimizer(model: GPT, t) -> torch.optim.Optimizer:
    """The optimizer train config `t` names for a transformer: AdamW with weight decay on its matmul weights
    (GPT.configure_optimizer), or Muon for the 2-D weights inside its blocks (lr train.muon_lr, no weight decay)
    and AdamW for the embeddings, the head (weight decay) and the vectors; the fused query/key/value weights are
    orthogonalised as three matrices. Each group's `base_lr` is the rate the schedule scales
    (utils.train.loop.set_lr)."""
    if t.optimizer == "adamw":
        return model.configure_optimizer(t.lr, t.betas, t.weight_decay)
    decay, no_decay = model.decay_split()  # the matmul weights: the blocks' (Muon) and the head's (AdamW)
    hidden = [p for name, p in decay if name.startswith("blocks.")]
    head = [p for name, p in decay if not name.startswith("blocks.")]
    rest = [p for _, p in no_decay]
    groups = [{"params": hidden, "muon": True, "lr": t.muon_lr, "base_lr": t.muon_lr, "weight_decay": 0.0},
              {"params": head, "weight_decay": t.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    parts = {p: 3 for name, p in decay if name.endswith("attn.qkv.weight")}
    return Muon([g for g in groups if g["params"]], lr=t.lr, betas=t.betas, parts=parts)
