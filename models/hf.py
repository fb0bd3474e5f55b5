"""Import of Hugging Face / PyTorch checkpoints (config.json + model.safetensors; never pickle).

One function per family. Each maps the reference tensor names onto our parameter tree and
checks every shape against the tree our model would initialise, so a checkpoint of another
architecture fails with the name of the first tensor that does not fit.
"""

import json
import pathlib

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file

from models import gpt

ACTIVATION_NAMES = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                    "relu": "relu", "quick_gelu": "quick_gelu"}


def read_config(path) -> dict:
    config_file = pathlib.Path(path) / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} not found: expected a Hugging Face model directory")
    return json.loads(config_file.read_text())


def read_tensors(path, strip_prefixes=()) -> dict[str, np.ndarray]:
    """All tensors of model.safetensors (or its shards) as float32 numpy, prefixes removed."""
    path = pathlib.Path(path)
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model.safetensors in {path} (pickle checkpoints are not read)")
    tensors = {}
    for f in files:
        tensors.update(load_file(f))
    out = {}
    for name, value in tensors.items():
        for prefix in strip_prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        out[name] = np.asarray(value, np.float32)
    return out


def activation_name(hf_name: str) -> str:
    if hf_name not in ACTIVATION_NAMES:
        raise ValueError(f"activation {hf_name!r} of the checkpoint has no counterpart here")
    return ACTIVATION_NAMES[hf_name]


def check_and_build(flat: dict[tuple, np.ndarray], expected) -> dict:
    """Nest `flat` after checking it has exactly the names and shapes of `expected`."""
    want = flatten_dict(expected)
    missing = sorted(set(want) - set(flat))
    extra = sorted(set(flat) - set(want))
    if missing or extra:
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    for key, value in flat.items():
        if tuple(value.shape) != tuple(want[key].shape):
            raise ValueError(f"checkpoint tensor for {'/'.join(key)} has shape {value.shape}, "
                             f"the model expects {want[key].shape}")
    return jax.tree.map(np.asarray, unflatten_dict(flat))


def pop(tensors: dict, name: str) -> np.ndarray:
    if name not in tensors:
        raise ValueError(f"checkpoint has no tensor {name!r}: is it the right model family?")
    return tensors.pop(name)


def decoder_block(t: dict, prefix: str, cfg: gpt.GPTConfig) -> dict[tuple, np.ndarray]:
    """GPT-1/GPT-2 block tensors (Conv1D weights are [in, out], like ours) -> our block."""
    d, h, dh = cfg.d_model, cfg.n_head, cfg.d_head
    return {
        ("ln_1", "scale"): pop(t, f"{prefix}ln_1.weight"),
        ("ln_1", "bias"): pop(t, f"{prefix}ln_1.bias"),
        ("attn", "qkv", "kernel"): pop(t, f"{prefix}attn.c_attn.weight").reshape(d, 3, h, dh),
        ("attn", "qkv", "bias"): pop(t, f"{prefix}attn.c_attn.bias").reshape(3, h, dh),
        ("attn", "out", "kernel"): pop(t, f"{prefix}attn.c_proj.weight").reshape(h, dh, d),
        ("attn", "out", "bias"): pop(t, f"{prefix}attn.c_proj.bias"),
        ("ln_2", "scale"): pop(t, f"{prefix}ln_2.weight"),
        ("ln_2", "bias"): pop(t, f"{prefix}ln_2.bias"),
        ("ffn", "fc", "kernel"): pop(t, f"{prefix}mlp.c_fc.weight"),
        ("ffn", "fc", "bias"): pop(t, f"{prefix}mlp.c_fc.bias"),
        ("ffn", "proj", "kernel"): pop(t, f"{prefix}mlp.c_proj.weight"),
        ("ffn", "proj", "bias"): pop(t, f"{prefix}mlp.c_proj.bias"),
    }


def decoder_params(t: dict, cfg: gpt.GPTConfig, final_norm: str | None) -> dict:
    flat = {("wte", "embedding"): pop(t, "wte.weight"), ("wpe", "embedding"): pop(t, "wpe.weight")}
    for layer in range(cfg.n_layer):
        for key, value in decoder_block(t, f"h.{layer}.", cfg).items():
            flat[(f"h_{layer}",) + key] = value
    if final_norm:
        flat[("ln_f", "scale")] = pop(t, f"{final_norm}.weight")
        flat[("ln_f", "bias")] = pop(t, f"{final_norm}.bias")
    return check_and_build(flat, gpt.abstract_params(cfg))


def gpt2_from_pretrained(path) -> tuple[gpt.GPTConfig, dict]:
    """A Hugging Face GPT-2 directory (GPT2LMHeadModel or GPT2Model) -> (GPTConfig, params)."""
    hf = read_config(path)
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{path} holds a {hf.get('model_type')!r} model, not GPT-2")
    cfg = gpt.GPTConfig(
        vocab_size=hf["vocab_size"], n_ctx=hf.get("n_positions", hf.get("n_ctx", 1024)),
        n_layer=hf["n_layer"], n_head=hf["n_head"], d_model=hf["n_embd"],
        d_ff=hf.get("n_inner") or 0, norm="pre",
        act=activation_name(hf.get("activation_function", "gelu_new")),
        ln_eps=hf.get("layer_norm_epsilon", 1e-5), dropout=hf.get("resid_pdrop", 0.1),
        attn_dropout=hf.get("attn_pdrop", 0.1))
    t = read_tensors(path, strip_prefixes=("transformer.",))
    t.pop("lm_head.weight", None)  # tied to wte
    t = {k: v for k, v in t.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    params = decoder_params(t, cfg, final_norm="ln_f")
    if t:
        raise ValueError(f"checkpoint tensors left unused: {sorted(t)[:5]}")
    return cfg, params
