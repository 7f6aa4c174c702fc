"""Where things are, for tests that run commands or read shipped files."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
CONFIGS = ROOT / "syncas_jax" / "configs"  # configs shipped inside the package
SHARED_REFERENCE_CONFIG = ROOT.parent / "shared" / "reference" / "config.json"  # beside the repo, when present
