"""A GPT over codebook indices (minGPT/nanoGPT mould) with a preallocated KV cache.

Vocabulary: ids 0..K-1 are codes; K.. are special tokens that only ever appear as the one-token
prefix: a start token for unconditional and conditional models, or one token per class plus a "null"
class (for classifier-free guidance) for class-conditional ones; then, for conditional models, the
Kc codes of the condition tokenizer. A conditional sequence is [the window's condition codes, start,
image codes]: the condition comes first (the official cond_stage layout) and the loss is taken on the
image codes only. The output head predicts image codes only, so no other token can ever be sampled.

`kind="maskgit"` (Chang et al., 2022) is the same transformer without the causal mask: it reads [the window's
condition codes,] the prefix token and all the window's codes, some replaced by a [MASK] token (the id after
the special tokens, an input only), and predicts the codes at every position (transformer/maskgit.py).
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.core.checkpoint import load_checkpoint_file
from utils.core.config import ConfigError, choices, num


@dataclass
class GPTConfig:
    """Everything a GPT is rebuilt from (stored in its checkpoint as `model_args`)."""
    codebook_size: int          # K: number of codes (the output classes)
    window: tuple[int, int]     # (h, w): the token grid of one training sequence, sampled in raster order
    num_classes: int = 0        # 0: unconditional
    cond_codebook_size: int = 0  # Kc: codes of the condition tokenizer; 0: no condition map
    n_layer: int = 8
    n_head: int = 8
    n_embd: int = 512
    dropout: float = 0.0
    kind: str = "gpt"           # gpt: causal, raster order; maskgit: bidirectional, masked-token prediction

    def __post_init__(self):
        self.window = tuple(self.window)
        if self.kind not in ("gpt", "maskgit"):
            raise ValueError(f"unknown model kind {self.kind!r}")

    @property
    def masked(self) -> bool:
        return self.kind == "maskgit"

    @property
    def block_size(self) -> int:
        """Tokens per sequence: window_h * window_w (the prefix takes slot 0, the last code is never an input; a
        masked model reads all the codes after the prefix), preceded by as many condition codes for a conditional
        model."""
        L = self.window[0] * self.window[1]
        return L + (1 if self.masked else 0) + (L if self.cond_codebook_size else 0)

    @property
    def vocab_size(self) -> int:
        return self.cond_offset + self.cond_codebook_size

    @property
    def cond_offset(self) -> int:
        """The id of condition code 0: after the image codes and the special tokens."""
        return self.codebook_size + (self.num_classes + 1 if self.num_classes else 1) + (1 if self.masked else 0)

    @property
    def mask_token(self) -> int:
        """A masked model's [MASK] id: the last special token (never an output: the head predicts codes only)."""
        if not self.masked:
            raise ValueError("only a masked (maskgit) model has a [MASK] token")
        return self.cond_offset - 1

    @property
    def start_token(self) -> int:
        if self.num_classes:
            raise ValueError("a class-conditional model starts from a class token")
        return self.codebook_size

    def class_token(self, c: int) -> int:
        return self.codebook_size + c

    @property
    def null_class_token(self) -> int:
        return self.codebook_size + self.num_classes


@dataclass
class GPTSection:
    """The `model` section of a stage-2 config: the transformer's size and kind. Its vocabulary and sequence length
    come from the stage-1 model and the data (`config`)."""
    kind: str = choices("gpt", "maskgit", default="gpt")  # gpt: autoregressive (the paper); maskgit: a bidirectional
                                        # transformer trained on masked tokens, sampled by parallel decoding
    n_layer: int = num(4, min=1)        # transformer blocks
    n_head: int = num(4, min=1)         # attention heads (n_embd must divide by it)
    n_embd: int = num(256, min=1)       # width
    dropout: float = num(0.0, min=0, below=1)  # on attention and residual outputs
    window: list[int] = num(factory=list, min=1)  # [h, w] tokens per training crop; [] = the whole grid
    class_conditional: bool = False     # a token per class (and a null class for guidance) as the prefix

    def check(self, where: str) -> None:
        if self.window and len(self.window) != 2:
            raise ConfigError(f"model.window must be [] (the whole grid) or [h, w] with h, w >= 1, got {self.window} "
                              f"({where})")
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head} ({where})")

    def config(self, codebook_size: int, grid: tuple[int, int], num_classes: int, cond_codebook_size: int) -> GPTConfig:
        """The GPT over `codebook_size` codes of a `grid` of tokens (the window: model.window, or the whole grid),
        with `num_classes` classes and the codes of a condition tokenizer."""
        return GPTConfig(codebook_size=codebook_size, window=tuple(self.window) or grid, num_classes=num_classes,
                         cond_codebook_size=cond_codebook_size, n_layer=self.n_layer, n_head=self.n_head,
                         n_embd=self.n_embd, dropout=self.dropout, kind=self.kind)


class KVCache:
    """Preallocated keys and values for every layer: (n_layer, B, n_head, block_size, head_dim) each."""

    def __init__(self, cfg: GPTConfig, batch: int, device, dtype):
        shape = (cfg.n_layer, batch, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled


EXPLICIT_MAX = 384  # keys: explicit attention up to here on CPU under autocast, SDPA's fused kernel beyond


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                       dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v with the two products in the autocast dtype and the softmax
    in fp32: q (B, nh, Tq, hd), k and v (B, nh, Tk, hd); a causal mask aligns the queries with the last
    Tq keys. Used on CPU under autocast for up to EXPLICIT_MAX keys, where SDPA is slower: its math backend
    runs everything in fp32 and its fused kernel's backward is slow on short sequences (a 4 x 256 GPT step on
    64 grids of 8x8: 134 ms here, 171 ms with the math backend, 215 ms with the fused kernel). Longer
    sequences go to SDPA's fused kernel, which never forms the (Tq, Tk) matrix: attention forward and backward
    over 8,192 tokens in bf16 on one core, explicit against fused: 47 against 119 ms at 65 tokens a sequence,
    168 against 208 at 257, 407 against 201 at 513, 1,061 against 239 at 1,025."""
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, nh, Tq, Tk)
    att = att.float()
    if causal:
        Tq, Tk = q.shape[-2], k.shape[-2]
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
        att = att.masked_fill(~mask, float("-inf"))
    att = F.dropout(att.softmax(-1), dropout_p).to(v.dtype)
    return att @ v  # (B, nh, Tq, hd)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.dropout, self.causal = cfg.n_head, cfg.dropout, not cfg.masked
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache = None, layer: int = 0, pos: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        causal = self.causal
        if cache is not None:
            cache.k[layer, :, :, pos:pos + T] = k
            cache.v[layer, :, :, pos:pos + T] = v
            k, v = cache.k[layer, :, :, :pos + T], cache.v[layer, :, :, :pos + T]  # (B, nh, pos+T, hd)
            if pos > 0:
                if T != 1:
                    raise ValueError("with a filled cache, feed one token at a time")
                causal = False  # one new query attends to every cached position
        dropout_p = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and torch.is_autocast_enabled("cpu") and k.shape[-2] <= EXPLICIT_MAX:
            y = explicit_attention(q, k, v, causal, dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd), nn.Dropout(cfg.dropout))

    def forward(self, x, cache=None, layer=0, pos=0):
        x = x + self.attn(self.ln_1(x), cache, layer, pos)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.codebook_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 initialisation: N(0, 0.02) for embeddings and linear weights, zero biases, LayerNorm (1, 0);
        # the projections that write into the residual stream are scaled by 1/sqrt(2 n_layer) so that
        # the stream's variance does not grow with depth.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, 0.0, 0.02 / math.sqrt(2 * self.cfg.n_layer))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor = None):
        """idx: (B, T) token ids (prefix first) -> (logits (B, T, K), the mean cross-entropy in nats per token
        of the last T' positions against targets (B, T') (positions whose target is -100 are not scored), or None
        without targets)."""
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size {self.cfg.block_size}")
        x = self.drop(self.tok_emb(idx) + self.pos_emb.weight[:T])  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))  # (B, T, K)
        if targets is None:
            return logits, None
        scored = logits[:, -targets.shape[1]:]  # the image positions: a conditional prefix is never a target
        return logits, F.cross_entropy(scored.float().reshape(-1, scored.shape[-1]), targets.reshape(-1))

    def forward_cached(self, idx: torch.Tensor, cache: KVCache, pos: int) -> torch.Tensor:
        """A GPT's incremental decoding: runs idx (B, T) at positions pos..pos+T-1 through the cache; returns the
        last position's logits (B, K). T > 1 only when pos == 0 (a prefill)."""
        T = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb.weight[pos:pos + T]  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, pos)
        cache.length = pos + T
        return self.head(self.ln_f(x[:, -1]))  # (B, K)

    def decay_split(self) -> tuple[list, list]:
        """([(name, parameter)] that take weight decay: the matmul weights; [(name, parameter)] that do not: biases,
        LayerNorms and embeddings)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (decay if p.dim() >= 2 and "emb" not in name else no_decay).append((name, p))
        return decay, no_decay

    def configure_optimizer(self, lr: float, betas, weight_decay: float) -> torch.optim.AdamW:
        """AdamW with weight decay on matmul weights only (not biases, LayerNorms or embeddings)."""
        decay, no_decay = self.decay_split()
        groups = [{"params": [p for _, p in decay], "weight_decay": weight_decay},
                  {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))

    @property
    def model_args(self) -> dict:
        """The plain dict this model is rebuilt from: GPT(GPTConfig(**model_args))."""
        return asdict(self.cfg)

    @classmethod
    def from_checkpoint(cls, ckpt, map_location="cpu") -> "GPT":
        """A transformer checkpoint (a path or its loaded dict) -> its GPT in eval mode, frozen."""
        if isinstance(ckpt, str):
            ckpt = load_checkpoint_file(ckpt, "transformer", map_location)
        model = cls(GPTConfig(**model_args_of(ckpt)))
        model.load_state_dict(ckpt["model"], strict=True)
        return model.eval().requires_grad_(False)


def model_args_of(ckpt: dict) -> dict:
    """A transformer checkpoint's `model_args`; checkpoints written before they were stored give the same dict from
    their `gpt_config` and `window`."""
    if "model_args" in ckpt:
        return dict(ckpt["model_args"])
    args = {k: v for k, v in ckpt["gpt_config"].items() if k != "block_size"}
    return {**args, "window": tuple(ckpt["window"])}


def legacy_gpt_config(cfg: GPTConfig) -> dict:
    """The `gpt_config` entry that transformer checkpoints have always carried (block_size instead of the window)."""
    return {"codebook_size": cfg.codebook_size, "block_size": cfg.block_size, "num_classes": cfg.num_classes,
            "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "dropout": cfg.dropout}
