//! Stored groups of records: several events (or outcomes) in one row, their bytes compressed.
//!
//! A group is three blobs: a fixed-width index (each record's 32-bit little-endian end
//! offset), and the records' bytes concatenated and compressed with zlib (RFC 1950, what
//! Python's `zlib.decompress` reads). Compression happens after hashing — hashes always
//! cover the uncompressed bytes — so the chain, and `verify`'s naming of the first altered
//! record, do not depend on it. Reading a group never inflates past the size its index
//! announces, so a damaged or hostile blob cannot allocate without bound.

use std::cell::RefCell;
use std::io::Read;

use flate2::read::ZlibDecoder;
use flate2::{Compress, Compression, FlushCompress, Status};

/// Most uncompressed bytes one group holds; a single larger record is a group of its own.
pub(crate) const GROUP_BYTES_MAX: usize = 1 << 20;

/// Most records one group holds.
pub(crate) const GROUP_RECORDS_MAX: usize = 4096;

/// The compression level: the fastest, since most of what is stored is written once and
/// read rarely, and the write is on the run's path.
const LEVEL: u32 = 1;

thread_local! {
    /// One compressor per thread, reset for each group: a new one allocates and zeroes its
    /// window and tables (hundreds of KiB) for a group that is often a few hundred bytes.
    static COMPRESSOR: RefCell<Compress> =
        RefCell::new(Compress::new(Compression::new(LEVEL), true));
}

/// `input` compressed as one zlib stream by `compress`, freshly reset; empty if the
/// compressor fails, which it does not on memory it is given.
fn deflate(compress: &mut Compress, input: &[u8]) -> Vec<u8> {
    compress.reset();
    let mut output = Vec::with_capacity(input.len() / 4 + 64);
    loop {
        if output.len() == output.capacity() {
            output.reserve(output.capacity().max(64));
        }
        let consumed = usize::try_from(compress.total_in()).unwrap_or(input.len());
        let rest = input.get(consumed..).unwrap_or_default();
        match compress.compress_vec(rest, &mut output, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => return output,
            Ok(Status::Ok | Status::BufError) => {}
            Err(_) => return Vec::new(),
        }
    }
}

/// The end offsets of records being packed into one group, without their bytes: what a
/// group of records that already lie one after the other in memory (an `EventBatch`'s)
/// needs, whose bytes are then compressed where they are ([`Index::seal`]).
#[derive(Default)]
pub(crate) struct Index {
    ends: Vec<u8>,
    len: usize,
    count: usize,
}

/// Whether a record of `len` bytes may join a group of `count` records of `bytes` bytes in
/// all: any record joins an empty group.
pub(crate) fn fits(count: usize, bytes: usize, len: usize) -> bool {
    count == 0 || (count < GROUP_RECORDS_MAX && bytes.saturating_add(len) <= GROUP_BYTES_MAX)
}

impl Index {
    /// Whether a record of `len` bytes may join this group.
    pub(crate) fn fits(&self, len: usize) -> bool {
        fits(self.count, self.len, len)
    }

    /// Adds a record of `len` bytes; `Err` if the group would pass what its offsets can
    /// address.
    pub(crate) fn push(&mut self, len: usize) -> Result<(), ()> {
        let end = self.len.checked_add(len).ok_or(())?;
        let stored = u32::try_from(end).map_err(|_| ())?;
        self.ends.extend_from_slice(&stored.to_le_bytes());
        self.len = end;
        self.count += 1;
        Ok(())
    }

    /// The stored blobs: the end offsets and `bytes` compressed, which must be the records
    /// pushed, one after the other.
    pub(crate) fn seal(self, bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
        debug_assert_eq!(bytes.len(), self.len, "a group's bytes are its records'");
        (self.ends, compress(bytes))
    }
}

/// `bytes` compressed with this thread's compressor.
fn compress(bytes: &[u8]) -> Vec<u8> {
    COMPRESSOR.with(|compressor| match compressor.try_borrow_mut() {
        Ok(mut compress) => deflate(&mut compress, bytes),
        // Not reentrant; a second compressor would do the same work.
        Err(_) => deflate(&mut Compress::new(Compression::new(LEVEL), true), bytes),
    })
}

/// Records being packed into one group, copied together.
#[derive(Default)]
pub(crate) struct Group {
    index: Index,
    bodies: Vec<u8>,
}

impl Group {
    /// Whether a record of `len` bytes may join this group.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.index.fits(len)
    }

    /// Adds a record; `Err` if the group would pass what its offsets can address.
    pub(crate) fn push(&mut self, body: &[u8]) -> Result<(), ()> {
        self.index.push(body.len())?;
        self.bodies.extend_from_slice(body);
        Ok(())
    }

    /// The stored blobs: the end offsets and the compressed bodies.
    pub(crate) fn seal(self) -> (Vec<u8>, Vec<u8>) {
        self.index.seal(&self.bodies)
    }
}

/// The records of a stored group, split at their end offsets.
pub(crate) struct Unpacked {
    bodies: Vec<u8>,
    ends: Vec<usize>,
}

impl Unpacked {
    /// Inflates and splits a stored group of `count` records; `Err` says why it cannot be
    /// read (offsets of the wrong length or out of order, bodies that do not inflate to the
    /// announced size).
    pub(crate) fn new(count: usize, ends: &[u8], compressed: &[u8]) -> Result<Unpacked, String> {
        if ends.len() != count.saturating_mul(4) {
            return Err(format!(
                "{} bytes of offsets for {count} records",
                ends.len()
            ));
        }
        let ends: Vec<usize> = ends
            .chunks_exact(4)
            .map(|end| u32::from_le_bytes([end[0], end[1], end[2], end[3]]) as usize)
            .collect();
        if ends.windows(2).any(|pair| pair[0] > pair[1]) {
            return Err("record offsets are out of order".to_owned());
        }
        let size = ends.last().copied().unwrap_or(0);
        let mut bodies = Vec::with_capacity(size.min(GROUP_BYTES_MAX));
        let limit = u64::try_from(size).unwrap_or(u64::MAX).saturating_add(1);
        ZlibDecoder::new(compressed)
            .take(limit)
            .read_to_end(&mut bodies)
            .map_err(|error| format!("the records do not inflate: {error}"))?;
        if bodies.len() != size {
            return Err(format!(
                "the records inflate to {} bytes, not the {size} their offsets announce",
                bodies.len()
            ));
        }
        Ok(Unpacked { bodies, ends })
    }

    /// All the records' bytes, concatenated.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bodies
    }

    /// The records in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| &self.bodies[start..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let mut group = Group::default();
        for record in [b"alpha".as_slice(), b"", b"gamma"] {
            assert!(group.fits(record.len()));
            group.push(record).unwrap();
        }
        let (ends, bodies) = group.seal();
        let unpacked = Unpacked::new(3, &ends, &bodies).unwrap();
        let records: Vec<&[u8]> = unpacked.iter().collect();
        assert_eq!(records, [b"alpha".as_slice(), b"", b"gamma"]);

        assert!(Unpacked::new(2, &ends, &bodies).is_err());
        let mut truncated = bodies.clone();
        truncated.truncate(bodies.len() - 3);
        assert!(Unpacked::new(3, &ends, &truncated).is_err());
        let mut longer = ends.clone();
        longer[8] = 11;
        assert!(Unpacked::new(3, &longer, &bodies).is_err());
    }

    /// Records sealed where they lie (an index over bytes already joined) are stored exactly
    /// as the same records copied into a group.
    #[test]
    fn an_index_over_joined_records_seals_as_a_group() {
        let records: [&[u8]; 4] = [b"alpha", b"", b"{\"gamma\":1}", b"delta"];
        let mut group = Group::default();
        let mut index = Index::default();
        for record in records {
            assert_eq!(group.fits(record.len()), index.fits(record.len()));
            group.push(record).unwrap();
            index.push(record.len()).unwrap();
        }
        let joined = records.concat();
        assert_eq!(index.seal(&joined), group.seal());
        let mut full = Index::default();
        full.push(GROUP_BYTES_MAX).unwrap();
        assert!(!full.fits(1), "a full group takes no more bytes");
        assert!(Index::default().push(usize::MAX).is_err());
    }

    /// The thread's compressor, reused, gives each group the bytes a new one gives it,
    /// whatever it compressed before: small groups, and one that outgrows its first buffer.
    #[test]
    fn a_reused_compressor_seals_as_a_new_one() {
        let noise: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let inputs: [&[u8]; 4] = [b"alpha", &noise, b"", b"alpha"];
        for input in inputs {
            let mut group = Group::default();
            group.push(input).unwrap();
            let (ends, sealed) = group.seal();
            let fresh = deflate(&mut Compress::new(Compression::new(LEVEL), true), input);
            assert_eq!(sealed, fresh, "{} bytes", input.len());
            let unpacked = Unpacked::new(1, &ends, &sealed).unwrap();
            assert_eq!(unpacked.iter().next(), Some(input));
        }
    }
}
