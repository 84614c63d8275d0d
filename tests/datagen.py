"""Test data shared by the tiers: deterministic, incompressible bytes (so failures reproduce)."""

from __future__ import annotations

import hashlib


def random_bytes(size: int, seed: int = 1) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.blake2b(f"{seed}:{counter}".encode(), digest_size=64).digest()
        counter += 1
    return bytes(out[:size])
