//! Publishes awaiting the broker's acknowledgement, matched by packet id (a broker may
//! acknowledge QoS 1 publishes in any order), and the scans among them in log order: the
//! checkpoint moves only over scans acknowledged with every scan before them.
//!
//! rumqttc numbers a publish when its event loop sends it, and reports that as
//! `Outgoing::Publish(pkid)` in the order the publishes were asked for (pkid 0 for QoS 0); a
//! packet id still in use makes it hold the publish back (`Outgoing::AwaitAck(pkid)`) and send it
//! when that id is acknowledged (another `Outgoing::Publish(pkid)`).

use std::collections::{HashMap, VecDeque};

use super::outbox::Position;

/// What a QoS 1 publish was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// A scan line: its sequence number among the scans of this connection.
    Scan(u64),
    /// Availability, state or discovery.
    Other,
}

/// A scan published and its acknowledgement.
struct ScanInFlight {
    end: Position,
    key: String,
    acknowledged: bool,
}

/// Where the checkpoint may move after an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    /// The position after the last scan of the acknowledged run.
    pub end: Position,
    pub key: String,
    /// Scans in the run.
    pub scans: usize,
}

/// The publishes of one connection awaiting acknowledgement.
#[derive(Default)]
pub struct Acks {
    /// Asked for, in order, not yet numbered by the event loop.
    unnumbered: VecDeque<Sent>,
    /// Numbered and sent, by packet id.
    awaiting: HashMap<u16, Sent>,
    /// Held back by the event loop until its packet id is free.
    held: Option<(u16, Sent)>,
    /// The packet id of a held publish that was just released: its `Outgoing::Publish` is not
    /// a new one.
    released: Option<u16>,
    /// Scans in log order, from sequence number `first_scan`.
    scans: VecDeque<ScanInFlight>,
    first_scan: u64,
}

impl Acks {
    /// A QoS 1 publish that is not a scan was asked for.
    pub fn asked_other(&mut self) {
        self.unnumbered.push_back(Sent::Other);
    }

    /// A scan was asked for; `end` is the log position after it.
    pub fn asked_scan(&mut self, end: Position, key: String) {
        let seq = self.first_scan + self.scans.len() as u64;
        self.scans.push_back(ScanInFlight {
            end,
            key,
            acknowledged: false,
        });
        self.unnumbered.push_back(Sent::Scan(seq));
    }

    /// The event loop sent a publish with `pkid` (0: QoS 0, nothing to await).
    pub fn sent(&mut self, pkid: u16) {
        if pkid == 0 {
            return;
        }
        if self.released == Some(pkid) {
            self.released = None;
            return;
        }
        match self.unnumbered.pop_front() {
            Some(sent) => {
                self.awaiting.insert(pkid, sent);
            }
            None => tracing::warn!("the broker connection sent publish {pkid}, not asked for"),
        }
    }

    /// The event loop holds the next publish back until `pkid` is acknowledged.
    pub fn held_back(&mut self, pkid: u16) {
        if let Some(sent) = self.unnumbered.pop_front() {
            self.held = Some((pkid, sent));
        }
    }

    /// The broker acknowledged `pkid`; returns where the checkpoint may move.
    pub fn acknowledged(&mut self, pkid: u16) -> Option<Advance> {
        let Some(sent) = self.awaiting.remove(&pkid) else {
            tracing::warn!("an acknowledgement of packet {pkid}, which was not sent");
            return None;
        };
        if self.held.as_ref().is_some_and(|(id, _)| *id == pkid) {
            let (id, held) = self.held.take().expect("checked");
            self.awaiting.insert(id, held);
            self.released = Some(id);
        }
        let Sent::Scan(seq) = sent else {
            return None;
        };
        let index = usize::try_from(seq.checked_sub(self.first_scan)?).ok()?;
        self.scans.get_mut(index)?.acknowledged = true;
        let mut advance: Option<Advance> = None;
        while self.scans.front().is_some_and(|s| s.acknowledged) {
            let scan = self.scans.pop_front().expect("checked");
            self.first_scan += 1;
            let scans = advance.as_ref().map_or(0, |a| a.scans) + 1;
            advance = Some(Advance {
                end: scan.end,
                key: scan.key,
                scans,
            });
        }
        advance
    }

    /// Scans published and not yet part of an acknowledged run.
    pub fn scans_in_flight(&self) -> usize {
        self.scans.len()
    }

    /// Whether anything asked for is still unacknowledged.
    pub fn is_empty(&self) -> bool {
        self.unnumbered.is_empty() && self.awaiting.is_empty() && self.held.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64) -> Position {
        Position {
            inode: 1,
            first_line_crc: Some(2),
            offset,
            line: None,
        }
    }

    #[test]
    fn acknowledgements_out_of_order_move_the_checkpoint_only_over_a_whole_run() {
        let mut acks = Acks::default();
        acks.asked_other();
        for scan in 1..=3 {
            acks.asked_scan(at(scan * 100), format!("k/b/{scan}"));
        }
        for pkid in [1, 0, 2, 3, 4] {
            acks.sent(pkid); // 0: a QoS 0 stats message between them.
        }
        assert_eq!(acks.scans_in_flight(), 3);
        // Scan 2 (packet 3) first: scan 1 is not acknowledged, so nothing moves.
        assert_eq!(acks.acknowledged(3), None);
        assert_eq!(acks.acknowledged(1), None); // `online`
        assert_eq!(
            acks.acknowledged(2),
            Some(Advance {
                end: at(200),
                key: "k/b/2".into(),
                scans: 2
            })
        );
        assert_eq!(acks.scans_in_flight(), 1);
        assert_eq!(acks.acknowledged(2), None, "a second acknowledgement of 2");
        assert_eq!(acks.acknowledged(4).map(|a| a.end), Some(at(300)));
        assert!(acks.is_empty());
    }

    #[test]
    fn a_publish_held_back_for_its_packet_id_is_matched_when_released() {
        let mut acks = Acks::default();
        acks.asked_scan(at(100), "k/b/1".into());
        acks.asked_scan(at(200), "k/b/2".into());
        acks.sent(7);
        // The next id is 7 again (ids wrapped) while 7 is unacknowledged: held back.
        acks.held_back(7);
        assert_eq!(acks.acknowledged(7).map(|a| a.key), Some("k/b/1".into()));
        // The event loop now sends it as 7: not a new publish.
        acks.sent(7);
        assert_eq!(acks.acknowledged(7).map(|a| a.key), Some("k/b/2".into()));
        assert!(acks.is_empty());
    }
}
