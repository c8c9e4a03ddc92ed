"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, Numeric
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["Money", "JsonDoc", "IdType"]

# PostgreSQL gets jsonb (indexable, containment operators); SQLite gets its JSON1 text.
JsonDoc: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")

# SQLite only aliases rowid for a column declared exactly INTEGER PRIMARY KEY.
IdType: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")


class Money(TypeDecorator[Decimal]):
    """An exact decimal: NUMERIC(p, s) on PostgreSQL, a scaled BIGINT on SQLite.

    SQLite has no exact decimal storage (NUMERIC affinity becomes REAL), so there the value is
    kept as an integer count of 10**-scale units: comparisons, sorting and SUM stay exact.
    """

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int = 18, scale: int = 2) -> None:
        super().__init__()
        self.precision = precision
        self.scale = scale
        self._unit = Decimal(1).scaleb(-scale)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(self.precision, self.scale, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = Decimal(value)
        if dialect.name == "sqlite":
            return int(value.scaleb(self.scale).to_integral_value())
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return (Decimal(int(value)) * self._unit).quantize(self._unit)
        if isinstance(value, Decimal) and value.as_tuple().exponent == -self.scale:
            return value  # NUMERIC(p, s) already arrives with its scale
        return Decimal(value).quantize(self._unit)
