"""Model instances for the hot path, built positionally.

``Model(**values)`` walks every field of the model: it pops each from the keywords,
calls its default when it is missing, and sets a related object through its descriptor.
For a row of some thirty columns, made on every request, that costs more than the
evaluation that fills it. Here the defaults that are the same for every instance are
worked out once per model, only the values given are placed, and the instance is made
from all of them positionally: Django's fast path (the one it uses for the rows it reads).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from django.db import models

M = TypeVar("M", bound=models.Model)


_MADE = object()  # in a template: the default is made for each instance


class _Layout(NamedTuple):
    template: tuple[Any, ...]  # each concrete field's default, or _MADE
    made: tuple[tuple[int, Callable[[], Any]], ...]  # (position, default) made per instance
    # name or attname -> (position, the foreign key when a related object goes by that name)
    positions: dict[str, tuple[int, models.ForeignKey | None]]


@functools.cache
def _layout(model: type[models.Model]) -> _Layout:
    template, made, positions = [], [], {}
    for position, field in enumerate(model._meta.concrete_fields):
        if field.generated:
            raise TypeError(f"{model.__name__}.{field.name}: generated fields are not built here")
        per_instance = callable(field.default) or (
            not field.has_default() and field.has_db_default()  # an expression, made anew
        )
        template.append(_MADE if per_instance else field.get_default())
        if per_instance:
            made.append((position, field.get_default))
        relation = field if isinstance(field, models.ForeignKey) else None
        positions[field.name] = (position, relation)
        positions[field.attname] = (position, None)
    return _Layout(tuple(template), tuple(made), positions)


def build(model: type[M], /, **values: Any) -> M:
    """``model(**values)``: the same instance, each field its value or its default; a
    related object given by its field's name (``tenant=...``) is cached on it, as the
    keyword path would, and its key set."""
    layout = _layout(model)
    args = list(layout.template)
    related = []
    for name, value in values.items():
        try:
            position, relation = layout.positions[name]
        except KeyError:
            raise TypeError(f"{model.__name__}() got an unexpected field: {name}") from None
        if relation is not None:
            related.append((relation, value))
            value = None if value is None else getattr(value, relation.target_field.attname)
        args[position] = value
    for position, default in layout.made:
        if args[position] is _MADE:
            args[position] = default()
    instance = model(*args)
    for field, value in related:
        field.set_cached_value(instance, value)
    return instance
