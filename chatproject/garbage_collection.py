"""Python's cyclic garbage collector, set for a server process.

A request's objects are freed by reference counting as it ends (``tests/test_handler.py``
keeps it so), so the collector finds next to nothing; with Python's defaults it still
took about 5 % of a streaming server's CPU: a young-generation pass every 700 objects
allocated, each walking the objects of every request in flight, and every few hundred
requests a full pass over the whole heap (Django, the models, the libraries: some 150,000
objects, 100 ms). Here the objects made at start-up are moved out of its sight for good
(``gc.freeze``) and a young pass waits for 10,000 objects: under 0.3 %, in pauses of a
few milliseconds.
"""

import gc

YOUNG_THRESHOLD = 10_000  # objects allocated (net) between two young-generation passes


def tune_for_serving() -> None:
    gc.collect()  # what start-up left over goes now, not frozen in
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
