//! The media path, sans-I/O: RTP packets (RFC 3550) parsed, checked against the SSRC,
//! put back in sequence order by a bounded buffer (losses counted, sequence wraparound
//! handled), and their payloads joined into the MPEG-PS byte stream one frame at a time
//! (a frame ends at the RTP marker or when the timestamp changes), ready for
//! `appsrc ! mpegpsdemux`. Over TCP, packets are framed by RFC 4571's 2-byte length;
//! RTSP-style `$` interleaving is accepted too.

use std::collections::BTreeMap;

/// Why a packet or a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("RTP packet too short")]
    TooShort,
    #[error("RTP version {0} is not 2")]
    Version(u8),
    #[error("RTP padding longer than the payload")]
    BadPadding,
    #[error("RTP header extension past the end")]
    BadExtension,
    #[error("media frame over {0} bytes")]
    FrameTooLarge(usize),
}

/// One RTP packet, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// Parses a packet: CSRCs, a header extension and padding are skipped.
    pub fn parse(b: &'a [u8]) -> Result<Self, RtpError> {
        if b.len() < 12 {
            return Err(RtpError::TooShort);
        }
        let version = b[0] >> 6;
        if version != 2 {
            return Err(RtpError::Version(version));
        }
        let padding = b[0] & 0x20 != 0;
        let extension = b[0] & 0x10 != 0;
        let csrc = usize::from(b[0] & 0x0f);
        let mut start = 12 + 4 * csrc;
        if b.len() < start {
            return Err(RtpError::TooShort);
        }
        if extension {
            let ext = b.get(start + 2..start + 4).ok_or(RtpError::BadExtension)?;
            let words = usize::from(u16::from_be_bytes([ext[0], ext[1]]));
            start += 4 + 4 * words;
            if b.len() < start {
                return Err(RtpError::BadExtension);
            }
        }
        let mut end = b.len();
        if padding {
            let pad = usize::from(b[end - 1]);
            if pad == 0 || pad > end - start {
                return Err(RtpError::BadPadding);
            }
            end -= pad;
        }
        Ok(Self {
            marker: b[1] & 0x80 != 0,
            payload_type: b[1] & 0x7f,
            sequence: u16::from_be_bytes([b[2], b[3]]),
            timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            payload: &b[start..end],
        })
    }
}

/// Writes a minimal RTP packet (tests, and the scripted peer).
pub fn build_packet(pt: u8, seq: u16, ts: u32, ssrc: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + payload.len());
    v.push(0x80);
    v.push(pt & 0x7f | if marker { 0x80 } else { 0 });
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&ssrc.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Which SSRC is accepted: the one the 200 OK named, else the first one seen (latched).
#[derive(Debug, Clone, Default)]
pub struct SsrcFilter {
    expected: Option<u32>,
}

impl SsrcFilter {
    /// `Some(ssrc)` from the answer's `y=` line, or `None` to latch the first seen.
    pub fn new(expected: Option<u32>) -> Self {
        Self { expected }
    }

    pub fn accept(&mut self, ssrc: u32) -> bool {
        match self.expected {
            Some(e) => e == ssrc,
            None => {
                self.expected = Some(ssrc);
                true
            }
        }
    }

    pub fn ssrc(&self) -> Option<u32> {
        self.expected
    }
}

/// A packet owned, with its extended (wraparound-free) sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub ext_seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Vec<u8>,
}

/// Puts packets back in sequence order. At most `capacity` packets wait for a missing
/// one; past that the gap is given up on and counted as lost. A jump further than
/// `resync_after` is taken as a restarted sender, not as loss.
#[derive(Debug)]
pub struct ReorderBuffer {
    capacity: usize,
    resync_after: u64,
    next: Option<u64>,
    highest: u64,
    pending: BTreeMap<u64, Packet>,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    pub resyncs: u64,
}

impl ReorderBuffer {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            resync_after: 3000,
            next: None,
            highest: 0,
            pending: BTreeMap::new(),
            lost: 0,
            late: 0,
            duplicates: 0,
            resyncs: 0,
        }
    }

    /// The extended number of `seq`: the candidate nearest the highest seen so far.
    fn extend(&self, seq: u16) -> u64 {
        if self.next.is_none() {
            return 65_536 + u64::from(seq);
        }
        let base = (self.highest & !0xffff) | u64::from(seq);
        [base.wrapping_sub(65_536), base, base + 65_536]
            .into_iter()
            .filter(|c| *c < u64::MAX / 2)
            .min_by_key(|c| c.abs_diff(self.highest))
            .unwrap_or(base)
    }

    /// Adds a packet; returns the packets now in order.
    pub fn push(&mut self, seq: u16, timestamp: u32, marker: bool, payload: &[u8]) -> Vec<Packet> {
        let ext = self.extend(seq);
        let mut out = Vec::new();
        let next = match self.next {
            None => ext,
            Some(n) if ext < n => {
                if n - ext > self.resync_after {
                    self.resync(ext, &mut out)
                } else {
                    self.late += 1;
                    return out;
                }
            }
            Some(n) if ext - n > self.resync_after => self.resync(ext, &mut out),
            Some(n) => n,
        };
        self.next = Some(next);
        self.highest = self.highest.max(ext);
        if self.pending.contains_key(&ext) {
            self.duplicates += 1;
            return out;
        }
        self.pending.insert(
            ext,
            Packet {
                ext_seq: ext,
                timestamp,
                marker,
                payload: payload.to_vec(),
            },
        );
        self.drain(&mut out);
        while self.pending.len() > self.capacity {
            if let Some((&first, _)) = self.pending.first_key_value()
                && let Some(n) = self.next
            {
                self.lost += first - n;
                self.next = Some(first);
            }
            self.drain(&mut out);
        }
        out
    }

    fn resync(&mut self, ext: u64, out: &mut Vec<Packet>) -> u64 {
        self.resyncs += 1;
        out.extend(std::mem::take(&mut self.pending).into_values());
        self.highest = ext;
        ext
    }

    fn drain(&mut self, out: &mut Vec<Packet>) {
        while let Some(n) = self.next {
            let Some(p) = self.pending.remove(&n) else {
                break;
            };
            out.push(p);
            self.next = Some(n + 1);
        }
    }

    /// Gives up on every gap: the packets still waiting, in order (end of stream).
    pub fn flush(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some((&first, _)) = self.pending.first_key_value() {
            if let Some(n) = self.next {
                self.lost += first.saturating_sub(n);
            }
            self.next = Some(first);
            self.drain(&mut out);
        }
        out
    }
}

/// Splits a TCP byte stream into RTP packets: RFC 4571 (2-byte big-endian length) or
/// RTSP interleaving (`$`, channel, 2-byte length), told apart by where the RTP version
/// bits sit.
#[derive(Debug)]
pub struct StreamDeframer {
    buf: Vec<u8>,
    pos: usize,
    max_buffer: usize,
}

impl Default for StreamDeframer {
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            max_buffer: 1 << 20,
        }
    }
}

impl StreamDeframer {
    /// Appends bytes read from the socket.
    pub fn push(&mut self, data: &[u8]) -> Result<(), RtpError> {
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.len() - self.pos + data.len() > self.max_buffer {
            return Err(RtpError::FrameTooLarge(self.max_buffer));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next whole packet, if one has come.
    pub fn next_packet(&mut self) -> Option<Vec<u8>> {
        loop {
            let b = &self.buf[self.pos..];
            let rtp_at = |i: usize| b.get(i).is_some_and(|x| x >> 6 == 2);
            let (header, len) = if b.first() == Some(&b'$') {
                if b.len() < 5 {
                    return None;
                }
                if rtp_at(4) && !rtp_at(2) {
                    (4, usize::from(u16::from_be_bytes([b[2], b[3]])))
                } else {
                    (2, usize::from(u16::from_be_bytes([b[0], b[1]])))
                }
            } else {
                if b.len() < 2 {
                    return None;
                }
                (2, usize::from(u16::from_be_bytes([b[0], b[1]])))
            };
            if b.len() < header + len {
                return None;
            }
            let pkt = b[header..header + len].to_vec();
            self.pos += header + len;
            if len == 0 {
                continue;
            }
            return Some(pkt);
        }
    }
}

/// Frames a packet for RFC 4571 (the scripted peer's TCP sender, and tests).
pub fn frame_rfc4571(pkt: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(pkt.len() + 2);
    v.extend_from_slice(&(pkt.len().min(65_535) as u16).to_be_bytes());
    v.extend_from_slice(&pkt[..pkt.len().min(65_535)]);
    v
}

/// One frame of the PS stream (usually one pack: pack header, PES of one picture).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub timestamp: u32,
    pub data: Vec<u8>,
    /// False when a packet of this frame was lost.
    pub complete: bool,
}

/// Joins payloads of in-order packets into frames.
#[derive(Debug)]
pub struct PsAssembler {
    cur: Vec<u8>,
    ts: Option<u32>,
    complete: bool,
    last_seq: Option<u64>,
    max_frame: usize,
    pub oversized: u64,
}

impl PsAssembler {
    pub fn new(max_frame: usize) -> Self {
        Self {
            cur: Vec::new(),
            ts: None,
            complete: true,
            last_seq: None,
            max_frame,
            oversized: 0,
        }
    }

    fn take(&mut self) -> Option<Frame> {
        let ts = self.ts.take()?;
        let data = std::mem::take(&mut self.cur);
        let complete = std::mem::replace(&mut self.complete, true);
        (!data.is_empty()).then_some(Frame {
            timestamp: ts,
            data,
            complete,
        })
    }

    /// Adds one in-order packet; returns the frames it completed (at most two).
    pub fn push(&mut self, p: &Packet) -> Vec<Frame> {
        let mut out = Vec::new();
        let gap = self.last_seq.is_some_and(|l| p.ext_seq != l + 1);
        self.last_seq = Some(p.ext_seq);
        if self.ts.is_some_and(|t| t != p.timestamp) {
            out.extend(self.take());
        }
        if gap {
            // The loss may have been this frame's start or the last frame's end.
            self.complete = false;
        }
        self.ts = Some(p.timestamp);
        if self.cur.len() + p.payload.len() > self.max_frame {
            self.oversized += 1;
            self.cur.clear();
            self.complete = false;
        } else {
            self.cur.extend_from_slice(&p.payload);
        }
        if p.marker {
            out.extend(self.take());
        }
        out
    }

    /// The frame in progress (end of stream).
    pub fn flush(&mut self) -> Option<Frame> {
        self.take()
    }
}

/// Counters of one media stream (feed `lost` to `skynet_rtp_packets_lost_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaStats {
    pub packets: u64,
    pub bytes: u64,
    pub malformed: u64,
    pub wrong_ssrc: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    pub frames: u64,
    pub incomplete_frames: u64,
}

/// The whole receive path of one channel: SSRC check, reorder, PS frames.
#[derive(Debug)]
pub struct MediaReceiver {
    ssrc: SsrcFilter,
    reorder: ReorderBuffer,
    ps: PsAssembler,
    stats: MediaStats,
}

impl MediaReceiver {
    /// `expected_ssrc` from the 200 OK (`None` latches the first seen); `reorder` packets
    /// may wait for a missing one; frames over `max_frame` bytes are dropped.
    pub fn new(expected_ssrc: Option<u32>, reorder: usize, max_frame: usize) -> Self {
        Self {
            ssrc: SsrcFilter::new(expected_ssrc),
            reorder: ReorderBuffer::new(reorder),
            ps: PsAssembler::new(max_frame),
            stats: MediaStats::default(),
        }
    }

    /// One RTP packet (a UDP datagram, or one from [`StreamDeframer`]).
    pub fn push(&mut self, datagram: &[u8]) -> Vec<Frame> {
        let pkt = match RtpPacket::parse(datagram) {
            Ok(p) => p,
            Err(_) => {
                self.stats.malformed += 1;
                return Vec::new();
            }
        };
        if !self.ssrc.accept(pkt.ssrc) {
            self.stats.wrong_ssrc += 1;
            return Vec::new();
        }
        self.stats.packets += 1;
        self.stats.bytes += pkt.payload.len() as u64;
        let ready = self
            .reorder
            .push(pkt.sequence, pkt.timestamp, pkt.marker, pkt.payload);
        let frames = ready.iter().flat_map(|p| self.ps.push(p)).collect();
        self.count(frames)
    }

    /// The end of the stream: what is still buffered.
    pub fn flush(&mut self) -> Vec<Frame> {
        let ready = self.reorder.flush();
        let mut frames: Vec<Frame> = ready.iter().flat_map(|p| self.ps.push(p)).collect();
        frames.extend(self.ps.flush());
        self.count(frames)
    }

    fn count(&mut self, frames: Vec<Frame>) -> Vec<Frame> {
        self.stats.frames += frames.len() as u64;
        self.stats.incomplete_frames += frames.iter().filter(|f| !f.complete).count() as u64;
        self.stats.lost = self.reorder.lost;
        self.stats.late = self.reorder.late;
        self.stats.duplicates = self.reorder.duplicates;
        frames
    }

    pub fn stats(&self) -> MediaStats {
        self.stats
    }

    /// The SSRC accepted (named or latched).
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc.ssrc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_with_csrcs_extension_and_padding_parses_to_its_payload() {
        let mut b = vec![
            0x80 | 0x20 | 0x10 | 0x01,
            0x80 | 96,
            0x12,
            0x34,
            0,
            0,
            0x0b,
            0xb8,
            0,
            0,
            0,
            7,
        ];
        b.extend_from_slice(&[1, 2, 3, 4]); // CSRC
        b.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // extension, one word
        b.extend_from_slice(b"PSDATA");
        b.extend_from_slice(&[0, 0, 3]); // padding
        let p = RtpPacket::parse(&b).unwrap();
        assert_eq!(
            (p.marker, p.payload_type, p.sequence, p.timestamp, p.ssrc),
            (true, 96, 0x1234, 3000, 7)
        );
        assert_eq!(p.payload, b"PSDATA");
        assert_eq!(RtpPacket::parse(&b[..11]), Err(RtpError::TooShort));
        assert_eq!(RtpPacket::parse(&[0x40; 12]), Err(RtpError::Version(1)));
        let mut bad_pad = build_packet(96, 1, 1, 1, false, b"ab");
        bad_pad[0] |= 0x20;
        *bad_pad.last_mut().unwrap() = 9;
        assert_eq!(RtpPacket::parse(&bad_pad), Err(RtpError::BadPadding));
        let mut bad_ext = build_packet(96, 1, 1, 1, false, &[0, 0, 0, 9]);
        bad_ext[0] |= 0x10;
        assert_eq!(RtpPacket::parse(&bad_ext), Err(RtpError::BadExtension));
    }

    fn seqs(v: &[Packet]) -> Vec<u16> {
        v.iter().map(|p| p.ext_seq as u16).collect()
    }

    #[test]
    fn out_of_order_packets_come_out_in_order_across_the_wraparound() {
        let mut r = ReorderBuffer::new(8);
        let mut got = Vec::new();
        for s in [65_533u16, 65_535, 65_534, 1, 0, 2] {
            got.extend(seqs(&r.push(s, 0, false, b"x")));
        }
        assert_eq!(got, [65_533, 65_534, 65_535, 0, 1, 2]);
        assert_eq!((r.lost, r.late, r.duplicates), (0, 0, 0));
        assert_eq!(seqs(&r.push(2, 0, false, b"x")), Vec::<u16>::new());
        assert_eq!(r.late, 1, "an already delivered packet is late");
    }

    #[test]
    fn a_missing_packet_is_given_up_on_when_the_buffer_is_full_and_counted_lost() {
        let mut r = ReorderBuffer::new(3);
        assert_eq!(seqs(&r.push(10, 0, false, b"")), [10]);
        // 11 and 12 never come.
        assert!(r.push(13, 0, false, b"").is_empty());
        assert!(r.push(14, 0, false, b"").is_empty());
        assert!(r.push(15, 0, false, b"").is_empty());
        assert_eq!(seqs(&r.push(16, 0, false, b"")), [13, 14, 15, 16]);
        assert_eq!(r.lost, 2);
        assert!(r.push(14, 0, false, b"").is_empty());
        assert!(r.push(20, 0, false, b"").is_empty());
        assert!(r.push(20, 0, false, b"").is_empty());
        assert_eq!(r.duplicates, 1);
        assert_eq!(seqs(&r.flush()), [20]);
        assert_eq!(r.lost, 5);
    }

    #[test]
    fn a_sender_restart_far_away_is_a_resync_not_a_loss() {
        let mut r = ReorderBuffer::new(4);
        r.push(100, 0, false, b"");
        assert_eq!(seqs(&r.push(40_000, 0, false, b"")), [40_000]);
        assert_eq!(seqs(&r.push(40_001, 0, false, b"")), [40_001]);
        assert_eq!((r.lost, r.resyncs), (0, 1));
    }

    #[test]
    fn the_named_ssrc_is_checked_and_otherwise_the_first_is_latched() {
        let mut f = SsrcFilter::new(Some(200_000_001));
        assert!(f.accept(200_000_001));
        assert!(!f.accept(5));
        let mut l = SsrcFilter::new(None);
        assert!(l.accept(5));
        assert!(!l.accept(6));
        assert_eq!(l.ssrc(), Some(5));
    }

    #[test]
    fn rfc4571_and_dollar_interleaved_frames_are_split_across_reads() {
        let p1 = build_packet(96, 1, 0, 9, false, &[0x24; 300]);
        let p2 = build_packet(96, 2, 0, 9, true, b"end");
        let mut wire = frame_rfc4571(&p1);
        wire.extend_from_slice(&[0, 0]); // an empty frame is skipped
        wire.extend_from_slice(b"$\x00");
        wire.extend_from_slice(&(p2.len() as u16).to_be_bytes());
        wire.extend_from_slice(&p2);
        // A 4571 frame whose length starts with 0x24 ('$') is not mistaken for interleaving.
        let p3 = build_packet(96, 3, 0, 9, false, &vec![7; 0x2400 - 12]);
        wire.extend_from_slice(&frame_rfc4571(&p3));
        let mut d = StreamDeframer::default();
        let mut got = Vec::new();
        for chunk in wire.chunks(7) {
            d.push(chunk).unwrap();
            while let Some(p) = d.next_packet() {
                got.push(p);
            }
        }
        assert_eq!(got, [p1, p2, p3]);
    }

    #[test]
    fn payloads_join_into_frames_at_the_marker_or_a_new_timestamp() {
        let mut m = MediaReceiver::new(Some(9), 16, 1 << 20);
        let mut frames = Vec::new();
        // Frame 1 (ts 3600): three packets, sent out of order, marker on the last.
        for (seq, marker, data) in [
            (1u16, false, &b"\x00\x00\x01\xbaAA"[..]),
            (3, true, b"CC"),
            (2, false, b"BB"),
        ] {
            frames.extend(m.push(&build_packet(96, seq, 3600, 9, marker, data)));
        }
        // A stranger's packet is refused.
        frames.extend(m.push(&build_packet(96, 4, 7200, 1234, false, b"XX")));
        // Frame 2 (ts 7200) has no marker: it ends when ts 10800 starts.
        frames.extend(m.push(&build_packet(96, 4, 7200, 9, false, b"DD")));
        frames.extend(m.push(&build_packet(96, 5, 10_800, 9, false, b"EE")));
        // Packet 6 is lost; 7 ends frame 3 (incomplete).
        frames.extend(m.push(&build_packet(96, 7, 10_800, 9, true, b"GG")));
        frames.extend(m.flush());
        frames.extend(m.push(&[1, 2, 3]));
        let data: Vec<(&[u8], bool)> = frames
            .iter()
            .map(|f| (f.data.as_slice(), f.complete))
            .collect();
        assert_eq!(
            data,
            [
                (&b"\x00\x00\x01\xbaAABBCC"[..], true),
                (b"DD", true),
                (b"EEGG", false)
            ]
        );
        let s = m.stats();
        assert_eq!(
            (
                s.wrong_ssrc,
                s.malformed,
                s.lost,
                s.frames,
                s.incomplete_frames
            ),
            (1, 1, 1, 3, 1)
        );
    }

    #[test]
    fn an_oversized_frame_is_dropped_not_grown() {
        let mut a = PsAssembler::new(4);
        let p = |seq, marker, data: &[u8]| Packet {
            ext_seq: seq,
            timestamp: 1,
            marker,
            payload: data.to_vec(),
        };
        assert!(a.push(&p(1, false, b"abc")).is_empty());
        assert!(a.push(&p(2, true, b"def")).is_empty());
        assert_eq!(a.oversized, 1);
    }
}
