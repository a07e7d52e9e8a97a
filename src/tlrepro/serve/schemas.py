"""What the service answers: the error every refusal raises, and the response schemas /docs shows."""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

JSON_EXAMPLE = '{"image": "<base64 of the image file>", "model": "<study>/<row>"}'


class ApiError(Exception):
    """A request the service refuses: HTTP status and a message saying what is wrong and what to do.

    retry_after: seconds a client should wait before trying again (sent as `Retry-After` with a 503).
    reader: the same for a person at the web page, without setting names (they stay in `message`, for the API
    and the log); sent as the JSON's `message` when given."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None,
                 reader: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.reader = reader

    def body(self) -> dict[str, str]:
        return {"error": self.message, **({"message": self.reader} if self.reader else {})}

    @property
    def headers(self) -> dict[str, str] | None:
        if self.retry_after is None:
            return None
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


def busy(message: str, retry_after: float, *, reader: str | None = None) -> ApiError:
    """503: the server is at one of its bounds; the request did no work worth keeping. Try again later."""
    seconds = max(1, math.ceil(retry_after))
    return ApiError(503, f"{message}; try again in {seconds} s (Retry-After).", retry_after=seconds,
                    reader=reader or f"The server is busy right now. Please try again in {seconds} s.")


class ErrorOut(BaseModel):
    error: str = Field(description="what is wrong with the request and what to do (may name server settings)")
    message: str | None = Field(None, description="the same in words for a person at the web page, when they "
                                                  "differ (no setting names)")


class PredictionOut(BaseModel):
    predicted_label: str
    probabilities: dict[str, float] = Field(description="one probability per class, in the card's class order")
    model: str = Field(description="<study>/<row> of the model that answered")
    threshold: float | None = Field(description="P(positive class) at or above which a binary model says positive")
    seen_in_training: bool = Field(description="the image nearly matches (perceptual hash) a training image")
    nearest_training_distance: int = Field(description="bits from the nearest training image's hash (65: none known)")


class ExplanationOut(PredictionOut):
    overlay_png: str = Field(description="base64 PNG: Grad-CAM of the predicted class over the resized image")


MODEL_FIELD = {"type": "string", "description": "<study>/<row> (default: the server's; also accepted as ?model=)"}
IMAGE_REQUEST = {
    "parameters": [{"name": "model", "in": "query", "required": False, "schema": MODEL_FIELD}],
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": {
            "type": "object", "required": ["image"], "additionalProperties": False,
            "properties": {"image": {"type": "string", "format": "byte",
                                     "description": "the image file's bytes (PNG, JPEG, GIF, BMP, TIFF), base64; "
                                                    "a data: URL is accepted too"},
                           "model": MODEL_FIELD}}},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"], "additionalProperties": False,
            "properties": {"file": {"type": "string", "format": "binary"}, "model": MODEL_FIELD}}},
    }},
}
ERRORS = {code: {"model": ErrorOut, "description": text} for code, text in (
    (400, "not base64, not an image, empty, malformed, or an unknown query or body field"),
    (403, "a POST from a web page of another origin (see --allow-origin)"), (404, "unknown model"),
    (413, "larger than serve.max_upload_mb, or more pixels than serve.max_pixels"),
    (415, "content type other than application/json or multipart/form-data, or an unsupported image format"),
    (421, "a Host this server does not answer to (see --allow-host)"),
    (422, "well-formed JSON or form without the expected fields"),
    (503, "busy (serve.max_queue, serve.max_explain_queue) or not answered within serve.deadline_s: "
          "try again after Retry-After seconds; or the model cannot be loaded"))}
