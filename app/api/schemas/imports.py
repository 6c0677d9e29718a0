"""Import job schemas: the upload's options and the job as read back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.api.schemas.common import ReadModel, Strict
from app.models import ImportMode, ImportStatus

MAX_LIST_IDS = 1000


class ImportOptions(Strict):
    """The form fields beside the file."""

    mode: ImportMode = Field(
        ImportMode.subscribe,
        description="subscribe: upsert and add to `list_ids`; blocklist: upsert and blocklist.",
    )
    list_ids: Annotated[list[Annotated[int, Field(ge=1)]], Field(max_length=MAX_LIST_IDS)] = []
    subscription_status: Literal["confirmed", "unconfirmed"] = Field(
        "confirmed", description="Status of new memberships; existing ones are left as they are."
    )
    overwrite: bool = Field(
        True, description="Update the name and merge the attributes of existing subscribers."
    )


class ImportRowError(BaseModel):
    """A rejected row: where it is in the file, the address as written, and why."""

    line: int
    email: str
    reason: str


class ImportRead(ReadModel):
    """An import job and its progress; `errors` keeps the first 1,000 row errors."""

    id: int
    status: ImportStatus
    mode: ImportMode
    list_ids: list[int]
    subscription_status: str
    overwrite: bool
    filename: str
    total_bytes: int
    bytes_read: int
    rows_processed: int
    rows_imported: int
    rows_failed: int
    errors: list[ImportRowError]
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def upload_schema() -> dict[str, Any]:
    """The multipart request body, for OpenAPI (the route parses the form itself)."""
    fields = ImportOptions.model_fields
    properties = {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "The CSV: a header row (email, optional name, attribute columns).",
        },
        "mode": {
            "type": "string",
            "enum": [mode.value for mode in ImportMode],
            "default": ImportMode.subscribe.value,
            "description": fields["mode"].description,
        },
        "list_ids": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1},
            "maxItems": MAX_LIST_IDS,
            "description": "Lists to add the subscribers to: repeat the field or separate by commas.",
        },
        "subscription_status": {
            "type": "string",
            "enum": ["confirmed", "unconfirmed"],
            "default": "confirmed",
            "description": fields["subscription_status"].description,
        },
        "overwrite": {
            "type": "boolean",
            "default": True,
            "description": fields["overwrite"].description,
        },
    }
    schema = {"type": "object", "required": ["file"], "properties": properties}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema}},
        }
    }
