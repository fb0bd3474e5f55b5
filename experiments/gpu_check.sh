#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one go: the GPU tests (cuDNN attention against XLA's,
# a bfloat16 GPT step), then the benchmark of GPT-2 small (bench-gpu: bfloat16 compute, context
# 1024) at several batch sizes and settings, against the PyTorch peer. Each benchmark's log and
# JSON go to DIR (default runs/gpu_check); a summary table is printed last.
#
#   bash experiments/gpu_check.sh [DIR [RUN ...]]      (RUN: names below; default DEFAULT)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_check}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

# name -> benchmark flags (XLA_FLAGS=... before the name's flags sets the environment).
declare -A RUNS=(
    [b16_peer]="--peer"
    [b32]="--config.train.batch_size=32 --profile_dir=$out/profile_b32"
    [b64]="--config.train.batch_size=64"
    [b32_peer_compile]="--config.train.batch_size=32 --peer --peer_compile"
    [b32_vocab50304]="--config.train.batch_size=32 --config.model.vocab_size=50304"
    [b32_xla_attention]="--config.train.batch_size=32 --config.model.attention_impl=xla"
    [b32_cublas_only]="XLA_FLAGS=--xla_gpu_enable_triton_gemm=false --config.train.batch_size=32"
)
# Each run compiles for about 70 s on an H100/H200; the default set takes about 8 minutes.
DEFAULT=(b16_peer b32 b64 b32_cublas_only)
selected=("${@:2}")
[[ ${#selected[@]} -eq 0 ]] && selected=("${DEFAULT[@]}")
for name in "${selected[@]}"; do
    [[ -v "RUNS[$name]" ]] || { echo "unknown run $name; choose from ${!RUNS[*]}"; exit 2; }
done

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
$py -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, 'flax',
flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, 'transformers',
transformers.__version__, jax.devices())" | tee -a "$out/gpu.txt"

JAX_PLATFORMS=cuda $py -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/tests.log"

# bench NAME [benchmark flags]: one benchmark run; the environment may carry XLA_FLAGS.
bench() {
    local name=$1; shift
    echo "=== $name: $*"
    timeout 300 $py -m experiments.benchmark --config=experiments/configs/gpt.py:bench-gpu \
        --rounds=5 --steps=10 --warmup=3 --input_batches=50 "$@" >"$out/$name.log" 2>&1
    tail -n 9 "$out/$name.log" | grep -v '^{'
    tail -n 1 "$out/$name.log" | grep '^{' | $py -c "import json, sys
r = json.loads(sys.stdin.read()); r['name'] = '$name'; print(json.dumps(r))" >>"$out/results.jsonl"
    # the profile's trace beside the logs, out of the profiler's deep folder tree
    find "$out/profile_$name" -name '*.trace.json.gz' -exec cp {} "$out/$name.trace.json.gz" \; \
        2>/dev/null
}

for name in "${selected[@]}"; do
    read -ra args <<<"${RUNS[$name]}"
    (   # leading VAR=value words go to the environment of this run only
        while [[ ${#args[@]} -gt 0 && ${args[0]} != --* ]]; do export "${args[0]}"; args=("${args[@]:1}"); done
        bench "$name" "${args[@]}"
    )
done

$py - "$out/results.jsonl" <<'EOF'
import json, sys
print(f"\n{'run':22s} {'batch':>5s} {'step ms':>8s} {'tokens/s':>9s} {'MFU':>6s} {'of mm':>6s} "
      f"{'GiB':>5s} {'peer MFU':>8s} {'ratio':>6s} {'compile':>8s}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['name']:22s} {r['batch']:5d} {r['step_s'] * 1e3:8.1f} {r['tokens_per_sec']:9.0f} "
          f"{r['mfu']:6.1%} {r.get('mfu_of_measured_matmul', 0):6.1%} "
          f"{r.get('device_peak_bytes', 0) / 2**30:5.1f} {r.get('peer_mfu', 0):8.1%} "
          f"{r.get('ratio', 0):6.2f} {r.get('peer_compile_mfu', 0):8.1%}")
EOF
