"""Django's checks of the middleware-dependent settings, asked of this project's
middleware.

Django finds its middleware by name in ``MIDDLEWARE``. Here its security middleware run
as inline subclasses (``chatproject.middleware``), and sessions, CSRF, users and
messages wrap only the pages for browsers (``BROWSER_MIDDLEWARE``), so Django's own
checks would see none of them (those that only look for them are silenced in the
settings). These run the checks that depend on them as if Django's names were listed.
"""

from django.conf import settings
from django.core import checks
from django.core.checks.security import base, csrf
from django.test.utils import override_settings

INLINE = {
    "chatproject.middleware.SecurityMiddleware": "django.middleware.security.SecurityMiddleware",
    "chatproject.middleware.CommonMiddleware": "django.middleware.common.CommonMiddleware",
    "chatproject.middleware.XFrameOptionsMiddleware": (
        "django.middleware.clickjacking.XFrameOptionsMiddleware"
    ),
}
BROWSER = "chatproject.api_paths.BrowserMiddleware"
# What the admin needs around its pages, in this order.
FOR_THE_ADMIN = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
DEPENDENT = [
    base.check_sts,
    base.check_sts_include_subdomains,
    base.check_sts_preload,
    base.check_content_type_nosniff,
    base.check_ssl_redirect,
    base.check_xframe_deny,
    base.check_referrer_policy,
    base.check_cross_origin_opener_policy,
    csrf.check_csrf_cookie_secure,
]


@checks.register(checks.Tags.security, checks.Tags.admin)
def check_middleware(app_configs, **kwargs):
    errors = []
    for name in [*INLINE, BROWSER]:
        if name not in settings.MIDDLEWARE:
            errors.append(checks.Error(f"{name} must be in MIDDLEWARE.", id="chatproject.E001"))
    browser = [name for name in settings.BROWSER_MIDDLEWARE if name in FOR_THE_ADMIN]
    if browser != FOR_THE_ADMIN:
        errors.append(
            checks.Error(
                f"BROWSER_MIDDLEWARE must hold {', '.join(FOR_THE_ADMIN)}, in this order.",
                id="chatproject.E002",
            )
        )
    return errors


@checks.register(checks.Tags.security, deploy=True)
def check_security_settings(app_configs, **kwargs):
    names = [INLINE.get(name, name) for name in settings.MIDDLEWARE]
    with override_settings(MIDDLEWARE=[*names, *settings.BROWSER_MIDDLEWARE]):
        return [message for check in DEPENDENT for message in check(app_configs)]
