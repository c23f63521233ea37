#!/usr/bin/env bash
# Set up (idempotent) and run the whole pipeline on the embedded defaults: a bilingual sample
# corpus, every cleaning stage, remix, tokenizer, shards and a tiny DeepSeek-V3-style model on CPU.
# Extra arguments are Hydra overrides for `python -m pipeline`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pipeline "$@"
