"""sw-description -> InstallPlan: the reference's examples, precedence, links, and every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from swu.description import build_plan
from swu.model import Compression, DescriptionError, Target

EXAMPLES = Path("/work/shared/reference/swupdate-examples/upstream")
DESC = EXAMPLES / "sbabic-swupdate/examples/description"


def problems(text: str, target: Target, **kw: object) -> list[str]:
    with pytest.raises(DescriptionError) as exc:
        build_plan(text, target, **kw)  # type: ignore[arg-type]
    return exc.value.problems


def test_multi_copy_modes_choose_the_slot() -> None:
    text = (DESC / "multi-copy").read_text()
    main = build_plan(text, Target("any", "revA", "stable", "main"))
    alt = build_plan(text, Target("any", "revA", "stable", "alt"))
    assert [(a.filename, a.device, a.handler) for a in main.images] == [
        ("rootfs.ext3", "/dev/mmcblk0p2", "raw")]
    assert [(a.device, v.value) for a in alt.images for v in alt.bootenv] == [("/dev/mmcblk0p1", "0:1")]


def test_board_section_with_uboot_alias_and_defaults() -> None:
    plan = build_plan((DESC / "sw-description-libconfig").read_text().replace('"fpga"', '"raw"'),
                      Target("myboard", "1.3"))
    assert [p.name for p in plan.partitions] == ["rootfs", "kernel"]
    assert [(a.filename, a.handler) for a in plan.images][:3] == [
        ("core-image-base-myboard.ubifs", "ubivol"), ("u-boot.sb", "flash"), ("uboot-env", "uboot")]
    assert [s.handler for s in plan.scripts] == ["lua", "lua", "shellscript"]
    assert (plan.bootenv[0].name, plan.bootenv[0].value) == ("myvar", "4M")


def test_board_selection_mode_example() -> None:
    text = (EXAMPLES / "sbabic-meta-swupdate-boards/recipes-extended/images/update-image/beaglebone-yocto"
            / "sw-description").read_text()
    plan = build_plan(text, Target("beaglebone", "1.0", "stable", "copy2"))
    image = plan.images[0]
    assert (image.device, image.compressed) == ("/dev/mmcblk1p3", Compression.ZLIB)
    assert "bootpart 1:3" in (dict((v.name, v.value) for v in plan.bootenv).get("bootcmd_legacy_mmc1") or "")


PRECEDENCE = """software = {
  version = "1"; hardware-compatibility = ["1"];
  images = ( { filename = "root"; device = "/dev/root-level"; } );
  bootenv = ( { name = "from"; value = "root"; } );
  brd = { images = ( { filename = "b"; device = "/dev/board"; } ); };
  sel = { m = { images = ( { filename = "s"; device = "/dev/selmode"; } ); }; };
  brd2 = { sel = { m = { images = ( { filename = "bs"; device = "/dev/board-selmode"; } ); }; }; };
};"""


@pytest.mark.parametrize(("target", "device"), [
    (Target("brd2", "1", "sel", "m"), "/dev/board-selmode"),
    (Target("brd", "1", "sel", "m"), "/dev/selmode"),
    (Target("brd", "1"), "/dev/board"),
    (Target("other", "1"), "/dev/root-level"),
    (Target("brd", "1", "nosel", "x"), "/dev/board"),
])
def test_four_step_precedence(target: Target, device: str) -> None:
    plan = build_plan(PRECEDENCE, target)
    assert [a.device for a in plan.images] == [device]
    assert [(v.name, v.value) for v in plan.bootenv] == [("from", "root")]  # per item: bootenv from root


LINKS = """software = {
  version = { ref = "#./common/version"; };
  common = { version = "7.1"; images = ( { filename = "c"; device = "/dev/c"; } ); };
  hardware-compatibility = ["1"];
  rev10 = { images = ( { ref = "#./../common/images"; }, { filename = "own"; device = "/dev/o"; } ); };
  rev11 = { ref = "#./rev10"; };
  abs = { images = ( { ref = "#/software/common/images"; } ); };
};"""


def test_links_relative_absolute_and_group() -> None:
    plan = build_plan(LINKS, Target("rev11", "1"))
    assert plan.version == "7.1"
    assert [a.filename for a in plan.images] == ["c", "own"]
    assert plan.images[0].where == "software.common.images[0]"
    assert [a.filename for a in build_plan(LINKS, Target("abs", "1")).images] == ["c"]


def test_ref_loop_is_an_error() -> None:
    text = LINKS.replace('rev11 = { ref = "#./rev10"; };',
                         'rev11 = { ref = "#./rev12"; }; rev12 = { ref = "#./rev11"; };')
    assert any("link loop" in p for p in problems(text, Target("rev11", "1")))


def test_list_ref_loop_is_an_error() -> None:
    text = LINKS.replace('{ ref = "#/software/common/images"; }', '{ ref = "#./images"; }')
    assert any("loop" in p for p in problems(text, Target("abs", "1")))


BASE = 'software = {{ version = "1"; hardware-compatibility = ["1.0", "#RE:^2\\\\.[0-9]+$"]; {body} }};'


def plan_of(body: str, target: Target | None = None, **kw: object) -> object:
    return build_plan(BASE.format(body=body), target or Target("b", "1.0"), **kw)  # type: ignore[arg-type]


def bad(body: str, target: Target | None = None, **kw: object) -> str:
    return " | ".join(problems(BASE.format(body=body), target or Target("b", "1.0"), **kw))


def test_hardware_exact_and_regex() -> None:
    body = 'images = ( { filename = "a"; device = "/dev/x"; } );'
    for revision in ("1.0", "2.5", "2.10"):
        plan_of(body, Target("b", revision))
    for revision in ("1.00", "1", "12.5", "2."):
        assert "SW not compatible with hardware" in bad(body, Target("b", revision))
    assert "no board revision" in bad(body, Target(None, None))


def test_offsets_compression_and_skips() -> None:
    plan = plan_of('images = ( { filename = "a"; device = "/dev/x"; offset = "16K"; compressed = "zstd"; },'
                   ' { filename = "b"; device = "/dev/y"; offset = "2M"; compressed = true; },'
                   ' { filename = "c"; device = "/dev/z"; name = "boot"; version = "4.4";'
                   '   install-if-different = true; },'
                   ' { filename = "d"; device = "/dev/w"; name = "k"; version = "1.2";'
                   '   install-if-higher = true; } );',
                   installed_versions={"boot": "4.4.0", "k": "1.10"})
    assert [(a.offset, a.compressed) for a in plan.images] == [  # type: ignore[attr-defined]
        (16384, Compression.ZSTD), (2 << 20, Compression.ZLIB)]
    assert sorted(s.artifact.filename for s in plan.skipped) == ["c", "d"]  # type: ignore[attr-defined]


def test_found_nothing_to_install_when_all_skipped() -> None:
    body = ('images = ( { filename = "c"; device = "/dev/z"; name = "boot"; version = "1";'
            ' install-if-different = true; } );')
    assert "Found nothing to install" in bad(body, installed_versions={"boot": "1.0"})


@pytest.mark.parametrize(("body", "message"), [
    ('images = ( { filename = "a"; device = "/dev/x"; type = "fpga"; } );', "feature 'fpga' required"),
    ('images = ( { filename = "../a"; device = "/dev/x"; } );', "escapes"),
    ('images = ( { filename = "/a"; device = "/dev/x"; } );', "escapes"),
    ('files = ( { filename = "a"; path = "/etc/../../x"; } );', "escapes"),
    ('files = ( { filename = "a"; } );', "path is mandatory"),
    ('scripts = ( { filename = "s"; type = "shellscript"; }, { filename = "s"; type = "postinstall"; } );',
     "duplicate script name"),
    ('images = ( { filename = "a"; device = "/dev/x"; compressed = "lzma"; } );', "unknown"),
    ('images = ( { filename = "a"; device = "/dev/x"; offset = "12Q"; } );', "offset"),
    ('images = ( { filename = "a"; device = "/dev/x"; sha256 = "abc"; } );', "64 hex"),
    ('images = ( { filename = "a"; } );', "cannot choose a handler"),
    ('images = ( { filename = "a"; device = "/dev/x"; encrypted = true; } );', "decryption"),
    ('images = ( { filename = "a"; device = "/dev/x"; } );', "Hash not set"),
])
def test_bad_entries(body: str, message: str) -> None:
    assert message in bad(body, signed="Hash not set" in message)


def test_every_problem_reported_with_its_path() -> None:
    found = problems(BASE.format(body='images = ( { filename = "../a"; device = "/dev/x"; },'
                                      ' { filename = "b"; type = "nope"; } );'), Target("b", "1.0"))
    assert any(p.startswith("software.images[0].filename") for p in found)
    assert any(p.startswith("software.images[1]") and "nope" in p for p in found)


def test_missing_version_and_syntax_errors() -> None:
    assert "Missing version" in " ".join(problems(
        'software = { hardware-compatibility = ["1"]; images = ( { filename = "a"; device = "/d"; } ); };',
        Target("b", "1")))
    assert "syntax error" in " ".join(problems("software = { version = ; };", Target("b", "1")))
    assert "duplicate setting" in " ".join(problems('software = { version = "1"; version = "2"; };',
                                                   Target("b", "1")))


def test_reserved_names_refused_as_selection() -> None:
    assert "reserved name" in bad('images = ( { filename = "a"; device = "/dev/x"; } );',
                                  Target("b", "1.0", "images", "x"))


def test_lua_hook_changes_and_skips_entries() -> None:
    script = ('function pick(img) img.device = \\"/dev/hooked\\"; return true, img end '
              'function drop(img) return true, nil end')
    plan = plan_of(f'embedded-script = "{script}"; '
                   'images = ( { filename = "a"; device = "/dev/x"; hook = "pick"; },'
                   ' { filename = "b"; device = "/dev/y"; hook = "drop"; } );')
    assert [(a.filename, a.device) for a in plan.images] == [("a", "/dev/hooked")]  # type: ignore[attr-defined]
