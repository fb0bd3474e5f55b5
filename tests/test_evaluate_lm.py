"""experiments/evaluate_lm.py against lm-eval's own HFLM backend on the same tiny GPT-2, offline."""

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

lm_eval = pytest.importorskip("lm_eval")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from data.tokenizer import EOT, train_bpe  # noqa: E402
from experiments import evaluate_lm  # noqa: E402
from models import gpt  # noqa: E402

N_CTX = 40
WORDS = ("cat dog owl fox bee ant the a is on in under over big small red blue green runs "
         "sleeps flies sings quick slow river tree stone house garden night day").split()


def sentence(rng, n):
    return " ".join(rng.choice(WORDS, n)).capitalize() + "."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random GPT-2 (odd sizes, context 40) with a byte-level BPE of 301 tokens, saved as
    transformers does: config.json, model.safetensors, vocab.json, merges.txt, tokenizer.json."""
    d = tmp_path_factory.mktemp("tiny_gpt2")
    rng = np.random.default_rng(0)
    bpe = json.loads(train_bpe([sentence(rng, 12) for _ in range(200)], 301).to_str())["model"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in bpe["merges"]]
    (d / "vocab.json").write_text(json.dumps(bpe["vocab"], ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                  encoding="utf-8")
    eot = bpe["vocab"][EOT]
    hf_tok = transformers.GPT2Tokenizer.from_pretrained(str(d))
    assert hf_tok.encode("a big dog") and hf_tok.eos_token_id == eot
    hf_tok.save_pretrained(d)
    config = transformers.GPT2Config(vocab_size=len(bpe["vocab"]), n_positions=N_CTX, n_embd=36,
                                     n_layer=2, n_head=3, bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # peakier distributions: greedy choices are not near-ties
        model.transformer.wte.weight.mul_(8.0)
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Three local tasks: multiple choice, generate_until and a rolling-perplexity one."""
    d = tmp_path_factory.mktemp("tasks")
    rng = np.random.default_rng(1)
    mc = [{"question": sentence(rng, 3 + i % 4), "choices": [sentence(rng, 2 + j) for j in
                                                            range(3)], "label": i % 3}
          for i in range(7)]
    qa = [{"question": sentence(rng, 4), "answer": sentence(rng, 2)} for _ in range(3)]
    docs = [{"text": " ".join(sentence(rng, 9) for _ in range(1 + 3 * i))} for i in range(3)]
    for name, rows in (("mc", mc), ("qa", qa), ("docs", docs)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def task(name, data, **config):
        files = {"train": str(d / f"{data}.jsonl"), "test": str(d / f"{data}.jsonl")}
        base = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": files},
                "training_split": "train", "test_split": "test", "fewshot_split": "train"}
        (d / f"{name}.yaml").write_text(json.dumps({**base, **config}))  # JSON is YAML

    task("tiny_mc", "mc", output_type="multiple_choice", description="Pick the next line.\n\n",
         doc_to_text="Q: {{question}}\nA:", doc_to_choice="{{choices}}",
         doc_to_target="{{label}}", num_fewshot=2, fewshot_config={"sampler": "first_n"},
         metric_list=[metric("acc"), metric("acc_norm")])
    task("tiny_gen", "qa", output_type="generate_until", doc_to_text="Q: {{question}}\nA:",
         doc_to_target="{{answer}}", num_fewshot=1, fewshot_config={"sampler": "first_n"},
         generation_kwargs={"until": ["\n", "."], "max_gen_toks": 8, "do_sample": False},
         metric_list=[metric("exact_match")])
    task("tiny_ppl", "docs", output_type="loglikelihood_rolling", doc_to_text="",
         doc_to_target="{{text}}", num_fewshot=0,
         metric_list=[metric("word_perplexity", "weighted_perplexity", False),
                      metric("byte_perplexity", "weighted_perplexity", False),
                      metric("bits_per_byte", "bits_per_byte", False)])
    return d


def metric(name, aggregation="mean", higher_is_better=True):
    return {"metric": name, "aggregation": aggregation, "higher_is_better": higher_is_better}


TASKS = ["tiny_mc", "tiny_gen", "tiny_ppl"]


def run(model, task_dir, tasks=TASKS, **kwargs):
    from lm_eval.tasks import TaskManager
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    return lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager,
                                   log_samples=True, bootstrap_iters=0, **kwargs)


def per_doc(results, task):
    """[(doc_id, filtered responses)] of a task, in document order."""
    return sorted((s["doc_id"], s["filtered_resps"]) for s in results["samples"][task])


@pytest.fixture(scope="module")
def lm(model_dir):
    return evaluate_lm.FlaxpapersLM(pretrained=str(model_dir), batch_size=3)


@pytest.fixture(scope="module")
def hflm(model_dir):
    from lm_eval.models.huggingface import HFLM
    return HFLM(pretrained=str(model_dir), tokenizer=str(model_dir), batch_size=1, device="cpu")


def generation_programs():
    """Programs compiled so far for the prefill and the decoding loop (all models together)."""
    return gpt.prefill._cache_size() + gpt.decode_steps._cache_size()


def mixed_requests():
    """Unfinished sentences of 84, 31, 27, 24, 20, 19 and 18 tokens (the 32 left for a context
    next to 8 new ones keep the first one's last 32), in two groups of generation settings."""
    rng = np.random.default_rng(15)
    greedy = {"until": ["."], "max_gen_toks": 8, "do_sample": False}
    top1 = {"until": ["\n"], "max_gen_toks": 8, "do_sample": True, "temperature": 0.7,
            "top_k": 1}   # sampling from the single most probable token is greedy
    contexts = [sentence(rng, n)[:-1] for n in (30, 11, 10, 9, 8, 7, 6)]
    return [Instance("generate_until", {}, (c, kw), i) for i, (c, kw) in
            enumerate([(c, greedy) for c in contexts] + [(c, top1) for c in contexts[3:6]])]


@pytest.fixture(scope="module")
def both(task_dir, lm, hflm):
    """HFLM's results and ours: the three tasks (ref, ours), the mixed generation requests
    (mixed_ref, mixed), and how many programs our forward and our generation compiled."""
    scoring, generation = evaluate_lm.token_scores._cache_size(), generation_programs()
    ours, mixed = run(lm, task_dir), lm.generate_until(mixed_requests())
    programs = {"score": evaluate_lm.token_scores._cache_size() - scoring,
                "generate": generation_programs() - generation}
    return {"ref": run(hflm, task_dir), "ours": ours, "programs": programs, "mixed": mixed,
            "mixed_ref": hflm.generate_until(mixed_requests())}


def test_accuracies_match_hflm(both):
    ref, ours = both["ref"], both["ours"]
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["tiny_mc"][metric] == ref["results"]["tiny_mc"][metric]
    got, want = per_doc(ours, "tiny_mc"), per_doc(ref, "tiny_mc")
    assert [i for i, _ in got] == [i for i, _ in want] == list(range(7))
    for (_, g), (_, w) in zip(got, want):
        np.testing.assert_allclose([x[0] for x in g], [float(x[0]) for x in w], atol=1e-3)
        assert [bool(x[1]) for x in g] == [bool(x[1]) for x in w]


def test_generations_match_hflm(both):
    ref, ours = both["ref"], both["ours"]
    got, want = per_doc(ours, "tiny_gen"), per_doc(ref, "tiny_gen")
    assert got == want
    assert any(r != [""] for _, r in got)  # something was generated
    assert ours["results"]["tiny_gen"]["exact_match,none"] == \
        ref["results"]["tiny_gen"]["exact_match,none"]


def test_perplexities_match_hflm(both):
    ref, ours = both["ref"], both["ours"]
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        np.testing.assert_allclose(ours["results"]["tiny_ppl"][metric],
                                   ref["results"]["tiny_ppl"][metric], rtol=1e-4)
    got, want = per_doc(ours, "tiny_ppl"), per_doc(ref, "tiny_ppl")
    for (_, g), (_, w) in zip(got, want):
        np.testing.assert_allclose(g[0], float(w[0]), atol=1e-3)


def test_forward_compiles_for_few_shapes(both):
    programs = both["programs"]
    # Three tasks, dozens of requests of many lengths: one program per length bucket (16, 32, 40).
    assert 1 <= programs["score"] <= 3
    # Generation: tiny_gen's batch and the mixed requests' four batches of seven prompt lengths
    # (32, 31, 27 | 24, 20, 19 | 18 | 27, 19, 18 after truncation) share one shape, 3 rows of
    # 32: a prefill and a decoding loop.
    assert programs["generate"] == 2


def test_batched_generation_matches_hflm(both, lm):
    """Prompts of different lengths left padded together, batch_size at a time, give HFLM's
    text one by one; top_k reaches the sampler."""
    lengths = [len(lm.tok_encode(r.args[0])) for r in mixed_requests()]
    assert len(set(lengths)) == 7 and max(lengths) > lm.max_length - 8
    assert both["mixed"] == both["mixed_ref"]
    assert len(set(both["mixed"])) > 3  # varied, non-trivial continuations


def test_unsupported_generation_settings_are_named(lm):
    request = Instance("generate_until", {}, ("The owl", {"until": ["."], "num_beams": 4}), 0)
    with pytest.raises(ValueError, match="num_beams"):
        lm.generate_until([request])


def forward(lm, tokens):
    """Our GPT's logits, computed directly (one compiled program per shape)."""
    return jax.jit(gpt.GPT(lm.cfg).apply)({"params": lm.params}, tokens)


def test_rolling_predicts_every_token_once(lm):
    doc = "The quick fox sleeps under a tree."
    tokens = lm.tok_encode(doc)
    assert len(tokens) < N_CTX
    inputs = jnp.asarray([[lm.eot_token_id] + tokens[:-1]], jnp.int32)
    logp = jax.nn.log_softmax(forward(lm, inputs), -1)
    want = float(jnp.take_along_axis(logp[0], jnp.asarray(tokens)[:, None], -1).sum())
    long_doc = " ".join([doc] * 9)
    assert len(lm.tok_encode(long_doc)) > 3 * N_CTX
    short, long = lm.loglikelihood_rolling([
        Instance("loglikelihood_rolling", {}, (doc,), 0),
        Instance("loglikelihood_rolling", {}, (long_doc,), 1)])
    np.testing.assert_allclose(short, want, atol=1e-4)
    assert long < 3 * short  # later repeats are predicted from a full window, not from scratch


def test_loglikelihood_split_and_truncation(lm):
    ctx, cont = "A big dog runs on the river " * 4, "stone."
    (ll, _), (ll_moved, _) = lm.loglikelihood([Instance("loglikelihood", {}, (ctx, cont), 0),
                                                Instance("loglikelihood", {}, (ctx[:-1], " " +
                                                                               cont), 1)])
    assert ll == pytest.approx(ll_moved, abs=1e-6)  # the context's trailing space moves over
    whole = lm.tok_encode(ctx.rstrip() + " " + cont)
    n_cont = len(whole) - len(lm.tok_encode(ctx.rstrip()))
    assert len(whole) > N_CTX + 1
    row = whole[-(N_CTX + 1):]
    logp = jax.nn.log_softmax(forward(lm, jnp.asarray([row[:-1]], jnp.int32))[0], -1)
    want = sum(float(logp[t, row[t + 1]]) for t in range(N_CTX - n_cont, N_CTX))
    assert ll == pytest.approx(want, abs=1e-4)


def test_registered_by_name(model_dir):
    from lm_eval.api.registry import get_model
    cls = get_model("flaxpapers")
    assert cls is evaluate_lm.FlaxpapersLM
    lm = cls.create_from_arg_string(f"pretrained={model_dir}",
                                    {"batch_size": 5, "max_batch_size": None, "device": "cpu"})
    assert lm.batch_size == 5 and lm.max_length == N_CTX
    assert get_model("hf").__name__ == "HFLM"  # lm_eval's own models are still there


def test_bad_arguments_are_named(model_dir, tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_lm.FlaxpapersLM(pretrained=str(model_dir), batch_size="auto")
    with pytest.raises(FileNotFoundError, match="config.json"):
        evaluate_lm.FlaxpapersLM(pretrained=str(tmp_path))
    with pytest.raises(TypeError, match="trust_remote_code"):
        evaluate_lm.FlaxpapersLM(pretrained=str(model_dir), trust_remote_code=True)


def test_pretrain_workdir_scores_as_its_weights(lm, tmp_path):
    """A pretrain_lm workdir (config.json + orbax checkpoint + tokenizer.json) holding the same
    weights scores exactly as the Hugging Face directory."""
    from experiments.configs import gpt as gpt_configs
    from train.checkpoint import Checkpointer
    hf_lm = lm
    config = gpt_configs.get_config("tiny")
    config.model.update({k: v for k, v in hf_lm.cfg.__dict__.items() if k in config.model})
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    hf_lm.tokenizer.save(tmp_path / "tokenizer.json")
    ckpt = Checkpointer(tmp_path)
    ckpt.save(5, {"step": np.int32(5), "params": jax.device_get(hf_lm.params)}, {"epoch": 0})
    ckpt.wait()
    ckpt.close()
    ours = evaluate_lm.FlaxpapersLM(pretrained=str(tmp_path), batch_size=3)
    request = [Instance("loglikelihood", {}, ("The owl sings", " at night."), 0)]
    assert ours.loglikelihood(request)[0][0] == pytest.approx(hf_lm.loglikelihood(request)[0][0],
                                                              abs=1e-6)


def test_command_line_writes_results(model_dir, task_dir, tmp_path, capsys):
    evaluate_lm.main(["evaluate_lm", f"--workdir={model_dir}", "--tasks=tiny_mc",
                      f"--include_path={task_dir}", "--noinclude_defaults", "--num_fewshot=0",
                      "--batch_size=2", "--limit=3", f"--out={tmp_path}"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["results"]["tiny_mc"]) >= {"acc,none", "acc_norm,none"}
    assert results["n-shot"]["tiny_mc"] == 0 and results["config"]["limit"] == 3
    table = (tmp_path / "results.md").read_text()
    assert "|tiny_mc|" in table.replace(" ", "") and "acc_norm" in table
    assert table in capsys.readouterr().out


def test_command_line_requires_its_flags(tmp_path):
    from absl import flags
    with pytest.raises(flags.Error, match="--tasks is required"):
        evaluate_lm.parse_flags(["evaluate_lm", "--workdir=x"])
    with pytest.raises(flags.Error, match="--workdir is required"):
        evaluate_lm.model_and_out(evaluate_lm.parse_flags(["evaluate_lm", "--tasks=t"]))
    with pytest.raises(flags.Error, match="no such directory"):
        evaluate_lm.model_and_out(evaluate_lm.parse_flags(
            ["evaluate_lm", "--tasks=t", f"--workdir={tmp_path / 'missing'}"]))


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as e:
        evaluate_lm.parse_flags(["evaluate_lm", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m experiments.evaluate_lm --workdir=PATH --tasks=")
    assert all(f"--{name}:" in out for name in ("workdir", "out", "tasks", "num_fewshot",
                                                "include_path", "batch_size", "limit"))


def where(*argv):
    """(model, results directory) of a command line."""
    return evaluate_lm.model_and_out(evaluate_lm.parse_flags(["evaluate_lm", "--tasks=t", *argv]))


def test_results_go_to_the_run_or_to_out(model_dir, tmp_path, capsys):
    """A run of ours keeps its results in WORKDIR/lm_eval unless --out says otherwise; a
    Hugging Face directory is not written into: it needs --out."""
    from absl import flags
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert where(f"--workdir={run}") == (run, run / "lm_eval")
    assert where(f"--workdir={run}", f"--out={tmp_path / 'o'}") == (run, tmp_path / "o")
    with pytest.raises(flags.Error, match="not a pretrain_lm workdir .* give --out=DIR"):
        where(f"--workdir={model_dir}")
    assert where(f"--workdir={model_dir}", f"--out={tmp_path / 'o'}") == (model_dir,
                                                                           tmp_path / "o")
    assert capsys.readouterr().err == ""


def test_pretrained_keeps_its_former_meaning_for_one_release(model_dir, tmp_path, capsys):
    """--pretrained=MODEL [--workdir=RESULTS], as before; each says once it is deprecated."""
    from absl import flags
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert where(f"--pretrained={model_dir}", f"--workdir={tmp_path / 'o'}") == (
        model_dir, tmp_path / "o")
    assert where(f"--pretrained={run}") == (run, run / "lm_eval")
    assert capsys.readouterr().err == ("--pretrained is deprecated; use --workdir=MODEL "
                                       "--out=RESULTS\n--pretrained is deprecated; use --workdir\n")
    with pytest.raises(flags.Error, match="former name"):
        where(f"--pretrained={run}", f"--workdir={run}", f"--out={tmp_path / 'o'}")
