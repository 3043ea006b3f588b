//! Segment files written around the page cache (`O_DIRECT`), in whole blocks.
//!
//! Why: a buffered write pays the kernel for every page it fills (a page-cache page, its
//! buffer heads, its dirty accounting), and again when the seal's fsync writes it back: about
//! 1.1 µs of CPU per 4 KiB in writes of 256 KiB on the bench machine, against 0.56 µs direct
//! (0.34 against 1.0–1.3 in writes of a MiB; docs/benchmarks.md, sixth pass). A direct write
//! has a fixed cost, so below 64 KiB it is the dearer one, and it returns once the disk has the
//! bytes: only writes made off the request path use it (`async` batches, on the blocking
//! pool; `fsync` batches, on the writer thread, whose fsync then has no pages to write back).
//!
//! A direct write must cover whole blocks, from memory aligned to a block. A segment is
//! written from its last partial block on: the bytes after its last whole block (its tail)
//! are kept in memory and written again, followed by the new bytes and zero-padded to a
//! block. So what was written is in the file at once, and the file is the segment's bytes
//! followed by zeros up to a block; sealing cuts the zeros ([`std::fs::File::set_len`]), as
//! does the recovery of a stopped run (which cuts an open segment after its last newline).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The unit of a direct write, in offset, length and memory alignment: a multiple of the
/// logical block size of every disk Linux knows (512 or 4096 bytes).
pub(crate) const BLOCK: usize = 4096;

/// The most bytes one direct write carries (a larger batch is written in several).
const CHUNK: usize = 1 << 20;

/// Switches an open file to direct writes; an error when its file system has none (then the
/// file stays as it was, written through the page cache).
pub(crate) fn enable(file: &File) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    rustix::fs::fcntl_setfl(file, flags | rustix::fs::OFlags::DIRECT)?;
    Ok(())
}

/// A chunk of memory aligned to [`BLOCK`], without `unsafe`: a vector one block longer than
/// the chunk, used from its first aligned byte. Allocated once per log and reused.
#[derive(Debug)]
pub(crate) struct AlignedBuffer {
    storage: Vec<u8>,
    start: usize,
}

impl AlignedBuffer {
    pub(crate) fn new() -> AlignedBuffer {
        let storage = vec![0; CHUNK + BLOCK];
        let start = (BLOCK - storage.as_ptr() as usize % BLOCK) % BLOCK;
        AlignedBuffer { storage, start }
    }

    fn chunk(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + CHUNK]
    }
}

/// The bytes of a directly written file after its last whole block.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    bytes: Vec<u8>,
}

impl Tail {
    /// Appends `bytes` to `file`, whose content is `len` bytes (then zeros to a block): from
    /// the tail's block on, in chunks, the last one zero-padded. On an error, the file may hold
    /// part of `bytes` past `len`, and the tail is as it was: the next write starts again from
    /// the same block.
    pub(crate) fn append(
        &mut self,
        file: &File,
        len: u64,
        bytes: &[u8],
        buffer: &mut AlignedBuffer,
    ) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let chunk = buffer.chunk();
        let mut offset = len - self.bytes.len() as u64;
        chunk[..self.bytes.len()].copy_from_slice(&self.bytes);
        let mut filled = self.bytes.len();
        let mut rest = bytes;
        loop {
            let taken = rest.len().min(CHUNK - filled);
            chunk[filled..filled + taken].copy_from_slice(&rest[..taken]);
            filled += taken;
            rest = &rest[taken..];
            if rest.is_empty() {
                break;
            }
            // A full chunk: whole blocks.
            file.write_all_at(chunk, offset)?;
            offset += CHUNK as u64;
            filled = 0;
        }
        let whole = filled / BLOCK * BLOCK;
        let padded = filled.div_ceil(BLOCK) * BLOCK;
        chunk[filled..padded].fill(0);
        file.write_all_at(&chunk[..padded], offset)?;
        self.bytes.clear();
        self.bytes.extend_from_slice(&chunk[whole..filled]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn direct_file(dir: &std::path::Path) -> File {
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(dir.join("segment"))
            .unwrap();
        enable(&file).expect("the test's temporary directory must take direct writes");
        file
    }

    #[test]
    fn the_buffer_is_aligned() {
        for _ in 0..8 {
            let mut buffer = AlignedBuffer::new();
            let chunk = buffer.chunk();
            assert_eq!(chunk.as_ptr() as usize % BLOCK, 0);
            assert_eq!(chunk.len(), CHUNK);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// After every append, the file is what was appended, then zeros to a block; cut to
        /// its length, exactly what was appended.
        #[test]
        fn appends_are_the_file_then_zeros(
            sizes in proptest::collection::vec(
                prop_oneof![0usize..100, 1usize..9000, Just(BLOCK), (CHUNK - 10)..(CHUNK + 5000)],
                1..12,
            )
        ) {
            let dir = tempfile::tempdir().unwrap();
            let file = direct_file(dir.path());
            let (mut tail, mut buffer) = (Tail::default(), AlignedBuffer::new());
            let mut expected = Vec::new();
            for (i, size) in sizes.into_iter().enumerate() {
                let bytes: Vec<u8> = (0..size).map(|j| b'a' + ((i * 7 + j) % 26) as u8).collect();
                tail.append(&file, expected.len() as u64, &bytes, &mut buffer).unwrap();
                expected.extend_from_slice(&bytes);
                let on_disk = std::fs::read(dir.path().join("segment")).unwrap();
                prop_assert_eq!(on_disk.len(), expected.len().div_ceil(BLOCK) * BLOCK);
                prop_assert!(on_disk[..expected.len()] == expected[..], "content differs");
                prop_assert!(on_disk[expected.len()..].iter().all(|&b| b == 0));
            }
            file.set_len(expected.len() as u64).unwrap();
            prop_assert!(std::fs::read(dir.path().join("segment")).unwrap() == expected);
        }
    }
}
