"""The schema: object types, their typed fields, constraints and custom rules.

A :class:`Schema` is built in Python or read from the ``[objects.*]`` tables of the
TOML configuration shared with the relay::

    [objects.Account.fields]
    Name = { type = "string", required = true, max_length = 80 }

    [[objects.Contact.rules]]
    function = "myapp.rules:email_or_phone"   # (values) -> list[FieldError]

Checking is split the way the product needs it:

* :meth:`ObjectSpec.check_changes` checks the values a user writes (types, lengths,
  picklists, ranges, unknown and read-only fields) and returns canonical values;
* :meth:`ObjectSpec.check_record` checks a whole record (required fields, custom
  rules), the way the relay checks a merged record.

``unique`` and ``reference`` are declared here and enforced by the relay, which is the
only place that sees every record. Custom rules are imported when the schema is read
from a file; a schema received from the relay carries rule *names* only, which the
relay enforces.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from .exceptions import FieldError, SchemaError, UnknownObject, ValidationError
from .fieldtypes import FieldType
from .tomlfile import load_toml_config

RuleFunction = Callable[[Mapping[str, Any]], Iterable[FieldError]]

SHARING_MODES = ("private", "read", "read_write")
_FIELD_KEYS = frozenset(
    {
        "type",
        "required",
        "max_length",
        "min",
        "max",
        "values",
        "unique",
        "to",
        "read_only",
        "hidden",
        "label",
    }
)
_OBJECT_KEYS = frozenset({"fields", "rules", "sharing", "label"})


@attrs.frozen(kw_only=True)
class FieldSpec:
    """One field of an object type and its constraints."""

    name: str
    type: FieldType
    required: bool = False
    max_length: int | None = None
    min: Any = None
    max: Any = None
    values: tuple[str, ...] | None = None
    unique: bool = False
    to: str | None = None
    read_only: bool = False
    read_only_roles: tuple[str, ...] = ()  #: read-only only for users with one of these roles
    hidden_roles: tuple[str, ...] = ()  #: users with one of these roles may not read it
    label: str | None = None

    def check(self, value: object) -> tuple[Any, list[str]]:
        """Return ``(canonical value, problems)`` for one value of this field."""
        try:
            canonical = self.type.coerce(value)
        except ValueError as exc:
            return None, [str(exc)]
        if canonical is None:
            return None, []
        problems: list[str] = []
        if self.max_length is not None and len(canonical) > self.max_length:
            problems.append(f"is {len(canonical)} characters long, at most {self.max_length}")
        if self.values is not None and canonical not in self.values:
            problems.append(f"{canonical!r} is not one of {', '.join(self.values)}")
        if self.min is not None and canonical < self.min:
            problems.append(f"must be at least {self.min}")
        if self.max is not None and canonical > self.max:
            problems.append(f"must be at most {self.max}")
        return canonical, problems

    def to_wire(self) -> dict[str, Any]:
        """The field as plain data (the TOML shape); bounds in their stored encoding."""
        data: dict[str, Any] = {"type": self.type.value}
        for key in ("required", "unique", "read_only"):
            if getattr(self, key):
                data[key] = True
        if self.read_only_roles and not self.read_only:
            data["read_only"] = list(self.read_only_roles)
        if self.hidden_roles:
            data["hidden"] = list(self.hidden_roles)
        for key in ("max_length", "to", "label"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.values is not None:
            data["values"] = list(self.values)
        for key in ("min", "max"):
            if getattr(self, key) is not None:
                data[key] = self.type.encode(getattr(self, key))
        return data

    @classmethod
    def from_wire(cls, name: str, data: object) -> FieldSpec:
        """Build a field from its TOML / wire shape; ``SchemaError`` names what is wrong."""
        where = f"field {name!r}"
        if not isinstance(data, Mapping):
            raise SchemaError(f"{where}: expected a table, got {type(data).__name__}")
        unknown = sorted(set(data) - _FIELD_KEYS)
        if unknown:
            raise SchemaError(f"{where}: unknown key(s) {', '.join(unknown)}")
        try:
            field_type = FieldType(data.get("type"))
        except ValueError:
            known = ", ".join(t.value for t in FieldType)
            raise SchemaError(f"{where}: type {data.get('type')!r} is not one of {known}") from None
        values = data.get("values")
        if field_type is FieldType.PICKLIST:
            if (
                not isinstance(values, list)
                or not values
                or not all(isinstance(v, str) for v in values)
            ):
                raise SchemaError(f"{where}: a picklist needs 'values', a list of strings")
        elif values is not None:
            raise SchemaError(f"{where}: 'values' only applies to picklist fields")
        to = data.get("to")
        if field_type is FieldType.REFERENCE and not isinstance(to, str):
            raise SchemaError(f"{where}: a reference needs 'to', the object it points at")
        if to is not None and field_type is not FieldType.REFERENCE:
            raise SchemaError(f"{where}: 'to' only applies to reference fields")
        max_length = data.get("max_length")
        if max_length is not None and (
            not field_type.is_textual
            or isinstance(max_length, bool)
            or not isinstance(max_length, int)
            or max_length < 0
        ):
            raise SchemaError(f"{where}: max_length must be a non-negative integer on a text type")
        bounds = {}
        for key in ("min", "max"):
            raw = data.get(key)
            if raw is None:
                continue
            if not field_type.is_ordered:
                raise SchemaError(f"{where}: {key!r} only applies to numbers, dates and datetimes")
            if field_type is FieldType.DECIMAL and isinstance(raw, float):
                raw = Decimal(str(raw))
            try:
                bounds[key] = field_type.coerce(raw)
            except ValueError as exc:
                raise SchemaError(f"{where}: {key}: {exc}") from None
        flags: dict[str, Any] = {}
        for key in ("required", "unique"):
            flag = data.get(key, False)
            if not isinstance(flag, bool):
                raise SchemaError(f"{where}: {key!r} must be true or false")
            flags[key] = flag
        read_only = data.get("read_only", False)
        if isinstance(read_only, list) and all(isinstance(r, str) for r in read_only):
            flags["read_only_roles"] = tuple(read_only)
        elif isinstance(read_only, bool):
            flags["read_only"] = read_only
        else:
            raise SchemaError(f"{where}: 'read_only' must be true, false or a list of roles")
        hidden = data.get("hidden", [])
        if not isinstance(hidden, list) or not all(isinstance(r, str) for r in hidden):
            raise SchemaError(f"{where}: 'hidden' must be a list of roles that may not read it")
        if hidden and flags["required"]:
            raise SchemaError(f"{where}: a required field cannot be hidden from a role")
        flags["hidden_roles"] = tuple(hidden)
        label = data.get("label")
        if label is not None and not isinstance(label, str):
            raise SchemaError(f"{where}: 'label' must be a string")
        return cls(
            name=name,
            type=field_type,
            max_length=max_length,
            values=tuple(values) if values is not None else None,
            to=to,
            label=label,
            **bounds,
            **flags,
        )


@attrs.frozen
class Rule:
    """A custom validation rule, named ``"package.module:function"``.

    ``function`` is ``None`` when the rule could not be imported here (a schema received
    from the relay); the relay still enforces it.
    """

    name: str
    function: RuleFunction | None = attrs.field(default=None, eq=False, repr=False)

    @classmethod
    def load(cls, name: str) -> Rule:
        """Import the rule's function; ``SchemaError`` if the name does not resolve."""
        module_name, sep, attr = name.partition(":")
        if not sep or not module_name or not attr:
            raise SchemaError(f"rule {name!r}: expected 'package.module:function'")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - any import failure is a config error
            raise SchemaError(
                f"rule {name!r}: cannot import {module_name}: {type(exc).__name__}: {exc}"
            ) from None
        function = getattr(module, attr, None)
        if not callable(function):
            raise SchemaError(f"rule {name!r}: {module_name} has no function {attr!r}")
        return cls(name, function)

    def run(self, values: Mapping[str, Any]) -> list[FieldError]:
        """Run the rule on a whole record; a misbehaving rule is reported, not hidden."""
        if self.function is None:
            return []
        try:
            result = list(self.function(values))
        except Exception as exc:  # noqa: BLE001 - an app rule's bug is reported on the record
            return [FieldError("", f"rule {self.name} failed: {exc!r}")]
        errors = [item for item in result if isinstance(item, FieldError)]
        if len(errors) != len(result):
            return [FieldError("", f"rule {self.name} returned something other than FieldError")]
        return errors


@attrs.frozen
class ObjectSpec:
    """One object type (``Account``, ``Contact``…): its fields, rules and sharing default."""

    name: str
    fields: Mapping[str, FieldSpec]
    rules: tuple[Rule, ...] = ()
    sharing: str = "private"
    label: str | None = None

    # Derived from ``fields`` when the spec is built. (Not ``cached_property``s: on a
    # slotted attrs class those give the class a ``__getattr__``, and with it every
    # attribute read of every spec takes CPython's slow path; the relay reads specs for
    # every change it decides.)

    #: the first ``owner`` field, if the object has one
    owner_field: str | None = attrs.field(init=False, eq=False, repr=False)
    #: the ``required`` fields, in order
    required_fields: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False)
    #: the fields whose values are checked against other records (``unique`` and
    #: ``reference`` fields)
    cross_checked_fields: frozenset[str] = attrs.field(init=False, eq=False, repr=False)

    @owner_field.default
    def _owner_field(self) -> str | None:
        return next((n for n, f in self.fields.items() if f.type is FieldType.OWNER), None)

    @required_fields.default
    def _required_fields(self) -> tuple[str, ...]:
        return tuple(n for n, f in self.fields.items() if f.required)

    @cross_checked_fields.default
    def _cross_checked_fields(self) -> frozenset[str]:
        return frozenset(
            n for n, f in self.fields.items() if f.unique or f.type is FieldType.REFERENCE
        )

    def field(self, name: str) -> FieldSpec:
        """The field called ``name``; ``KeyError`` if there is none."""
        return self.fields[name]

    @property
    def text_fields(self) -> frozenset[str]:
        return frozenset(n for n, f in self.fields.items() if f.type is FieldType.TEXT)

    def check_changes(
        self, changes: Mapping[str, object], *, creating: bool
    ) -> tuple[dict[str, Any], list[FieldError]]:
        """Check values written by a user; return canonical values and field errors.

        Unknown fields, wrong types, lengths, picklists and ranges are errors; so is
        writing a ``read_only`` field of an existing record (``creating=False``) and
        clearing a required field. Required fields *missing* from a new record are
        checked by :meth:`check_record`.
        """
        canonical: dict[str, Any] = {}
        errors: list[FieldError] = []
        for name, value in changes.items():
            spec = self.fields.get(name) if isinstance(name, str) else None
            if spec is None:
                errors.append(FieldError(str(name), f"no such field on {self.name}"))
                continue
            if spec.read_only and not creating:
                errors.append(FieldError(name, "is read-only"))
                continue
            if spec.type is FieldType.OWNER and not creating:
                errors.append(FieldError(name, "is read-only (an administrator changes owners)"))
                continue
            value_out, problems = spec.check(value)
            errors.extend(FieldError(name, problem) for problem in problems)
            if value_out is None and spec.required and not problems:
                errors.append(FieldError(name, "is required"))
            if not problems:
                canonical[name] = value_out
        return canonical, errors

    def check_record(
        self, values: Mapping[str, Any], *, run_rules: bool = True
    ) -> list[FieldError]:
        """Check a whole record (canonical values): required fields, then custom rules."""
        errors = [
            FieldError(name, "is required")
            for name in self.required_fields
            if values.get(name) is None
        ]
        if run_rules:
            for rule in self.rules:
                errors.extend(rule.run(values))
        return errors

    def for_roles(self, roles: frozenset[str]) -> ObjectSpec:
        """This object as users with ``roles`` see it: fields hidden from any of their
        roles left out, fields read-only for any of them marked read-only."""
        fields = {
            name: attrs.evolve(
                spec,
                read_only=spec.read_only or bool(roles & set(spec.read_only_roles)),
                read_only_roles=(),
                hidden_roles=(),
            )
            for name, spec in self.fields.items()
            if not roles & set(spec.hidden_roles)
        }
        return attrs.evolve(self, fields=fields)

    def hidden_for(self, roles: frozenset[str]) -> frozenset[str]:
        """The fields users with ``roles`` may not read."""
        return frozenset(
            name for name, spec in self.fields.items() if roles & set(spec.hidden_roles)
        )

    def to_wire(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "sharing": self.sharing,
            "fields": {name: spec.to_wire() for name, spec in self.fields.items()},
            "rules": [{"function": rule.name} for rule in self.rules],
        }
        if self.label is not None:
            data["label"] = self.label
        return data

    @classmethod
    def from_wire(cls, name: str, data: object, *, load_rules: bool = True) -> ObjectSpec:
        where = f"object {name!r}"
        if not isinstance(data, Mapping):
            raise SchemaError(f"{where}: expected a table, got {type(data).__name__}")
        unknown = sorted(set(data) - _OBJECT_KEYS)
        if unknown:
            raise SchemaError(f"{where}: unknown key(s) {', '.join(unknown)}")
        raw_fields = data.get("fields")
        if not isinstance(raw_fields, Mapping) or not raw_fields:
            raise SchemaError(f"{where}: needs a [objects.{name}.fields] table with fields")
        fields = {}
        for field_name, field_data in raw_fields.items():
            try:
                fields[field_name] = FieldSpec.from_wire(field_name, field_data)
            except SchemaError as exc:
                raise SchemaError(f"{where}: {exc}") from None
        rules = []
        for entry in data.get("rules", []):
            function = entry.get("function") if isinstance(entry, Mapping) else None
            if not isinstance(function, str):
                raise SchemaError(f"{where}: each [[rules]] entry needs function = 'pkg.mod:fn'")
            rules.append(Rule.load(function) if load_rules else Rule(function))
        sharing = data.get("sharing", "private")
        if sharing not in SHARING_MODES:
            raise SchemaError(f"{where}: sharing must be one of {', '.join(SHARING_MODES)}")
        label = data.get("label")
        return cls(name, fields, tuple(rules), sharing, label if isinstance(label, str) else None)


@attrs.frozen
class Schema:
    """Every object type an application syncs. Immutable; compare with ``==``."""

    objects: Mapping[str, ObjectSpec]

    def object(self, name: str) -> ObjectSpec:
        """The object type called ``name``; :class:`UnknownObject` if there is none."""
        try:
            return self.objects[name]
        except KeyError:
            known = ", ".join(sorted(self.objects)) or "none"
            raise UnknownObject(f"no object type {name!r} in the schema (known: {known})") from None

    def validate_new(self, object_name: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """Canonical values for a new record, or :class:`ValidationError` naming each field."""
        spec = self.object(object_name)
        canonical, errors = spec.check_changes(values, creating=True)
        errors += _record_errors(spec, canonical, errors)
        if errors:
            raise ValidationError(object_name, errors)
        return canonical

    def validate_update(
        self, object_name: str, current: Mapping[str, Any], changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Canonical changes for an existing record, checked on the record they produce."""
        spec = self.object(object_name)
        canonical, errors = spec.check_changes(changes, creating=False)
        errors += _record_errors(spec, {**current, **canonical}, errors)
        if errors:
            raise ValidationError(object_name, errors)
        return canonical

    def for_roles(self, roles: frozenset[str]) -> Schema:
        """The schema as users with ``roles`` see it (see :meth:`ObjectSpec.for_roles`)."""
        return Schema({name: spec.for_roles(roles) for name, spec in self.objects.items()})

    def to_wire(self) -> dict[str, Any]:
        """The schema as plain data (the ``objects`` tables), e.g. to send to replicas."""
        return {name: spec.to_wire() for name, spec in self.objects.items()}

    @classmethod
    def from_wire(cls, data: Any, *, load_rules: bool = False) -> Schema:
        """Build from the ``objects`` tables; rules are imported only if ``load_rules``."""
        if not isinstance(data, Mapping) or not data:
            raise SchemaError("the schema needs at least one [objects.NAME] table")
        objects = {
            name: ObjectSpec.from_wire(name, spec, load_rules=load_rules)
            for name, spec in data.items()
        }
        for spec in objects.values():
            for field in spec.fields.values():
                if field.to is not None and field.to not in objects:
                    raise SchemaError(
                        f"object {spec.name!r}: field {field.name!r} refers to unknown object "
                        f"{field.to!r}"
                    )
        return cls(objects)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], *, load_rules: bool = True) -> Schema:
        """Build from a whole configuration mapping (only its ``objects`` table is read)."""
        return cls.from_wire(config.get("objects"), load_rules=load_rules)

    @classmethod
    def from_toml(cls, path: str | Path, *, load_rules: bool = True) -> Schema:
        """Read the ``[objects.*]`` tables of a TOML configuration file
        (:class:`SchemaError`, naming the file, if it cannot be read or is invalid)."""
        return load_toml_config(
            path, lambda config: cls.from_dict(config, load_rules=load_rules), SchemaError
        )


def _record_errors(
    spec: ObjectSpec, values: Mapping[str, Any], field_errors: list[FieldError]
) -> list[FieldError]:
    """The whole record's errors besides ``field_errors``, so that one ``ValidationError``
    names every bad field: required fields missing (those not already named), and the
    custom rules once every value is valid (a rule expects valid values)."""
    named = {error.field for error in field_errors}
    return [
        error
        for error in spec.check_record(values, run_rules=not field_errors)
        if error.field not in named
    ]
