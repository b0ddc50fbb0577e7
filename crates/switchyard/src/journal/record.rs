//! The journal's bytes: a header, then framed, checksummed records.
//!
//! ```text
//! file    = MAGIC record*
//! record  = body_len: u32 LE | crc32(body): u32 LE | body
//! body    = 1 | id: u64 LE | accepted_unix_ms: u64 LE | payload   (accepted)
//!         | 2 | id: u64 LE | outcome: u8                          (finished)
//! ```

use switchyard_core::RequestId;

use super::JournalError;

/// The first bytes of every journal file: a name and a format version.
pub const MAGIC: &[u8; 8] = b"SYJRNL\x00\x01";

/// Largest record body read back; a length past it is damage, not data.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

const ACCEPTED: u8 = 1;
const FINISHED: u8 = 2;
const FRAME: usize = 8;

/// How a journaled request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It gave its answer.
    Succeeded,
    /// It ended with an error.
    Failed,
    /// Its caller cancelled it or stopped waiting.
    Cancelled,
}

impl Outcome {
    fn to_byte(self) -> u8 {
        match self {
            Outcome::Succeeded => 0,
            Outcome::Failed => 1,
            Outcome::Cancelled => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Outcome::Succeeded),
            1 => Some(Outcome::Failed),
            2 => Some(Outcome::Cancelled),
            _ => None,
        }
    }
}

/// One record of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A request was accepted.
    Accepted {
        /// Its id.
        id: RequestId,
        /// When, in milliseconds since the Unix epoch.
        accepted_unix_ms: u64,
        /// The request, as the engine wrote it.
        payload: Vec<u8>,
    },
    /// A request ended.
    Finished {
        /// Its id.
        id: RequestId,
        /// How.
        outcome: Outcome,
    },
}

impl Record {
    /// The record framed for appending: length, checksum, body.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            Record::Accepted {
                id,
                accepted_unix_ms,
                payload,
            } => {
                body.reserve(17 + payload.len());
                body.push(ACCEPTED);
                body.extend_from_slice(&id.as_u64().to_le_bytes());
                body.extend_from_slice(&accepted_unix_ms.to_le_bytes());
                body.extend_from_slice(payload);
            }
            Record::Finished { id, outcome } => {
                body.push(FINISHED);
                body.extend_from_slice(&id.as_u64().to_le_bytes());
                body.push(outcome.to_byte());
            }
        }
        // Payloads are capped by the writer well below u32::MAX.
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(FRAME + body.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// The request id the record is about.
    pub fn id(&self) -> RequestId {
        match self {
            Record::Accepted { id, .. } | Record::Finished { id, .. } => *id,
        }
    }

    fn decode(body: &[u8]) -> Option<Record> {
        let (&kind, rest) = body.split_first()?;
        let id = RequestId::from_u64(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?));
        match kind {
            ACCEPTED => {
                let ms = u64::from_le_bytes(rest.get(8..16)?.try_into().ok()?);
                Some(Record::Accepted {
                    id,
                    accepted_unix_ms: ms,
                    payload: rest[16..].to_vec(),
                })
            }
            FINISHED if rest.len() == 9 => Some(Record::Finished {
                id,
                outcome: Outcome::from_byte(rest[8])?,
            }),
            _ => None,
        }
    }
}

/// Everything readable in a journal's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// The whole records, in file order.
    pub records: Vec<Record>,
    /// Where an unfinished last record starts (a write cut short by a
    /// crash), and how many bytes it has; they are dropped.
    pub torn_tail: Option<TornTail>,
}

/// An unfinished last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    /// Its offset in the file.
    pub offset: u64,
    /// Its bytes.
    pub bytes: u64,
}

/// Reads a journal's bytes: the header, then records up to the end.
///
/// A final record that is cut short, fails its checksum as the file's last
/// bytes, or is all zeros (a file grown but never written before a crash)
/// is a torn tail: reported, not an error. Damage with whole records after
/// it is an error, since skipping it would lose those silently.
///
/// # Errors
/// [`JournalError::NotAJournal`] when the header is wrong,
/// [`JournalError::Corrupt`] for damage before the end.
pub fn read_records(bytes: &[u8]) -> Result<Records, JournalError> {
    if bytes.len() < MAGIC.len() {
        // A crash while the header was written leaves a prefix of it.
        return if MAGIC.starts_with(bytes) {
            Ok(Records::default())
        } else {
            Err(JournalError::NotAJournal)
        };
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(JournalError::NotAJournal);
    }
    let mut out = Records::default();
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn = || TornTail {
            offset: at as u64,
            bytes: rest.len() as u64,
        };
        if rest.iter().all(|&b| b == 0) || rest.len() < FRAME {
            out.torn_tail = Some(torn());
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_RECORD_BYTES {
            return Err(JournalError::Corrupt {
                offset: at as u64,
                reason: format!("a record of {len} bytes"),
            });
        }
        let Some(body) = rest.get(FRAME..FRAME + len) else {
            out.torn_tail = Some(torn());
            break;
        };
        let last = FRAME + len == rest.len();
        let record = (crc32fast::hash(body) == crc)
            .then(|| Record::decode(body))
            .flatten();
        match record {
            Some(r) => out.records.push(r),
            None if last => {
                out.torn_tail = Some(torn());
                break;
            }
            None => {
                return Err(JournalError::Corrupt {
                    offset: at as u64,
                    reason: "a record fails its checksum or has an unknown form".into(),
                });
            }
        }
        at += FRAME + len;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn accepted(id: u64, payload: &[u8]) -> Record {
        Record::Accepted {
            id: RequestId::from_u64(id),
            accepted_unix_ms: 1_700_000_000_000 + id,
            payload: payload.to_vec(),
        }
    }

    fn finished(id: u64) -> Record {
        Record::Finished {
            id: RequestId::from_u64(id),
            outcome: Outcome::Succeeded,
        }
    }

    fn file(records: &[Record]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for r in records {
            bytes.extend(r.encode());
        }
        bytes
    }

    #[test]
    fn records_read_back_as_written() {
        let records = vec![
            accepted(1, b"{\"a\":1}"),
            accepted(2, b""),
            finished(1),
            Record::Finished {
                id: RequestId::from_u64(2),
                outcome: Outcome::Cancelled,
            },
        ];
        let read = read_records(&file(&records)).unwrap();
        assert_eq!(read.records, records);
        assert_eq!(read.torn_tail, None);
    }

    #[test]
    fn a_cut_at_any_byte_of_the_last_record_keeps_the_rest() {
        let whole = [accepted(1, b"first"), accepted(2, b"second request")];
        let bytes = file(&whole);
        let last_starts = MAGIC.len() + whole[0].encode().len();
        for cut in last_starts..bytes.len() {
            let read = read_records(&bytes[..cut]).unwrap();
            assert_eq!(read.records, whole[..1], "cut at {cut}");
            let torn = read.torn_tail;
            if cut > last_starts {
                assert_eq!(torn.unwrap().offset, last_starts as u64);
                assert_eq!(torn.unwrap().bytes, (cut - last_starts) as u64);
            } else {
                assert_eq!(torn, None);
            }
        }
    }

    #[test]
    fn a_damaged_last_record_or_zeroed_tail_is_torn() {
        let mut bytes = file(&[accepted(1, b"one"), accepted(2, b"two")]);
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        let read = read_records(&bytes).unwrap();
        assert_eq!(read.records.len(), 1);
        assert!(read.torn_tail.is_some());

        let mut zeroed = file(&[accepted(1, b"one")]);
        zeroed.extend([0u8; 4096]);
        let read = read_records(&zeroed).unwrap();
        assert_eq!(read.records.len(), 1);
        assert_eq!(read.torn_tail.unwrap().bytes, 4096);
    }

    #[test]
    fn damage_before_the_end_is_an_error() {
        let mut bytes = file(&[accepted(1, b"one"), accepted(2, b"two")]);
        bytes[MAGIC.len() + 10] ^= 0x01;
        assert!(matches!(
            read_records(&bytes),
            Err(JournalError::Corrupt { offset: 8, .. })
        ));
    }

    #[test]
    fn headers_are_checked() {
        assert_eq!(read_records(b"").unwrap(), Records::default());
        assert_eq!(read_records(&MAGIC[..3]).unwrap(), Records::default());
        assert!(matches!(
            read_records(b"not a journal at all"),
            Err(JournalError::NotAJournal)
        ));
        assert!(matches!(
            read_records(b"SYX"),
            Err(JournalError::NotAJournal)
        ));
    }

    #[test]
    fn oversized_lengths_are_corrupt_and_unknown_kinds_are_refused() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend((u32::MAX).to_le_bytes());
        bytes.extend([0u8; 12]);
        assert!(matches!(
            read_records(&bytes),
            Err(JournalError::Corrupt { .. })
        ));
        assert_eq!(Record::decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(Record::decode(&[FINISHED, 0, 0, 0, 0, 0, 0, 0, 0, 7]), None);
    }
}
