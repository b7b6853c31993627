#!/usr/bin/env bash
# The CUDA checks and throughput figure, prepared here and run in one call on a GPU machine.
#
# Here, once (needs this repo's .venv and PyPI):  bash bench/gpu_run.sh --prepare
#   -> .gpu/whl: wheels the GPU image lacks (trl, datasets and their missing needs), plus
#      transformers 5.24 so both machines run the same version (~15 MB);
#   -> .gpu/smollm2-shape: SmolLM2's config and tokenizer without weights (~3.5 MB). The
#      embedded model (a 98 MB GGUF) is over the 64 MiB a device call can carry, so the GPU
#      benchmark runs SmolLM2's architecture with seed-0 random weights: the same shapes,
#      tokens and FLOPs, so the same speed (first losses are then both ~0.693).
# There, with the device tool:  run(command="bash bench/gpu_run.sh", carry=[".gpu"], timeout_s=560)
#   at most ~9 minutes: writes env.log, cuda_check.log, bench.log / .json, memory.log / .json,
#   vllm_check.log (where vllm is installed), and
#   gpu_summary.json + gpu_summary.md (everything in one file and one table) to $OUT.
#   Arguments after the script's name go to bench_dpo.py (e.g. --steps 20).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
  rm -rf .gpu && mkdir -p .gpu/whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/whl \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 transformers==5.24.0 \
    hjson==3.1.0 py-cpuinfo==9.0.0 ninja==1.13.0 msgpack==1.1.0 einops==0.8.1 \
    peft==0.21.2 accelerate==1.16.0 \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  # (pydantic: DeepSpeed imports it, and accelerate imports DeepSpeed wherever it is
  # importable, in save_pretrained too: without it every run failed there, 2026-12-04)
  # DeepSpeed ships only an sdist: built here into a pure-Python wheel (its ops compile at
  # run time there)
  .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .gpu/whl deepspeed==0.19.8
  .venv/bin/python bench/bench_dpo.py --export-shape .gpu/smollm2-shape
  du -sh .gpu
  exit 0
fi

OUT="${OUT:-$(mktemp -d)}"
[[ -d .gpu/whl ]] || { echo "no .gpu/: run 'bash bench/gpu_run.sh --prepare' first and carry .gpu"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers, peft, accelerate, trl, datasets, pyarrow; \
print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, \
'accelerate', accelerate.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__, \
'pyarrow', pyarrow.__version__, 'cuda', torch.cuda.is_available())"

set -o pipefail
# 0. what this device is and the precision auto picks there (dpokit env)
timeout 40 python3 -m dpokit.cli env 2>&1 | tee "$OUT/env.log" || echo "dpokit env FAILED"
# 1. exactness: every attention backend vs the 4-D mask in fp32 / bf16 / fp16 (values and
#    gradients), the chunked LM head, training in auto's precision and in fp16 (GradScaler)
timeout 150 python3 bench/cuda_check.py 2>&1 | tee "$OUT/cuda_check.log" \
  || echo "cuda_check FAILED (see above)"
# 2. dpokit vs TRL (DPO): SmolLM2 LoRA + full, a ~1B Llama with LoRA; random weights
timeout 270 python3 bench/bench_dpo.py --shape-dir .gpu/smollm2-shape --steps 8 --rounds 1 \
  --workloads smollm2-lora,smollm2-full,llama-1b-lora --systems trl,dpokit \
  --out "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log" || echo "bench: some runs FAILED"
# (extra arguments override those above: argparse keeps the last)
# 3. FSDP2 on one process (a one-device mesh) beside DDP: peak memory, first losses
timeout 90 python3 bench/bench_memory.py --shape-dir .gpu/smollm2-shape --steps 3 \
  --options ddp fsdp-1 --out "$OUT/memory.json" 2>&1 | tee "$OUT/memory.log" \
  || echo "bench_memory FAILED (see above)"
# 4. the vLLM sampler on a real engine, where the machine has vllm (too big to carry here)
if python3 -c "import vllm" 2>/dev/null; then
  timeout 100 python3 bench/vllm_check.py --shape-dir .gpu/smollm2-shape 2>&1 \
    | tee "$OUT/vllm_check.log" || echo "vllm_check FAILED (see above)"
else
  echo "vllm is not installed on this machine: the vLLM sampler check is skipped"
fi
# 5. one JSON file and one Markdown table of all of it
python3 bench/gpu_summary.py "$OUT" | tee "$OUT/gpu_summary.md"
