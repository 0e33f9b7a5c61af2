#!/usr/bin/env bash
# The test suite: release build + ctest, then an ASan+UBSan build running the unit tests, a
# ThreadSanitizer build running the thread stress test, then each fuzz target briefly. Exit
# status is non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS="$(nproc)"
# a test that misses a file setup provides fails instead of skipping (testutil.h)
export TL_REQUIRE_FILES=1
# llama.cpp's tokenizer test vocabularies, when a llama.cpp tree is named (test_tokenizer_vocabs
# reports itself skipped without them)
if [ -n "${TL_LLAMA_CPP:-}" ]; then bash scripts/fetch-vocabs.sh "$TL_LLAMA_CPP" >/dev/null; fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$JOBS"
ctest --test-dir build --output-on-failure -j"$JOBS"

if [ "${TL_SKIP_SANITIZE:-0}" != 1 ]; then
    echo "== ASan + UBSan build =="
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTL_SANITIZE=ON -DTL_CUDA=OFF >/dev/null
    cmake --build build-asan -j"$JOBS"
    # the model-level tests are slow under sanitizers; the unit tests cover the same code
    ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build-asan --output-on-failure -j"$JOBS" -LE slow
fi

if [ "${TL_SKIP_SANITIZE:-0}" != 1 ]; then
    echo "== ThreadSanitizer: the thread pool and threaded attention =="
    cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTL_TSAN=ON -DTL_CUDA=OFF >/dev/null
    cmake --build build-tsan -j"$JOBS" --target test_threads
    TL_THREADS_QUICK=1 TSAN_OPTIONS=halt_on_error=1 ./build-tsan/test_threads
fi

if [ "${TL_SKIP_FUZZ:-0}" != 1 ] && command -v clang >/dev/null; then
    echo "== fuzzing (brief) =="
    CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTL_FUZZ=ON -DTL_CUDA=OFF >/dev/null
    cmake --build build-fuzz -j"$JOBS" --target fuzz_gguf fuzz_tokenizer fuzz_http
    # seeds: real GGUF files for the parser, the tokenizer test inputs for the tokenizer, JSON
    # request bodies (first byte: the endpoint) for the server's request path
    declare -A seeds=([fuzz_gguf]=tests/fixtures [fuzz_tokenizer]=../shared/data/tokenizer [fuzz_http]=fuzz/http_seeds)
    for f in fuzz_gguf fuzz_tokenizer fuzz_http; do
        mkdir -p "build-fuzz/corpus-$f"
        TL_SHARED="$(cd .. && pwd)/shared" ./build-fuzz/$f -max_total_time="${TL_FUZZ_SECONDS:-30}" -rss_limit_mb=2048 \
            -max_len=65536 "build-fuzz/corpus-$f" "${seeds[$f]}" > "build-fuzz/$f.log" 2>&1 \
            || { tail -40 "build-fuzz/$f.log"; echo "fuzzing $f found a failure" >&2; exit 1; }
        grep -E "^#[0-9]+.*DONE|Done [0-9]+ runs" "build-fuzz/$f.log" | tail -1
    done
fi
