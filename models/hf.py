"""Import of Hugging Face / PyTorch checkpoints (config.json + model.safetensors; never pickle).
open_clip directories (open_clip_config.json + open_clip_model.safetensors) are read here too.

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

from models import clip, convnets, gpt, transformer, vit
from models.layers import sinusoidal_positions

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


def check_all_used(t: dict, path) -> None:
    """Every tensor of the file has a place in our tree: name all that do not."""
    if t:
        names = sorted(t)
        raise ValueError(f"{path}: {len(names)} unexpected tensor(s) this model has no place "
                         f"for: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")


def tie_head(t: dict, head: str, embedding: str, path) -> None:
    """Our GPT ties the output projection to the token embedding, as GPT-1 and GPT-2 do: a file
    may store the tied matrix under either name, or both. An untied head (one that differs from
    the embedding) would be silently replaced by it, so it is refused."""
    if head not in t:
        return
    if embedding not in t:
        t[embedding] = t.pop(head)
    elif np.array_equal(t[head], t[embedding]):
        del t[head]
    else:
        raise ValueError(
            f"{path}: tensor {head!r} differs from {embedding!r}: the checkpoint has an "
            "untied output projection (tie_word_embeddings=False), while this GPT ties it "
            "to the token embedding; importing it would change the model's outputs")


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


def heads_lead(w: np.ndarray, heads: int) -> np.ndarray:
    """A fused q|k|v weight [..., 3 * heads * head_dim] -> our [..., heads, 3, head_dim]."""
    w = w.reshape(*w.shape[:-1], 3, heads, -1)
    return np.swapaxes(w, -3, -2)


def decoder_block(t: dict, prefix: str, cfg: gpt.GPTConfig) -> dict[tuple, np.ndarray]:
    """GPT-1/GPT-2 block tensors (Conv1D weights are [in, out], like ours) -> our block."""
    d, h, dh = cfg.d_model, cfg.n_head, cfg.d_head
    return {
        ("ln_1", "scale"): pop(t, f"{prefix}ln_1.weight"),
        ("ln_1", "bias"): pop(t, f"{prefix}ln_1.bias"),
        ("attn", "qkv", "kernel"): heads_lead(pop(t, f"{prefix}attn.c_attn.weight"), h),
        ("attn", "qkv", "bias"): heads_lead(pop(t, f"{prefix}attn.c_attn.bias"), h),
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
    tie_head(t, "lm_head.weight", "wte.weight", path)
    # Older files store the causal mask buffers; the mask is built here.
    t = {k: v for k, v in t.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    params = decoder_params(t, cfg, final_norm="ln_f")
    check_all_used(t, path)
    return cfg, params


# --------------------------------------------------------------------------- CLIP
def pre_norm_block(t: dict, prefix: str, qkv: tuple, out: str, norms: tuple, mlp: tuple,
                   width: int, heads: int) -> dict[tuple, np.ndarray]:
    """A CLIP residual attention block in torch's layout (Linear weights [out, in]) -> our
    pre-norm Block: `qkv` the fused [in, 3 * width] kernel and [3 * width] bias (q | k | v),
    `out`, `norms` and `mlp` the names of the output projection, the two LayerNorms and the
    two FFN layers under `prefix`."""
    (ln1, ln2), (fc, proj) = norms, mlp
    kernel, bias = qkv
    return {
        ("ln_1", "scale"): pop(t, f"{prefix}{ln1}.weight"),
        ("ln_1", "bias"): pop(t, f"{prefix}{ln1}.bias"),
        ("attn", "qkv", "kernel"): heads_lead(kernel, heads),
        ("attn", "qkv", "bias"): heads_lead(bias, heads),
        ("attn", "out", "kernel"): pop(t, f"{prefix}{out}.weight").T.reshape(heads, -1, width),
        ("attn", "out", "bias"): pop(t, f"{prefix}{out}.bias"),
        ("ln_2", "scale"): pop(t, f"{prefix}{ln2}.weight"),
        ("ln_2", "bias"): pop(t, f"{prefix}{ln2}.bias"),
        ("ffn", "fc", "kernel"): pop(t, f"{prefix}{fc}.weight").T,
        ("ffn", "fc", "bias"): pop(t, f"{prefix}{fc}.bias"),
        ("ffn", "proj", "kernel"): pop(t, f"{prefix}{proj}.weight").T,
        ("ffn", "proj", "bias"): pop(t, f"{prefix}{proj}.bias"),
    }


def clip_block(t: dict, prefix: str, width: int, heads: int) -> dict[tuple, np.ndarray]:
    """A CLIPEncoderLayer (separate q/k/v, torch Linear weights [out, in]) -> our pre-norm Block
    with its fused qkv kernel [in, heads, 3, head_dim]."""
    attn = f"{prefix}self_attn."
    qkv = (np.concatenate([pop(t, f"{attn}{n}_proj.weight").T for n in "qkv"], axis=1),
           np.concatenate([pop(t, f"{attn}{n}_proj.bias") for n in "qkv"]))
    return pre_norm_block(t, prefix, qkv, "self_attn.out_proj", ("layer_norm1", "layer_norm2"),
                          ("mlp.fc1", "mlp.fc2"), width, heads)


def clip_config(hf: dict) -> clip.CLIPConfig:
    """A Hugging Face CLIPConfig dict (ViT image tower) -> our CLIPConfig."""
    if hf.get("model_type", "clip") != "clip":
        raise ValueError(f"a {hf.get('model_type')!r} model is not CLIP")
    v, t = hf.get("vision_config", {}), hf.get("text_config", {})
    eos = t.get("eos_token_id", 49407)
    vision = vit.ViTConfig(
        image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 32),
        channels=v.get("num_channels", 3), d_model=v.get("hidden_size", 768),
        n_layer=v.get("num_hidden_layers", 12), n_head=v.get("num_attention_heads", 12),
        d_ff=v.get("intermediate_size", 3072),
        act=activation_name(v.get("hidden_act", "quick_gelu")),
        ln_eps=v.get("layer_norm_eps", 1e-5))
    text = clip.TextConfig(
        vocab_size=t.get("vocab_size", 49408), n_ctx=t.get("max_position_embeddings", 77),
        d_model=t.get("hidden_size", 512), n_layer=t.get("num_hidden_layers", 12),
        n_head=t.get("num_attention_heads", 8), d_ff=t.get("intermediate_size", 2048),
        act=activation_name(t.get("hidden_act", "quick_gelu")),
        ln_eps=t.get("layer_norm_eps", 1e-5),
        eot_token_id=-1 if eos == 2 else eos)  # eos 2: old configs, pooled at the largest id
    return clip.CLIPConfig(embed_dim=hf.get("projection_dim", 512), vision=vision, text=text)


def clip_from_pretrained(path) -> tuple[clip.CLIPConfig, dict]:
    """A Hugging Face CLIPModel directory with a ViT image tower -> (CLIPConfig, params)."""
    cfg = clip_config(read_config(path))
    t = read_tensors(path)
    v, x = cfg.vision, cfg.text
    if "vision_model.embeddings.patch_embedding.weight" not in t:
        raise ValueError(f"{path} has no ViT image tower (vision_model.embeddings.patch_embedding)")
    emb = "vision_model.embeddings."
    flat = {
        ("image_encoder", "patch_embed", "kernel"):
            pop(t, f"{emb}patch_embedding.weight").transpose(2, 3, 1, 0),  # OIHW -> HWIO
        ("image_encoder", "class_embedding"): pop(t, f"{emb}class_embedding"),
        ("image_encoder", "positions", "embedding"): pop(t, f"{emb}position_embedding.weight"),
        ("image_encoder", "ln_pre", "scale"): pop(t, "vision_model.pre_layrnorm.weight"),
        ("image_encoder", "ln_pre", "bias"): pop(t, "vision_model.pre_layrnorm.bias"),
        ("image_encoder", "ln_post", "scale"): pop(t, "vision_model.post_layernorm.weight"),
        ("image_encoder", "ln_post", "bias"): pop(t, "vision_model.post_layernorm.bias"),
        ("text_encoder", "token_embedding", "embedding"):
            pop(t, "text_model.embeddings.token_embedding.weight"),
        ("text_encoder", "positions", "embedding"):
            pop(t, "text_model.embeddings.position_embedding.weight"),
        ("text_encoder", "ln_final", "scale"): pop(t, "text_model.final_layer_norm.weight"),
        ("text_encoder", "ln_final", "bias"): pop(t, "text_model.final_layer_norm.bias"),
        ("W_i",): pop(t, "visual_projection.weight").T,
        ("W_t",): pop(t, "text_projection.weight").T,
        ("t",): pop(t, "logit_scale").reshape(()),
    }
    towers = (("image_encoder", "vision_model", v.n_layer, v.d_model, v.n_head),
              ("text_encoder", "text_model", x.n_layer, x.d_model, x.n_head))
    for ours, theirs, n_layer, width, heads in towers:
        for layer in range(n_layer):
            block = clip_block(t, f"{theirs}.encoder.layers.{layer}.", width, heads)
            flat.update({(ours, f"block_{layer}") + k: val for k, val in block.items()})
    t = {k: val for k, val in t.items() if not k.endswith("position_ids")}  # index buffers
    check_all_used(t, path)
    return cfg, check_and_build(flat, clip.abstract_params(cfg))


def _side(size, what: str, where) -> int:
    """An image processor's size: an int, {"shortest_edge": n} or a square {"height", "width"}."""
    if isinstance(size, dict):
        if "shortest_edge" in size:
            return int(size["shortest_edge"])
        if size.get("height") is not None and size.get("height") == size.get("width"):
            return int(size["height"])
        raise ValueError(f"{where}: {what} {size} is not a shorter side or a square")
    return int(size)


def clip_image_processing(path, image_size: int) -> dict:
    """{"resize", "crop", "mean", "std"} of a transformers CLIP directory's image processor
    (preprocessor_config.json, or processor_config.json's "image_processor"): the shorter side
    resized to `resize` (bicubic), the central crop x crop square, normalised per channel.
    Sizes it does not give are `image_size`; mean and std None where it gives none (then
    CLIP's released statistics, data.images.CLIP_MEAN / CLIP_STD, apply)."""
    path = pathlib.Path(path)
    cfg = {}
    if (path / "preprocessor_config.json").exists():
        cfg = json.loads((path / "preprocessor_config.json").read_text())
    elif (path / "processor_config.json").exists():
        cfg = json.loads((path / "processor_config.json").read_text()).get("image_processor", {})
    where = path / "preprocessor_config.json"
    for flag in ("do_resize", "do_center_crop", "do_normalize", "do_rescale"):
        if cfg.get(flag) is False:
            raise ValueError(f"{where}: {flag} false; only CLIP's resize, centre crop, rescale "
                             "and normalisation are read")
    crop = _side(cfg.get("crop_size", image_size), "crop_size", where)
    return {"resize": _side(cfg.get("size", crop), "size", where), "crop": crop,
            "mean": cfg.get("image_mean"), "std": cfg.get("image_std")}


# --------------------------------------------------------------------------- open_clip
OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS = "open_clip_config.json", "open_clip_model.safetensors"
# Tower options a plain open_clip CLIP has at these values; any other is refused by name.
OPEN_CLIP_VISION = dict(image_size=224, layers=12, width=768, patch_size=16, head_width=64,
                        mlp_ratio=4.0, ls_init_value=None, patch_dropout=0.0,
                        attentional_pool=False, no_ln_pre=False, pool_type="tok",
                        final_ln_after_pool=False, output_tokens=False, timm_model_name=None)
OPEN_CLIP_TEXT = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12,
                      mlp_ratio=4.0, ls_init_value=None, pool_type="argmax", proj_type="linear",
                      proj_bias=False, no_causal_mask=False, embed_cls=False, pad_id=0,
                      output_tokens=False, hf_model_name=None, eos_id=49407)


def _open_clip_tower(given: dict, known: dict, which: str) -> dict:
    unknown = sorted(set(given) - set(known))
    changed = [k for k in known if k in given and given[k] != known[k] and k not in (
        "image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio",
        "context_length", "vocab_size", "heads", "eos_id")]
    if unknown or changed:
        raise ValueError(f"open_clip {which} options {unknown + changed} are not a plain CLIP "
                         "tower; only those of the released models are read")
    return {**known, **given}


def open_clip_config(path) -> tuple[clip.CLIPConfig, dict]:
    """(our CLIPConfig, open_clip's preprocess_cfg) of an open_clip directory's
    open_clip_config.json ({"model_cfg": ..., "preprocess_cfg": ...}, or a bare model config)."""
    file = pathlib.Path(path) / OPEN_CLIP_CONFIG
    if not file.exists():
        raise FileNotFoundError(f"{file} not found: expected an open_clip model directory")
    raw = json.loads(file.read_text())
    m = raw.get("model_cfg", raw)
    extra = sorted(set(m) - {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg",
                             "cast_dtype", "init_logit_scale"})
    if extra:
        raise ValueError(f"{file}: model options {extra} are not a plain open_clip CLIP")
    act = "quick_gelu" if m.get("quick_gelu") else "gelu"
    t = _open_clip_tower(m.get("text_cfg", {}), OPEN_CLIP_TEXT, "text_cfg")
    v = m.get("vision_cfg", {})
    text = clip.TextConfig(vocab_size=t["vocab_size"], n_ctx=t["context_length"],
                           d_model=t["width"], n_layer=t["layers"], n_head=t["heads"],
                           d_ff=int(t["width"] * t["mlp_ratio"]), act=act)
    if isinstance(v.get("layers"), (list, tuple)):   # the modified ResNet
        width, layers = v.get("width", 64), tuple(v["layers"])
        names = [n for n, (ls, w, *_) in convnets.CLIP_RESNETS.items() if (ls, w) == (layers,
                                                                                   width)]
        if not names:
            raise ValueError(f"{file}: a ResNet of layers {list(layers)}, width {width} is "
                             f"none of {sorted(convnets.CLIP_RESNETS)}")
        cfg = clip.CLIPConfig(embed_dim=m["embed_dim"], image_encoder=names[0],
                              vision=vit.ViTConfig(image_size=v.get("image_size", 224)),
                              text=text)
    else:
        v = _open_clip_tower(v, OPEN_CLIP_VISION, "vision_cfg")
        vision = vit.ViTConfig(image_size=v["image_size"], patch_size=v["patch_size"],
                               d_model=v["width"], n_layer=v["layers"],
                               n_head=v["width"] // v["head_width"],
                               d_ff=int(v["width"] * v["mlp_ratio"]), act=act)
        cfg = clip.CLIPConfig(embed_dim=m["embed_dim"], vision=vision, text=text)
    return cfg, raw.get("preprocess_cfg", {})


def open_clip_block(t: dict, prefix: str, width: int, heads: int) -> dict[tuple, np.ndarray]:
    """A residual attention block (torch MultiheadAttention: fused in_proj [3 w, w]) -> ours."""
    qkv = (pop(t, f"{prefix}attn.in_proj_weight").T, pop(t, f"{prefix}attn.in_proj_bias"))
    return pre_norm_block(t, prefix, qkv, "attn.out_proj", ("ln_1", "ln_2"),
                          ("mlp.c_fc", "mlp.c_proj"), width, heads)


def clip_from_open_clip(path) -> tuple[clip.CLIPConfig, dict]:
    """An open_clip CLIP directory (open_clip_config.json + open_clip_model.safetensors, the
    names of OpenAI's release) -> (CLIPConfig, variables: params, and batch_stats for a ResNet
    image tower). Text features are read at the largest token id (CLIP's end of text)."""
    path = pathlib.Path(path)
    cfg, _ = open_clip_config(path)
    file = path / OPEN_CLIP_WEIGHTS
    if not file.exists():
        raise FileNotFoundError(f"{file} not found (pickle checkpoints are not read)")
    t = {k: np.asarray(v, np.float32) for k, v in load_file(file).items()}
    x = cfg.text
    flat = {
        ("text_encoder", "token_embedding", "embedding"): pop(t, "token_embedding.weight"),
        ("text_encoder", "positions", "embedding"): pop(t, "positional_embedding"),
        ("text_encoder", "ln_final", "scale"): pop(t, "ln_final.weight"),
        ("text_encoder", "ln_final", "bias"): pop(t, "ln_final.bias"),
        ("W_t",): pop(t, "text_projection"),              # [width, embed]: x @ text_projection
        ("t",): pop(t, "logit_scale").reshape(()),
    }
    towers = [("text_encoder", "transformer", x.n_layer, x.d_model, x.n_head)]
    variables = {}
    if cfg.image_encoder == "vit":
        v = cfg.vision
        flat.update({
            ("image_encoder", "patch_embed", "kernel"):
                pop(t, "visual.conv1.weight").transpose(2, 3, 1, 0),   # OIHW -> HWIO
            ("image_encoder", "class_embedding"): pop(t, "visual.class_embedding"),
            ("image_encoder", "positions", "embedding"): pop(t, "visual.positional_embedding"),
            ("image_encoder", "ln_pre", "scale"): pop(t, "visual.ln_pre.weight"),
            ("image_encoder", "ln_pre", "bias"): pop(t, "visual.ln_pre.bias"),
            ("image_encoder", "ln_post", "scale"): pop(t, "visual.ln_post.weight"),
            ("image_encoder", "ln_post", "bias"): pop(t, "visual.ln_post.bias"),
            ("W_i",): pop(t, "visual.proj"),
        })
        towers.append(("image_encoder", "visual.transformer", v.n_layer, v.d_model, v.n_head))
    else:
        visual = {k: t.pop(k) for k in [k for k in t if k.startswith("visual.")]}
        _, tower = convnets.from_open_clip(cfg.image_encoder, visual)
        flat.update({("image_encoder",) + k: val
                     for k, val in flatten_dict(tower["params"]).items()})
        variables = {name: {"image_encoder": tree} for name, tree in tower.items()
                     if name != "params"}
    for ours, theirs, n_layer, width, heads in towers:
        for layer in range(n_layer):
            block = open_clip_block(t, f"{theirs}.resblocks.{layer}.", width, heads)
            flat.update({(ours, f"block_{layer}") + k: val for k, val in block.items()})
    t.pop("attn_mask", None)   # the causal mask, a buffer some files keep
    check_all_used(t, file)
    return cfg, {"params": check_and_build(flat, clip.abstract_params(cfg)), **variables}


# --------------------------------------------------------------------------- GPT-1
# openai-gpt's "gelu" is the tanh approximation (transformers maps it to gelu_new), as in
# OpenAI's released finetune-transformer-lm code.
GPT1_ACTIVATIONS = {"gelu": "gelu_tanh", "relu": "relu"}


def gpt1_from_pretrained(path) -> tuple[gpt.GPTConfig, dict]:
    """A Hugging Face GPT-1 directory (OpenAIGPTModel, OpenAIGPTLMHeadModel or
    OpenAIGPTDoubleHeadsModel) -> (GPTConfig, params): post-norm, learned positions, no final
    LayerNorm, output projection tied to W_e."""
    hf = read_config(path)
    if hf.get("model_type", "openai-gpt") != "openai-gpt":
        raise ValueError(f"{path} holds a {hf.get('model_type')!r} model, not GPT-1 (openai-gpt)")
    afn = hf.get("afn", "gelu")
    if afn not in GPT1_ACTIVATIONS:
        raise ValueError(f"activation {afn!r} of the checkpoint has no counterpart here")
    cfg = gpt.GPTConfig(
        vocab_size=hf["vocab_size"], n_ctx=hf.get("n_positions", 512), n_layer=hf["n_layer"],
        n_head=hf["n_head"], d_model=hf["n_embd"], norm="post", act=GPT1_ACTIVATIONS[afn],
        ln_eps=hf.get("layer_norm_epsilon", 1e-5), dropout=hf.get("resid_pdrop", 0.1),
        attn_dropout=hf.get("attn_pdrop", 0.1), scale_residual_init=False)
    t = read_tensors(path, strip_prefixes=("transformer.",))
    # The double-heads model's task head is read by gpt1_multiple_choice_head.
    t = {k: v for k, v in t.items() if not k.startswith("multiple_choice_head.")}
    tie_head(t, "lm_head.weight", "tokens_embed.weight", path)
    t["wte.weight"] = pop(t, "tokens_embed.weight")
    t["wpe.weight"] = pop(t, "positions_embed.weight")
    params = decoder_params(t, cfg, final_norm=None)
    check_all_used(t, path)
    return cfg, params


def gpt1_multiple_choice_head(path) -> dict:
    """The multiple-choice head of an OpenAIGPTDoubleHeadsModel (a [d, 1] linear layer on the
    extract state) as TaskHead parameters {"W_y": {"kernel", "bias"}}."""
    t = read_tensors(path)
    weight = pop(t, "multiple_choice_head.summary.weight")   # torch Linear: [out, in]
    return {"W_y": {"kernel": weight.T, "bias": pop(t, "multiple_choice_head.summary.bias")}}


# --------------------------------------------------------------------------- Marian
MARIAN_TIED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")


def marian_config(hf: dict) -> transformer.TransformerConfig:
    """A Hugging Face MarianConfig dict -> our TransformerConfig: post-norm, the sinusoid in
    [sin | cos] halves, one embedding for source, target and output, a final logits bias."""
    if hf.get("model_type") != "marian":
        raise ValueError(f"a {hf.get('model_type')!r} model is not Marian (model_type marian)")
    pairs = [("encoder_layers", "decoder_layers"), ("encoder_attention_heads",
             "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")]
    for a, b in pairs:
        if hf[a] != hf[b]:
            raise ValueError(f"{a} {hf[a]} != {b} {hf[b]}: encoder and decoder must match")
    vocab = hf["vocab_size"]
    if not hf.get("share_encoder_decoder_embeddings", True) or \
            hf.get("decoder_vocab_size", vocab) not in (None, vocab):
        raise ValueError("only Marian models with one embedding shared by encoder and decoder "
                         "(share_encoder_decoder_embeddings) are supported")
    for flag in ("normalize_before", "normalize_embedding", "add_final_layer_norm"):
        if hf.get(flag):
            raise ValueError(f"Marian config sets {flag}, which MarianMTModel does not have")
    if hf.get("static_position_embeddings") is False:
        raise ValueError("Marian config asks for learned positions; MarianMTModel's are sinusoidal")
    return transformer.TransformerConfig(
        vocab_size=vocab, d_model=hf["d_model"], n_head=hf["encoder_attention_heads"],
        n_layer=hf["encoder_layers"], d_ff=hf["encoder_ffn_dim"],
        dropout=hf.get("dropout", 0.1), attn_dropout=hf.get("attention_dropout", 0.0),
        max_len=hf.get("max_position_embeddings", 1024), positions="sinusoidal",
        sinusoid="halves", scale_embedding=hf.get("scale_embedding", False),
        act=activation_name(hf.get("activation_function", "gelu")), norm="post", ln_eps=1e-5,
        final_logits_bias=True, pad_id=hf["pad_token_id"])


def fused_heads(weights: list[np.ndarray], heads: int) -> np.ndarray:
    """torch Linear weights [heads * head_dim, in] of q, k, v (or k, v) -> our fused kernel
    [in, heads, n, head_dim]; biases [heads * head_dim] -> [heads, n, head_dim]."""
    w = np.stack([x.T if x.ndim == 2 else x for x in weights], axis=-2)   # [..., n, h * dh]
    w = w.reshape(*w.shape[:-1], heads, -1)                               # [..., n, h, dh]
    return np.swapaxes(w, -3, -2)


def marian_attention(t: dict, prefix: str, heads: int, d: int, cross: bool) -> dict:
    """A MarianAttention (separate q/k/v Linear layers) -> our MultiHeadAttention (fused
    q/k/v) or CrossAttention (q, fused k/v)."""
    w = {n: pop(t, f"{prefix}{n}_proj.weight") for n in "qkv"}
    b = {n: pop(t, f"{prefix}{n}_proj.bias") for n in "qkv"}
    out = {("out", "kernel"): pop(t, f"{prefix}out_proj.weight").T.reshape(heads, -1, d),
           ("out", "bias"): pop(t, f"{prefix}out_proj.bias")}
    if cross:
        out[("q", "kernel")] = w["q"].T.reshape(d, heads, -1)
        out[("q", "bias")] = b["q"].reshape(heads, -1)
        out[("kv", "kernel")] = fused_heads([w["k"], w["v"]], heads)
        out[("kv", "bias")] = fused_heads([b["k"], b["v"]], heads)
    else:
        out[("qkv", "kernel")] = fused_heads([w["q"], w["k"], w["v"]], heads)
        out[("qkv", "bias")] = fused_heads([b["q"], b["k"], b["v"]], heads)
    return out


def marian_layer(t: dict, prefix: str, cfg: transformer.TransformerConfig,
                 decoder: bool) -> dict:
    h, d = cfg.n_head, cfg.d_model
    norms = (["self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"] if decoder
             else ["self_attn_layer_norm", "final_layer_norm"])
    flat = {}
    for i, norm in enumerate(norms, 1):
        flat[(f"ln_{i}", "scale")] = pop(t, f"{prefix}{norm}.weight")
        flat[(f"ln_{i}", "bias")] = pop(t, f"{prefix}{norm}.bias")
    attn = {"self_attn" if decoder else "attn": ("self_attn.", False)}
    if decoder:
        attn["cross_attn"] = ("encoder_attn.", True)
    for ours, (theirs, cross) in attn.items():
        for key, value in marian_attention(t, prefix + theirs, h, d, cross).items():
            flat[(ours,) + key] = value
    for ours, theirs in (("fc", "fc1"), ("proj", "fc2")):
        flat[("ffn", ours, "kernel")] = pop(t, f"{prefix}{theirs}.weight").T
        flat[("ffn", ours, "bias")] = pop(t, f"{prefix}{theirs}.bias")
    return flat


def marian_from_pretrained(path) -> tuple[transformer.TransformerConfig, dict]:
    """A Hugging Face MarianMTModel (or MarianModel) directory -> (TransformerConfig, params).

    The shared embedding is model.shared.weight; the tied copies a file may also hold (encoder
    and decoder embed_tokens, lm_head) and the sinusoid tables of older files must equal what
    our model uses, or the import stops and names the tensor."""
    cfg = marian_config(read_config(path))
    t = read_tensors(path, strip_prefixes=("model.",))
    shared = t.pop("shared.weight", None)
    for name in MARIAN_TIED:
        tied = t.pop(name, None)
        if shared is None:
            shared = tied
        elif tied is not None and not np.array_equal(tied, shared):
            raise ValueError(f"{name} differs from the shared embedding: untied Marian "
                             "embeddings are not supported")
    if shared is None:
        raise ValueError(f"{path} holds no embedding (model.shared.weight)")
    # Older files keep the (fixed) sinusoid tables: they must be the ones we compute.
    for side in ("encoder", "decoder"):
        name = f"{side}.embed_positions.weight"
        if name in t:
            table = t.pop(name)
            want = sinusoidal_positions(table.shape[0], cfg.d_model, "halves")
            if table.shape != want.shape or np.abs(table - want).max() > 1e-4:
                raise ValueError(f"{name} is not Marian's sinusoid ([sin | cos] halves)")
    bias = t.pop("final_logits_bias", None)
    flat = {("embed", "embedding"): shared,
            ("decoder", "final_logits_bias"):
                np.zeros(cfg.vocab_size, np.float32) if bias is None else bias.reshape(-1)}
    for side in ("encoder", "decoder"):
        for layer in range(cfg.n_layer):
            block = marian_layer(t, f"{side}.layers.{layer}.", cfg, side == "decoder")
            flat.update({(side, f"layer_{layer}") + k: v for k, v in block.items()})
    if t:
        raise ValueError(f"checkpoint tensors left unused: {sorted(t)[:5]}")
    return cfg, check_and_build(flat, transformer.abstract_params(cfg))
