"""procd's sysupgrade policy, validation table and option environment (upgraded/request.py)."""

from __future__ import annotations

from typing import Any

import pytest

from upgraded import request
from upgraded.request import Rejection, SysupgradeArgs, UpgradeRequest, Verdict
from upgraded.rpc import Status

BASE = {"prefix": "/tmp/root", "path": "/tmp/sysupgrade.img"}
SYSUPGRADE_JSON: dict[str, Any] = {"prefix": "/tmp/root", "path": "/tmp/sysupgrade.img", "force": True,
                   "backup": "/tmp/sysupgrade.tgz", "command": "/lib/upgrade/do_stage2",
                   "options": {"save_partitions": 1, "add_provisioning": 0, "use_curr_part": True}}


def args(**kw: Any) -> SysupgradeArgs:
    parsed = request.parse_sysupgrade({**BASE, **kw})
    assert isinstance(parsed, SysupgradeArgs)
    return parsed


def verdict(valid: bool, forceable: bool, allow_backup: bool) -> dict[str, Any]:
    return {"tests": {"fwtool_signature": True}, "valid": valid, "forceable": forceable,
            "allow_backup": allow_backup}


# -- 1. the blobmsg policy ------------------------------------------------------------------------
def test_parse_full_message_as_sysupgrade_sends_it() -> None:
    parsed = request.parse_sysupgrade(SYSUPGRADE_JSON)
    assert parsed == SysupgradeArgs(prefix="/tmp/root", path="/tmp/sysupgrade.img", force=True,
                                    backup="/tmp/sysupgrade.tgz", command="/lib/upgrade/do_stage2",
                                    options=SYSUPGRADE_JSON["options"])


@pytest.mark.parametrize("msg", [
    None, [], "x",
    {},
    {"prefix": "/tmp/root"},
    {"path": "/tmp/sysupgrade.img"},
    {"prefix": "/tmp/root", "path": 5},             # numeric path counts as missing
    {"prefix": 1, "path": "/tmp/sysupgrade.img"},
    {"prefix": "/tmp/root", "path": None},
    {"prefix": ["/tmp/root"], "path": "/tmp/x"},
])
def test_missing_or_mistyped_path_or_prefix_is_status_2_without_body(msg: Any) -> None:
    parsed = request.parse_sysupgrade(msg)
    assert parsed == Rejection(Status.INVALID_ARGUMENT)
    assert isinstance(parsed, Rejection) and parsed.body() is None


@pytest.mark.parametrize("force", [1, "true", 1.0, None, [True], {"x": True}])
def test_force_must_be_json_true(force: Any) -> None:
    assert args(force=force).force is False


def test_force_true_and_false() -> None:
    assert args(force=True).force is True
    assert args(force=False).force is False
    assert args().force is False


def test_wrong_types_are_absent() -> None:
    parsed = args(backup=1, command=["/bin/sh"], options=[1, 2])
    assert parsed.backup is None and parsed.command is None and parsed.options == {}
    assert args(backup="").backup == ""  # presence, not content, is what matters


# -- 2. the validator's output --------------------------------------------------------------------
@pytest.mark.parametrize("output", [
    {},
    {"valid": True, "forceable": True},
    {"valid": 1, "forceable": True, "allow_backup": True},
    {"valid": True, "forceable": 0, "allow_backup": True},
    {"valid": True, "forceable": True, "allow_backup": "true"},
    {"valid": None, "forceable": True, "allow_backup": True},
])
def test_validator_flags_must_be_booleans(output: dict[str, Any]) -> None:
    rej = request.parse_verdict(output)
    assert rej == Rejection(Status.INVALID_ARGUMENT, "Validation script provided invalid input")
    assert isinstance(rej, Rejection)
    assert rej.body() == {"error": {"message": "Validation script provided invalid input"}}
    assert request.evaluate(args(force=True), output) == rej


def test_verdict_parsed() -> None:
    assert request.parse_verdict(verdict(True, False, True)) == Verdict(True, False, True)


# -- 3. the decision table ------------------------------------------------------------------------
BROKEN = Rejection(Status.NOT_SUPPORTED, "Firmware image is broken and cannot be installed")
INVALID = Rejection(Status.NOT_SUPPORTED, "Firmware image is invalid")
NO_BACKUP = Rejection(Status.NOT_SUPPORTED, "Firmware image doesn't allow preserving a backup")


@pytest.mark.parametrize(("valid", "forceable", "allow_backup", "force", "backup", "expected"), [
    # valid=false, forceable=false: broken, whatever else
    (False, False, True, False, None, BROKEN),
    (False, False, True, True, None, BROKEN),
    (False, False, False, True, "/tmp/sysupgrade.tgz", BROKEN),
    # valid=false, forceable=true, no force: invalid
    (False, True, True, False, None, INVALID),
    (False, True, False, False, "/tmp/sysupgrade.tgz", INVALID),
    # valid=false, forceable=true, force: proceed, allow_backup not checked
    (False, True, True, True, None, None),
    (False, True, False, True, "/tmp/sysupgrade.tgz", None),
    # valid=true, allow_backup=false with a backup: refused
    (True, True, False, False, "/tmp/sysupgrade.tgz", NO_BACKUP),
    (True, False, False, True, "/tmp/sysupgrade.tgz", NO_BACKUP),
    # valid=true otherwise: proceed
    (True, True, False, False, None, None),
    (True, False, True, False, "/tmp/sysupgrade.tgz", None),
    (True, True, True, True, "/tmp/sysupgrade.tgz", None),
])
def test_decision_table(valid: bool, forceable: bool, allow_backup: bool, force: bool,
                        backup: str | None, expected: Rejection | None) -> None:
    a = args(force=force, **({"backup": backup} if backup is not None else {}))
    assert request.decide(a, Verdict(valid, forceable, allow_backup)) == expected
    outcome = request.evaluate(a, verdict(valid, forceable, allow_backup))
    if expected is None:
        assert isinstance(outcome, UpgradeRequest)
    else:
        assert outcome == expected
        assert isinstance(outcome, Rejection)
        assert outcome.body() == {"error": {"message": expected.message}}


def test_accepted_request_carries_everything() -> None:
    a = request.parse_sysupgrade(SYSUPGRADE_JSON)
    assert isinstance(a, SysupgradeArgs)
    req = request.evaluate(a, verdict(True, True, True))
    assert req == UpgradeRequest(
        prefix="/tmp/root", path="/tmp/sysupgrade.img", force=True, backup="/tmp/sysupgrade.tgz",
        command="/lib/upgrade/do_stage2", options=SYSUPGRADE_JSON["options"],
        env={"UPGRADE_OPT_SAVE_PARTITIONS": "1", "UPGRADE_OPT_ADD_PROVISIONING": "0",
             "UPGRADE_OPT_USE_CURR_PART": "1", "UPGRADE_BACKUP": "/tmp/sysupgrade.tgz"})
    assert request.accepted_body(req) == {"accepted": True}
    with pytest.raises(AttributeError):
        req.path = "/elsewhere"  # type: ignore[misc]


def test_no_backup_no_env() -> None:
    req = request.accept(args())
    assert req.env == {} and req.backup is None and req.command is None


def test_not_validated_message() -> None:
    rej = request.not_validated("no JSON input")
    assert rej == Rejection(Status.UNKNOWN_ERROR, "Firmware image couldn't be validated: no JSON input")


# -- 4. options → environment ---------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    (1, "1"), (0, "0"), (True, "1"), (False, "0"), (-1, "4294967295"), (2147483647, "2147483647"),
    (-2147483648, "2147483648"),
])
def test_option_values_printed_unsigned(value: Any, expected: str) -> None:
    assert request.options_env({"x": value}) == ({"UPGRADE_OPT_X": expected}, [])


@pytest.mark.parametrize(("value", "blobtype"), [
    ("1", 3), (2147483648, 4), (-2147483649, 4), (1.5, 8), ({"a": 1}, 2), ([1], 1), (None, 0),
])
def test_option_unsupported_types(value: Any, blobtype: int) -> None:
    assert request.options_env({"opt": value}) == ({}, [f'Option "opt" has unsupported type: {blobtype}'])


@pytest.mark.parametrize("name", ["with-dash", "dot.ted", "sp ace", "é", "x=y", "UPPER$"])
def test_option_name_invalid_characters(name: str) -> None:
    assert request.options_env({name: 1}) == ({}, [f'Option "{name}" contains invalid characters'])


def test_option_names_upper_cased_and_mixed_good_and_bad() -> None:
    env, warnings = request.options_env({"save_partitions": 1, "Mixed_Case9": 7, "bad-one": 1,
                                         "str": "1"})
    assert env == {"UPGRADE_OPT_SAVE_PARTITIONS": "1", "UPGRADE_OPT_MIXED_CASE9": "7"}
    assert warnings == ['Option "bad-one" contains invalid characters',
                        'Option "str" has unsupported type: 3']
    req = request.accept(args(options={"save_partitions": 1, "bad-one": 1}))
    assert req.warnings == ('Option "bad-one" contains invalid characters',)
    assert request.accepted_body(req) == {"accepted": True, "warnings": list(req.warnings)}
