"""The plans every installation starts with (seed 000's rate-limit table)."""

DEFAULT_PLANS = [
    # name, display name, requests per minute, burst (None: unlimited)
    ("free", "Free", 10, 20),
    ("startup", "Startup", 100, 200),
    ("growth", "Growth", 500, 1000),
    ("enterprise", "Enterprise", None, None),
]
