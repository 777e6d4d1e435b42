"""Hints the application gives this service's ASGI server in its messages (a server that
does not know a key ignores it)."""

# On a ``websocket.send`` message: the frame goes out with the next one sent, or when the
# event loop next polls for I/O (within this turn of the loop, then), instead of in a write
# of its own. For frames that come right before others, as the events before an answer's
# first token do (one write instead of three), and for an answer's frames after its first
# token (the tokens read from the model in one go leave in one write, not one each).
SEND_WITH_NEXT = "x-send-with-next"
