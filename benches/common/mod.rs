//! What the benches share: the allocator setting the `cnn` binary runs with.

/// mimalloc's `mi_option_purge_delay` (15 in its v2 and v3 headers; the
/// bindings leave option numbers to the caller on purpose), as in the `cnn` binary.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// As the `cnn` binary does: freed pages stay with the process (no purge),
/// so steady-state calls reuse memory instead of faulting in fresh zeroed
/// pages (examples/train_step_memory measures the difference).
pub fn keep_freed_pages() {
    // SAFETY: sets one integer option before the benchmarks start their
    // threads; mimalloc reads it on each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
