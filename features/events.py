"""The clickstream event contract, version 1.

Every stage imports these models and never retypes a field name: the collector validates with
them, the pipelines parse with them, serving writes impressions with them. The JSON Schema that
the web frontend can validate against is generated from them (``features/schema/``).

Ids are opaque strings (no meaning is read into them) with a length limit. Event time ``ts`` must
carry a timezone and is stored in UTC; ``received_at`` is set by the collector, never trusted from
the client.

Example:
    >>> from features.events import parse_event
    >>> e = parse_event({"schema_version": 1, "event_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    ...     "type": "view", "user_id": "u1", "session_id": "s1", "ts": "2017-11-25T10:00:00Z",
    ...     "item_id": "i9"})
    >>> e.type
    'view'
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal, Union
from uuid import UUID, SafeUUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})

# Defaults of the limits; the collector may tighten them through ValidationContext.
MAX_ID_CHARS = 64
MAX_TEXT_CHARS = 256
MAX_LIST_ITEMS = 100
MAX_QUANTITY = 10_000
MAX_PRICE = 1e9
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)
DEFAULT_MAX_FUTURE_SKEW = timedelta(minutes=5)

# Opaque id: printable, no whitespace or control characters, bounded length.
Id = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[\x21-\x7e]+$", strict=True)
]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS, strict=True)]
Quantity = Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY)]
Price = Annotated[StrictFloat, Field(ge=0, le=MAX_PRICE, allow_inf_nan=False)]
Propensity = Annotated[StrictFloat, Field(gt=0, le=1, allow_inf_nan=False)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$", strict=True)]
Surface = Literal["recommendations", "bundles"]
# Opaque to the contract: base64url payload "." base64url HMAC (serving.feedback_tokens).
FeedbackToken = Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=r"^[A-Za-z0-9_\-.]+$", strict=True)]

ITEM_EVENT_TYPES = ("view", "add_to_cart", "remove_from_cart", "favorite")

# The start of an ISO-8601 / RFC 3339 date-time: a date, "T" (or a space), hours and minutes.
_ISO_8601_START = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d")
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


class _Strict(BaseModel):
    """Unknown fields are an error: a typo in a producer must not silently lose data."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Beam's fallback coder pickles every event at each shuffle of the feature pipeline.
        # pydantic's own pickling goes through its ``__getstate__``/``__setstate__`` and the
        # UUIDs' Python ``__getstate__``/``__setstate__`` (~30 us a round trip, the UUIDs most of
        # it); this form is the validated field dict with UUIDs as integers, rebuilt without
        # re-validation (~6 us).
        state = self.__dict__
        uuids = _uuid_fields(type(self))
        if uuids:
            state = dict(state)
            for name in uuids:
                value = state[name]
                if value is not None:
                    state[name] = value.int
        return (_rebuild_model, (type(self), state, self.__pydantic_fields_set__))


_UUID_FIELDS: dict[type, tuple[str, ...]] = {}


def _uuid_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``cls`` that hold a UUID (or None)."""
    names = _UUID_FIELDS.get(cls)
    if names is None:
        names = _UUID_FIELDS[cls] = tuple(
            name for name, field in cls.__pydantic_fields__.items() if field.annotation in (UUID, UUID | None)
        )
    return names


def _uuid_from_int(value: int) -> UUID:
    """``UUID(int=value)`` without its argument checks (the value came from a UUID)."""
    uuid = _new_object(UUID)
    _set_attribute(uuid, "int", value)
    _set_attribute(uuid, "is_safe", _UNKNOWN_SAFETY)
    return uuid


_new_object = object.__new__
_UNKNOWN_SAFETY = SafeUUID.unknown
_set_attribute = object.__setattr__


def _rebuild_model(cls: type[BaseModel], state: dict[str, Any], fields_set: set[str]) -> BaseModel:
    """The inverse of ``_Strict.__reduce__``: no re-validation (the values were valid when pickled)."""
    for name in _uuid_fields(cls):
        value = state[name]
        if value is not None:
            state[name] = _uuid_from_int(value)
    model = _new_object(cls)
    _set_attribute(model, "__dict__", state)
    _set_attribute(model, "__pydantic_fields_set__", fields_set)
    _set_attribute(model, "__pydantic_extra__", None)
    _set_attribute(model, "__pydantic_private__", None)
    return model


class ValidationContext(BaseModel):
    """What validation needs to know beyond the payload (passed as pydantic context)."""

    now: datetime
    max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW
    max_id_chars: int = MAX_ID_CHARS
    max_text_chars: int = MAX_TEXT_CHARS
    max_list_items: int = MAX_LIST_ITEMS
    # False when the caller knows no string can hold a lone surrogate: only JSON's \\uD800-\\uDFFF
    # escapes make one (strict UTF-8 decoding refuses encoded surrogates), and a body without them
    # spares every event the walk over its strings.
    may_hold_surrogates: bool = True


def iso_8601_datetime(value: Any) -> Any:
    """A date-time given as an ISO-8601 string, parsed; a ``datetime`` (or None) as is; anything
    else (an epoch number, a numeric string) refused as ``datetime_type`` (``wrong_type``).

    pydantic alone reads epoch numbers (1511604000, "1511604000") as times: a producer that sends
    seconds where milliseconds were meant would be silently decades off. The contract's times
    (``ts``, ``received_at``) take only ISO-8601, in every mode (strict JSON included); other
    request models can use it as ``BeforeValidator(iso_8601_datetime)`` before a datetime type.

    Example:
        >>> iso_8601_datetime("2017-11-25T10:00:00Z").isoformat()
        '2017-11-25T10:00:00+00:00'
    """
    if isinstance(value, str):
        if _ISO_8601_START.match(value) is None:
            raise PydanticCustomError("datetime_type", "must be an ISO-8601 date-time string such as 2017-11-25T10:00:00Z")
        # Parsed here: past a function, pydantic's strict mode (valid_event_from_json) would take
        # the string for a Python value and refuse it. fromisoformat is the fast path (0.2 us);
        # pydantic's parser takes what it does not and words the errors.
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
        try:
            return _DATETIME.validate_python(value)
        except ValidationError as exc:
            raise PydanticCustomError("datetime_parsing", "{msg}", {"msg": exc.errors()[0]["msg"]}) from None
    if value is None or isinstance(value, datetime):
        return value
    raise PydanticCustomError(
        "datetime_type",
        "must be an ISO-8601 date-time string such as 2017-11-25T10:00:00Z, not a {kind}",
        {"kind": type(value).__name__},
    )


# A time with a timezone, given as an ISO-8601 string (never an epoch number: iso_8601_datetime).
IsoDatetime = Annotated[AwareDatetime, BeforeValidator(iso_8601_datetime)]


class EventBase(_Strict):
    """Fields every event carries."""

    schema_version: Literal[1]
    # Client-generated, so a retried POST keeps its id and downstream de-duplication works.
    event_id: UUID
    user_id: Id
    session_id: Id
    ts: IsoDatetime = Field(description="Event time at the client, with a timezone; stored as UTC.")
    received_at: IsoDatetime | None = Field(
        default=None, description="Server receive time, set by the collector (client values are replaced)."
    )
    page: Text | None = None

    @field_validator("schema_version", mode="before")
    @classmethod
    def _integer_version(cls, value: Any) -> Any:
        # Literal[1] takes true and 1.0 for 1; the version is the JSON integer 1. parse_event
        # checks this before validating; a validation straight from the raw JSON relies on it here.
        if type(value) is not int:
            raise ValueError(f"schema_version must be an integer, got {type(value).__name__}")
        return value

    @field_validator("ts", "received_at", mode="after")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return value.astimezone(timezone.utc) if value is not None else None

    @field_validator("ts", mode="after")
    @classmethod
    def _plausible_event_time(cls, value: datetime, info: ValidationInfo) -> datetime:
        if value < EARLIEST_EVENT_TIME:
            raise ValueError(f"event time {value.isoformat()} is before {EARLIEST_EVENT_TIME.date()}")
        ctx = _context(info)
        if ctx is not None and value > ctx.now + ctx.max_future_skew:
            raise ValueError(
                f"event time {value.isoformat()} is more than {ctx.max_future_skew} after the server time"
            )
        return value

    @field_validator("user_id", "session_id", mode="after")
    @classmethod
    def _id_limit(cls, value: str, info: ValidationInfo) -> str:
        # Checked inline first: the pipeline parses without a context, ~330k calls a Taobao batch.
        return value if info.context is None else _check_id_length(value, info)


class ItemEventBase(EventBase):
    item_id: Id
    category_id: Id | None = None
    price: Price | None = None

    @field_validator("item_id", "category_id", mode="after")
    @classmethod
    def _item_id_limit(cls, value: str | None, info: ValidationInfo) -> str | None:
        return value if info.context is None else _check_id_length(value, info)


class ViewEvent(ItemEventBase):
    """A product page view."""

    type: Literal["view"]


class AddToCartEvent(ItemEventBase):
    type: Literal["add_to_cart"]
    quantity: Quantity = 1


class RemoveFromCartEvent(ItemEventBase):
    type: Literal["remove_from_cart"]
    quantity: Quantity = 1


class FavoriteEvent(ItemEventBase):
    type: Literal["favorite"]


class LineItem(_Strict):
    """One line of an order. `price` is the unit price; None when the source does not know it."""

    item_id: Id
    quantity: Quantity = 1
    price: Price | None = None
    category_id: Id | None = None


class _HasLines(EventBase):
    items: list[LineItem] = Field(min_length=1, max_length=MAX_LIST_ITEMS)
    currency: Currency | None = None

    @field_validator("items", mode="after")
    @classmethod
    def _lines_limit(cls, value: list[Any], info: ValidationInfo) -> list[Any]:
        return _check_list_length(value, info)


class PurchaseEvent(_HasLines):
    type: Literal["purchase"]
    order_id: Id | None = None


class SearchEvent(EventBase):
    type: Literal["search"]
    query: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS, strict=True)]
    result_item_ids: list[Id] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)

    @field_validator("query", mode="after")
    @classmethod
    def _query_limit(cls, value: str, info: ValidationInfo) -> str:
        ctx = _context(info)
        if ctx is not None and len(value) > ctx.max_text_chars:
            raise ValueError(f"query is longer than {ctx.max_text_chars} characters")
        return value

    @field_validator("result_item_ids", mode="after")
    @classmethod
    def _results_limit(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return _check_list_length(value, info)


class ShownSlot(_Strict):
    """One shown recommendation: an item or a bundle at a position."""

    id: Id
    position: Annotated[StrictInt, Field(ge=0, le=10_000)]
    # Probability that the logging policy showed this id in this slot (bandit-chosen slots only);
    # off-policy evaluation divides by it.
    propensity: Propensity | None = None
    score: Annotated[StrictFloat, Field(allow_inf_nan=False)] | None = None


class ImpressionEvent(EventBase):
    """A recommendation or bundle list shown to the user."""

    type: Literal["impression"]
    request_id: Id
    surface: Surface
    slots: list[ShownSlot] = Field(min_length=1, max_length=MAX_LIST_ITEMS)
    policy: Id | None = None
    experiment: Id | None = None
    variant: Id | None = None

    @field_validator("slots", mode="after")
    @classmethod
    def _slots_consistent(cls, value: list[ShownSlot], info: ValidationInfo) -> list[ShownSlot]:
        positions = [s.position for s in value]
        if len(set(positions)) != len(positions):
            raise ValueError("slot positions must be unique")
        return _check_list_length(value, info)


class ClickEvent(EventBase):
    """A click on a shown recommendation, attributed to the request that showed it."""

    type: Literal["click"]
    request_id: Id
    item_id: Id | None = None
    bundle_id: Id | None = None
    position: Annotated[StrictInt, Field(ge=0, le=10_000)] | None = None
    # The signed token served with the slate (serving.feedback_tokens): without a valid one the
    # click is organic and never credited to a policy or an experiment.
    feedback_token: FeedbackToken | None = None

    @model_validator(mode="after")
    def _clicked_something(self) -> "ClickEvent":
        if self.item_id is None and self.bundle_id is None:
            raise ValueError("a click names the item_id or the bundle_id that was clicked")
        return self


class BundlePurchaseEvent(_HasLines):
    """A purchase of a shown bundle, attributed to the request that showed it."""

    type: Literal["bundle_purchase"]
    request_id: Id
    bundle_id: Id
    order_id: Id | None = None
    feedback_token: FeedbackToken | None = None


class DismissEvent(BaseModel):
    """A dismissed bundle (``POST /v1/feedback``), the wire record of the serving feedback topic
    (``kafka.topics.feedback``) that the bandit learner and OPE read. Not part of the v1 event
    contract (not in ``Event``): the collector never accepts it."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    event_id: UUID
    type: Literal["dismiss"] = "dismiss"
    user_id: str
    session_id: str
    ts: datetime
    received_at: datetime
    request_id: str
    bundle_id: str
    feedback_token: str


Event = Annotated[
    Union[
        ViewEvent,
        AddToCartEvent,
        RemoveFromCartEvent,
        FavoriteEvent,
        PurchaseEvent,
        SearchEvent,
        ImpressionEvent,
        ClickEvent,
        BundlePurchaseEvent,
    ],
    Field(discriminator="type"),
]
EVENT_TYPES: tuple[str, ...] = (
    "view",
    "add_to_cart",
    "remove_from_cart",
    "favorite",
    "purchase",
    "search",
    "impression",
    "click",
    "bundle_purchase",
)

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


class EventRejected(ValueError):
    """An event that does not meet the contract, with a machine-readable reason code."""

    def __init__(self, reason: str, detail: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.errors = errors or []


# pydantic error types -> our reason codes (the first error of an event decides its reason).
_REASON_BY_ERROR_TYPE = {
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
    "string_too_long": "field_too_large",
    "too_long": "field_too_large",
    "finite_number": "not_a_finite_number",
    "greater_than_equal": "out_of_range",
    "greater_than": "out_of_range",
    "less_than_equal": "out_of_range",
    "less_than": "out_of_range",
    "timezone_aware": "timestamp_without_timezone",
    "string_unicode": "invalid_unicode",
}


def parse_event(payload: Any, context: ValidationContext | None = None) -> Event:
    """Validate one decoded JSON value against the contract.

    Args:
        payload: the decoded JSON object of one event.
        context: server time and limits; without it the future-time check is skipped.

    Returns:
        The typed event.

    Raises:
        EventRejected: with a reason code such as ``unknown_event_type`` or ``missing_field``.
    """
    if not isinstance(payload, dict):
        raise EventRejected("not_an_object", f"an event is a JSON object, got {type(payload).__name__}")
    where = lone_surrogate_at(payload) if context is None or context.may_hold_surrogates else None
    if where is not None:
        # Checked first, anywhere (keys, unknown fields, nested lists): such a string cannot be
        # encoded as UTF-8, so it could reach neither Kafka nor a response, nor be named in one.
        raise EventRejected(
            "invalid_unicode",
            f"{where}: a lone UTF-16 surrogate (such as \\ud800) is not a Unicode character",
            [{"type": "string_unicode", "loc": where.split("."), "msg": "lone surrogate"}],
        )
    version = payload.get("schema_version")
    if version is None:
        raise EventRejected("missing_field", "schema_version is required", [{"loc": ["schema_version"]}])
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise EventRejected(
            "unsupported_schema_version",
            f"schema_version {version!r} is not supported (supported: {sorted(SUPPORTED_SCHEMA_VERSIONS)})",
        )
    event_type = payload.get("type")
    if event_type not in EVENT_TYPES:
        raise EventRejected(
            "unknown_event_type" if event_type is not None else "missing_field",
            f"type {event_type!r} is not one of {list(EVENT_TYPES)}",
        )
    try:
        return _EVENT_ADAPTER.validate_python(payload, context=context)
    except Exception as exc:  # pydantic.ValidationError, kept generic to report every cause
        errors = _errors_of(exc)
        raise EventRejected(_reason_of(errors), _summary_of(errors), errors) from None


def lone_surrogate_at(value: Any) -> str | None:
    """Where a decoded JSON value holds a lone UTF-16 surrogate (JSON's ``"\\ud800"`` escape
    decodes to one; it is not a character and cannot be encoded as UTF-8), or None.

    Looks at every string, dict keys and nested values included, without recursion.

    Returns:
        The dotted path of one such string, printable (keys shown with ``ascii()`` where
        they are not ASCII), e.g. ``"items.0.item_id"``; ``"(value)"`` for a top-level string.

    Example:
        >>> lone_surrogate_at({"user_id": "u\\ud800"})
        'user_id'
    """
    if not _has_lone_surrogate(value):
        return None
    pending: list[tuple[tuple[Any, ...], Any]] = [((), value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and not _encodable(item):
                return _printable_path(path)
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and not key.isascii() and not _encodable(key):
                    return _printable_path((*path, key))
                pending.append(((*path, key), child))
        elif isinstance(item, list):
            pending.extend(((*path, index), child) for index, child in enumerate(item))
    return None


def _has_lone_surrogate(value: Any) -> bool:
    """``lone_surrogate_at`` without the path: the fast check of every event (ASCII is the rule)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and not _encodable(item):
                return True
        elif isinstance(item, dict):
            for key in item:
                if isinstance(key, str) and not key.isascii() and not _encodable(key):
                    return True
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable_path(path: tuple[Any, ...]) -> str:
    def part(p: Any) -> str:
        if not isinstance(p, str):
            return str(p)
        return p if p.isascii() and p.isprintable() else ascii(p)

    return ".".join(part(p) for p in path) or "(value)"


def _errors_of(exc: Exception) -> list[dict[str, Any]]:
    raw = getattr(exc, "errors", None)
    if raw is None:
        return [{"type": "invalid", "loc": [], "msg": str(exc)}]
    return [
        {"type": e["type"], "loc": [str(p) for p in e["loc"][1:]], "msg": e["msg"]}
        for e in raw(include_url=False, include_input=False, include_context=False)
    ]


def _reason_of(errors: list[dict[str, Any]]) -> str:
    first = errors[0] if errors else {"type": "invalid", "msg": ""}
    if first["loc"] == ["ts"] and "event time" in first["msg"]:
        return "timestamp_out_of_range"
    if "longer than" in first["msg"]:
        return "field_too_large"
    if first["type"] in _REASON_BY_ERROR_TYPE:
        return _REASON_BY_ERROR_TYPE[first["type"]]
    if first["type"].endswith(("_type", "_parsing")) or first["type"] == "literal_error":
        return "wrong_type"
    return "invalid_field"


def _summary_of(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{'.'.join(e['loc']) or '(event)'}: {e['msg']}" for e in errors[:5])


def _context(info: ValidationInfo) -> ValidationContext | None:
    ctx = info.context
    return ctx if isinstance(ctx, ValidationContext) else None


def _check_id_length(value: str | None, info: ValidationInfo) -> str | None:
    ctx = info.context  # inline, not through _context: one call fewer for each of an event's ids
    if value is not None and isinstance(ctx, ValidationContext) and len(value) > ctx.max_id_chars:
        raise ValueError(f"id is longer than {ctx.max_id_chars} characters")
    return value


def _check_list_length(value: list[Any], info: ValidationInfo) -> list[Any]:
    ctx = _context(info)
    if ctx is not None and len(value) > ctx.max_list_items:
        raise ValueError(f"list is longer than {ctx.max_list_items} entries")
    return value


def event_to_json(event: Event) -> bytes:
    """The canonical wire form of an event (what the `events` topic carries): the fields the
    producer set, times in UTC; defaults are not written so the record is what the client sent."""
    return event.model_dump_json(exclude_unset=True, exclude_none=True).encode("utf-8")


def event_from_json(data: bytes | str) -> Event:
    """Parse the canonical wire form back (no time-window checks: the collector already did them)."""
    return _EVENT_ADAPTER.validate_json(data)


def valid_event_from_json(data: bytes) -> Event | None:
    """The event of raw JSON in one call, or None where it is not a valid event; ``parse_event`` on
    the decoded value then says why. No context: the time-window and limit checks are skipped.

    For the pipeline's parse: valid records in one pass of pydantic's JSON parser cost 40% less
    than decoding and validating the dict. Strict, so it takes nothing ``parse_event`` refuses
    (tests/features/test_event_contract.py), and gives the same event where both take it.
    """
    try:
        return _EVENT_ADAPTER.validate_json(data, strict=True)
    except ValidationError:
        return None


def event_json_schema() -> dict[str, Any]:
    """JSON Schema of the contract, generated from the models."""
    schema = _EVENT_ADAPTER.json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://streamrec.dev/schema/events.v{SCHEMA_VERSION}.json"
    schema["title"] = f"streamrec clickstream event v{SCHEMA_VERSION}"
    return schema
