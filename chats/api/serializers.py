from rest_framework import serializers

from chats.api.fields import StrictCharField, StrictIntegerField
from chats.models import Chat, Message

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50


class ChatCreateSerializer(serializers.Serializer):
    user_id = StrictCharField(max_length=255)
    title = StrictCharField(max_length=255, required=False, allow_blank=True, allow_null=True)
    metadata = serializers.DictField(required=False, allow_null=True)


class PageQuerySerializer(serializers.Serializer):
    offset = StrictIntegerField(min_value=0, default=0)
    limit = StrictIntegerField(min_value=1, max_value=MAX_PAGE_SIZE, default=DEFAULT_PAGE_SIZE)


class MessagePageQuerySerializer(PageQuerySerializer):
    order = serializers.ChoiceField(choices=["asc", "desc"], default="asc")


class ChatSerializer(serializers.ModelSerializer):
    user_id = serializers.CharField(source="end_user.external_id")
    message_count = serializers.IntegerField()

    class Meta:
        model = Chat
        fields = ["id", "user_id", "title", "metadata", "message_count", "created_at", "updated_at"]


class MessageSerializer(serializers.ModelSerializer):
    chat_id = serializers.UUIDField()
    usage = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id",
            "chat_id",
            "role",
            "content",
            "status",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "usage",
            "finish_reason",
            "client_message_id",
            "created_at",
        ]

    def get_usage(self, message: Message) -> dict[str, int]:
        return {
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
            "total_tokens": message.prompt_tokens + message.completion_tokens,
        }


class ChatPageSerializer(serializers.Serializer):
    chats = ChatSerializer(many=True)
    total = serializers.IntegerField()
    offset = serializers.IntegerField()
    limit = serializers.IntegerField()
    has_more = serializers.BooleanField()


class MessagePageSerializer(serializers.Serializer):
    messages = MessageSerializer(many=True)
    total = serializers.IntegerField()
    offset = serializers.IntegerField()
    limit = serializers.IntegerField()
    has_more = serializers.BooleanField()
