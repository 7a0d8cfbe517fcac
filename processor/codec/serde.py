"""Avro serialization of every record the stage reads or writes.

Two wire formats:

* **schemaless Avro** (default): the value is the Avro binary body alone; both sides agree on the
  schema in ``schemas/``. Schemas only grow by appending fields with defaults, so a value written
  before such a field existed ends early and decodes with the field's default.
* **Confluent wire format** (when a schema registry URL is configured): magic byte ``0``, the
  schema id as a 4-byte big-endian integer, then the Avro body. Writer schemas are looked up by id
  in the registry and resolved against our reader schema, so producers may run a newer
  (backward-compatible) schema than we do.

Decoding never raises on bad bytes in the batch path: :meth:`AvroSerde.decode_many` returns the
failures as data so the stage can dead-letter them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
from collections.abc import Mapping, Sequence
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Protocol, cast

import fastavro

from processor.errors import ConfigError, SerializationError

logger = logging.getLogger(__name__)

SCHEMA_NAMES = (
    "BidRequest",
    "BidOutcome",
    "TradeOutcome",
    "ControlCommand",
    "BidDecision",
    "EnsembleWeights",
    "DeadLetter",
    "StateRecord",
)
_MAGIC = 0
_HEADER = struct.Struct(">bI")


def schema_dir() -> Path | None:
    """The folder named by ``BANDIT_SCHEMA_DIR``, or ``None``: the packaged schemas are used.

    The package carries copies of the repository's ``schemas/*.avsc`` (a test checks they are
    identical), so an installed wheel needs no checkout and no environment variable.
    """
    env = os.environ.get("BANDIT_SCHEMA_DIR")
    return Path(env) if env else None


def packaged_schema(name: str) -> Traversable:
    """The packaged copy of schema ``name`` (``processor/schemas/<name>.avsc``)."""
    return files("processor").joinpath("schemas", f"{name}.avsc")


@cache
def load_schema_json(name: str) -> dict[str, Any]:
    """Return the raw JSON of schema ``name`` (e.g. ``"BidRequest"``)."""
    if name not in SCHEMA_NAMES:
        msg = f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}"
        raise ConfigError(msg)
    folder = schema_dir()
    source: Path | Traversable = folder / f"{name}.avsc" if folder else packaged_schema(name)
    try:
        data: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        where = "BANDIT_SCHEMA_DIR" if folder else "the installed package (reinstall it)"
        msg = f"cannot read schema {source} from {where}: {exc.strerror}"
        raise ConfigError(msg) from exc
    return data


def strip_logical_types(schema: Any) -> Any:
    """Copy of a schema without ``logicalType`` annotations.

    The ``.avsc`` files keep ``timestamp-millis`` for other readers; we decode times as plain epoch
    milliseconds (ints), which the handlers want and which is several times faster than building
    ``datetime`` objects.
    """
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(v) for v in schema]
    return schema


@cache
def parsed_schema(name: str) -> Any:
    """Return the fastavro-parsed schema ``name`` (cached, logical types stripped)."""
    return fastavro.parse_schema(strip_logical_types(load_schema_json(name)))


@cache
def legacy_writer_schemas(name: str) -> tuple[Any, ...]:
    """Earlier shapes of schema ``name``: without its trailing fields that have defaults.

    Longest first. A schemaless value written by an older version that lacked those fields is
    read with one of these as the writer schema (the reader fills the defaults).
    """
    schema = strip_logical_types(load_schema_json(name))
    fields = schema["fields"]
    out = []
    cut = len(fields)
    while cut > 0 and "default" in fields[cut - 1]:
        cut -= 1
        out.append(fastavro.parse_schema({**schema, "fields": fields[:cut]}))
    return tuple(out)


class RegistryClient(Protocol):
    """The part of ``confluent_kafka.schema_registry.SchemaRegistryClient`` we use."""

    def register_schema(self, subject_name: str, schema: Any) -> int: ...

    def get_schema(self, schema_id: int) -> Any: ...


def make_registry_client(url: str, extra: Mapping[str, str] | None = None) -> RegistryClient:
    """Build a schema registry client for ``url`` (extra settings pass through)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf: dict[str, Any] = {"url": url}
    conf.update(extra or {})
    client: RegistryClient = SchemaRegistryClient(conf)
    return client


class AvroSerde:
    """Encode and decode one record type.

    Args:
        name: Schema name, one of :data:`SCHEMA_NAMES`.
        registry: Optional schema registry client; enables the Confluent wire format.
        subject: Registry subject (default ``<topic>-value`` style is chosen by the caller).
    """

    def __init__(
        self, name: str, registry: RegistryClient | None = None, subject: str | None = None
    ) -> None:
        self.name = name
        self.schema = parsed_schema(name)
        self._registry = registry
        self._subject = subject or f"{name}-value"
        self._schema_id: int | None = None
        self._writers: dict[int, Any] = {}
        self._legacy = legacy_writer_schemas(name)

    @property
    def wire_format(self) -> str:
        """``"confluent"`` with a registry, else ``"schemaless"``."""
        return "confluent" if self._registry is not None else "schemaless"

    def _own_schema_id(self) -> int:
        if self._schema_id is None:
            assert self._registry is not None
            from confluent_kafka.schema_registry import Schema

            schema = Schema(json.dumps(load_schema_json(self.name)), "AVRO")
            try:
                self._schema_id = int(self._registry.register_schema(self._subject, schema))
            except Exception as exc:
                msg = f"cannot register schema {self.name} under {self._subject}: {exc}"
                raise SerializationError(msg) from exc
        return self._schema_id

    def _writer_schema(self, schema_id: int) -> Any:
        writer = self._writers.get(schema_id)
        if writer is None:
            assert self._registry is not None
            try:
                found = self._registry.get_schema(schema_id)
            except Exception as exc:
                msg = f"schema id {schema_id} not found in the registry: {exc}"
                raise SerializationError(msg) from exc
            writer = fastavro.parse_schema(strip_logical_types(json.loads(found.schema_str)))
            self._writers[schema_id] = writer
        return writer

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Serialize one record; :class:`SerializationError` if it does not fit the schema."""
        buf = io.BytesIO()
        if self._registry is not None:
            buf.write(_HEADER.pack(_MAGIC, self._own_schema_id()))
        try:
            fastavro.schemaless_writer(buf, self.schema, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            msg = f"record does not match schema {self.name}: {exc}"
            raise SerializationError(msg) from exc
        return buf.getvalue()

    def encode_many(self, records: Sequence[Mapping[str, Any]]) -> list[bytes]:
        """Serialize many records (raises on the first that does not fit)."""
        return [self.encode(r) for r in records]

    def decode(self, data: bytes) -> dict[str, Any]:
        """Deserialize one value; raises :class:`SerializationError` with the reason."""
        if data is None:
            msg = f"empty value (tombstone) where a {self.name} was expected"
            raise SerializationError(msg)
        buf = io.BytesIO(data)
        writer = self.schema
        if self._registry is not None:
            if len(data) < _HEADER.size:
                msg = "value shorter than the Confluent wire-format header"
                raise SerializationError(msg, raw=data)
            magic, schema_id = _HEADER.unpack(buf.read(_HEADER.size))
            if magic != _MAGIC:
                msg = f"unknown magic byte {magic} (expected Confluent wire format)"
                raise SerializationError(msg, raw=data)
            writer = self._writer_schema(schema_id)
        if self._registry is None:
            return self._read_schemaless(data)
        try:
            record = cast(dict[str, Any], fastavro.schemaless_reader(buf, writer, self.schema))
        except Exception as exc:  # fastavro raises many kinds on garbage: all mean "undecodable"
            msg = f"cannot decode {self.name}: {type(exc).__name__}: {exc}"
            raise SerializationError(msg, raw=data) from exc
        if buf.tell() != len(data):
            msg = f"{len(data) - buf.tell()} trailing bytes after a {self.name} record"
            raise SerializationError(msg, raw=data)
        return record

    def _read_schemaless(self, data: bytes) -> dict[str, Any]:
        """One schemaless value: the current schema, else an older shape of it (see module)."""
        reader = fastavro.schemaless_reader
        buf = io.BytesIO(data)
        try:
            record = cast(dict[str, Any], reader(buf, self.schema, None))
        except Exception as exc:  # fastavro raises many kinds on garbage: all mean "undecodable"
            error = f"cannot decode {self.name}: {type(exc).__name__}: {exc}"
        else:
            if buf.tell() == len(data):
                return record
            error = f"{len(data) - buf.tell()} trailing bytes after a {self.name} record"
        for writer in self._legacy:
            buf = io.BytesIO(data)
            try:
                record = cast(dict[str, Any], reader(buf, writer, self.schema))
            except Exception:  # not this shape either
                continue
            if buf.tell() == len(data):
                return record
        raise SerializationError(error, raw=data)

    def decode_many(
        self, values: Sequence[bytes | None]
    ) -> tuple[list[dict[str, Any]], list[int], list[tuple[int, str]]]:
        """Deserialize a batch without raising.

        Returns:
            ``(records, ok_index, failures)``: the decoded records, the input index of each, and
            ``(input index, reason)`` for every value that could not be decoded.
        """
        records: list[dict[str, Any]] = []
        ok: list[int] = []
        failures: list[tuple[int, str]] = []
        for i, data in enumerate(values):
            try:
                records.append(self.decode(data))  # type: ignore[arg-type]
                ok.append(i)
            except SerializationError as exc:
                failures.append((i, str(exc)))
        return records, ok, failures


class SerdeRegistry:
    """One :class:`AvroSerde` per record type, sharing an optional schema registry client."""

    def __init__(self, registry: RegistryClient | None = None) -> None:
        self._registry = registry
        self._serdes: dict[str, AvroSerde] = {}

    def __getitem__(self, name: str) -> AvroSerde:
        serde = self._serdes.get(name)
        if serde is None:
            serde = AvroSerde(name, self._registry)
            self._serdes[name] = serde
        return serde
