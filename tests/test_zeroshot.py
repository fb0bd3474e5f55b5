"""experiments.zeroshot: imported CLIPs bring their own tokenizer and preprocessing and give the
reference implementation's zero-shot logits on an image folder; the command's JSON."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402

from data import images, tokenizer  # noqa: E402
from experiments import zeroshot  # noqa: E402
from models import hf  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ("golden_retriever", "tabby cat", "Sports Car")
WORDS = ("photo", "golden", "retriever", "tabby", "cat", "sports", "car", "of", "the")
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def write_vocab(path: pathlib.Path) -> int:
    """CLIP's vocabulary layout (bytes, bytes + </w>, merges, start, end) with merges that
    build WORDS letter by letter; returns its size."""
    chars = tokenizer.vocabulary_byte_characters()
    merges = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1]] + parts[2:]
    merges = list(dict.fromkeys(merges))
    vocab = [*chars, *(c + "</w>" for c in chars), *(m.replace(" ", "") for m in merges),
             "<|startoftext|>", "<|endoftext|>"]
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


def random_clip(path: pathlib.Path):
    vocab_size = write_vocab(path)
    torch.manual_seed(0)
    text = transformers.CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=40, intermediate_size=52, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=19, bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision = transformers.CLIPVisionConfig(
        hidden_size=36, intermediate_size=44, num_hidden_layers=2, num_attention_heads=3,
        image_size=30, patch_size=6)
    config = transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                     projection_dim=20, logit_scale_init_value=2.0)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():   # weights off their init, so a swapped tensor shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    tok = transformers.CLIPTokenizer.from_pretrained(path)
    processor = transformers.CLIPProcessor(
        image_processor=transformers.CLIPImageProcessor(
            size={"shortest_edge": 34}, crop_size={"height": 30, "width": 30}, image_mean=MEAN,
            image_std=STD),
        tokenizer=tok)
    processor.save_pretrained(path)
    return model, processor


def image_folder(path: pathlib.Path) -> pathlib.Path:
    """3 classes x 2 images of different sizes, aspects and modes."""
    rng = np.random.default_rng(0)
    sizes = [(41, 57), (64, 35), (50, 50), (33, 90), (77, 40), (45, 61)]
    for i, (w, h) in enumerate(sizes):
        folder = path / CLASSES[i // 2].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mode = ("RGB", "L", "RGBA")[i % 3]
        image = Image.fromarray(pixels).convert(mode)
        image.save(folder / f"{i}.png")
    return path


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_clip")
    model, processor = random_clip(path)
    return path, model, processor, image_folder(tmp_path_factory.mktemp("images"))


def test_clip_tokenizer_matches_transformers(hf_clip):
    path, _, processor, _ = hf_clip
    ours = tokenizer.from_clip_files(path)
    texts = ["A Photo of THE  golden_retriever!", "a photo\tof a tabby cat.", "sports car 7's",
             "naïve  café", "the cat's  car... 42"]
    for text in texts:
        assert ours.encode(text) == processor.tokenizer(text)["input_ids"][1:-1], text
    assert (ours.sot_id, ours.eot_id) == (ours.vocab_size - 2, ours.vocab_size - 1)
    # The same from tokenizer.json alone (what transformers 5 saves).
    alone = path.parent / "tokenizer_json_only"
    alone.mkdir(exist_ok=True)
    (alone / "tokenizer.json").write_bytes((path / "tokenizer.json").read_bytes())
    from_json = tokenizer.from_clip_files(alone)
    assert [from_json.encode(t) for t in texts] == [ours.encode(t) for t in texts]


def test_image_processing_is_read_and_matches_transformers(hf_clip):
    path, _, _, folder = hf_clip
    m = zeroshot.load_model(path)
    assert (m.resize, m.crop, m.mean, m.std) == (34, 30, MEAN, STD)
    data = images.image_folder(folder)
    assert data.classes == ["Sports Car", "golden retriever", "tabby cat"]   # folders, sorted
    pil = transformers.CLIPImageProcessorPil(size={"shortest_edge": 34},
                                             crop_size={"height": 30, "width": 30},
                                             image_mean=MEAN, image_std=STD)
    for i in range(len(data)):
        want = pil(data.read(i), return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        np.testing.assert_allclose(zeroshot.preprocess(data.read(i), m), want, atol=1e-5)


def test_zeroshot_logits_match_transformers(hf_clip):
    path, model, processor, folder = hf_clip
    m = zeroshot.load_model(path)
    data = images.image_folder(folder)
    pil = [data.read(i) for i in range(len(data))]
    prompts = [f"a photo of the {c}." for c in data.classes]
    inputs = processor(text=prompts, images=pil, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = model(**inputs).logits_per_image.numpy()
    x = np.stack([zeroshot.preprocess(im, m) for im in pil])
    tokens = zeroshot.prompt_tokens(m, data.classes, ("a photo of the {}.",))
    got, _ = zeroshot.class_logits(m, x, tokens)
    # transformers' default processor resizes with torchvision, ours with PIL (as its PIL
    # processor, to 1e-5 above): the pixels differ by a few levels of 255 at most.
    np.testing.assert_allclose(np.asarray(got), want, atol=0.05, rtol=0)
    assert np.ptp(want) > 0.5   # logits that differ between classes
    # Exactly the reference on the reference's own pixels.
    pixels = inputs["pixel_values"].numpy().transpose(0, 2, 3, 1)
    got, _ = zeroshot.class_logits(m, pixels, tokens)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


def test_zeroshot_command_prints_one_json_line(hf_clip, tmp_path):
    path, _, _, folder = hf_clip
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of the {}.\na bad photo of a {}.\n")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.zeroshot", f"--workdir={path}", f"--data={folder}",
         f"--templates={templates}", "--probe_shots=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert r["images"] == 6 and r["classes"] == 3 and r["templates"] == 2
    assert r["top5"] == 1.0 and 0.0 <= r["top1"] <= 1.0
    assert r["probe_shots"] == 1 and r["probe_images"] == 3 and 0.0 <= r["probe_top1"] <= 1.0


def test_hf_datasets_give_the_folder_result(hf_clip, tmp_path):
    """hf:imagefolder:DIR and a parquet file of the same images score as the folder does."""
    datasets = pytest.importorskip("datasets")
    path, _, _, folder = hf_clip
    want = zeroshot.zeroshot(path, str(folder), "none")
    assert want["images"] == 6
    assert zeroshot.zeroshot(path, f"hf:imagefolder:{folder}", "none") == want
    data = images.image_folder(folder)
    ds = datasets.Dataset.from_dict(
        {"image": [str(p) for p in sorted(folder.glob("*/*.png"))],
         "label": data.labels.tolist()},
        features=datasets.Features({"image": datasets.Image(),
                                    "label": datasets.ClassLabel(names=data.classes)}))
    ds.to_parquet(tmp_path / "images.parquet")
    assert zeroshot.zeroshot(path, f"hf:parquet:{tmp_path / 'images.parquet'}", "none") == want


def test_templates_and_bad_input():
    assert images.read_templates("none") == ("{}",)
    assert len(images.read_templates("imagenet7")) == 7
    assert "a handwritten {}." in images.read_templates("digits")
    with pytest.raises(ValueError, match="neither a file nor a named set"):
        images.read_templates("no-such-set")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        images.image_folder("/no/such/folder")
    with pytest.raises(FileNotFoundError, match="is not a CLIP"):
        zeroshot.load_model(ROOT / "docs")


# --------------------------------------------------------------------------- open_clip
def openai_names(model) -> dict[str, np.ndarray]:
    """A transformers CLIPModel's tensors under the names of OpenAI's release (open_clip's)."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    out = {"token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           "ln_final.bias": sd["text_model.final_layer_norm.bias"],
           "text_projection": sd["text_projection.weight"].T,
           "logit_scale": sd["logit_scale"],
           "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
           "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
           "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
           "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
           "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
           "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
           "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
           "visual.proj": sd["visual_projection.weight"].T}
    for ours, theirs in (("", "text_model"), ("visual.", "vision_model")):
        layers = {k.split(".")[3] for k in sd if k.startswith(f"{theirs}.encoder.layers.")}
        for i in layers:
            a, b = f"{theirs}.encoder.layers.{i}.", f"{ours}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[f"{b}attn.in_proj_{kind}"] = np.concatenate(
                    [sd[f"{a}self_attn.{n}_proj.{kind}"] for n in "qkv"])
                for x, y in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                             ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                             ("mlp.fc2", "mlp.c_proj")):
                    out[f"{b}{y}.{kind}"] = sd[f"{a}{x}.{kind}"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}   # safetensors writes memory order


def test_open_clip_import_gives_the_same_model(hf_clip, tmp_path):
    """The transformers model's weights, renamed as open_clip (OpenAI) stores them, read by
    hf.clip_from_open_clip: the same logits. Its tokenizer comes from a merges file."""
    from safetensors.numpy import save_file
    path, model, processor, folder = hf_clip
    c = model.config
    t, v = c.text_config, c.vision_config
    (tmp_path / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": c.projection_dim, "quick_gelu": True,
                      "vision_cfg": {"image_size": v.image_size, "layers": 2,
                                     "width": v.hidden_size, "patch_size": v.patch_size,
                                     "head_width": 12, "mlp_ratio": 44 / 36},
                      "text_cfg": {"context_length": 19, "vocab_size": t.vocab_size,
                                   "width": 40, "heads": 4, "layers": 2, "mlp_ratio": 1.3}},
        "preprocess_cfg": {"mean": list(MEAN), "std": list(STD)}}))
    save_file(openai_names(model), str(tmp_path / "open_clip_model.safetensors"))
    merges = (path / "merges.txt").read_text().replace("<|", "<").replace("|>", ">")
    (tmp_path / "bpe.txt").write_text(merges)
    m = zeroshot.load_model(tmp_path, bpe_vocab=tmp_path / "bpe.txt")
    assert (m.crop, m.mean) == (30, MEAN)
    assert m.tokenizer.encode("a photo of the tabby cat") == processor.tokenizer(
        "a photo of the tabby cat")["input_ids"][1:-1]
    data = images.image_folder(folder)
    prompts = [f"a photo of the {c}." for c in data.classes]
    inputs = processor(text=prompts, images=[data.read(i) for i in range(len(data))],
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        want = model(**inputs).logits_per_image.numpy()
    tokens = zeroshot.prompt_tokens(m, data.classes, ("a photo of the {}.",))
    got, _ = zeroshot.class_logits(m, inputs["pixel_values"].numpy().transpose(0, 2, 3, 1),
                                   tokens)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="not a plain"):
        cfg = json.loads((tmp_path / "open_clip_config.json").read_text())
        cfg["model_cfg"]["text_cfg"]["pool_type"] = "last"
        (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
        hf.open_clip_config(tmp_path)


def open_clip_directory(open_clip, cfg: dict, path: pathlib.Path, seed: int):
    """A random open_clip CLIP of `cfg`, weights and BatchNorm variances moved off their init,
    saved as an open_clip directory; returns the torch model."""
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(path / "open_clip_model.safetensors"))
    return model


def assert_open_clip_logits(open_clip, model, m, texts, side: int, context: int):
    """Our tokens and logits of the loaded model `m` are open_clip's."""
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=context)(texts)
    tok = m.tokenizer
    assert np.array_equal(tokens.numpy(), images.tokenize(tok, texts, context, tok.sot_id,
                                                          tok.eot_id))
    x = np.random.default_rng(0).standard_normal((2, 3, side, side)).astype(np.float32)
    with torch.no_grad():
        want, _ = model.get_logits(torch.from_numpy(x), tokens)
    got, _ = zeroshot.class_logits(m, x.transpose(0, 2, 3, 1), tokens.numpy()[:, None])
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-3, rtol=0)
    assert np.ptp(want.numpy()) > 0.1


def test_open_clip_reference(tmp_path):
    """With open_clip installed: its released vocabulary tokenises as open_clip does, and a
    small open_clip CLIP saved as safetensors gives open_clip's tokens and logits."""
    open_clip = pytest.importorskip("open_clip")
    ours = tokenizer.from_open_clip_vocab(zeroshot.default_bpe_vocab())
    ref = open_clip.tokenizer.SimpleTokenizer()
    for text in ["A photo of a Dog!", "  it's 2024's... ok?", "naïve café déjà-vu 123abc"]:
        assert ours.encode(text) == ref.encode(text), text
    assert (ours.sot_id, ours.eot_id, ours.vocab_size) == (49406, 49407, 49408)
    cfg = {"embed_dim": 20, "quick_gelu": False,
           "vision_cfg": {"image_size": 30, "layers": 2, "width": 36, "patch_size": 6,
                          "head_width": 12, "mlp_ratio": 1.5},
           "text_cfg": {"context_length": 19, "vocab_size": 49408, "width": 40, "heads": 4,
                        "layers": 2}}
    model = open_clip_directory(open_clip, cfg, tmp_path, seed=3)
    assert_open_clip_logits(open_clip, model, zeroshot.load_model(tmp_path),
                            ["a photo of a dog.", "a diagram"], 30, 19)


def test_open_clip_resnet_reference(tmp_path):
    """An open_clip RN50 CLIP (random weights, 64 px) read with its ResNet tower and BatchNorm
    statistics gives open_clip's logits."""
    open_clip = pytest.importorskip("open_clip")
    cfg = {"embed_dim": 1024, "quick_gelu": True,
           "vision_cfg": {"image_size": 64, "layers": [3, 4, 6, 3], "width": 64},
           "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 40, "heads": 4,
                        "layers": 1}}
    model = open_clip_directory(open_clip, cfg, tmp_path, seed=4)
    m = zeroshot.load_model(tmp_path)
    assert m.model.cfg.image_encoder == "clip-rn50" and "batch_stats" in m.variables
    assert_open_clip_logits(open_clip, model, m, ["a dog", "two cats"], 64, 12)


def test_flags_coexist_with_the_other_commands_that_read_runs():
    """Its flags are defined at import, beside those of the other tools a process may load."""
    from experiments import ensemble, evaluate, evaluate_lm, generate, icl_report  # noqa: F401
    assert {"data", "templates", "probe_shots", "probe_seed", "hf_split"} <= set(
        __import__("absl").flags.FLAGS)
