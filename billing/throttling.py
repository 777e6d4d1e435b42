"""The plan's request limits (:func:`billing.limits.request_admit_sync`) on every REST
endpoint, as a DRF throttle.

A DRF throttle can only say yes or no, so this one raises the product's ``ApiError``
itself (the exception handler turns it into the 429 envelope with ``Retry-After`` and
``X-RateLimit-*``) and puts the ``X-RateLimit-*`` headers of an admitted request on the
view's ``headers``, which DRF copies onto the response whatever its status.

Views that run the streaming engine consume the allowance there; they set
``throttle_classes = []`` so a request is not counted twice.
"""

from rest_framework.throttling import BaseThrottle

from billing.limits import request_admit_sync


class PlanRateThrottle(BaseThrottle):
    def allow_request(self, request, view) -> bool:
        tenant = getattr(request, "tenant", None)
        if tenant is None:  # public endpoints (schema, docs): nothing to count against
            return True
        state = request_admit_sync(tenant)  # raises ApiError(RATE_LIMITED)
        if state is not None:
            view.headers.update(state.headers())
        return True

    def wait(self) -> float | None:
        return None
