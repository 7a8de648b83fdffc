"""What a parser knows about the packet it reads, and how it builds Observations from it."""

from __future__ import annotations

from dataclasses import dataclass

from collectors._observation import NO_ENDPOINT, Attrs, Endpoint, Kind, Observation


@dataclass(slots=True)
class PacketContext:
    """Timestamp and endpoints of one packet (or reassembled message), plus who is observing."""

    ts: float
    src: Endpoint = NO_ENDPOINT
    dst: Endpoint = NO_ENDPOINT
    source: str = "pcap"
    agent: str = "lanterne"
    vlan: int | None = None
    """Innermost 802.1Q VLAN id the packet carried, if any; added to every observation's attrs."""

    def observation(
        self,
        kind: Kind,
        value: str,
        attrs: Attrs | None = None,
        *,
        reverse: bool = False,
        src: Endpoint | None = None,
        dst: Endpoint | None = None,
    ) -> Observation:
        """Build an Observation of this packet.

        ``reverse`` swaps src and dst (e.g. a server's answer); ``src``/``dst`` replace an endpoint
        the protocol knows better than the IP header (a DHCP client's chaddr, say).
        """
        if reverse:
            src, dst = src or self.dst, dst or self.src
        else:
            src, dst = src or self.src, dst or self.dst
        if self.vlan is not None:
            attrs = {**attrs, "vlan": self.vlan} if attrs else {"vlan": self.vlan}
        return Observation(self.ts, kind, value, src, dst, attrs, self.source, self.agent)
