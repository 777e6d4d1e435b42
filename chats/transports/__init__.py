"""The HTTP streaming transports: one module per wire format, all over ``chats.engine``.

``regpilot`` (seed 000, ``/api/ai/chat``), ``docgen`` (seed 001, ``/api/v1/chat/*``),
``aisdk`` (seed 003, ``/api/chat``), ``openai_api`` (``/v1/*``); ``sse`` holds what they
share and ``schemas`` their request validation.
"""
