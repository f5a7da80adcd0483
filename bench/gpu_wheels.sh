#!/usr/bin/env bash
# Prepare, on a machine with PyPI, the wheels that the GPU machine's image lacks (it has
# torch, numpy, scipy, scikit-learn, pytest, httpx, jinja2, prometheus-client, ... but
# not our web / database / search dependencies). They go to .whl/ (git-ignored via
# .git/info/exclude) for Python 3.12 on x86-64 manylinux; bench/gpu_check.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d .whl \
    pydantic pydantic-core pydantic-settings typing-inspection annotated-types \
    python-dotenv fastapi starlette uvicorn sqlalchemy greenlet alembic mako \
    psycopg psycopg-binary hyperopt py4j future mlxtend plotly typer
du -sh .whl
