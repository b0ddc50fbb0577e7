//! The crash journal's reader: any bytes as a journal file give the records
//! before a torn tail, or a typed error, never a panic. What reads back
//! re-encodes to bytes that read back the same; any bytes as a record's
//! payload give a request or a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::journal::{MAGIC, PendingRequest, Record, read_records};

fn replay(pending: &PendingRequest) {
    // A request to queue again, or why not; either is fine, a panic is not.
    let _ = switchyard::journaled_request(pending);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector & 1 == 1 {
        // Checksums keep most mutated files from reaching the payload
        // decoder, so feed it directly too.
        replay(&PendingRequest {
            id: switchyard::core::RequestId::from_u64(1),
            accepted_unix_ms: 0,
            payload: rest.to_vec(),
        });
        return;
    }
    let Ok(read) = read_records(rest) else {
        return;
    };
    let mut bytes = MAGIC.to_vec();
    for record in &read.records {
        bytes.extend(record.encode());
        if let Record::Accepted {
            id,
            accepted_unix_ms,
            payload,
        } = record
        {
            replay(&PendingRequest {
                id: *id,
                accepted_unix_ms: *accepted_unix_ms,
                payload: payload.clone(),
            });
        }
    }
    let again = read_records(&bytes).expect("re-encoded records read back");
    assert_eq!(again.records, read.records);
    assert_eq!(again.torn_tail, None);
});
