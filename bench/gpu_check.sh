#!/usr/bin/env bash
# Real-GPU check: benchmark 1 (batch vs a plain diffusers loop) and the serving benchmark
# in fp16 on every visible GPU. Fails fast without CUDA.
#   bash bench/gpu_check.sh            # bench preset of the tiny pipeline (no hub needed)
#   MODEL=/path/to/sd15 bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null 2>&1 || { echo "gpu_check: no nvidia-smi: this machine has no NVIDIA GPU" >&2; exit 2; }
nvidia-smi -L
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  python3 -m venv .venv
  # On a GPU machine torch comes from the CUDA wheel index of the host image; a preinstalled
  # CUDA torch in the system interpreter is reused when present.
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q "torch>=2.13,<2.15"
  .venv/bin/pip install -q -e '.[test,bench]'
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" \
  || { echo "gpu_check: torch sees no CUDA device (torch $("$PY" -c 'import torch; print(torch.__version__)'))" >&2; exit 3; }
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
MODEL=${MODEL:-$("$PY" -c "from bench.common import tiny_model; print(tiny_model('bench'))")}
PROMPTS=$("$PY" -c "from bench.common import prompt_file; print(prompt_file(512))")
OUT=$(mktemp -d)
echo "== plain diffusers loop, fp16, 1 GPU"
"$PY" bench/peer_loop.py --mode plain --model "$MODEL" --prompts "$PROMPTS" --out "$OUT/plain" \
  --batch-size 8 --steps 20 --size 512 --device cuda | tee "$OUT/plain.log"
echo "== ray-diffusion batch driver, fp16, one worker per GPU ($NGPU)"
"$PY" -m batch --model "$MODEL" --prompts "$PROMPTS" --output "$OUT/ours" --dtype float16 \
  --batch-size 8 --steps 20 --height 512 --width 512 --no-progress
"$PY" - "$OUT" "$NGPU" <<'PYEOF'
import json, sys
out, ngpu = sys.argv[1], int(sys.argv[2])
plain = [json.loads(l.split(" ", 1)[1]) for l in open(f"{out}/plain.log") if l.startswith("PEER_STATS ")][0]
plain_ips = plain["images"] / (plain["last"] - plain["first"])
s = json.load(open(f"{out}/ours/summary.json"))
ours = s["steady_images_per_s"]
print(f"plain loop: {plain_ips:.2f} images/s on 1 GPU")
print(f"ray-diffusion: {ours:.2f} images/s on {ngpu} GPU(s) = {ours / ngpu:.2f} per GPU "
      f"({ours / ngpu / plain_ips:.2f}x the plain loop per GPU); overhead {s['overhead_pct']:.1f}%")
PYEOF
echo "== serving benchmark on GPU"
"$PY" -m bench.bench_serving --levels 1,4,16 --requests-per-level 64 --max-seconds 60
