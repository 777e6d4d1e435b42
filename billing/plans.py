"""The plans every installation starts with (RegPilot's rate-limit table)."""

DEFAULT_PLANS = [
    # name, display name, requests per minute, burst (None: unlimited)
    ("free", "Free", 10, 20),
    ("startup", "Startup", 100, 200),
    ("growth", "Growth", 500, 1000),
    ("enterprise", "Enterprise", None, None),
]


def create_default_plans(plan_model) -> None:
    """Create the default plans that are missing (a migration passes its historical model)."""
    for name, display_name, per_minute, burst in DEFAULT_PLANS:
        plan_model.objects.get_or_create(
            name=name,
            defaults={
                "display_name": display_name,
                "requests_per_minute": per_minute,
                "burst": burst,
            },
        )
