"""Bytes on the wire to a detection: DICOM associations parsed by the collector, then matched."""

from __future__ import annotations

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from collectors import Endpoint, PacketContext, dicom
from fingerprints import Evidence, Index

SCU = Endpoint(ip="10.30.0.21", mac="00:0c:29:00:00:21", port=50123)
SCP = Endpoint(ip="10.30.0.2", mac="00:0c:29:00:00:02", port=104)
#: What dcmtk 3.6.7 sends (the catalogue's dcmtk product cites how it was verified).
DCMTK_UID, DCMTK_VERSION = "1.2.276.0.7230010.3.0.3.6.7", "OFFIS_DCMTK_367"


def _primitive(uid: str, version: str) -> A_ASSOCIATE:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "PYNETDICOM"
    primitive.called_ae_title = "ANY-SCP"
    context = build_context("1.2.840.10008.1.1")
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = uid
    impl_version = ImplementationVersionNameNotification()
    impl_version.implementation_version_name = version
    primitive.user_information = [max_length, impl_uid, impl_version]
    return primitive


def test_an_association_names_both_ends(shipped_index: Index) -> None:
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(_primitive(PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION))
    accepted = _primitive(DCMTK_UID, DCMTK_VERSION)
    accepted.result = 0
    accepted.presentation_context_definition_results_list = []
    ac = A_ASSOCIATE_AC()
    ac.from_primitive(accepted)
    # The requestor sends the RQ; the acceptor's AC travels back (the collector keeps src = SCU).
    observations = dicom.observe(bytes(rq.encode()), PacketContext(ts=1.0, src=SCU, dst=SCP))
    observations += dicom.observe(bytes(ac.encode()), PacketContext(ts=1.1, src=SCP, dst=SCU))
    by_endpoint: dict[str | None, list[Evidence]] = {}
    for observation in observations:
        for item in shipped_index.match(observation):
            endpoint = observation.src if item.side == "src" else observation.dst
            by_endpoint.setdefault(endpoint.ip, []).append(item)
    named = {
        ip: [d.product_id for d in shipped_index.assess_all(evidence) if d.identified]
        for ip, evidence in by_endpoint.items()
    }
    assert named == {SCU.ip: ["pynetdicom"], SCP.ip: ["dcmtk"]}
