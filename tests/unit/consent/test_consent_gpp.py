"""GPP header/section decoding, US opt-outs, GPC subsection and the legacy US Privacy string."""

from __future__ import annotations

import pytest

from hub.consent.gpp import (
    GPPError,
    decode_gpp_header,
    decode_gpp_string,
    decode_us_section,
    decode_usp_string,
    gpp_opt_outs,
    usp_opt_outs,
)
from hub.consent.tcf import decode_tc_string

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
SPEC_TCF_SECTION = "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA"

# --- test-side encoder, written from the field widths in the MSPA / GPP specs --------------------------------


def _b64(bits: str) -> str:
    # GPP sections: pad with 0 to a multiple of 6, base64url without '=' (Consent String Specification.md).
    bits += "0" * (-len(bits) % 6)
    return "".join(B64[int(bits[i : i + 6], 2)] for i in range(0, len(bits), 6))


def _fibonacci(n: int) -> str:
    fibs = [1, 2]
    while fibs[-1] <= n:
        fibs.append(fibs[-1] + fibs[-2])
    code = ["0"] * len(fibs)
    for i in range(len(fibs) - 1, -1, -1):
        if fibs[i] <= n:
            code[i] = "1"
            n -= fibs[i]
    return "".join(code).rstrip("0") + "1"


def _header(section_ids: list[int]) -> str:
    # One range item per id (no grouping): Bool 0 + Fibonacci offset from the previous id.
    bits = format(3, "06b") + format(1, "06b") + format(len(section_ids), "012b")
    previous = 0
    for section_id in section_ids:
        bits += "0" + _fibonacci(section_id - previous)
        previous = section_id
    return _b64(bits)


def _section(values: list[int | list[int]], version: int = 1) -> str:
    bits = format(version, "06b")
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            bits += format(item, "02b")
    return _b64(bits)


def _gpc(flag: bool) -> str:
    return _b64("01" + ("1" if flag else "0"))


def usnat(sale=0, sharing=0, targeting=0, version=2, gpc: bool | None = None) -> str:
    # SharingNotice, SaleOptOutNotice, SharingOptOutNotice, TargetedAdvertisingOptOutNotice,
    # SensitiveDataProcessingOptOutNotice, SensitiveDataLimitUseNotice, SaleOptOut, SharingOptOut,
    # TargetedAdvertisingOptOut, SensitiveDataProcessing (12|16)x2, KnownChildSensitiveDataConsents (2|3)x2,
    # PersonalDataConsents, MspaCoveredTransaction, MspaOptOutOptionMode, MspaServiceProviderMode
    sensitive, child = (12, 2) if version == 1 else (16, 3)
    core = _section([1, 1, 1, 1, 1, 1, sale, sharing, targeting, [0] * sensitive, [0] * child, 0, 1, 0, 0], version)
    return core if gpc is None else f"{core}.{_gpc(gpc)}"


def usca(sale=0, sharing=0, gpc: bool | None = None) -> str:
    # SaleOptOutNotice, SharingOptOutNotice, SensitiveDataLimitUseNotice, SaleOptOut, SharingOptOut,
    # SensitiveDataProcessing 9x2, KnownChildSensitiveDataConsents 2x2, PersonalDataConsents, 3 MSPA fields
    core = _section([1, 1, 1, sale, sharing, [0] * 9, [0, 0], 0, 1, 0, 0])
    return core if gpc is None else f"{core}.{_gpc(gpc)}"


def gpp(*sections: tuple[int, str]) -> str:
    return "~".join([_header([sid for sid, _ in sections]), *(encoded for _, encoded in sections)])


# --- header -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "ids"),
    [
        ("DBABM", (2,)),  # spec header example 1
        ("DBACNY", (2, 6)),  # spec header example 2
        ("DBABjw", (5, 6)),  # spec header example 3: one group 5..6
        ("DBABMA", (2,)),  # the spec's string examples carry an extra padding character
        ("DBACNYA", (2, 6)),
        ("DBAA", ()),
    ],
)
def test_spec_header_vectors(header, ids):
    assert decode_gpp_header(header) == ids


@pytest.mark.parametrize("ids", [[7], [7, 8], [2, 6, 7, 8], list(range(7, 28)), [2, 27], [1, 100, 4000]])
def test_header_round_trip(ids):
    assert decode_gpp_header(_header(ids)) == tuple(ids)


def test_spec_full_examples_decode():
    full = f"DBACNY~{SPEC_TCF_SECTION}~1YNN"
    decoded = decode_gpp_string(full)
    assert decoded.section_ids == (2, 6)
    assert decoded.tcfeuv2 == SPEC_TCF_SECTION
    assert decoded.usp is not None
    assert decoded.usp.opt_out_sale == "N"
    assert decode_tc_string(decoded.tcfeuv2).cmp_id == 31
    assert gpp_opt_outs(full) == {"sale": "granted"}

    canadian = decode_gpp_string(f"DBABjw~{SPEC_TCF_SECTION}~1YNN")
    assert canadian.section_ids == (5, 6)
    assert canadian.tcfeuv2 is None
    assert canadian.sections[5] == SPEC_TCF_SECTION


# --- US sections --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        # iabgpp-es test vectors (modules/cmpapi/test/encoder/section/UsNat.test.ts); every opt-out = 1, GPC on
        ("BVVVkkkkkpFY.YA", {"sale": "denied", "sharing": "denied", "targeted_advertising": "denied"}),
        ("BVVVkkkkkpFY", {"sale": "denied", "sharing": "denied", "targeted_advertising": "denied"}),
        # 60-bit v1 string: SaleOptOut, SharingOptOut, TargetedAdvertisingOptOut all 2 (bits checked by hand)
        ("BVQqAAAACg", {"sale": "granted", "sharing": "granted", "targeted_advertising": "granted"}),
        ("BAAAAAAAAABA.QA", {}),  # library default: all n/a, GPC subsection present with GPC off
    ],
)
def test_reference_library_usnat_vectors(encoded, expected):
    assert gpp_opt_outs(f"{_header([7])}~{encoded}") == expected


def test_reference_library_vectors_field_values():
    section = decode_us_section(7, "BVVVkkkkkpFY.YA")
    assert section.value("MspaServiceProviderMode") == 2
    assert section.fields["SensitiveDataProcessing"] == (2, 1, 0, 2, 1, 0, 2, 1, 0, 2, 1, 0, 2, 1, 0, 2)
    assert section.fields["KnownChildSensitiveDataConsents"] == (2, 1, 0)
    assert section.gpc is True
    ca = decode_us_section(8, "BVWSSSVY.YA")  # iabgpp-es UsCa.test.ts
    assert ca.fields["SensitiveDataProcessing"] == (2, 1, 0, 2, 1, 0, 2, 1, 0)
    assert (ca.value("SaleOptOut"), ca.value("SharingOptOut"), ca.gpc) == (1, 1, True)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(
    ("sale", "sharing", "targeting", "expected"),
    [
        (1, 1, 1, {"sale": "denied", "sharing": "denied", "targeted_advertising": "denied"}),
        (2, 2, 2, {"sale": "granted", "sharing": "granted", "targeted_advertising": "granted"}),
        (0, 0, 0, {}),
        (1, 2, 0, {"sale": "denied", "sharing": "granted"}),
        (0, 0, 1, {"targeted_advertising": "denied"}),
    ],
)
def test_usnat_opt_outs(version, sale, sharing, targeting, expected):
    assert gpp_opt_outs(gpp((7, usnat(sale, sharing, targeting, version=version)))) == expected


@pytest.mark.parametrize(
    ("sale", "sharing", "expected"),
    [
        (1, 1, {"sale": "denied", "sharing": "denied", "targeted_advertising": "denied"}),
        (2, 2, {"sale": "granted", "sharing": "granted"}),  # no CA targeting field: not opting out says nothing
        (2, 1, {"sale": "granted", "sharing": "denied", "targeted_advertising": "denied"}),
        (1, 0, {"sale": "denied"}),
    ],
)
def test_usca_opt_outs(sale, sharing, expected):
    assert gpp_opt_outs(gpp((8, usca(sale, sharing)))) == expected


# Per state section: the 2-bit fields before the opt-outs | SaleOptOut TargetedAdvertisingOptOut | the rest, where a
# number is a list of that many 2-bit values and M a single 2-bit field. Transcribed for the test from the state
# technical specifications in IAB's Global-Privacy-Platform repository (Sections/US-States/*).
STATE_LAYOUTS = {
    9: ("SN SOON TAOON | SO TAO | 8 M M M M"),
    10: ("SN SOON TAOON | SO TAO | 7 1 M M M"),
    11: ("SN SOON TAOON SDPOON | SO TAO | 8 1 M M M"),
    12: ("SN SOON TAOON | SO TAO | 8 3 M M M"),
    13: ("PN SOON TAOON | SO TAO | 8 3 1 M M M"),
    14: ("SN SOON TAOON | SO TAO | 8 3 1 M M M"),
    15: ("PN SOON TAOON | SO TAO | 11 3 1 M M M"),
    16: ("PN SOON TAOON | SO TAO | 8 1 1 M M M"),
    17: ("PN SOON TAOON | SO TAO | 9 5 1 M M M"),
    18: ("PN SOON TAOON SDOON | SO TAO | 8 1 M M M"),
    19: ("PN SOON TAOON | SO TAO | 8 1 1 M M M"),
    20: ("PN SOON TAOON | SO TAO | 8 3 1 M M M"),
    21: ("PN SOON TAOON | SO TAO | 10 5 1 M M M"),
    22: ("PN SOON TAOON | SO TAO | 8 1 1 M M M"),
    23: ("PN SOON TAOON | SO TAO | 8 1 1 M M M"),
    24: ("MCT MM PN SOON TAOON | SO TAO | 1"),
    25: ("MCT MM PN SOON TAOON | SO TAO | 1 1 8"),
    26: ("MCT MM PN SOON TAOON | SO TAO | 1 1 8"),
    27: ("MCT MM PN SOON TAOON | SO TAO | 1 1"),
}


def _state_bits(section_id: int, sale: int, targeting: int) -> str:
    head, _, tail = (part.split() for part in STATE_LAYOUTS[section_id].split("|"))
    values = [1] * len(head) + [sale, targeting]
    for token in tail:
        values.extend([1] if token == "M" else [0] * int(token))
    return format(1, "06b") + "".join(format(v, "02b") for v in values)


def _state_section(section_id: int, sale: int, targeting: int, gpc: bool | None = None) -> str:
    core = _b64(_state_bits(section_id, sale, targeting))
    return core if gpc is None else f"{core}.{_gpc(gpc)}"


@pytest.mark.parametrize("section_id", sorted(STATE_LAYOUTS))
@pytest.mark.parametrize(
    ("sale", "targeting", "expected"),
    [
        (1, 2, {"sale": "denied", "targeted_advertising": "granted"}),
        (2, 1, {"sale": "granted", "targeted_advertising": "denied"}),
        (0, 0, {}),
    ],
)
def test_state_sections(section_id, sale, targeting, expected):
    assert gpp_opt_outs(gpp((section_id, _state_section(section_id, sale, targeting)))) == expected


@pytest.mark.parametrize("section_id", sorted(STATE_LAYOUTS))
def test_state_section_length_is_exact(section_id):
    bits = _state_bits(section_id, 1, 1)
    assert decode_us_section(section_id, _b64(bits)).value("SaleOptOut") == 1
    # The longest whole-character prefix that lacks at least one bit of the last field must raise.
    with pytest.raises(GPPError, match="truncated"):
        decode_us_section(section_id, _b64(bits)[: (len(bits) - 1) // 6])


@pytest.mark.parametrize("section_id", [7, 8, *sorted(STATE_LAYOUTS)])
def test_gpc_subsection_denies_all_opt_out_purposes(section_id):
    if section_id == 7:
        encoded = usnat(2, 2, 2, gpc=True)
    elif section_id == 8:
        encoded = usca(2, 2, gpc=True)
    else:
        encoded = _state_section(section_id, 2, 2, gpc=True)
    assert gpp_opt_outs(gpp((section_id, encoded))) == {
        "sale": "denied",
        "sharing": "denied",
        "targeted_advertising": "denied",
    }


def test_gpc_off_changes_nothing():
    assert gpp_opt_outs(gpp((7, usnat(2, 2, 2, gpc=False)))) == {
        "sale": "granted",
        "sharing": "granted",
        "targeted_advertising": "granted",
    }
    assert decode_us_section(7, usnat(gpc=False)).gpc is False
    assert decode_us_section(7, usnat()).gpc is None


def test_opt_out_in_any_section_wins():
    value = gpp((6, "1YNN"), (7, usnat(2, 2, 2)), (10, _state_section(10, 1, 2)))
    assert gpp_opt_outs(value) == {"sale": "denied", "sharing": "granted", "targeted_advertising": "granted"}
    value = gpp((6, "1YYN"), (7, usnat(2, 2, 2)))
    assert gpp_opt_outs(value)["sale"] == "denied"


def test_unknown_sections_are_kept_raw():
    value = gpp((2, SPEC_TCF_SECTION), (99, "whatever-it-is"))
    decoded = decode_gpp_string(value)
    assert decoded.sections[99] == "whatever-it-is"
    assert gpp_opt_outs(value) == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        ("CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA", "bare TCF"),
        ("1YNN", "type"),
        ("DBACNY~" + SPEC_TCF_SECTION, "lists 2 section"),
        ("DBABM~" + SPEC_TCF_SECTION + "~1YNN", "lists 1 section"),
        ("DBACNY~~1YNN", "section 2 is empty"),
        ("DB", "truncated"),
        ("DBAB", "truncated"),  # one section announced, no Fibonacci offset follows
        ("DBAB" + "A" * 20, "unterminated"),
        ("DCAA", "version 2"),
        ("EBAA", "type 4"),
        ("DBA+", "base64url"),
        ("D~1YNN", "truncated"),
    ],
)
def test_malformed_gpp_strings(value, message):
    with pytest.raises(GPPError, match=message):
        gpp_opt_outs(value)


def test_huge_section_group_is_rejected():
    bits = format(3, "06b") + format(1, "06b") + format(1, "012b") + "1" + _fibonacci(1) + _fibonacci(10**9)
    with pytest.raises(GPPError, match="out of range"):
        decode_gpp_header(_b64(bits))


@pytest.mark.parametrize(
    ("section_id", "encoded", "message"),
    [
        (7, _section([1, 1, 1, 1, 1, 1, 3, 2, 2, [0] * 16, [0] * 3, 0, 1, 0, 0], 2), "SaleOptOut holds 3"),
        (7, _section([1, 1, 1, 1, 1, 1, 1, 2, 2, [0] * 16, [0, 0, 3], 0, 1, 0, 0], 2), "KnownChild"),
        (7, _section([1] * 9, 3), "version 3"),
        (8, _section([1] * 9, 2), "version 2"),
        (7, usnat(1, 1, 1)[:4], "truncated"),
        (8, usca(1, 1)[:3], "truncated"),
        (7, usnat(1, 1, 1) + "." + _b64("10" + "1"), "subsection type 2"),
        (7, usnat(1, 1, 1) + "." + _gpc(True) + "." + _gpc(False), "twice"),
        (7, usnat(1, 1, 1) + ".", "empty"),
        (6, "1YNN", "not a US section"),
        (7, "z", "version 51"),
        (7, "B", "truncated"),
        (7, "BV!V", "base64url"),
    ],
)
def test_malformed_us_sections(section_id, encoded, message):
    with pytest.raises(GPPError, match=message):
        decode_us_section(section_id, encoded)


def test_gpp_string_must_be_a_string():
    with pytest.raises(GPPError):
        decode_gpp_header(None)  # type: ignore[arg-type]


# --- US Privacy (uspv1) -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1YYN", {"sale": "denied"}),
        ("1NYN", {"sale": "denied"}),  # an opt-out counts even when the notice flag says no notice
        ("1YNN", {"sale": "granted"}),
        ("1YNY", {"sale": "granted"}),
        ("1---", {}),
        ("1y-n", {}),
        ("1yyn", {"sale": "denied"}),
        (" 1YYN ", {"sale": "denied"}),
    ],
)
def test_usp_opt_outs(value, expected):
    assert usp_opt_outs(value) == expected


@pytest.mark.parametrize("value", ["", "1YY", "1YYNN", "2YYN", "1YXN", "1Y N", "YYYN", "1YY\u00d1"])
def test_malformed_usp(value):
    with pytest.raises(GPPError):
        usp_opt_outs(value)


def test_usp_fields():
    usp = decode_usp_string("1YNY")
    assert (usp.version, usp.notice, usp.opt_out_sale, usp.lspa_covered) == (1, "Y", "N", "Y")
