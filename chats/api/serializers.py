from rest_framework import serializers

from chatproject.fields import StrictCharField
from chatproject.pagination import PageQuerySerializer, page_serializer
from chats.models import Chat, Message


class ChatCreateSerializer(serializers.Serializer):
    user_id = StrictCharField(max_length=255)
    title = StrictCharField(max_length=255, required=False, allow_blank=True, allow_null=True)
    metadata = serializers.DictField(required=False, allow_null=True)


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


ChatPageSerializer = page_serializer("ChatPage", "chats", ChatSerializer)


MessagePageSerializer = page_serializer("MessagePage", "messages", MessageSerializer)
