"""The names of the headers fairgate writes, on its responses and on engine requests.

Made once, as multidict's ``istr``, because of what a ``CIMultiDict`` (aiohttp's headers)
keeps per header: for a name given as a plain ``str``, a case-folded copy of it, and once the
headers are written an ``istr`` copy too, about 190 bytes per header; a name that is an
``istr`` already is kept as it is. aiohttp keeps a response's headers for as long as the
response lives, a whole stream and on a keep-alive connection until the next response on it
is done, and an engine request's for as long as its response: with a dozen headers of its own
on every streamed response, that was about 3 KB per open stream (issue 17). Everywhere else an
``istr`` is the ``str`` it was made from (same equality and hash, written as it is spelled).
"""

from __future__ import annotations

from aiohttp import hdrs
from multidict import istr

REQUEST_ID = istr("X-Request-Id")
#: Also read on requests: a tenant that may names its pool with it (gateway/routing.py).
POOL = istr("X-Fairgate-Pool")
ROUTE = istr("X-Fairgate-Route")
ESTIMATE_PROMPT_TOKENS = istr("x-fairgate-estimate-prompt-tokens")
ESTIMATE_OUTPUT_TOKENS = istr("x-fairgate-estimate-output-tokens")
QUEUE_TIME = istr("X-Fairgate-Queue-Time")
BACKEND = istr("X-Fairgate-Backend")
#: On engine requests: the tenant's id (never its key).
TENANT = istr("X-Fairgate-Tenant")
#: Streams: no proxy in front of the gateway may buffer or cache them.
CACHE_CONTROL = hdrs.CACHE_CONTROL
ACCEL_BUFFERING = istr("X-Accel-Buffering")
CONTENT_TYPE = hdrs.CONTENT_TYPE
