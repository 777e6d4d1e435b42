"""DRF authentication: ``X-API-Key`` (and ``Authorization: Bearer``) → tenant."""

from collections.abc import Mapping

from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from billing.key_cache import api_key_resolve
from billing.models import Tenant
from chatproject.errors import ApiError


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``X-API-Key``, else from ``Authorization: Bearer`` (``headers``: a
    request's, or a WebSocket handshake's; names case-insensitive)."""
    key = headers.get("X-API-Key")
    if key:
        return key.strip()
    scheme, _, credentials = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        try:
            api_key = api_key_resolve(presented_key(request.headers))
        except ApiError as error:
            raise exceptions.AuthenticationFailed(error.message) from None
        request.tenant = api_key.tenant
        return api_key.tenant, api_key

    def authenticate_header(self, request) -> str:
        return 'ApiKey header="X-API-Key"'


def request_tenant(request: Request) -> Tenant:
    """The tenant :class:`ApiKeyAuthentication` found (:class:`IsTenant` lets no request
    without one through)."""
    tenant = getattr(request, "tenant", None)
    if not isinstance(tenant, Tenant):
        raise exceptions.NotAuthenticated()
    return tenant


class IsTenant(permissions.BasePermission):
    """Every API endpoint needs a tenant's key."""

    def has_permission(self, request, view) -> bool:
        return getattr(request, "tenant", None) is not None
