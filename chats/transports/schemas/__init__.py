"""Request bodies of the transports, validated strictly: one module per wire format,
each holding its parsers next to the OpenAPI schemas built from their limits.

``readers`` holds the limits, the error collector and the typed field readers they share,
``tools`` the client's own tools (OpenAI's format); ``regpilot`` (``/api/ai/chat``),
``docgen`` (``/api/v1/chat/*``), ``aisdk`` (``/api/chat``), ``openai_api``
(``/v1/chat/completions``) and ``websocket`` (``/ws/chat`` client messages).
Import the module of the format you parse.
"""
