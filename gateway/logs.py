"""What the gateway logs about its clients: one line for what is routine, never their bytes.

aiohttp logs a malformed HTTP request (a bad request line, a header too long, a body that is
not the chunked encoding it claims) as an ERROR with a traceback, and the exception's message
quotes the offending bytes: the start of an ``Authorization`` header, or of a prompt. For a
gateway on the internet that is routine, and those bytes are a client's secrets. The filter
below turns such records into one INFO line naming the error's kind, and a client that went
away mid-response into one INFO line too.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

#: aiohttp's logger of the HTTP server's protocol errors.
SERVER_LOGGER = "aiohttp.server"


class RoutineClientErrors(logging.Filter):
    """Malformed requests and disconnects as one INFO line, without the request's bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            summary = f"malformed HTTP request refused with {error.code} ({type(error).__name__})"
        elif isinstance(error, ConnectionResetError):
            summary = "client disconnected mid-response"
        else:
            return True
        record.msg, record.args, record.exc_info, record.exc_text = summary, (), None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def quiet_routine_client_errors() -> None:
    """Install the filter on aiohttp's server logger (once per process)."""
    logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, RoutineClientErrors) for f in logger.filters):
        logger.addFilter(RoutineClientErrors())
