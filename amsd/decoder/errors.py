"""The exception every decoder layer raises internally; the Decoder turns it into an UndecodedFrame."""

from __future__ import annotations


class LayerError(Exception):
    """A frame or APDU this layer cannot accept. `code` is a short snake_case word (the event's
    `error`), `detail` a short human text without any key material."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
