"""SCEP vocabulary: message types, statuses, failInfo values and the signed attributes.

The SCEP signed attributes are registered with asn1crypto's CMS attribute table here, once,
so that every SignedData parsed or built in this package sees them as typed values.
"""

from __future__ import annotations

import enum

from asn1crypto import cms, core


class MessageType(enum.Enum):
    """RFC 8894 section 3.2.1.2 messageType values (carried as decimal strings)."""

    CERT_REP = "3"
    RENEWAL_REQ = "17"
    PKCS_REQ = "19"
    CERT_POLL = "20"  # GetCertInitial in the drafts
    GET_CERT = "21"
    GET_CRL = "22"


class PkiStatus(enum.Enum):
    SUCCESS = "0"
    FAILURE = "2"
    PENDING = "3"


class FailInfo(enum.Enum):
    BAD_ALG = "0"
    BAD_MESSAGE_CHECK = "1"
    BAD_REQUEST = "2"
    BAD_TIME = "3"
    BAD_CERT_ID = "4"

    @property
    def rfc_name(self) -> str:
        return {
            "0": "badAlg",
            "1": "badMessageCheck",
            "2": "badRequest",
            "3": "badTime",
            "4": "badCertId",
        }[self.value]


# --- the SCEP signed attributes, registered with asn1crypto -------------------------------

SCEP_ATTRIBUTE_OIDS = {
    "2.16.840.1.113733.1.9.2": "scep_message_type",
    "2.16.840.1.113733.1.9.3": "scep_pki_status",
    "2.16.840.1.113733.1.9.4": "scep_fail_info",
    "2.16.840.1.113733.1.9.5": "scep_sender_nonce",
    "2.16.840.1.113733.1.9.6": "scep_recipient_nonce",
    "2.16.840.1.113733.1.9.7": "scep_transaction_id",
    "1.3.6.1.5.5.7.24.1": "scep_fail_info_text",
}


class _SetOfPrintableString(core.SetOf):
    _child_spec = core.PrintableString


class _SetOfOctetString(core.SetOf):
    _child_spec = core.OctetString


class _SetOfUTF8String(core.SetOf):
    _child_spec = core.UTF8String


def _register_scep_attributes() -> None:
    cms.CMSAttributeType._map.update(SCEP_ATTRIBUTE_OIDS)
    cms.CMSAttributeType._reverse_map = None  # rebuilt lazily from _map
    cms.CMSAttribute._oid_specs.update(
        {
            "scep_message_type": _SetOfPrintableString,
            "scep_pki_status": _SetOfPrintableString,
            "scep_fail_info": _SetOfPrintableString,
            "scep_sender_nonce": _SetOfOctetString,
            "scep_recipient_nonce": _SetOfOctetString,
            "scep_transaction_id": _SetOfPrintableString,
            "scep_fail_info_text": _SetOfUTF8String,
        }
    )


_register_scep_attributes()
