"""The HTTP streaming transports: one module per wire format, all over ``chats.engine``.

``regpilot`` (``/api/ai/chat``), ``docgen`` (``/api/v1/chat/*``), ``aisdk``
(``/api/chat``), ``openai_api`` (``/v1/*``), each described in docs/wire-formats.md;
``sse`` holds what they share and ``schemas`` their request validation.
"""
