//! Fixed-size heap buffers whose bytes start at a page boundary, so a sink can hand them to
//! `O_DIRECT` writes without copying, and the fixed pool they circulate in.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Alignment of every [`AlignedBuf`]'s first byte: a page, enough for `O_DIRECT` on
/// devices with logical blocks up to 4096 bytes.
pub const BUF_ALIGN: usize = 4096;

/// A heap buffer of fixed capacity whose first byte sits at a [`BUF_ALIGN`] boundary; the
/// first `len` bytes are filled.
pub(crate) struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    cap: usize,
    len: usize,
}

impl AlignedBuf {
    /// An empty buffer of `cap` bytes. The memory comes zeroed from the allocator, so pages
    /// count toward the resident size only once written.
    pub(crate) fn new(cap: usize) -> AlignedBuf {
        let mem = vec![0u8; cap + BUF_ALIGN];
        let addr = mem.as_ptr() as usize;
        let start = (BUF_ALIGN - addr % BUF_ALIGN) % BUF_ALIGN;
        AlignedBuf {
            mem,
            start,
            cap,
            len: 0,
        }
    }

    /// The filled bytes.
    pub(crate) fn filled(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    /// The unfilled rest, to read into; mark what was read with [`AlignedBuf::advance`].
    pub(crate) fn spare_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start + self.len..self.start + self.cap]
    }

    /// Marks `n` more bytes of the spare part as filled.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.cap);
    }

    /// Whether no byte is filled.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every byte is filled.
    pub(crate) fn is_full(&self) -> bool {
        self.len == self.cap
    }

    /// Empties the buffer for reuse.
    pub(crate) fn cleared(mut self) -> AlignedBuf {
        self.len = 0;
        self
    }
}

/// A fixed set of `count` buffers of `cap` bytes: the producer takes free buffers from the
/// receiver, consumers give them back through (clones of) the sender. The channel holds
/// every buffer at once, so giving one back never blocks; when every consumer is gone the
/// producer's `recv` fails and it stops.
pub(crate) fn pool(count: usize, cap: usize) -> (SyncSender<AlignedBuf>, Receiver<AlignedBuf>) {
    let (tx, rx) = sync_channel(count);
    for _ in 0..count {
        // The channel has room for all `count` buffers and its receiver is alive here.
        let _ = tx.send(AlignedBuf::new(cap));
    }
    (tx, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_fill_up() {
        for cap in [1, 4096, 100_000] {
            let mut b = AlignedBuf::new(cap);
            assert_eq!(b.filled().as_ptr() as usize % BUF_ALIGN, 0);
            assert!(b.is_empty());
            assert_eq!(b.spare_mut().len(), cap);
            b.spare_mut()[0] = 7;
            b.advance(1);
            assert_eq!(b.filled(), &[7]);
            b.advance(cap);
            assert!(b.is_full());
            assert!(b.cleared().is_empty());
        }
    }

    #[test]
    fn pool_hands_out_its_buffers_then_stops() {
        let (tx, rx) = pool(2, 16);
        let a = rx.recv().unwrap();
        let _b = rx.recv().unwrap();
        assert!(rx.try_recv().is_err(), "a third buffer");
        tx.send(a).unwrap();
        assert!(rx.recv().is_ok());
        drop(tx);
        assert!(rx.recv().is_err(), "recv after every sender is gone");
    }
}
