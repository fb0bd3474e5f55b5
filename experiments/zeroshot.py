"""Zero-shot image classification with a CLIP (Radford et al. 2021, section 3.1), and a few-shot
linear probe on its image features.

    python -m experiments.zeroshot --workdir=MODEL --data=IMAGES [--templates=photo] \
        [--probe_shots=K] [--bpe_vocab=FILE]

MODEL is a run of experiments.clip (config.json, tokenizer.json, checkpoints/), a transformers
CLIPModel directory (config.json, model.safetensors, its tokenizer: vocab.json + merges.txt or
tokenizer.json, its image processor: preprocessor_config.json or processor_config.json), or an
open_clip directory (open_clip_config.json, open_clip_model.safetensors; its BPE merges file,
bpe_simple_vocab_16e6.txt.gz, from --bpe_vocab or the installed open_clip package). Each model
brings its own tokenizer and preprocessing: an image's shorter side is resized (bicubic) and
its central square taken at the model's sizes, then normalised with its mean and std.

IMAGES is a folder with one subfolder per class (the class name is the folder's, underscores
read as spaces), or an HF image dataset with a label column: hf:NAME, hf:imagefolder:DIR,
hf:parquet:FILES (--hf_split, --image_column, --label_column).

--templates: a named set (photo: "a photo of a {}.", digits, imagenet7, none: the bare class
name) or a file of templates, one per line with "{}" for the class name. Several templates are
ensembled as CLIP does: a class's weight is the re-normalised mean of its prompts' normalised
text embeddings. A model trained with a predictive objective (bag_of_words, caption) scores a
class by its prompts' mean log-likelihood given the image instead.

--probe_shots=K adds a linear probe: L2-regularised logistic regression (C = --probe_C) on the
image features I_f of K images per class (drawn with --probe_seed), scored on all the others.

Prints one JSON line: top1, top5, images (the number scored), classes, templates, and with a
probe probe_top1, probe_shots, probe_images.
"""

import dataclasses
import functools
import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from data import augment, images
from data.tokenizer import Tokenizer, from_clip_files, from_open_clip_vocab
from experiments import clip as experiment
from experiments import launch, tool_flags  # noqa: F401  (launch defines --workdir)
from models import clip, hf
from train import checkpoint, objectives
from train.evaluators import clip_evals

flags.declare_key_flag("workdir")   # listed by --help
flags.DEFINE_string("data", None, "An image folder (one subfolder per class) or hf:NAME, "
                    "hf:imagefolder:DIR, hf:parquet:FILES.")
flags.DEFINE_string("templates", "photo", "A template file (one per line, {} for the class), "
                    f"or a named set: {', '.join(images.TEMPLATE_SETS)}.")
flags.DEFINE_integer("probe_shots", 0, "Images per class for a linear probe (0: none).",
                     lower_bound=0)
flags.DEFINE_float("probe_C", 1.0, "The probe's inverse L2 strength C.", lower_bound=0.0)
flags.DEFINE_integer("probe_seed", 0, "Which images the probe trains on.")
flags.DEFINE_string("bpe_vocab", "", "open_clip's BPE merges file (default: the installed "
                    "open_clip's bpe_simple_vocab_16e6.txt.gz).")
flags.DEFINE_string("hf_split", "", "An HF dataset's split (default: the only one, else test, "
                    "validation or train).")
flags.DEFINE_string("image_column", "image", "An HF dataset's image column.")
flags.DEFINE_string("label_column", "label", "An HF dataset's label column.")
flags.DEFINE_integer("image_batch", 64, "Images per forward pass.", lower_bound=1)
FLAGS = flags.FLAGS


@dataclasses.dataclass
class Loaded:
    """A CLIP ready to classify: the model, its variables, tokenizer and preprocessing."""
    model: clip.CLIP
    variables: dict
    tokenizer: Tokenizer
    resize: int
    crop: int
    mean: tuple
    std: tuple

    @property
    def channels(self) -> int:
        return self.model.cfg.vision.channels


# --------------------------------------------------------------------------- models
def _our_run(path: pathlib.Path) -> Loaded:
    config, _ = launch.load_run(path, named=False)
    if "embed_dim" not in (config.get("model") or {}) or not (path / "tokenizer.json").exists():
        raise ValueError(f"{path} is not a run of experiments.clip (config.json and "
                         "tokenizer.json)")
    cfg = experiment.model_config(config)
    saved = checkpoint.read_newest(path / "checkpoints", keys=("params", "model_state"))
    size = cfg.vision.image_size
    stats = ((images.MNIST_MEAN, images.MNIST_STD) if config.data.source == "mnist_scenes"
             else (images.CLIP_MEAN, images.CLIP_STD))
    return Loaded(clip.CLIP(cfg), {"params": saved["params"], **saved.get("model_state", {})},
                  Tokenizer.load(path / "tokenizer.json", sot=experiment.SOT), size, size, *stats)


def _transformers(path: pathlib.Path) -> Loaded:
    cfg, params = hf.clip_from_pretrained(path)
    p = hf.clip_image_processing(path, cfg.vision.image_size)
    return Loaded(clip.CLIP(cfg), {"params": params}, from_clip_files(path), p["resize"],
                  p["crop"], tuple(p["mean"] or images.CLIP_MEAN),
                  tuple(p["std"] or images.CLIP_STD))


def default_bpe_vocab() -> pathlib.Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("an open_clip model needs its BPE merges file: pass "
                                "--bpe_vocab=bpe_simple_vocab_16e6.txt.gz")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / \
        "bpe_simple_vocab_16e6.txt.gz"


def _open_clip(path: pathlib.Path, bpe_vocab) -> Loaded:
    cfg, variables = hf.clip_from_open_clip(path)
    _, pre = hf.open_clip_config(path)
    size = cfg.vision.image_size
    tokenizer = from_open_clip_vocab(bpe_vocab or default_bpe_vocab(), cfg.text.vocab_size)
    return Loaded(clip.CLIP(cfg), variables, tokenizer, size, size,
                  tuple(pre.get("mean", images.CLIP_MEAN)), tuple(pre.get("std", images.CLIP_STD)))


def load_model(path, bpe_vocab="") -> Loaded:
    """A run of ours, a transformers CLIPModel directory or an open_clip directory."""
    path = pathlib.Path(path).expanduser()
    if (path / hf.OPEN_CLIP_CONFIG).exists():
        return _open_clip(path, bpe_vocab)
    if (path / "checkpoints").is_dir():
        return _our_run(path)
    if (path / "config.json").exists():
        return _transformers(path)
    raise FileNotFoundError(f"{path} is not a CLIP: expected a run of experiments.clip, a "
                            "transformers CLIPModel or an open_clip directory")


# --------------------------------------------------------------------------- inputs
def preprocess(image, m: Loaded) -> np.ndarray:
    """A PIL image -> the model's input [crop, crop, channels]: shorter side to m.resize,
    the central square, normalised."""
    image = image.convert("L" if m.channels == 1 else "RGB")
    x = np.asarray(images.resize_shorter_side(image, m.resize), np.uint8)
    x = augment.center_crop(x[None], m.crop)
    return images.normalize(x, m.mean, m.std)[0]


def prompt_tokens(m: Loaded, classes, templates) -> np.ndarray:
    """[classes, templates, context] token ids: [SOT] prompt [EOT], zero-padded."""
    tok = m.tokenizer
    texts = [t.replace("{}", c) for c in classes for t in templates]
    encoded = images.tokenize(tok, texts, m.model.cfg.text.n_ctx, tok.sot_id, tok.eot_id)
    return encoded.reshape(len(classes), len(templates), -1)


# --------------------------------------------------------------------------- scoring
@functools.partial(jax.jit, static_argnums=0)
def _features(model, variables, x):
    """(I_e, I_f) of a batch; I_e is None for a predictive objective."""
    if model.cfg.objective != "contrastive":
        return None, model.apply(variables, x, method="image_features")
    return (model.apply(variables, x, method="encode_image"),
            model.apply(variables, x, method="image_features"))


@functools.partial(jax.jit, static_argnums=0)
def class_weights(model, variables, tokens):
    """CLIP's prompt ensemble: the re-normalised mean of each class's normalised prompt
    embeddings, [classes, d_e]."""
    t_e = model.apply(variables, tokens.reshape(-1, tokens.shape[-1]), method="encode_text")
    return clip.l2_normalize(t_e.reshape(*tokens.shape[:2], -1).mean(axis=1))


@functools.partial(jax.jit, static_argnums=0)
def _log_likelihood(model, variables, x, tokens):
    """Each class's mean log-likelihood over its prompts, [n, classes]."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    return clip.log_likelihood(model, variables, x, flat).reshape(
        len(x), *tokens.shape[:2]).mean(axis=-1)


def class_logits(m: Loaded, x: np.ndarray, tokens: np.ndarray, weights=None):
    """Zero-shot logits [n, classes] of preprocessed images: exp(t) I_e W^T with W the prompt
    ensemble (one prompt per class: transformers' logits_per_image), or the log-likelihoods
    of a predictive objective; and the image features I_f."""
    i_e, i_f = _features(m.model, m.variables, jnp.asarray(x))
    if i_e is None:
        return _log_likelihood(m.model, m.variables, jnp.asarray(x), jnp.asarray(tokens)), i_f
    if weights is None:
        weights = class_weights(m.model, m.variables, jnp.asarray(tokens))
    scale = m.model.apply(m.variables, method="logit_scale")
    return scale * (i_e @ weights.T), i_f


def score(m: Loaded, data: images.LabelledImages, templates, batch_size: int = 64):
    """(logits [n, classes], image features [n, d]) over the whole image set."""
    tokens = prompt_tokens(m, data.classes, templates)
    weights = None
    if m.model.cfg.objective == "contrastive":
        weights = class_weights(m.model, m.variables, jnp.asarray(tokens))
    logits, feats = [], []
    for start in range(0, len(data), batch_size):
        x = np.stack([preprocess(data.read(i), m)
                      for i in range(start, min(start + batch_size, len(data)))])
        lg, f = class_logits(m, x, tokens, weights)
        logits.append(np.asarray(lg, np.float32))
        feats.append(np.asarray(f, np.float32))
    return np.concatenate(logits), np.concatenate(feats)


def top_k(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    return float(np.mean(np.asarray(objectives.true_class_rank(logits, labels)) < k))


def linear_probe(features, labels, shots: int, C: float, seed: int) -> dict:
    """Logistic regression on the features of `shots` images per class, top-1 on the rest."""
    train = images.per_class_indices(labels, shots, seed)
    rest = np.setdiff1d(np.arange(len(labels)), train)
    if not len(rest):
        raise ValueError(f"--probe_shots={shots} leaves no image to score")
    sets = [(jnp.asarray(features[i]), jnp.asarray(labels[i], jnp.int32)) for i in (train, rest)]
    _, test = clip_evals.probe_path(sets[0], sets[0], sets[1], [C], int(labels.max()) + 1)
    return {"probe_top1": float(test[0]), "probe_shots": shots, "probe_C": C,
            "probe_images": int(len(rest))}


def zeroshot(model_path, data_spec: str, templates: str = "photo", probe_shots: int = 0,
             probe_C: float = 1.0, seed: int = 0, bpe_vocab: str = "", batch_size: int = 64,
             **hf_options) -> dict:
    templates = images.read_templates(templates)        # bad input stops before loading
    data = images.labelled_images(data_spec, **hf_options)
    m = load_model(model_path, bpe_vocab)
    logits, feats = score(m, data, templates, batch_size)
    out = {"top1": top_k(logits, data.labels, 1), "top5": top_k(logits, data.labels, 5),
           "images": len(data), "classes": len(data.classes), "templates": len(templates)}
    if probe_shots:
        out.update(linear_probe(feats, data.labels, probe_shots, probe_C, seed))
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    tool_flags.quiet_libraries()
    hf_options = {}
    if FLAGS.data.startswith("hf:"):
        hf_options = dict(split=FLAGS.hf_split, image_column=FLAGS.image_column,
                          label_column=FLAGS.label_column)
    try:
        result = zeroshot(FLAGS.workdir, FLAGS.data, FLAGS.templates, FLAGS.probe_shots,
                          FLAGS.probe_C, FLAGS.probe_seed, FLAGS.bpe_vocab, FLAGS.image_batch,
                          **hf_options)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "data"])
    app.run(main)
