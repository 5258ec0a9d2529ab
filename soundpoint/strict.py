"""The base of every model read from an input file (inventory, playbooks, lab file): strict, closed, frozen.

One definition, so a YAML file is read with the same rules wherever it is read:
strict (no "5" for 5, no true for 1, no 3.0 for 3: YAML's guesses are refused,
not coerced), no unknown keys (a misspelt key is an error, not a silent default),
no `.inf` or `.nan` for a number or a duration, and frozen (a validated file is
not changed behind its validators' back).
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
