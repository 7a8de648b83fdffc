"""The closed vocabularies of the catalogue: every enumerated field takes its values from here.

Extend a vocabulary here, deliberately, and document the new value in ``catalog/README.md``.
The loader rejects any other value with the file and line where it was written.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from collectors import Kind


class Category(StrEnum):
    """What a product is (one per product; the export groups by it)."""

    LLM_CHAT = "llm_chat"
    LLM_API = "llm_api"
    AI_SEARCH = "ai_search"
    MODEL_HUB = "model_hub"
    LOCAL_LLM_SERVER = "local_llm_server"
    AMBIENT_SCRIBE = "ambient_scribe"
    DICTATION = "dictation"
    TRANSCRIPTION = "transcription"
    TRANSLATION = "translation"
    MEETING_AI = "meeting_ai"
    CODING_ASSISTANT = "coding_assistant"
    IMAGING_AI = "imaging_ai"
    CLINICAL_DECISION_SUPPORT = "clinical_decision_support"
    MEDICAL_DEVICE = "medical_device"
    IMAGING_MODALITY = "imaging_modality"
    PACS = "pacs"
    DICOM_SOFTWARE = "dicom_software"
    INTERFACE_ENGINE = "interface_engine"
    CLINICAL_INFORMATION_SYSTEM = "clinical_information_system"
    NURSE_CALL = "nurse_call"


#: Categories that make a product "AI-looking" or "medical-looking" when it is not identified.
AI_CATEGORIES: Final = frozenset(
    {
        Category.LLM_CHAT,
        Category.LLM_API,
        Category.AI_SEARCH,
        Category.MODEL_HUB,
        Category.LOCAL_LLM_SERVER,
        Category.AMBIENT_SCRIBE,
        Category.DICTATION,
        Category.TRANSCRIPTION,
        Category.TRANSLATION,
        Category.MEETING_AI,
        Category.CODING_ASSISTANT,
        Category.IMAGING_AI,
        Category.CLINICAL_DECISION_SUPPORT,
    }
)


class Tristate(StrEnum):
    """A yes/no fact that may not be known yet (``ai``, ``medical_purpose``)."""

    YES = "true"
    NO = "false"
    UNKNOWN = "unknown"


class MdrClass(StrEnum):
    """EU MDR 2017/745 risk class; ``none`` for a product that is not a medical device."""

    NONE = "none"
    I = "I"  # noqa: E741 - the regulation's own name for the class
    IIA = "IIa"
    IIB = "IIb"
    III = "III"
    UNKNOWN = "unknown"


class Deployment(StrEnum):
    """Where the product runs from the hospital's point of view."""

    SAAS = "saas"
    ON_PREM = "on_prem"
    HYBRID = "hybrid"
    EMBEDDED_DEVICE = "embedded_device"
    DESKTOP = "desktop"
    UNKNOWN = "unknown"


class HostingLocation(StrEnum):
    """Where the product's data is processed, as far as a source says."""

    ON_SITE = "on_site"
    FR = "fr"
    EU = "eu"
    CH = "ch"
    UK = "uk"
    US = "us"
    CN = "cn"
    IN = "in"
    IL = "il"
    KR = "kr"
    AU = "au"
    MULTI_REGION = "multi_region"
    UNKNOWN = "unknown"


class HdsStatus(StrEnum):
    """French *Hébergeur de Données de Santé* certification of the hosting, where known."""

    CERTIFIED = "certified"
    NOT_CERTIFIED = "not_certified"
    NOT_APPLICABLE = "not_applicable"
    UNKNOWN = "unknown"


class Quality(StrEnum):
    """Source quality code of the facts file: vendor, community, unverified."""

    VENDOR = "V"
    COMMUNITY = "C"
    UNVERIFIED = "U"


class Strength(StrEnum):
    """How much one rule says on its own (DESIGN §4)."""

    STRONG = "strong"
    MEDIUM = "medium"
    WEAK = "weak"


class RuleKind(StrEnum):
    """What a rule looks at; each maps to Observation kinds in ``RULE_KINDS``."""

    HOST = "host"
    SNMP_SYSOBJECTID = "snmp.sysobjectid"
    SNMP_SYSDESCR = "snmp.sysdescr"
    HTTP_SERVER = "http.server"
    HTTP_TITLE = "http.title"
    HTTP_USER_AGENT = "http.user_agent"
    SSDP_SERVER = "ssdp.server"
    DHCP_VENDOR_CLASS = "dhcp.vendor_class"
    DHCP_HOSTNAME = "dhcp.hostname"
    DHCP_FINGERPRINT = "dhcp.fingerprint"
    MDNS_SERVICE = "mdns.service"
    DICOM_ASSOCIATION = "dicom.association"
    HL7_HEADER = "hl7.header"
    LLM_SERVER = "llm.server"  # what the active probe recognised from an LLM API's answers
    MAC_OUI = "mac_oui"


#: The Observation kinds a host rule applies to (their value is a host name).
HOST_KINDS: Final = frozenset({Kind.DNS_QUERY, Kind.DNS_ANSWER, Kind.TLS_SNI, Kind.QUIC_SNI, Kind.HTTP_HOST})

#: Rule kinds whose ``regex`` is matched against the Observation value of the same name.
REGEX_RULE_KINDS: Final = frozenset(
    {
        RuleKind.SNMP_SYSDESCR,
        RuleKind.HTTP_SERVER,
        RuleKind.HTTP_TITLE,
        RuleKind.HTTP_USER_AGENT,
        RuleKind.SSDP_SERVER,
        RuleKind.DHCP_VENDOR_CLASS,
        RuleKind.DHCP_HOSTNAME,
        RuleKind.LLM_SERVER,
    }
)

#: Rule kinds matched on an exact (normalised) value.
EXACT_RULE_KINDS: Final = frozenset({RuleKind.DHCP_FINGERPRINT, RuleKind.MDNS_SERVICE})

#: The strength each rule kind has by default; a rule may only lower it (``strength:``).
DEFAULT_STRENGTH: Final[dict[RuleKind, Strength]] = {
    RuleKind.HOST: Strength.STRONG,
    RuleKind.SNMP_SYSOBJECTID: Strength.STRONG,
    RuleKind.SNMP_SYSDESCR: Strength.MEDIUM,
    RuleKind.HTTP_SERVER: Strength.MEDIUM,
    RuleKind.HTTP_TITLE: Strength.MEDIUM,
    RuleKind.HTTP_USER_AGENT: Strength.MEDIUM,
    RuleKind.SSDP_SERVER: Strength.MEDIUM,
    RuleKind.DHCP_VENDOR_CLASS: Strength.MEDIUM,
    # A DHCP host name is chosen by whoever set the machine up: never more than medium.
    RuleKind.DHCP_HOSTNAME: Strength.MEDIUM,
    RuleKind.DHCP_FINGERPRINT: Strength.MEDIUM,
    RuleKind.MDNS_SERVICE: Strength.MEDIUM,
    RuleKind.DICOM_ASSOCIATION: Strength.MEDIUM,
    RuleKind.HL7_HEADER: Strength.MEDIUM,
    # The server answered its own API (Ollama's /api/tags, vLLM's owned_by): medium, like a banner.
    RuleKind.LLM_SERVER: Strength.MEDIUM,
    # An OUI names who made the network chip, often a module maker: alone it names a vendor only.
    RuleKind.MAC_OUI: Strength.WEAK,
}

_STRENGTH_ORDER: Final = {Strength.WEAK: 0, Strength.MEDIUM: 1, Strength.STRONG: 2}


def strength_rank(strength: Strength) -> int:
    """Order strengths: weak < medium < strong."""
    return _STRENGTH_ORDER[strength]


class HostRole(StrEnum):
    """What a host is to its product: app and API traffic is use, a marketing visit is not."""

    APP = "app"
    API = "api"
    CONTENT = "content"  # product-specific static or user content (only the app loads it)
    TELEMETRY = "telemetry"
    DOWNLOAD = "download"
    MARKETING = "marketing"
    DOCS = "docs"
    AUTH = "auth"
    CDN = "cdn"
    SHARED = "shared"


#: Host roles that never produce a detection alone: they count only beside a specific rule of
#: the same product seen in the same scope (endpoint or site).
CO_OCCURRENCE_ROLES: Final = frozenset({HostRole.AUTH, HostRole.CDN, HostRole.SHARED})

#: Host roles that add to the confidence but cannot name a product on their own.
SUPPORTING_ROLES: Final = frozenset({HostRole.MARKETING, HostRole.DOCS}) | CO_OCCURRENCE_ROLES


class NetworkRole(StrEnum):
    """The role of a DICOM or HL7 endpoint a rule recognises."""

    MODALITY = "modality"
    PACS = "pacs"
    WORKSTATION = "workstation"
    AI_GATEWAY = "ai_gateway"
    DICOM_ROUTER = "dicom_router"
    INTERFACE_ENGINE = "interface_engine"
    HIS = "his"
    RIS = "ris"
    LIS = "lis"
    EHR = "ehr"


class DicomField(StrEnum):
    """Attributes of a ``dicom.association`` Observation that a rule may look at."""

    IMPL_VERSION = "impl_version"
    IMPL_CLASS_UID = "impl_class_uid"
    CALLING_AE = "calling_ae"
    CALLED_AE = "called_ae"


class Hl7Field(StrEnum):
    """Attributes of an ``hl7.header`` Observation that a rule may look at."""

    SENDING_APP = "sending_app"
    RECEIVING_APP = "receiving_app"
    SENDING_FACILITY = "sending_facility"
    RECEIVING_FACILITY = "receiving_facility"


#: DNS zones whose names belong to many unrelated tenants (clouds, CDNs, identity providers,
#: SaaS plumbing). A ``suffix`` host rule on or below one of them must have a co-occurrence
#: role; an ``exact`` host is specific enough to stand alone (facts file, "General notes").
SHARED_ZONES: Final = frozenset(
    {
        "akamai.net",
        "akamaiedge.net",
        "akamaihd.net",
        "akamaized.net",
        "amazonaws.com",
        "apple.com",
        "auth0.com",
        "azure.com",
        "azure.net",
        "azureedge.net",
        "azurefd.net",
        "azurewebsites.net",
        "b-cdn.net",
        "cloudflare.com",
        "cloudflare.net",
        "cloud.microsoft",  # every Microsoft 365 app (copilot.cloud.microsoft is one exact host)
        "cloudfront.net",
        "cloudinary.com",
        "datadoghq.com",
        "datadoghq.eu",
        "edgekey.net",
        "edgesuite.net",
        "fastly.net",
        "fastlylb.net",
        "github.com",
        "githubusercontent.com",
        "google.com",
        "googleapis.com",
        "googleusercontent.com",
        "gstatic.com",
        "intercom.io",
        "live.com",
        "microsoft.com",
        "microsoftonline.com",
        "office.com",
        "office.net",
        "okta.com",
        "sentry.io",
        "windows.net",
    }
)

#: Recog ``hw.device`` values that mark a medical device (Recog's ``identifiers/device.txt``).
RECOG_MEDICAL_DEVICES: Final = frozenset({"Medical"})
