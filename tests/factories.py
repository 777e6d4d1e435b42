"""Small factories for the models the tests need."""

import itertools
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from billing.models import Plan, Tenant
from billing.plans import create_default_plans
from billing.services import api_key_create, credits_top_up
from chats.catalog_defaults import create_default_models
from chats.models import Chat, EndUser, LLMModel, Message

_names = itertools.count(1)


def ensure_defaults() -> None:
    """The rows data migrations seed; transactional tests flush them, so re-create them."""
    create_default_plans(Plan)
    create_default_models(LLMModel)


def make_tenant(*, name: str | None = None, plan: str = "enterprise", credits=0) -> Tenant:
    ensure_defaults()
    tenant = Tenant.objects.create(
        name=name or f"tenant-{next(_names)}", plan=Plan.objects.get(name=plan)
    )
    if credits:
        credits_top_up(tenant=tenant, amount=Decimal(credits))
        tenant.refresh_from_db()
    return tenant


def make_key(tenant: Tenant, **kwargs) -> str:
    return api_key_create(tenant=tenant, **kwargs)[1]


@dataclass
class Account:
    """A tenant and one of its API keys: what a client calls the API with."""

    tenant: Tenant
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    def balance(self) -> Decimal:
        return Tenant.objects.values_list("credit_balance", flat=True).get(pk=self.tenant.pk)


def account_for(tenant: Tenant) -> Account:
    """``tenant`` with a new key."""
    return Account(tenant, make_key(tenant))


def make_account(**tenant_fields) -> Account:
    """A new tenant (see :func:`make_tenant`) with a key."""
    return account_for(make_tenant(**tenant_fields))


def make_chat(tenant: Tenant, *, user_id: str = "user123", title: str = "") -> Chat:
    end_user, _ = EndUser.objects.get_or_create(tenant=tenant, external_id=user_id)
    return Chat.objects.create(tenant=tenant, end_user=end_user, title=title)


def make_messages(chat: Chat, count: int) -> list[Message]:
    """``count`` messages one second apart, alternating user and assistant."""
    start = timezone.now() - timedelta(hours=1)
    return Message.objects.bulk_create(
        Message(
            chat=chat,
            role="user" if i % 2 == 0 else "assistant",
            content=f"message {i}",
            created_at=start + timedelta(seconds=i),
        )
        for i in range(count)
    )
