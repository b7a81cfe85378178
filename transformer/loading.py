"""Loading a transformer with the frozen stage-1 VQGAN it was trained over: one loader, one rule.

A transformer checkpoint records its stage-1 checkpoint (path, content hash, model config), never its
weights. The tokens the transformer learnt stand for the codes of exactly that file, so a stage-1 file
whose content has changed since (e.g. stage 1 was resumed and overwrote `last.pt`) is refused wherever
the pair is used again: resuming the transformer's training, sampling from it, and the tools.
"""
import os
from typing import NamedTuple, Optional

from transformer.gpt import GPT
from utils.core.checkpoint import file_sha256, load_checkpoint_file
from utils.core.errors import UserError
from vqgan.model import VQGAN

OLD_CONDITION_FACTOR = 4  # the downsampling factor of every low-resolution condition before stage-1 checkpoints
                          # stored data.condition_factor


def load_stage1(path: str, device="cpu", recorded: Optional[dict] = None) -> tuple[VQGAN, dict]:
    """(the frozen VQGAN at `path` on `device`, its record {"checkpoint", "sha256", "model", "data"}).

    recorded: the record kept by the transformer being resumed or sampled; the file must still be the one it
    names, with the same content hash."""
    if recorded is not None and not os.path.isfile(path):
        raise UserError(f"the stage-1 checkpoint this transformer was trained on is missing: '{path}' "
                        "(paths are relative to the directory the training ran in)")
    ckpt = load_checkpoint_file(path, "vqgan")
    vq = VQGAN.from_checkpoint(ckpt).to(device)
    sha = file_sha256(path)
    if recorded is not None and recorded["sha256"] != sha:
        raise UserError(f"the stage-1 checkpoint '{path}' has changed since this transformer was trained (sha256 "
                        f"{recorded['sha256'][:12]} then, {sha[:12]} now; e.g. stage 1 was resumed): the "
                        "transformer's tokens stand for the codes of the original file; restore that file, or train "
                        "a new transformer (run.name=...) on the new stage-1 model")
    data = ckpt["config"]["data"]
    record = {"checkpoint": path, "sha256": sha, "model": vq.model_args,
              "data": {"image_size": vq.image_size, "channels": vq.channels, "tokenize": data.get("tokenize", "image"),
                       "condition": data.get("condition", "none"), "condition_classes": data.get("condition_classes", 0),
                       "condition_factor": data.get("condition_factor", OLD_CONDITION_FACTOR)}}
    return vq, record


class Transformer(NamedTuple):
    gpt: GPT
    vq: VQGAN                     # the image tokenizer
    cond_vq: Optional[VQGAN]      # the condition tokenizer of a conditional model
    ckpt: dict


def load_transformer(path: str, device="cpu") -> Transformer:
    """A transformer checkpoint's GPT, its stage-1 VQGAN (and the condition tokenizer of a conditional model), all
    frozen on `device`, and the checkpoint dict."""
    ckpt = load_checkpoint_file(path, "transformer")
    gpt = GPT.from_checkpoint(ckpt).to(device)
    vq, _ = load_stage1(ckpt["stage1"]["checkpoint"], device, recorded=ckpt["stage1"])
    cond_vq = None
    if ckpt.get("stage1_condition"):
        cond_vq, _ = load_stage1(ckpt["stage1_condition"]["checkpoint"], device, recorded=ckpt["stage1_condition"])
    return Transformer(gpt, vq, cond_vq, ckpt)
