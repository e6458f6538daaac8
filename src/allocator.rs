//! The memory allocator of the `station` binary and of the benches that measure it: mimalloc,
//! with transparent huge pages turned off for the process.
//!
//! Measured on the 2-core VM (`loadtest --devices 5000 --sessions 64`, 6 interleaved runs):
//! glibc's malloc and free took ~6 % of the CPU and its arenas grew and shrank through
//! `mprotect`; with mimalloc the CPU per device fell from 605 to 546 µs and throughput rose
//! from 3,071 to 3,372 devices/s (medians). Huge pages are off because this machine's kernel
//! backs any aligned anonymous mapping with 2 MiB pages (`always`), and mimalloc's arenas are
//! aligned: with them the 20,000-device peak RSS was 127 MB against 79 MB with glibc; without
//! them it is 94 MB, and 96 MB at 100,000 devices.

/// The allocator type: `#[global_allocator] static A: Allocator = Allocator;` in a binary.
pub use mimalloc::MiMalloc as Allocator;

/// Turns transparent huge pages off for this process (and the processes it starts). Called
/// first thing in `main`; pages already faulted in keep their size.
pub fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours; an old
    // kernel without it answers EINVAL, and then the process keeps the system's setting.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}
