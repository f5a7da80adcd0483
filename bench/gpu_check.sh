#!/usr/bin/env bash
# The GPU checks, as one script for a machine with one NVIDIA GPU (made for an H100;
# finishes within about 8 minutes there):
#   1. the op and model tests on CUDA (the CUDA variants that skip on CPU machines),
#   2. the evaluator benchmark on CUDA: FG11 HT-L3-1st at 200x200 and a 32x32 pinto-cox
#      model, batch sizes 64..512, float32 and bfloat16, TFLOP/s against a dense conv
#      ceiling measured in the same run,
#   3. a short end-to-end study: coordinator + one CUDA worker, builtin:digits,
#   4. group screening (issue 13): the CUDA tests of tests/workers/test_screen_group.py
#      (~1 min), then 8 small candidates screened one by one vs together (~1 min).
# Results are appended to bench/RESULTS.md with the card's name (and copied to $OUT when
# the device tool runs this). Missing Python packages travel as wheels in .whl/ (make
# them with bench/gpu_wheels.sh first, and carry .whl).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
status=0

echo "== 1. op and model tests on CUDA"
timeout 180 python3 -m pytest tests/search_space/test_ops.py tests/search_space/test_model.py \
    -q -p no:cacheprovider -o addopts="" 2>&1 | tee "$OUT/ops.log" | tail -5 || status=1

echo "== 2. evaluator benchmark on CUDA (the group screening part is step 4)"
timeout 240 python3 -c "from bench.evaluator import run; run(group=False)" 2>&1 \
    | tee "$OUT/evaluator.log" | tail -30 || status=1

echo "== 3. end-to-end study with one CUDA worker"
timeout 150 python3 - <<'PY' 2>&1 | tee "$OUT/e2e.log" || status=1
import subprocess, sys, tempfile, time
from pathlib import Path
from client import Client
from service.auth import create_token
from service.db import make_engine, session_factory, session_scope
from archsearch.launch import start_coordinator, stop_coordinator
from service.migrate import upgrade
from service.models import Role
d = Path(tempfile.mkdtemp()); url = f"sqlite:///{d / 'gpu.db'}"
engine = make_engine(url); upgrade(engine)
with session_scope(session_factory(engine)) as s:
    token = create_token(s, Role.WORKER, "gpu")
admin = "gpu-check-admin-token-0123456789"
live = start_coordinator(url, admin_token=admin)
try:
    with Client(live.base_url, admin) as c:
        sid = c.create_study(name="gpu", dataset="builtin:digits", space="pinto-cox",
                             algorithm="tpe", max_trials=8, max_parallel=1, top_k=2)["id"]
        w = subprocess.Popen([sys.executable, "-m", "service", "worker", "--coordinator",
                              live.base_url, "--token", token, "--device", "cuda",
                              "--data-dir", str(d / "w"), "--idle-exit", "20"])
        t0 = time.time()
        while c.study(sid)["state"] != "finished" and time.time() - t0 < 120:
            time.sleep(1)
        w.terminate(); w.wait(30)
        for t in c.best(sid, k=8):
            print(t["number"], t["value"], t["test_value"], t["metrics"].get("device"),
                  t["metrics"].get("images_per_s"), t["arch_summary"])
        study = c.study(sid)
        print("state", study["state"], study["counts"])
        assert study["state"] == "finished", "the CUDA worker did not finish the study"
        assert all(t["metrics"].get("device", "").startswith("cuda") for t in c.best(sid, 8))
finally:
    stop_coordinator(live)
PY

echo "== 4. group screening on CUDA: tests, then one by one vs as a group"
timeout 120 python3 -m pytest tests/workers/test_screen_group.py -k cuda \
    -q -p no:cacheprovider -o addopts="" 2>&1 | tee "$OUT/group_tests.log" | tail -5 || status=1
timeout 120 python3 -c "from bench.evaluator import run_group; run_group(devices=['cuda'])" \
    2>&1 | tee "$OUT/group.log" | tail -20 || status=1

cp bench/RESULTS.md "$OUT/RESULTS.md" 2>/dev/null || true
echo "gpu_check status: $status"
exit $status
