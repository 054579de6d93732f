"""Make `import llm_tricks` work however pytest is started (plain `pytest` does not put the repo root on sys.path)."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
