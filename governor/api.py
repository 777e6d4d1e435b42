"""Governor dry run: ``POST /api/governor/validate``.

Evaluates a request exactly as the chat endpoints would (the last user message,
the tenant's policy, the metadata) and answers with the result. No model is
called and nothing is charged; the evaluation is audited with model ``dry-run``.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.authentication import request_tenant
from chatproject.errors import ApiError, ErrorCode
from chatproject.fields import StrictCharField
from governor import gate, services
from governor.vocabulary import ACTION_TYPES, RISK_LEVELS

DRY_RUN_MODEL = "dry-run"


class GovernorMetadataSerializer(serializers.Serializer):
    """``governorMetadata`` as /api/ai/chat takes it (for the API description; validated by
    the governor)."""

    actionType = serializers.ChoiceField(choices=ACTION_TYPES)
    senderId = serializers.CharField()
    senderRole = serializers.CharField(required=False)
    recipientCountry = serializers.CharField(required=False, help_text="ISO 3166-1 alpha-2 code.")
    recipientUserId = serializers.CharField(required=False)
    recipientEmail = serializers.EmailField(required=False)
    department = serializers.CharField(required=False)


@extend_schema_field(GovernorMetadataSerializer)
class GovernorMetadataField(serializers.JSONField):
    """Passed through as sent; ``gate.governor_parse_metadata`` validates it."""


class GovernorChatMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["user", "assistant", "system"])
    content = StrictCharField(
        allow_blank=True, trim_whitespace=False, max_length=settings.CHAT_MAX_MESSAGE_LENGTH
    )


class GovernorValidateRequestSerializer(serializers.Serializer):
    messages = serializers.ListField(
        child=GovernorChatMessageSerializer(),
        required=False,
        min_length=1,
        max_length=settings.CHAT_MAX_HISTORY_MESSAGES,
        help_text="As in POST /api/ai/chat; the last user message is evaluated.",
    )
    text = StrictCharField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        max_length=settings.CHAT_MAX_MESSAGE_LENGTH,
        help_text="The text to evaluate, instead of messages.",
    )
    governorMetadata = GovernorMetadataField(required=False, allow_null=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        has_messages, has_text = "messages" in attrs, "text" in attrs
        if has_messages == has_text:
            message = "Send either messages or text, not both." if has_text else None
            message = message or "Send messages or text."
            raise serializers.ValidationError({"messages": [message], "text": [message]})
        attrs["source"] = ""
        if has_messages:
            users = [(i, m) for i, m in enumerate(attrs["messages"], 1) if m["role"] == "user"]
            if not users:
                raise serializers.ValidationError({"messages": ["Must contain a user message."]})
            number, last = users[-1]
            attrs["text"] = last["content"]
            attrs["source"] = f"message {number} (user)"  # named as the chat endpoints name it
        return attrs


class GovernorViolationSerializer(serializers.Serializer):
    rule = serializers.CharField()
    severity = serializers.CharField(help_text="low, medium, high or critical.")
    action = serializers.CharField()
    explanation = serializers.CharField()
    span = serializers.ListField(child=serializers.IntegerField(), allow_null=True)
    # DRF's metaclass takes declared fields off the class, so this hides no attribute.
    source = serializers.CharField(  # type: ignore[assignment]
        allow_null=True, help_text="Where the text came from (a message, a document, a chunk)."
    )
    points = serializers.IntegerField()


class GovernorValidateResponseSerializer(serializers.Serializer):
    validated = serializers.BooleanField()
    approved = serializers.BooleanField()
    decision = serializers.ChoiceField(choices=["approved", "flagged", "review", "rejected"])
    risk_level = serializers.ChoiceField(choices=RISK_LEVELS)
    risk_score = serializers.IntegerField(min_value=0, max_value=100)
    violations = GovernorViolationSerializer(many=True)
    policy_version = serializers.IntegerField()
    audit_id = serializers.UUIDField()


class GovernorValidateView(APIView):
    @extend_schema(
        operation_id="governor_validate",
        summary="Governor dry run",
        description=(
            "Evaluates a request with the tenant's governor policy without calling a model. "
            "Audited (model `dry-run`), never charged. Answers 200 whether or not the "
            "request would be approved; the `x-governor-*` headers are set as on a chat "
            "request."
        ),
        request=GovernorValidateRequestSerializer,
        responses={200: GovernorValidateResponseSerializer},
        tags=["governor"],
    )
    def post(self, request: Request) -> Response:
        data = request.data
        if not isinstance(data, dict):
            raise ApiError(
                ErrorCode.VALIDATION_ERROR,
                "The request body must be a JSON object.",
                details={"body": ["Must be a JSON object."]},
            )
        errors: dict[str, Any] = {}
        serializer = GovernorValidateRequestSerializer(data=data)
        if not serializer.is_valid():
            errors.update(serializer.errors)
        metadata = None
        try:
            metadata = gate.governor_parse_metadata(data.get("governorMetadata"))
        except ApiError as error:
            errors.update(error.details or {})
        if errors:
            raise ApiError(ErrorCode.VALIDATION_ERROR, "Invalid request.", details=errors)

        evaluated = services.governor_evaluate_input(
            tenant=request_tenant(request),
            request_id=getattr(request, "request_id", None) or uuid.uuid4().hex,
            parts=[(serializer.validated_data["source"], serializer.validated_data["text"])],
            metadata=metadata,
            model_name=DRY_RUN_MODEL,
        )
        decision = gate.GateDecision(
            result=evaluated.result.to_dict(), audit_id=str(evaluated.record.pk)
        )
        body = {**evaluated.result.to_dict(), "audit_id": decision.audit_id}
        return Response(body, headers=decision.headers())
