"""`python -m posttrain.grpo` with the test reward plugins registered (for subprocess tests):
python tests/posttrain/grpo_driver.py OVERRIDES..."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

if __name__ == "__main__":
    from posttrain.grpo import main
    from tests.posttrain.grpo_setup import register_test_rewards

    register_test_rewards()
    main()
