import io
import os
import subprocess

import pytest
from django.core.management import CommandError, call_command

from billing.keys import hash_key
from billing.models import ApiKey, Tenant
from tests.factories import ensure_defaults
from tests.live import ROOT, database_url_for_tests

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue().strip().splitlines()[-1]


def test_create_tenant_prints_a_working_key_last():
    key = run("create_tenant", "globex", "--plan", "growth", "--credits", "250")
    tenant = Tenant.objects.get(name="globex")
    assert tenant.plan.name == "growth"
    assert tenant.credit_balance == 250
    assert ApiKey.objects.get(hashed_key=hash_key(key)).tenant == tenant
    assert tenant.ledger.get().kind == "top_up"


def test_create_api_key_for_existing_tenant():
    run("create_tenant", "initech")
    key = run("create_api_key", "initech")
    assert ApiKey.objects.get(hashed_key=hash_key(key)).tenant.name == "initech"


@pytest.mark.parametrize(
    "args",
    [
        ("create_tenant", "x", "--plan", "platinum"),
        ("create_tenant", "x", "--credits", "lots"),
        ("create_tenant", "x", "--credits", "-5"),
        ("create_api_key", "nobody"),
    ],
)
def test_bad_arguments_are_clear_errors(args):
    with pytest.raises(CommandError):
        run(*args)


def test_duplicate_tenant_is_an_error():
    run("create_tenant", "umbrella")
    with pytest.raises(CommandError):
        run("create_tenant", "umbrella")


def test_setup_demo_prints_key_on_first_run_only():
    first = io.StringIO()
    call_command("setup_demo", stdout=first)
    assert "export API_KEY=sk_live_" in first.getvalue()
    second = io.StringIO()
    call_command("setup_demo", stdout=second)
    assert "sk_live_" not in second.getvalue()
    assert Tenant.objects.filter(name="demo").count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_second_setup_demo_prints_a_command_that_works_as_printed(settings):
    settings.DEBUG = True  # as under make run
    ensure_defaults()
    call_command("setup_demo", stdout=io.StringIO())
    second = io.StringIO()
    call_command("setup_demo", stdout=second)
    line = next(line.strip() for line in second.getvalue().splitlines() if "API_KEY" in line)

    # A new shell in the project directory, with none of make's variables set.
    environment = {"PATH": os.environ["PATH"], "DATABASE_URL": database_url_for_tests()}
    result = subprocess.run(
        ["bash", "-c", f'set -e; {line}; echo "$API_KEY"'],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    key = result.stdout.split()[-1]
    assert ApiKey.objects.get(hashed_key=hash_key(key)).tenant.name == "demo"


def test_default_plans_are_seeded():
    from billing.models import Plan

    plans = {p.name: (p.requests_per_minute, p.burst) for p in Plan.objects.all()}
    assert plans == {
        "free": (10, 20),
        "startup": (100, 200),
        "growth": (500, 1000),
        "enterprise": (None, None),
    }
    assert {(p.ws_messages_per_second, p.ws_max_connections) for p in Plan.objects.all()} == {
        (10, 50)
    }
