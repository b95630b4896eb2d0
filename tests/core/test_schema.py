"""Schema: reading it (TOML, dict, wire), clear SchemaErrors, and validating values."""

from __future__ import annotations

import datetime as dt
import sys
import types
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest

from crdtsync.core.exceptions import FieldError, SchemaError, UnknownObject, ValidationError
from crdtsync.core.fieldtypes import FieldType
from crdtsync.core.schema import FieldSpec, ObjectSpec, Rule, Schema

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TOML = REPO_ROOT / "server" / "example" / "app.toml"
EMAIL_OR_PHONE = "crdtsync_example.rules:email_or_phone"


@pytest.fixture(scope="module")
def example() -> Schema:
    return Schema.from_toml(EXAMPLE_TOML)


def small_config(**extra_fields: Any) -> dict[str, Any]:
    """A one-object configuration, with ``extra_fields`` added to ``Thing``."""
    return {
        "objects": {
            "Thing": {
                "sharing": "private",
                "fields": {"Name": {"type": "string", "required": True}, **extra_fields},
            }
        }
    }


def schema_error(config: Mapping[str, Any]) -> str:
    with pytest.raises(SchemaError) as info:
        Schema.from_dict(config)
    return str(info.value)


def validation_error(call: Any, *args: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        call(*args)
    return info.value


# --- reading the example TOML ---------------------------------------------------------


def test_example_toml_has_every_object_with_its_sharing(example: Schema) -> None:
    assert set(example.objects) == {"Account", "Contact", "Opportunity", "Task"}
    assert example.object("Account").sharing == "read_write"
    assert example.object("Contact").sharing == "read"
    assert example.object("Opportunity").sharing == "private"
    assert example.object("Task").sharing == "read_write"


def test_example_toml_fields_keep_types_and_constraints(example: Schema) -> None:
    account = example.object("Account")
    assert list(account.fields) == [
        "Name",
        "Industry",
        "Employees",
        "Revenue",
        "Rating",
        "Website",
        "Active",
        "Description",
        "Owner",
    ]
    name = account.field("Name")
    assert (name.type, name.required, name.max_length) == (FieldType.STRING, True, 80)
    assert account.field("Industry").values == ("Energy", "Retail", "Technology")
    assert account.field("Employees").min == 0
    assert type(account.field("Employees").min) is int
    assert account.field("Revenue").min == Decimal(0)
    assert type(account.field("Revenue").min) is Decimal
    assert account.text_fields == frozenset({"Description"})
    assert account.field("Revenue").hidden_roles == ("intern",)
    assert account.field("Rating").read_only_roles == ("intern",)
    assert not account.field("Rating").read_only

    contact = example.object("Contact")
    assert contact.field("Email").type is FieldType.EMAIL
    assert contact.field("Email").unique is True
    assert contact.field("Account").to == "Account"

    probability = example.object("Opportunity").field("Probability")
    assert (probability.min, probability.max) == (0.0, 100.0)
    assert type(probability.max) is float
    assert example.object("Task").field("DueAt").type is FieldType.DATETIME


def test_example_toml_rules_are_imported(example: Schema) -> None:
    rules = example.object("Contact").rules
    assert [rule.name for rule in rules] == [EMAIL_OR_PHONE]
    assert callable(rules[0].function)
    assert rules[0].function({"Phone": "555"}) == []


def test_from_toml_accepts_a_str_path() -> None:
    assert Schema.from_toml(str(EXAMPLE_TOML)) == Schema.from_toml(EXAMPLE_TOML)


def test_unknown_object_names_the_known_ones(example: Schema) -> None:
    with pytest.raises(UnknownObject, match="'Lead'") as info:
        example.object("Lead")
    assert "Account, Contact, Opportunity, Task" in str(info.value)


# --- building in Python and the wire round trip ---------------------------------------


def test_from_dict_builds_typed_fields_and_bounds() -> None:
    schema = Schema.from_dict(
        {
            "objects": {
                "Event": {
                    "label": "Calendar event",
                    "fields": {
                        "Title": {"type": "string", "required": True, "label": "Title"},
                        "Day": {"type": "date", "min": "2020-01-01", "max": "2030-12-31"},
                        "Starts": {"type": "datetime", "min": "2020-01-01T00:00:00+00:00"},
                        "Price": {"type": "decimal", "min": 0.5, "max": "999.99"},
                        "Seats": {"type": "integer", "min": 1, "max": 500},
                    },
                }
            }
        }
    )
    event = schema.object("Event")
    assert event.label == "Calendar event"
    assert event.sharing == "private"
    assert event.field("Title").label == "Title"
    assert event.field("Day").min == dt.date(2020, 1, 1)
    assert event.field("Day").max == dt.date(2030, 12, 31)
    assert event.field("Starts").min == dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    assert event.field("Price").min == Decimal("0.5")
    assert str(event.field("Price").max) == "999.99"
    assert (event.field("Seats").min, event.field("Seats").max) == (1, 500)


def test_to_wire_from_wire_round_trip_of_example_is_equal(example: Schema) -> None:
    wire = example.to_wire()
    again = Schema.from_wire(wire)
    assert again == example
    assert again.to_wire() == wire
    # Rules travel by name only: the receiving side has no function, and they still compare.
    assert again.object("Contact").rules == (Rule(EMAIL_OR_PHONE),)
    assert again.object("Contact").rules[0].function is None


def test_to_wire_encodes_bounds_in_their_stored_form(example: Schema) -> None:
    wire = example.to_wire()
    assert wire["Account"]["fields"]["Revenue"] == {
        "type": "decimal",
        "min": "0",
        "hidden": ["intern"],
    }
    assert wire["Account"]["fields"]["Name"] == {
        "type": "string",
        "required": True,
        "max_length": 80,
    }
    assert wire["Contact"]["rules"] == [{"function": EMAIL_OR_PHONE}]
    assert wire["Contact"]["sharing"] == "read"


def test_to_wire_round_trip_of_python_built_schema_is_equal() -> None:
    config = {
        "objects": {
            "Parent": {
                "sharing": "read",
                "label": "Parent",
                "fields": {"Name": {"type": "string", "required": True, "unique": True}},
            },
            "Child": {
                "fields": {
                    "Parent": {"type": "reference", "to": "Parent", "required": True},
                    "Kind": {"type": "picklist", "values": ["a", "b"]},
                    "Code": {"type": "string", "read_only": True, "max_length": 8},
                    "When": {"type": "datetime", "min": "2020-01-01T00:00:00+05:30"},
                    "Day": {"type": "date", "max": "2030-01-01"},
                    "Cost": {"type": "decimal", "min": "0.10"},
                    "Ratio": {"type": "number", "min": -1, "max": 1},
                    "Notes": {"type": "text"},
                },
                "rules": [{"function": "somewhere.else:check"}],
            },
        }
    }
    schema = Schema.from_dict(config, load_rules=False)
    again = Schema.from_wire(schema.to_wire())
    assert again == schema
    cost = again.object("Child").field("Cost").min
    assert str(cost) == "0.10"
    when = again.object("Child").field("When").min
    assert when.utcoffset() == dt.timedelta(hours=5, minutes=30)


def test_rules_compare_by_name_not_function() -> None:
    assert Rule("a.b:c", lambda values: []) == Rule("a.b:c")
    assert Rule("a.b:c") != Rule("a.b:d")


# --- SchemaError messages -------------------------------------------------------------


def test_unknown_field_type_names_field_and_lists_types() -> None:
    message = schema_error(small_config(Size={"type": "bigint"}))
    assert "'Thing'" in message
    assert "'Size'" in message
    assert "'bigint'" in message
    for field_type in FieldType:
        assert field_type.value in message


def test_missing_field_type_is_reported() -> None:
    message = schema_error(small_config(Size={"required": True}))
    assert "'Size'" in message
    assert "None" in message
    assert "integer" in message


def test_picklist_without_values_is_rejected() -> None:
    message = schema_error(small_config(Kind={"type": "picklist"}))
    assert "'Kind'" in message
    assert "picklist needs 'values'" in message


@pytest.mark.parametrize("values", [[], "a,b", [1, 2]])
def test_picklist_with_bad_values_is_rejected(values: object) -> None:
    message = schema_error(small_config(Kind={"type": "picklist", "values": values}))
    assert "'Kind'" in message
    assert "values" in message


def test_values_on_non_picklist_is_rejected() -> None:
    message = schema_error(small_config(Kind={"type": "string", "values": ["a"]}))
    assert "'Kind'" in message
    assert "only applies to picklist" in message


def test_reference_without_to_is_rejected() -> None:
    message = schema_error(small_config(Parent={"type": "reference"}))
    assert "'Parent'" in message
    assert "reference needs 'to'" in message


def test_to_on_non_reference_is_rejected() -> None:
    message = schema_error(small_config(Parent={"type": "string", "to": "Thing"}))
    assert "'Parent'" in message
    assert "'to' only applies to reference" in message


def test_reference_to_unknown_object_is_rejected() -> None:
    message = schema_error(small_config(Parent={"type": "reference", "to": "Ghost"}))
    assert "'Thing'" in message
    assert "'Parent'" in message
    assert "unknown object 'Ghost'" in message


def test_reference_to_own_object_is_allowed() -> None:
    schema = Schema.from_dict(small_config(Parent={"type": "reference", "to": "Thing"}))
    assert schema.object("Thing").field("Parent").to == "Thing"


def test_unknown_key_in_field_table_is_rejected() -> None:
    message = schema_error(small_config(Size={"type": "integer", "maximum": 3, "colour": 1}))
    assert "'Size'" in message
    assert "unknown key(s) colour, maximum" in message


def test_unknown_key_in_object_table_is_rejected() -> None:
    config = small_config()
    config["objects"]["Thing"]["permissions"] = "all"
    message = schema_error(config)
    assert "'Thing'" in message
    assert "unknown key(s) permissions" in message


def test_bad_sharing_mode_is_rejected() -> None:
    config = small_config()
    config["objects"]["Thing"]["sharing"] = "public"
    message = schema_error(config)
    assert "'Thing'" in message
    assert "sharing must be one of private, read, read_write" in message


def test_max_length_on_non_text_type_is_rejected() -> None:
    message = schema_error(small_config(Size={"type": "integer", "max_length": 3}))
    assert "'Size'" in message
    assert "max_length" in message


@pytest.mark.parametrize("max_length", [-1, True, "10"])
def test_bad_max_length_is_rejected(max_length: object) -> None:
    message = schema_error(small_config(Code={"type": "string", "max_length": max_length}))
    assert "'Code'" in message
    assert "max_length must be a non-negative integer" in message


def test_min_on_unordered_type_is_rejected() -> None:
    message = schema_error(small_config(Code={"type": "string", "min": "a"}))
    assert "'Code'" in message
    assert "'min' only applies" in message


def test_bound_of_wrong_type_is_rejected() -> None:
    message = schema_error(small_config(Size={"type": "integer", "max": "ten"}))
    assert "'Size'" in message
    assert "max: expected an integer" in message


def test_non_bool_flag_is_rejected() -> None:
    message = schema_error(small_config(Size={"type": "integer", "required": "yes"}))
    assert "'Size'" in message
    assert "'required' must be true or false" in message


def test_object_without_fields_is_rejected() -> None:
    message = schema_error({"objects": {"Thing": {"sharing": "read"}}})
    assert "'Thing'" in message
    assert "[objects.Thing.fields]" in message


@pytest.mark.parametrize("config", [{}, {"objects": {}}, {"objects": "Account"}])
def test_config_without_objects_is_rejected(config: Mapping[str, Any]) -> None:
    assert "at least one [objects.NAME] table" in schema_error(config)


def test_unparsable_toml_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[objects.Thing.fields]\nName = { type = "string"\n', encoding="utf-8")
    with pytest.raises(SchemaError, match="is not valid TOML") as info:
        Schema.from_toml(path)
    assert str(path) in str(info.value)


def test_missing_file_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(SchemaError, match="cannot read") as info:
        Schema.from_toml(path)
    assert str(path) in str(info.value)
    assert "No such file" in str(info.value)


def test_schema_error_in_toml_file_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "app.toml"
    path.write_text('[objects.Thing.fields]\nSize = { type = "huge" }\n', encoding="utf-8")
    with pytest.raises(SchemaError) as info:
        Schema.from_toml(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "'Size'" in message
    assert "'huge'" in message


def test_rule_that_cannot_be_imported_is_rejected() -> None:
    config = small_config()
    config["objects"]["Thing"]["rules"] = [{"function": "no_such_package_xyz.rules:check"}]
    message = schema_error(config)
    assert "'no_such_package_xyz.rules:check'" in message
    assert "cannot import no_such_package_xyz.rules" in message


def test_rule_module_with_syntax_error_is_a_schema_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "crdtsync_test_broken_rules.py").write_text("def check(:\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = small_config()
    config["objects"]["Thing"]["rules"] = [{"function": "crdtsync_test_broken_rules:check"}]
    message = schema_error(config)
    assert "'crdtsync_test_broken_rules:check'" in message


def test_rule_naming_a_missing_function_is_rejected() -> None:
    config = small_config()
    config["objects"]["Thing"]["rules"] = [{"function": "crdtsync_example.rules:no_such_rule"}]
    message = schema_error(config)
    assert "has no function 'no_such_rule'" in message


@pytest.mark.parametrize("name", ["crdtsync_example.rules", ":email_or_phone", "mod:"])
def test_rule_string_without_module_and_function_is_rejected(name: str) -> None:
    config = small_config()
    config["objects"]["Thing"]["rules"] = [{"function": name}]
    message = schema_error(config)
    assert repr(name) in message
    assert "expected 'package.module:function'" in message


@pytest.mark.parametrize("entry", [{"fn": "a:b"}, "a:b", {"function": 3}])
def test_malformed_rule_entry_is_rejected(entry: object) -> None:
    config = small_config()
    config["objects"]["Thing"]["rules"] = [entry]
    assert "each [[rules]] entry needs function" in schema_error(config)


def test_rules_are_not_imported_when_load_rules_is_false() -> None:
    config = small_config()
    config["objects"]["Thing"]["rules"] = [{"function": "no_such_package_xyz.rules:check"}]
    schema = Schema.from_dict(config, load_rules=False)
    assert schema.object("Thing").rules == (Rule("no_such_package_xyz.rules:check"),)
    # An unloaded rule is the relay's to enforce: it does not run here.
    assert schema.validate_new("Thing", {"Name": "x"}) == {"Name": "x"}


# --- validation -----------------------------------------------------------------------


def test_valid_new_record_returns_canonical_values(example: Schema) -> None:
    values = example.validate_new(
        "Account",
        {"Name": "Acme", "Employees": 12, "Revenue": "1000.50", "Industry": "Retail"},
    )
    assert values == {
        "Name": "Acme",
        "Employees": 12,
        "Revenue": Decimal("1000.50"),
        "Industry": "Retail",
    }
    assert str(values["Revenue"]) == "1000.50"


def test_validate_new_on_unknown_object_raises_unknown_object(example: Schema) -> None:
    with pytest.raises(UnknownObject, match="'Lead'"):
        example.validate_new("Lead", {"Name": "x"})
    with pytest.raises(UnknownObject, match="'Lead'"):
        example.validate_update("Lead", {}, {"Name": "x"})


def test_unknown_field_is_named(example: Schema) -> None:
    error = validation_error(example.validate_new, "Account", {"Name": "A", "Colour": "red"})
    assert error.fields == ("Colour",)
    assert error.object_name == "Account"
    assert "Colour" in str(error)
    assert "no such field on Account" in str(error)


def test_wrong_type_is_named(example: Schema) -> None:
    error = validation_error(example.validate_new, "Account", {"Name": "A", "Employees": "many"})
    assert error.fields == ("Employees",)
    assert "Employees: expected an integer, got str" in str(error)


def test_missing_required_field_is_named(example: Schema) -> None:
    error = validation_error(example.validate_new, "Account", {"Industry": "Retail"})
    assert error.fields == ("Name",)
    assert "Name: is required" in str(error)


def test_missing_required_fields_are_all_named(example: Schema) -> None:
    error = validation_error(example.validate_new, "Opportunity", {})
    assert error.fields == ("Name", "Account", "Stage")
    for name in ("Name", "Account", "Stage"):
        assert f"{name}: is required" in str(error)


def test_none_for_required_field_on_create_is_named(example: Schema) -> None:
    error = validation_error(example.validate_new, "Account", {"Name": None})
    assert error.fields == ("Name",)
    assert "is required" in str(error)


def test_max_length_is_enforced(example: Schema) -> None:
    assert example.validate_new("Account", {"Name": "x" * 80})["Name"] == "x" * 80
    error = validation_error(example.validate_new, "Account", {"Name": "x" * 81})
    assert error.fields == ("Name",)
    assert "81 characters long, at most 80" in str(error)


def test_max_length_counts_characters_not_bytes(example: Schema) -> None:
    name = "é" * 80
    assert example.validate_new("Account", {"Name": name}) == {"Name": name}


def test_picklist_value_not_allowed_is_named(example: Schema) -> None:
    error = validation_error(example.validate_new, "Account", {"Name": "A", "Industry": "Mining"})
    assert error.fields == ("Industry",)
    assert "'Mining' is not one of Energy, Retail, Technology" in str(error)


def test_min_violation_is_named(example: Schema) -> None:
    error = validation_error(example.validate_new, "Account", {"Name": "A", "Employees": -1})
    assert error.fields == ("Employees",)
    assert "must be at least 0" in str(error)
    error = validation_error(
        example.validate_new, "Account", {"Name": "A", "Revenue": Decimal("-0.01")}
    )
    assert error.fields == ("Revenue",)
    assert "must be at least 0" in str(error)


def test_max_violation_is_named(example: Schema) -> None:
    base = {"Name": "Deal", "Account": "acc-1", "Stage": "Proposal"}
    assert example.validate_new("Opportunity", {**base, "Probability": 100})["Probability"] == 100.0
    error = validation_error(example.validate_new, "Opportunity", {**base, "Probability": 100.5})
    assert error.fields == ("Probability",)
    assert "must be at most 100" in str(error)


def test_several_bad_fields_are_all_named_in_order(example: Schema) -> None:
    error = validation_error(
        example.validate_new,
        "Account",
        {"Name": "x" * 81, "Industry": "Mining", "Employees": -5, "Active": 1},
    )
    assert error.fields == ("Name", "Industry", "Employees", "Active")
    for name in error.fields:
        assert f"{name}: " in str(error)
    assert str(error).startswith("invalid Account: ")


def test_valid_update_returns_only_canonical_changes(example: Schema) -> None:
    current = {"Name": "Acme", "Employees": 3}
    changes = example.validate_update("Account", current, {"Employees": 4, "Website": None})
    assert changes == {"Employees": 4, "Website": None}


def test_update_checks_values_like_create(example: Schema) -> None:
    error = validation_error(
        example.validate_update, "Account", {"Name": "Acme"}, {"Industry": "Mining"}
    )
    assert error.fields == ("Industry",)


def test_clearing_required_field_on_update_is_named(example: Schema) -> None:
    error = validation_error(example.validate_update, "Account", {"Name": "Acme"}, {"Name": None})
    assert error.fields == ("Name",)
    assert "Name: is required" in str(error)


def test_update_of_record_missing_required_field_is_named(example: Schema) -> None:
    error = validation_error(example.validate_update, "Account", {}, {"Employees": 1})
    assert error.fields == ("Name",)


@pytest.fixture
def read_only_schema() -> Schema:
    return Schema.from_dict(
        {
            "objects": {
                "Invoice": {
                    "fields": {
                        "Number": {"type": "string", "read_only": True, "required": True},
                        "Total": {"type": "decimal"},
                    }
                }
            }
        }
    )


def test_read_only_field_can_be_written_on_create(read_only_schema: Schema) -> None:
    values = read_only_schema.validate_new("Invoice", {"Number": "INV-1", "Total": "9.90"})
    assert values == {"Number": "INV-1", "Total": Decimal("9.90")}


def test_writing_read_only_field_on_update_is_named(read_only_schema: Schema) -> None:
    error = validation_error(
        read_only_schema.validate_update, "Invoice", {"Number": "INV-1"}, {"Number": "INV-2"}
    )
    assert error.fields == ("Number",)
    assert "Number: is read-only" in str(error)
    changes = read_only_schema.validate_update("Invoice", {"Number": "INV-1"}, {"Total": "1"})
    assert changes == {"Total": Decimal(1)}


def test_validation_error_leaves_no_canonical_values(example: Schema) -> None:
    spec = example.object("Account")
    canonical, errors = spec.check_changes({"Name": "ok", "Employees": "bad"}, creating=True)
    assert canonical == {"Name": "ok"}
    assert errors == [FieldError("Employees", "expected an integer, got str")]


# --- custom rules ---------------------------------------------------------------------


def test_email_or_phone_rule_reports_email_when_both_missing(example: Schema) -> None:
    error = validation_error(example.validate_new, "Contact", {"LastName": "Lovelace"})
    assert error.fields == ("Email",)
    assert error.errors == (FieldError("Email", "a contact needs an Email or a Phone"),)
    assert "Email: a contact needs an Email or a Phone" in str(error)


@pytest.mark.parametrize("extra", [{"Email": "ada@example.com"}, {"Phone": "+44 20 7946 0000"}])
def test_email_or_phone_rule_passes_with_either(example: Schema, extra: dict[str, str]) -> None:
    values = example.validate_new("Contact", {"LastName": "Lovelace", **extra})
    assert values == {"LastName": "Lovelace", **extra}


def test_email_or_phone_rule_runs_on_merged_record_on_update(example: Schema) -> None:
    current = {"LastName": "Lovelace", "Phone": "555"}
    assert example.validate_update("Contact", current, {"FirstName": "Ada"}) == {"FirstName": "Ada"}
    error = validation_error(example.validate_update, "Contact", current, {"Phone": None})
    assert error.fields == ("Email",)


def _one_object_schema(*rules: Rule) -> Schema:
    spec = ObjectSpec(
        "Widget",
        {"Name": FieldSpec(name="Name", type=FieldType.STRING)},
        rules=rules,
    )
    return Schema({"Widget": spec})


def _raising_rule(values: Mapping[str, Any]) -> list[FieldError]:
    raise RuntimeError("kaboom")


def _non_field_error_rule(values: Mapping[str, Any]) -> list[Any]:
    return ["Name is bad", FieldError("Name", "fine")]


def _name_rule(values: Mapping[str, Any]) -> list[FieldError]:
    if values.get("Name") == "forbidden":
        return [FieldError("Name", "that name is not allowed")]
    return []


def test_rule_that_raises_is_a_record_level_error_naming_the_rule() -> None:
    schema = _one_object_schema(Rule("tests.fake_rules:explodes", _raising_rule))
    error = validation_error(schema.validate_new, "Widget", {"Name": "w"})
    assert error.fields == ("",)
    assert "rule tests.fake_rules:explodes failed" in str(error)
    assert "kaboom" in str(error)


def test_rule_returning_non_field_errors_is_reported() -> None:
    schema = _one_object_schema(Rule("tests.fake_rules:sloppy", _non_field_error_rule))
    error = validation_error(schema.validate_new, "Widget", {"Name": "w"})
    assert error.fields == ("",)
    assert "tests.fake_rules:sloppy returned something other than FieldError" in str(error)


def test_custom_rule_error_names_its_field_and_later_rules_still_run() -> None:
    schema = _one_object_schema(
        Rule("tests.fake_rules:names", _name_rule),
        Rule("tests.fake_rules:explodes", _raising_rule),
    )
    error = validation_error(schema.validate_new, "Widget", {"Name": "forbidden"})
    assert error.fields == ("Name", "")
    assert "Name: that name is not allowed" in str(error)


def test_passing_custom_rule_accepts_the_record() -> None:
    schema = _one_object_schema(Rule("tests.fake_rules:names", _name_rule))
    assert schema.validate_new("Widget", {"Name": "fine"}) == {"Name": "fine"}


@pytest.fixture
def fake_rules_module(monkeypatch: pytest.MonkeyPatch) -> str:
    module = types.ModuleType("crdtsync_test_fake_rules")
    module.names = _name_rule  # type: ignore[attr-defined]
    module.not_callable = 42  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


def test_rule_is_loaded_from_importable_module(fake_rules_module: str) -> None:
    config = small_config()
    config["objects"]["Thing"]["rules"] = [{"function": f"{fake_rules_module}:names"}]
    schema = Schema.from_dict(config)
    rule = schema.object("Thing").rules[0]
    assert rule.function is _name_rule
    error = validation_error(schema.validate_new, "Thing", {"Name": "forbidden"})
    assert error.fields == ("Name",)


def test_rule_naming_a_non_callable_is_rejected(fake_rules_module: str) -> None:
    with pytest.raises(SchemaError, match="has no function 'not_callable'"):
        Rule.load(f"{fake_rules_module}:not_callable")


def test_role_view_leaves_out_hidden_fields_and_marks_role_read_only_ones(example: Schema) -> None:
    intern = example.for_roles(frozenset({"default", "intern"})).object("Account")
    assert "Revenue" not in intern.fields
    assert intern.field("Rating").read_only
    everyone = example.for_roles(frozenset({"default"})).object("Account")
    assert "Revenue" in everyone.fields
    assert not everyone.field("Rating").read_only
    assert "hidden" not in str(everyone.to_wire())


def test_required_field_cannot_be_hidden_from_a_role() -> None:
    config = {
        "objects": {
            "X": {"fields": {"A": {"type": "string", "required": True, "hidden": ["intern"]}}}
        }
    }
    with pytest.raises(SchemaError, match="required field cannot be hidden"):
        Schema.from_dict(config)


@pytest.mark.parametrize("bad", [{"read_only": "yes"}, {"hidden": "intern"}, {"hidden": [1]}])
def test_bad_read_only_or_hidden_values_are_schema_errors(bad: dict[str, object]) -> None:
    with pytest.raises(SchemaError, match=r"'(read_only|hidden)'"):
        Schema.from_dict({"objects": {"X": {"fields": {"A": {"type": "string", **bad}}}}})


def test_a_spec_built_from_another_derives_its_owner_required_and_cross_checked_fields() -> None:
    plain = ObjectSpec("Thing", {"Name": FieldSpec(name="Name", type=FieldType.STRING)})
    assert (plain.owner_field, plain.required_fields, plain.cross_checked_fields) == (
        None,
        (),
        frozenset(),
    )
    fields = {
        "Name": FieldSpec(name="Name", type=FieldType.STRING, required=True),
        "Email": FieldSpec(name="Email", type=FieldType.EMAIL, unique=True),
        "Boss": FieldSpec(name="Boss", type=FieldType.OWNER),
        "Parent": FieldSpec(name="Parent", type=FieldType.REFERENCE, to="Thing"),
    }
    richer = attrs.evolve(plain, fields=fields)
    assert richer.owner_field == "Boss"
    assert richer.required_fields == ("Name",)
    assert richer.cross_checked_fields == {"Email", "Parent"}
    assert richer != plain and attrs.evolve(richer, fields=plain.fields) == plain
