from rest_framework import serializers

from chatproject.fields import StrictCharField
from chatproject.pagination import page_serializer
from knowledge.models import LANGUAGES, Document, Project


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


ProjectPageSerializer = page_serializer("ProjectPage", "projects", ProjectSerializer)


DocumentPageSerializer = page_serializer("DocumentPage", "documents", DocumentSummarySerializer)
