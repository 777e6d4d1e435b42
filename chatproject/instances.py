"""Model instances for the hot path, built positionally.

``Model(**values)`` walks every field of the model: it pops each from the keywords,
calls its default when it is missing, and sets a related object through its descriptor.
For a row of some thirty columns, made on every request, that costs more than the
evaluation that fills it. With every value given positionally, in the model's field
order, Django takes its fast path instead (the one it uses for the rows it reads).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from django.db import models

M = TypeVar("M", bound=models.Model)


class _Slot(NamedTuple):
    name: str
    attname: str  # differs from the name for a foreign key: "tenant_id"
    default: Callable[[], Any]
    relation: models.ForeignKey | None  # to cache a related object given by name


@functools.cache
def _slots(model: type[models.Model]) -> tuple[_Slot, ...]:
    slots = []
    for field in model._meta.concrete_fields:
        if field.generated:
            raise TypeError(f"{model.__name__}.{field.name}: generated fields are not built here")
        relation = field if isinstance(field, models.ForeignKey) else None
        slots.append(_Slot(field.name, field.attname, field.get_default, relation))
    return tuple(slots)


def build(model: type[M], /, **values: Any) -> M:
    """``model(**values)``: the same instance, each field its value or its default; a
    related object given by its field's name (``tenant=...``) is cached on it, as the
    keyword path would, and its key set."""
    args = []
    related = []
    for slot in _slots(model):
        if slot.name in values:
            value = values.pop(slot.name)
            if slot.relation is not None:
                related.append((slot.relation, value))
                key = slot.relation.target_field.attname
                value = None if value is None else getattr(value, key)
        elif slot.attname in values:
            value = values.pop(slot.attname)
        else:
            value = slot.default()
        args.append(value)
    if values:
        raise TypeError(f"{model.__name__}() got unexpected fields: {', '.join(sorted(values))}")
    instance = model(*args)
    for field, value in related:
        field.set_cached_value(instance, value)
    return instance
