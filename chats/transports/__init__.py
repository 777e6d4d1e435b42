"""The HTTP streaming transports: one module per wire format, all over ``chats.engine``.

``regpilot`` (``/api/ai/chat``), ``docgen`` (``/api/v1/chat/*``), ``aisdk``
(``/api/chat``), ``openai_api`` (``/v1/*``), each described in docs/wire-formats.md.
What they share: ``schemas`` (request validation), ``endpoints`` (the view decorator,
authentication, the request built from HTTP), ``generation_stream`` (a generation as a
streamed or whole answer) over ``streaming`` (chunks with keep-alives), ``sse`` and
``encoding`` (framing), ``generation_headers``, ``cors``, and ``resume`` (resuming and
stopping a stream).

A transport view is: parse the body (``schemas``), build a ``GenerationRequest``
(``endpoints.generation_request``), ``await start_generation(...)`` (refusals raise
``ApiError`` → an HTTP status), then return ``generation_stream.generation_response`` with
an encoder: an async generator from the engine's events to the transport's own format.
"""
