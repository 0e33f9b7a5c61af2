#!/usr/bin/env bash
# One command from a fresh clone: install dependencies, fetch and verify the bundled models,
# build, and run the main job: generate text with SmolLM2-135M and measure its perplexity.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/setup-models.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
M="${TL_MODELS:-$HOME/.cache/tailor/models}"
echo "== generate (SmolLM2-135M-Instruct Q4_1, greedy) =="
./build/tailor generate -m "$M/SmolLM2-135M-Instruct.Q4_1.gguf" -p "The three most important ideas in computer science are" -n 48 --temp 0 --mem
echo "== perplexity (tailor-test-31m, PG essays, 4 windows of 2048) =="
cat ../shared/data/pg_essays/*.txt > /tmp/tailor-pg.txt
./build/tailor perplexity -m ../shared/models/tailor-test-31m.gguf -f /tmp/tailor-pg.txt -c 2048 --chunks 4
