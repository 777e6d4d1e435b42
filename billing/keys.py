"""API key material: generation, hashing and the display prefix. Pure functions."""

import hashlib
import secrets

PREFIX_LENGTH = 12


def generate_key(env: str) -> str:
    """``sk_<env>_<random>`` with 192 random bits, url-safe."""
    return f"sk_{env}_{secrets.token_urlsafe(24)}"


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def display_prefix(raw_key: str) -> str:
    return raw_key[:PREFIX_LENGTH]
