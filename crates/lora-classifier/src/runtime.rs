//! Process-wide settings for running the model on the CPU. Explicit setup that binaries call
//! first thing in `main`: a library must not change its host process as a side effect.

/// CPU runtime settings for a process that trains or runs this model; call it first thing in
/// `main`, before other threads start (it sets an environment variable).
///
/// - glibc's malloc keeps freed buffers of up to 32 MiB instead of returning them to the
///   kernel: otherwise every step maps, page-faults and zeroes its activations anew.
/// - `CANDLE_NUM_THREADS=1` (unless set): candle's own pool for elementwise ops (used by its
///   autograd to add up gradients) then runs them inline; its spinning workers otherwise
///   compete with rayon's, which run the GEMMs and the fused kernels, for the cores.
pub fn tune_cpu_runtime() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    keep_freed_memory();
}

/// glibc malloc: keep freed buffers (up to 32 MiB from the heap, 1 GiB of slack before
/// trimming) so that each step reuses the last step's pages instead of faulting in fresh zeroed
/// ones. Idempotent; a no-op with other C libraries.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_TOP_PAD: i32 = -2;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only sets allocator parameters (under the allocator's own locks).
        ONCE.call_once(|| unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
            mallopt(M_TOP_PAD, 64 << 20);
        });
    }
}
