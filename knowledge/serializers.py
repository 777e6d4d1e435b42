from rest_framework import serializers

from chats.api.fields import StrictCharField, StrictIntegerField
from knowledge.models import LANGUAGES, Document, Project

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50


class PageQuerySerializer(serializers.Serializer):
    offset = StrictIntegerField(min_value=0, default=0)
    limit = StrictIntegerField(min_value=1, max_value=MAX_PAGE_SIZE, default=DEFAULT_PAGE_SIZE)


class ProjectCreateSerializer(serializers.Serializer):
    external_id = StrictCharField(max_length=255)
    name = StrictCharField(max_length=255, required=False, allow_blank=True, default="")


class DocumentCreateSerializer(serializers.Serializer):
    path = StrictCharField(max_length=500)
    # Not trimmed, and blank allowed here: the service refuses an empty document with a
    # clear message, and checks the size limit (413) before anything else is done.
    content = StrictCharField(allow_blank=True, trim_whitespace=False)
    document_type = StrictCharField(max_length=64, required=False, allow_null=True)
    language = serializers.ChoiceField(choices=LANGUAGES, required=False)


class ProjectSerializer(serializers.ModelSerializer):
    document_count = serializers.IntegerField()

    class Meta:
        model = Project
        fields = ["id", "external_id", "name", "document_count", "created_at"]


class DocumentSummarySerializer(serializers.ModelSerializer):
    chunk_count = serializers.IntegerField()

    class Meta:
        model = Document
        fields = [
            "id",
            "path",
            "document_type",
            "language",
            "size_bytes",
            "chunk_count",
            "created_at",
            "updated_at",
        ]


class DocumentSerializer(DocumentSummarySerializer):
    class Meta(DocumentSummarySerializer.Meta):
        fields = [*DocumentSummarySerializer.Meta.fields, "content"]


class ProjectPageSerializer(serializers.Serializer):
    projects = ProjectSerializer(many=True)
    total = serializers.IntegerField()
    offset = serializers.IntegerField()
    limit = serializers.IntegerField()
    has_more = serializers.BooleanField()


class DocumentPageSerializer(serializers.Serializer):
    documents = DocumentSummarySerializer(many=True)
    total = serializers.IntegerField()
    offset = serializers.IntegerField()
    limit = serializers.IntegerField()
    has_more = serializers.BooleanField()
