"""The PyTorch side of experiments.benchmark: a worker process running one workload's steps in
PyTorch, on the commands of the benchmark, and each workload's steps (STEPS, by the config
workload's name, as bench_workloads.WORKLOADS). Imports neither JAX models nor the trainer,
so the peer starts quickly.

Protocol (one JSON line each way): the benchmark sends the spec (the workload's peer_spec plus
"workload", "peak_sizes", "peak_repeats"); the worker builds the steps, runs each phase once and
answers {"first_step_s", "info", "matmul_flops"}; then "run PHASE N" -> {"times", "cpu",
"loss", "rss_bytes"} (the resident memory right after those steps) and "quit" ->
{"max_rss_bytes"}.
"""

import json
import resource
import sys
import time


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _status_bytes(field: str) -> int | None:
    """A size from /proc/self/status (Linux), None without it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def max_rss_bytes() -> int:
    """The process's lifetime peak of resident memory. VmHWM where there is one: ru_maxrss
    survives exec, so a peer started from our process would report at least our resident set
    at the time it was spawned."""
    hwm = _status_bytes("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """The process's resident memory now (VmRSS): what the steps hold, unlike the lifetime peak
    that compiling and start-up may set."""
    rss = _status_bytes("VmRSS")
    return rss if rss is not None else max_rss_bytes()   # no /proc (macOS): the peak bounds it


def timed(step, n: int, times: list, cpu: list):
    """Run step() n times, appending each wall-clock and CPU time; the last step's output."""
    out = None
    for _ in range(n):
        c0, t0 = cpu_seconds(), time.perf_counter()
        out = step()
        times.append(time.perf_counter() - t0)
        cpu.append(cpu_seconds() - c0)
    return out


def worker():
    """Reads the spec and commands on stdin, all cores. The peer gets the same host allocator
    settings as ours (keep_host_memory, before torch starts its threads): without them both
    sides slow down alike, and the comparison is of the frameworks, not of malloc."""
    from train import perf
    perf.keep_host_memory()
    import torch
    spec = json.loads(sys.stdin.readline())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"ours runs on a GPU but this torch {torch.__version__} sees none: "
                           "the GPU peer needs a CUDA build of torch")
    steps, info = STEPS[spec["workload"]](spec, device, torch)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def step(phase):
        out = steps[phase]()
        sync()
        return out

    first = {}
    for phase in steps:
        t0 = time.perf_counter()
        step(phase)
        first[phase] = time.perf_counter() - t0
    flops = (matmul_flops(torch, spec["peak_sizes"], spec["peak_repeats"])
             if device.type == "cpu" else 0.0)
    print(json.dumps({"first_step_s": first, "info": info, "matmul_flops": flops}), flush=True)
    for line in sys.stdin:
        if line.startswith("run"):
            _, phase, n = line.split()
            times, cpu = [], []
            loss = timed(lambda: step(phase), int(n), times, cpu)
            print(json.dumps({"times": times, "cpu": cpu, "loss": loss,
                              "rss_bytes": rss_bytes()}), flush=True)
        elif line.startswith("trim"):
            print(json.dumps({"trimmed": perf.trim_host_memory()}), flush=True)
        else:
            print(json.dumps({"max_rss_bytes": max_rss_bytes()}), flush=True)
            return


def matmul_flops(torch, sizes, repeats: int) -> float:
    """train.perf.measure_matmul_flops's twin for PyTorch (its own BLAS), on the same sizes."""
    rate = 0.0
    for n in sizes:
        a = torch.ones(n, n)
        a @ a
        for _ in range(repeats):
            t = time.perf_counter()
            a @ a
            rate = max(rate, 2 * n ** 3 / (time.perf_counter() - t))
    return rate


# ------------------------------------------------------------------------- shared pieces

def optimizer(torch, model, t: dict, device):
    """Ours in PyTorch: decay on the weight matrices and kernels only (two or more dimensions,
    train/optim.py's default), AdamW or SGD with momentum (the decay an L2 term); Adam
    without decay."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": t["weight_decay"]},
              {"params": rest, "weight_decay": 0.0}]
    if t["optimizer"] == "adam":      # no decay, as the Transformer's Adam (section 5.3)
        return torch.optim.Adam(model.parameters(), lr=t["lr"], betas=(t["b1"], t["b2"]),
                                eps=t["eps"], fused=device.type == "cuda")
    if t["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=t["lr"], betas=(t["b1"], t["b2"]), eps=t["eps"],
                                 fused=device.type == "cuda")
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=t["lr"], momentum=t["momentum"],
                               nesterov=t["nesterov"])
    raise ValueError(f"the PyTorch peer has no {t['optimizer']!r} optimiser")


def train_step(torch, model, forward, loss_of, spec: dict, device):
    """One training step: forward() under bfloat16 autocast when ours computes in bfloat16,
    loss_of(output) in float32, backward, clipping as ours, the update."""
    t, half = spec["train"], spec["dtype"] == "bfloat16"
    opt = optimizer(torch, model, t, device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=half):
            out = forward()
        loss = loss_of(out)
        loss.backward()
        if t["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


# ---------------------------------------------------------------------------- workloads

def gpt2(spec: dict, device):
    """transformers' GPT2LMHeadModel of the spec's dimensions, random weights, no dropout."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging
    logging.set_verbosity_error()
    config = GPT2Config(
        vocab_size=spec["vocab_size"], n_positions=spec["n_ctx"], n_embd=spec["d_model"],
        n_layer=spec["n_layer"], n_head=spec["n_head"], n_inner=spec["d_ff"],
        activation_function="gelu_new", layer_norm_epsilon=spec["ln_eps"], resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).to(device)


def gpt_steps(spec: dict, device, torch):
    """transformers' GPT2LMHeadModel in training mode; on a GPU its default
    scaled_dot_product_attention (flash attention) and the fused AdamW."""
    model = gpt2(spec, device).train()
    forward = torch.compile(model) if spec["compile"] else model
    tokens = torch.randint(0, spec["vocab_size"], (spec["batch"], spec["seq_len"] + 1),
                           device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    info = {"attention": model.config._attn_implementation}

    def loss_of(logits):
        info["logits_dtype"] = str(logits.dtype).removeprefix("torch.")
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    return {"train": train_step(torch, model, lambda: forward(input_ids=inputs).logits, loss_of,
                                spec, device)}, info


def convnet_steps(spec: dict, device, torch):
    """torchvision's model of the same name in train mode (BatchNorm on the batch's statistics),
    and in eval mode under torch.inference_mode; channels_last where the spec asks for it."""
    import torchvision
    layout = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    model = torchvision.models.get_model(spec["model"], num_classes=spec["num_classes"])
    model = model.to(device, memory_format=layout)
    forward = torch.compile(model) if spec["compile"] else model
    images = torch.randn(spec["batch"], 3, spec["size"], spec["size"], device=device)
    images = images.contiguous(memory_format=layout)
    labels = torch.randint(0, spec["num_classes"], (spec["batch"],), device=device)
    xent = lambda logits: torch.nn.functional.cross_entropy(logits.float(), labels)  # noqa

    def loss_of(out):   # GoogLeNet in training: (logits, aux2, aux1), weighed 1, 0.3, 0.3
        if isinstance(out, tuple):
            return xent(out[0]) + 0.3 * (xent(out[1]) + xent(out[2]))
        return xent(out)

    def train_forward():
        model.train()
        return forward(images)

    def infer():
        model.eval()
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                    enabled=spec["dtype"] == "bfloat16"):
            forward(images)

    return ({"train": train_step(torch, model, train_forward, loss_of, spec, device),
             "infer": infer}, {"memory_format": str(layout).removeprefix("torch.")})


def decode_steps(spec: dict, device, torch):
    """GPT2LMHeadModel.generate in eval mode under torch.inference_mode: greedy, with its
    key/value cache, exactly new_tokens per row (min_new_tokens = max_new_tokens, so no end of
    text stops a row early), one phase per batch size on the spec's prompts."""
    from transformers import GenerationConfig
    model = gpt2(spec, device).eval()
    if spec["dtype"] != "float32":
        raise ValueError(f"the decode peer runs in float32; ours is {spec['dtype']}")
    n = spec["new_tokens"]
    settings = GenerationConfig(do_sample=False, num_beams=1, use_cache=True, max_new_tokens=n,
                                min_new_tokens=n, pad_token_id=0, eos_token_id=0)
    prompts = torch.tensor(spec["prompts"], device=device)

    def generate(batch: int):
        tokens = prompts[:batch]
        with torch.inference_mode():
            out = model.generate(tokens, attention_mask=torch.ones_like(tokens),
                                 generation_config=settings)
        if out.shape != (batch, tokens.shape[1] + n):
            raise RuntimeError(f"generate returned {tuple(out.shape)} tokens")
        return None

    steps = {phase: lambda b=batch: generate(b) for phase, batch in spec["batches"].items()}
    return steps, {"attention": model.config._attn_implementation}


def marian(spec: dict, device):
    """transformers' MarianMTModel as the paper's Transformer: post-norm, ReLU, one embedding
    for source, target and output, scaled by sqrt(d_model), sinusoidal positions; no dropout;
    pad_id doubles as the decoder's start token; random weights."""
    from transformers import MarianConfig, MarianMTModel
    from transformers.utils import logging
    logging.set_verbosity_error()
    config = MarianConfig(
        vocab_size=spec["vocab_size"], d_model=spec["d_model"], encoder_layers=spec["n_layer"],
        decoder_layers=spec["n_layer"], encoder_attention_heads=spec["n_head"],
        decoder_attention_heads=spec["n_head"], encoder_ffn_dim=spec["d_ff"],
        decoder_ffn_dim=spec["d_ff"], activation_function="relu", scale_embedding=True,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        max_position_embeddings=spec["max_len"], dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, pad_token_id=spec["pad_id"],
        decoder_start_token_id=spec["pad_id"], eos_token_id=spec["vocab_size"] - 1,
        forced_eos_token_id=None, static_position_embeddings=True)
    return MarianMTModel(config).to(device)


def marian_loss(torch, logits, targets, pad_id: int, label_smoothing: float):
    """Label-smoothed cross-entropy over the target positions that are not padding."""
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=pad_id,
        label_smoothing=label_smoothing)


def translate_steps(spec: dict, device, torch):
    """MarianMTModel in training mode on random sentence pairs without padding, the decoder's
    input the target shifted right behind pad_id (as ours)."""
    model = marian(spec, device).train()
    forward = torch.compile(model) if spec["compile"] else model
    pad, batch = spec["pad_id"], spec["batch"]
    src = torch.randint(1, spec["vocab_size"], (batch, spec["src_len"]), device=device)
    tgt = torch.randint(1, spec["vocab_size"], (batch, spec["tgt_len"]), device=device)
    tgt_in = torch.cat([torch.full((batch, 1), pad, device=device), tgt[:, :-1]], dim=1)
    mask = torch.ones_like(src)
    info = {"attention": model.config._attn_implementation}

    def loss_of(logits):
        info["logits_dtype"] = str(logits.dtype).removeprefix("torch.")
        return marian_loss(torch, logits, tgt, pad, spec["label_smoothing"])

    run = lambda: forward(input_ids=src, attention_mask=mask, decoder_input_ids=tgt_in).logits  # noqa
    return {"train": train_step(torch, model, run, loss_of, spec, device)}, info


def translate_decode_steps(spec: dict, device, torch):
    """MarianMTModel.generate in eval mode under torch.inference_mode: greedy (beam_size 1) or
    beam search with its key/value cache, exactly new_tokens per row (min_new_tokens =
    max_new_tokens), one phase per batch size on the spec's sources."""
    from transformers import GenerationConfig
    model = marian(spec, device).eval()
    n, pad = spec["new_tokens"], spec["pad_id"]
    settings = GenerationConfig(do_sample=False, num_beams=spec["beam_size"], use_cache=True,
                                max_new_tokens=n, min_new_tokens=n, pad_token_id=pad,
                                decoder_start_token_id=pad, eos_token_id=spec["vocab_size"] - 1,
                                length_penalty=spec["alpha"])
    src = torch.tensor(spec["src"], device=device)

    def generate(batch: int):
        with torch.inference_mode():
            out = model.generate(src[:batch], attention_mask=torch.ones_like(src[:batch]),
                                 generation_config=settings)
        if out.shape != (batch, n + 1):      # the decoder start token, then n tokens
            raise RuntimeError(f"generate returned {tuple(out.shape)} tokens")

    steps = {phase: lambda b=batch: generate(b) for phase, batch in spec["batches"].items()}
    return steps, {"attention": model.config._attn_implementation}


STEPS = {"pretrain_lm": gpt_steps, "classify_images": convnet_steps, "decode": decode_steps,
         "translate": translate_steps, "translate_decode": translate_decode_steps}
