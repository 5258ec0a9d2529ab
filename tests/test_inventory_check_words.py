"""`fleet inventory check` says its counts as words: "1 site", never "1 sites"."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_one_site_inventory_is_valid_with_1_site_in_words(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    res = subprocess.run([ROOT / ".venv/bin/fleet", "--insecure-secrets", "inventory", "check",
                          str(ROOT / "examples/site-sip3.yml")], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("valid (1 site, 2 phones)"), res.stdout
