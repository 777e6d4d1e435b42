import pytest
from django.contrib.auth import get_user_model

from governor.policies import policy_cache_invalidate


@pytest.fixture(autouse=True)
def _fresh_policy_cache():
    """Each test starts with an empty in-process policy cache."""
    policy_cache_invalidate()
    yield
    policy_cache_invalidate()


@pytest.fixture
def staff_user(db):
    return get_user_model().objects.create_superuser(
        "auditor", "auditor@example.com", "pw-for-tests-only"
    )


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client
