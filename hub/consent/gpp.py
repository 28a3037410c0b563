"""Strict decoder for IAB Global Privacy Platform (GPP) strings, the US sections and the legacy US Privacy string.

Sources (stored public copies, read Feb 2026):
* Header, Fibonacci coding, data types: InteractiveAdvertisingBureau/Global-Privacy-Platform,
  "Core/Consent String Specification.md"; section ids: "Sections/Section Information.md".
* US section field lists and widths: the MSPA / state technical specifications in the same repository, as
  implemented by IAB Tech Lab's reference library IABTechLab/iabgpp-es
  (modules/cmpapi/src/encoder/segment/Us*CoreSegment.ts and Us*GpcSegment.ts).
* US Privacy string: IAB CCPA "U.S. Privacy String" spec (version, notice, opt-out of sale, LSPA; Y/N/-).

What the hub needs from these strings is the user's *opt-outs* (reference/consent.md §3): each US section's
`SaleOptOut`, `SharingOptOut` and `TargetedAdvertisingOptOut` (0 = not applicable, 1 = opted out, 2 = did not opt
out) and the GPC subsection. Anything malformed raises `GPPError`; a caller must not read it as "no opt-out".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from hub.consent.tcf import BitReader

__all__ = [
    "SECTION_NAMES",
    "GPPError",
    "GPPString",
    "USPrivacy",
    "UsSection",
    "decode_gpp_header",
    "decode_gpp_string",
    "decode_us_section",
    "decode_usp_string",
    "gpp_opt_outs",
    "opt_outs_from_gpp",
    "usp_opt_outs",
]


class GPPError(ValueError):
    """The value is not a well-formed GPP / US Privacy string."""


SECTION_TCFEUV2 = 2
SECTION_USPV1 = 6

# Sections/Section Information.md
SECTION_NAMES: Mapping[int, str] = MappingProxyType(
    {
        1: "tcfeuv1",
        2: "tcfeuv2",
        5: "tcfcav1",
        6: "uspv1",
        7: "usnat",
        8: "usca",
        9: "usva",
        10: "usco",
        11: "usut",
        12: "usct",
        13: "usfl",
        14: "usmt",
        15: "usor",
        16: "ustx",
        17: "usde",
        18: "usia",
        19: "usne",
        20: "usnh",
        21: "usnj",
        22: "ustn",
        23: "usmn",
        24: "usmd",
        25: "usin",
        26: "usky",
        27: "usri",
    }
)

# A layout is a sequence of (field name, bits per value, number of values); number None = a scalar field.
# Every field after Version is a 2-bit "nullable boolean" (0 n/a, 1, 2); the value 3 is invalid.
_Layout = tuple[tuple[str, int, int | None], ...]


def _layout(*fields: str | tuple[str, int]) -> _Layout:
    out: list[tuple[str, int, int | None]] = [("Version", 6, None)]
    for item in fields:
        if isinstance(item, tuple):
            out.append((item[0], 2, item[1]))
        else:
            out.append((item, 2, None))
    return tuple(out)


_MSPA_TAIL = ("MspaCoveredTransaction", "MspaOptOutOptionMode", "MspaServiceProviderMode")
_STATE_HEAD_PROCESSING = (
    "ProcessingNotice",
    "SaleOptOutNotice",
    "TargetedAdvertisingOptOutNotice",
    "SaleOptOut",
    "TargetedAdvertisingOptOut",
)
_STATE_HEAD_SHARING = (
    "SharingNotice",
    "SaleOptOutNotice",
    "TargetedAdvertisingOptOutNotice",
    "SaleOptOut",
    "TargetedAdvertisingOptOut",
)
_NEWER_STATE_HEAD = (
    "MspaCoveredTransaction",
    "MspaMode",
    "ProcessingNotice",
    "SaleOptOutNotice",
    "TargetedAdvertisingOptOutNotice",
    "SaleOptOut",
    "TargetedAdvertisingOptOut",
)


def _usnat(sensitive: int, child: int) -> _Layout:
    return _layout(
        "SharingNotice",
        "SaleOptOutNotice",
        "SharingOptOutNotice",
        "TargetedAdvertisingOptOutNotice",
        "SensitiveDataProcessingOptOutNotice",
        "SensitiveDataLimitUseNotice",
        "SaleOptOut",
        "SharingOptOut",
        "TargetedAdvertisingOptOut",
        ("SensitiveDataProcessing", sensitive),
        ("KnownChildSensitiveDataConsents", child),
        "PersonalDataConsents",
        *_MSPA_TAIL,
    )


# section id → {section version → core layout}
_US_LAYOUTS: Mapping[int, Mapping[int, _Layout]] = {
    7: {1: _usnat(12, 2), 2: _usnat(16, 3)},  # MSPA US National v1, and v2 (Oct 2024)
    8: {
        1: _layout(
            "SaleOptOutNotice",
            "SharingOptOutNotice",
            "SensitiveDataLimitUseNotice",
            "SaleOptOut",
            "SharingOptOut",
            ("SensitiveDataProcessing", 9),
            ("KnownChildSensitiveDataConsents", 2),
            "PersonalDataConsents",
            *_MSPA_TAIL,
        )
    },
    9: {
        1: _layout(*_STATE_HEAD_SHARING, ("SensitiveDataProcessing", 8), "KnownChildSensitiveDataConsents", *_MSPA_TAIL)
    },
    10: {
        1: _layout(*_STATE_HEAD_SHARING, ("SensitiveDataProcessing", 7), "KnownChildSensitiveDataConsents", *_MSPA_TAIL)
    },
    11: {
        1: _layout(
            "SharingNotice",
            "SaleOptOutNotice",
            "TargetedAdvertisingOptOutNotice",
            "SensitiveDataProcessingOptOutNotice",
            "SaleOptOut",
            "TargetedAdvertisingOptOut",
            ("SensitiveDataProcessing", 8),
            "KnownChildSensitiveDataConsents",
            *_MSPA_TAIL,
        )
    },
    12: {
        1: _layout(
            *_STATE_HEAD_SHARING, ("SensitiveDataProcessing", 8), ("KnownChildSensitiveDataConsents", 3), *_MSPA_TAIL
        )
    },
    13: {
        1: _layout(
            *_STATE_HEAD_PROCESSING,
            ("SensitiveDataProcessing", 8),
            ("KnownChildSensitiveDataConsents", 3),
            "AdditionalDataProcessingConsent",
            *_MSPA_TAIL,
        )
    },
    14: {
        1: _layout(
            *_STATE_HEAD_SHARING,
            ("SensitiveDataProcessing", 8),
            ("KnownChildSensitiveDataConsents", 3),
            "AdditionalDataProcessingConsent",
            *_MSPA_TAIL,
        )
    },
    15: {
        1: _layout(
            *_STATE_HEAD_PROCESSING,
            ("SensitiveDataProcessing", 11),
            ("KnownChildSensitiveDataConsents", 3),
            "AdditionalDataProcessingConsent",
            *_MSPA_TAIL,
        )
    },
    16: {
        1: _layout(
            *_STATE_HEAD_PROCESSING,
            ("SensitiveDataProcessing", 8),
            "KnownChildSensitiveDataConsents",
            "AdditionalDataProcessingConsent",
            *_MSPA_TAIL,
        )
    },
    17: {
        1: _layout(
            *_STATE_HEAD_PROCESSING,
            ("SensitiveDataProcessing", 9),
            ("KnownChildSensitiveDataConsents", 5),
            "AdditionalDataProcessingConsent",
            *_MSPA_TAIL,
        )
    },
    18: {
        1: _layout(
            "ProcessingNotice",
            "SaleOptOutNotice",
            "TargetedAdvertisingOptOutNotice",
            "SensitiveDataOptOutNotice",
            "SaleOptOut",
            "TargetedAdvertisingOptOut",
            ("SensitiveDataProcessing", 8),
            "KnownChildSensitiveDataConsents",
            *_MSPA_TAIL,
        )
    },
    19: {
        1: _layout(
            *_STATE_HEAD_PROCESSING,
            ("SensitiveDataProcessing", 8),
            "KnownChildSensitiveDataConsents",
            "AdditionalDataProcessingConsent",
            *_MSPA_TAIL,
        )
    },
    20: {
        1: _layout(
            *_STATE_HEAD_PROCESSING,
            ("SensitiveDataProcessing", 8),
            ("KnownChildSensitiveDataConsents", 3),
            "AdditionalDataProcessingConsent",
            *_MSPA_TAIL,
        )
    },
    21: {
        1: _layout(
            *_STATE_HEAD_PROCESSING,
            ("SensitiveDataProcessing", 10),
            ("KnownChildSensitiveDataConsents", 5),
            "AdditionalDataProcessingConsent",
            *_MSPA_TAIL,
        )
    },
    22: {
        1: _layout(
            *_STATE_HEAD_PROCESSING,
            ("SensitiveDataProcessing", 8),
            "KnownChildSensitiveDataConsents",
            "AdditionalDataProcessingConsent",
            *_MSPA_TAIL,
        )
    },
    23: {
        1: _layout(
            *_STATE_HEAD_PROCESSING,
            ("SensitiveDataProcessing", 8),
            "KnownChildSensitiveDataConsents",
            "AdditionalDataProcessingConsent",
            *_MSPA_TAIL,
        )
    },
    24: {1: _layout(*_NEWER_STATE_HEAD, "AdditionalDataProcessingConsent")},
    25: {
        1: _layout(
            *_NEWER_STATE_HEAD,
            "KnownChildSensitiveDataConsents",
            "AdditionalDataProcessingConsent",
            ("SensitiveDataProcessing", 8),
        )
    },
    26: {
        1: _layout(
            *_NEWER_STATE_HEAD,
            "KnownChildSensitiveDataConsents",
            "AdditionalDataProcessingConsent",
            ("SensitiveDataProcessing", 8),
        )
    },
    27: {1: _layout(*_NEWER_STATE_HEAD, "KnownChildSensitiveDataConsents", "AdditionalDataProcessingConsent")},
}
US_SECTION_IDS = frozenset(_US_LAYOUTS)
# IAB's reference encoder (iabgpp-es) wrote the v2 usnat widths (16 sensitive-data, 3 known-child fields) under
# Version 1 for a while; its own test vector `BVVVkkkkkpFY` is such a string. A version-1 usnat core long enough
# for those widths is read with them. The opt-out fields sit before the lists, so both readings agree on them.
_WIDER_LAYOUT_FOR_VERSION: Mapping[tuple[int, int], _Layout] = {(7, 1): _usnat(16, 3)}

_GPC_SUBSECTION_TYPE = 1
# Any sane GPP string names a handful of sections with small ids; a Fibonacci group can otherwise claim billions.
_MAX_SECTION_ID = 4096

_OPTED_OUT = 1
_DID_NOT_OPT_OUT = 2
_OPT_OUT_FIELDS = (
    ("SaleOptOut", "sale"),
    ("SharingOptOut", "sharing"),
    ("TargetedAdvertisingOptOut", "targeted_advertising"),
)
_SIGNAL_PURPOSES = ("sale", "sharing", "targeted_advertising")


@dataclass(frozen=True)
class UsSection:
    section_id: int
    name: str
    version: int
    fields: Mapping[str, int | tuple[int, ...]]  # spec field name → value(s)
    gpc: bool | None  # None = the section carries no GPC subsection

    def value(self, name: str) -> int | None:
        found = self.fields.get(name)
        return found if isinstance(found, int) else None


@dataclass(frozen=True)
class USPrivacy:
    version: int
    notice: str  # "Y" | "N" | "-"
    opt_out_sale: str
    lspa_covered: str


@dataclass(frozen=True)
class GPPString:
    version: int
    section_ids: tuple[int, ...]
    sections: Mapping[int, str] = field(repr=False)  # section id → encoded section, as found in the string
    us_sections: tuple[UsSection, ...]
    usp: USPrivacy | None

    @property
    def tcfeuv2(self) -> str | None:
        """The embedded EU TC string (decode it with hub.consent.tcf), if the GPP string has one."""
        return self.sections.get(SECTION_TCFEUV2)


def decode_gpp_header(value: str) -> tuple[int, ...]:
    """Section ids listed in a GPP header (the part before the first `~`)."""
    if not isinstance(value, str):
        raise GPPError("GPP string must be a string")
    header = value.strip().split("~", 1)[0]
    if header.startswith("C"):
        raise GPPError("this is a bare TCF TC string, not a GPP string (GPP strings start with 'D')")
    reader = BitReader.from_base64url(header, GPPError, "GPP header")
    header_type = reader.read_int(6)
    if header_type != 3:
        raise reader.fail(f"type {header_type} is not the GPP header type 3")
    version = reader.read_int(6)
    if version != 1:
        raise reader.fail(f"GPP version {version} is not supported")
    count = reader.read_int(12)
    ids: list[int] = []
    last = 0
    for _ in range(count):
        is_group = reader.read_bool()
        start = last + reader.read_fibonacci()
        end = start + reader.read_fibonacci() if is_group else start
        if end > _MAX_SECTION_ID:
            raise reader.fail(f"section id {end} is out of range")
        ids.extend(range(start, end + 1))
        last = end
    return tuple(ids)


def decode_gpp_string(value: str) -> GPPString:
    """Decode a full GPP string; every US section and the uspv1 section are decoded and validated."""
    section_ids = decode_gpp_header(value)
    parts = value.strip().split("~")
    encoded_sections = parts[1:]
    if len(encoded_sections) != len(section_ids):
        raise GPPError(f"GPP header lists {len(section_ids)} section(s) but the string carries {len(encoded_sections)}")
    sections = dict(zip(section_ids, encoded_sections, strict=True))
    us_sections = []
    usp = None
    for section_id, encoded in sections.items():
        if not encoded:
            raise GPPError(f"section {section_id} is empty")
        if section_id in US_SECTION_IDS:
            us_sections.append(decode_us_section(section_id, encoded))
        elif section_id == SECTION_USPV1:
            usp = decode_usp_string(encoded)
    return GPPString(
        version=1,
        section_ids=section_ids,
        sections=MappingProxyType(sections),
        us_sections=tuple(us_sections),
        usp=usp,
    )


def decode_us_section(section_id: int, encoded: str) -> UsSection:
    """Decode one US section (ids 7-27): core subsection plus optional GPC subsection."""
    layouts = _US_LAYOUTS.get(section_id)
    if layouts is None:
        raise GPPError(f"section {section_id} is not a US section")
    name = SECTION_NAMES[section_id]
    core, *subsections = encoded.split(".")
    reader = BitReader.from_base64url(core, GPPError, f"{name} core")
    version = reader.read_int(6)
    layout = layouts.get(version)
    if layout is None:
        raise reader.fail(f"version {version} is not supported (known: {sorted(layouts)})")
    wider = _WIDER_LAYOUT_FOR_VERSION.get((section_id, version))
    if wider is not None and _bits_needed(wider) - 6 <= reader.remaining:
        layout = wider
    fields: dict[str, int | tuple[int, ...]] = {"Version": version}
    for field_name, width, count in layout[1:]:
        values = tuple(reader.read_int(width) for _ in range(count or 1))
        if any(v == 3 for v in values):
            raise reader.fail(f"{field_name} holds 3, which is not a defined value (0, 1 or 2)")
        fields[field_name] = values if count is not None else values[0]

    gpc: bool | None = None
    for index, subsection in enumerate(subsections, start=2):
        sub = BitReader.from_base64url(subsection, GPPError, f"{name} subsection {index}")
        subsection_type = sub.read_int(2)
        if subsection_type != _GPC_SUBSECTION_TYPE:
            raise sub.fail(f"unknown subsection type {subsection_type}")
        if gpc is not None:
            raise sub.fail("GPC subsection appears twice")
        gpc = sub.read_bool()
    return UsSection(section_id, name, version, MappingProxyType(fields), gpc)


def decode_usp_string(value: str) -> USPrivacy:
    """Legacy IAB US Privacy string, e.g. `1YNN`: version, notice given, opted out of sale, LSPA covered."""
    if not isinstance(value, str):
        raise GPPError("US Privacy string must be a string")
    text = value.strip().upper()  # the spec uses upper case; lower case carries the same meaning
    if len(text) != 4:
        raise GPPError(f"US Privacy string must be 4 characters, got {len(text)}")
    if text[0] != "1":
        raise GPPError(f"US Privacy version {text[0]!r} is not supported")
    for position, char in enumerate(text[1:], start=2):
        if char not in "YN-":
            raise GPPError(f"US Privacy character {position} must be Y, N or -, got {char!r}")
    return USPrivacy(version=1, notice=text[1], opt_out_sale=text[2], lspa_covered=text[3])


def usp_opt_outs(value: str) -> dict[str, str]:
    """`{"sale": "denied"}` when the US Privacy string says opted out of sale, `"granted"` when it says not."""
    usp = decode_usp_string(value)
    return _usp_purposes(usp)


def gpp_opt_outs(value: str) -> dict[str, str]:
    """Hub opt-out purposes (`sale`, `sharing`, `targeted_advertising`) stated by a GPP string."""
    return opt_outs_from_gpp(decode_gpp_string(value))


def opt_outs_from_gpp(gpp: GPPString) -> dict[str, str]:
    """Combine every US section, the GPC subsections and uspv1; where they disagree, the opt-out wins.

    1 (opted out) → "denied", 2 (did not opt out) → "granted", 0 (not applicable) → omitted.
    """
    statements: list[tuple[str, str]] = []
    for section in gpp.us_sections:
        for field_name, purpose in _OPT_OUT_FIELDS:
            status = _status(section.value(field_name))
            if status is not None:
                statements.append((purpose, status))
        if section.section_id == 8 and section.value("SharingOptOut") == _OPTED_OUT:
            # CPRA has no separate targeted-advertising right: "sharing" *is* cross-context behavioural
            # advertising (reference/consent.md §3), so a California sharing opt-out also denies it. The reverse
            # does not hold: not opting out of sharing says nothing about other states' targeting rights.
            statements.append(("targeted_advertising", "denied"))
        if section.gpc:
            # GPC = "do not sell or share my data" (W3C GPC; CCPA regs 11 CCR 7025).
            statements.extend((purpose, "denied") for purpose in _SIGNAL_PURPOSES)
    if gpp.usp is not None:
        statements.extend(_usp_purposes(gpp.usp).items())
    result: dict[str, str] = {}
    for purpose, status in statements:
        if result.get(purpose) != "denied":
            result[purpose] = status
    return result


def _bits_needed(layout: _Layout) -> int:
    return sum(width * (count or 1) for _name, width, count in layout)


def _status(value: int | None) -> str | None:
    if value == _OPTED_OUT:
        return "denied"
    if value == _DID_NOT_OPT_OUT:
        return "granted"
    return None


def _usp_purposes(usp: USPrivacy) -> dict[str, str]:
    # The US Privacy string predates CPRA's "sharing" right; it speaks only about sale.
    if usp.opt_out_sale == "Y":
        return {"sale": "denied"}
    if usp.opt_out_sale == "N":
        return {"sale": "granted"}
    return {}
