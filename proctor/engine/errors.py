"""Per-item errors, raised anywhere below the service layer and turned into a result's `Status` there."""

from __future__ import annotations


class ItemError(Exception):
    """One item failed. `code` is a gRPC status code name; `field` is the request field at fault, if any."""

    def __init__(self, message: str, field: str = "", code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.code = code
        self.field = field
        self.message = str(self)
