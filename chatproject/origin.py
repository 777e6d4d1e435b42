"""WebSocket origin check: browsers must come from an allowed host; API-key clients that
send no Origin header (servers, CLIs, mobile apps) are let through to authenticate."""

from channels.security.websocket import AllowedHostsOriginValidator, OriginValidator


class BrowserOriginValidator(OriginValidator):
    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return True
        return super().valid_origin(parsed_origin)


def browser_origin_validator(application) -> BrowserOriginValidator:
    """Channels' AllowedHostsOriginValidator, except that a missing Origin is allowed."""
    allowed_hosts = AllowedHostsOriginValidator(application).allowed_origins
    return BrowserOriginValidator(application, allowed_hosts)
