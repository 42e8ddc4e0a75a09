//! A mutation fuzzer for the parsers that read users' files.
//!
//! It starts from valid files (the corpus) and makes each input by one to
//! four mutations: bit flips, bytes set to boundary values, truncation,
//! splices of two corpus files, inserted or repeated runs, and rewrites of
//! header fields — 16-, 32- and 64-bit integers (both byte orders) at
//! random offsets or at offsets the target names (lengths, counts, dims,
//! dtypes, offsets), and decimal numbers in text headers (JSON, CSV) — set
//! to values that lie: 0, 1, all ones, just past the file's length, huge.
//!
//! With [`Mutators::Structure`] (or [`Mutators::Both`], half the inputs)
//! the mutations of [`crate::formats`] are used instead: JPEG, PNG, gzip and
//! safetensors files that stay well-formed containers and lie inside, so
//! they reach the decoder rather than die at a checksum. The report counts
//! how many inputs got past the container's checks, and the distinct error
//! classes the parser answered with, so the reach of each mutator family is
//! measured rather than assumed.
//!
//! Each execution must end in `Ok` or in an `Err` whose message names the
//! file; a panic fails the run with the seed and execution number that
//! reproduce it. With [`CountingAlloc`] as the test binary's global
//! allocator, the bytes an execution allocates at its peak are held under the
//! target's stated bound as well, so a header that lies about sizes cannot
//! make the parser reserve memory the file does not back.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A global allocator that counts live bytes and their peak, for bounding
/// what one execution allocates: `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counters are
// only statistics and never affect the returned pointers.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
}

/// Starts a new peak measurement; returns the bytes live now.
fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// The highest live byte count since [`reset_peak`].
fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// How long a run goes on: whichever limit comes first.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Executions at most.
    pub executions: u64,
    /// Wall time at most.
    pub time: Duration,
}

impl Budget {
    /// A fixed count, for the regular suite (time unbounded).
    pub fn count(executions: u64) -> Self {
        Budget { executions, time: Duration::MAX }
    }

    /// The long run (`--ignored`): a million executions or `CNN_FUZZ_MINUTES`
    /// minutes (default 5), whichever comes first; `CNN_FUZZ_EXECUTIONS`
    /// overrides the count.
    pub fn long() -> Self {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        Budget {
            executions: env("CNN_FUZZ_EXECUTIONS").unwrap_or(1_000_000),
            time: Duration::from_secs(60 * env("CNN_FUZZ_MINUTES").unwrap_or(5)),
        }
    }
}

/// Which mutations make the inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mutators {
    /// Byte-level only: flips, boundary bytes, truncation, splices, inserted
    /// runs, header integers and text numbers rewritten.
    Bytes,
    /// Structure-aware only ([`crate::formats`]); inputs of no known format are left as they are.
    Structure,
    /// Half the inputs each way (the default).
    #[default]
    Both,
}

/// A parser under test, as the fuzzer sees it.
pub struct Target<'a> {
    /// The target's name, for the report.
    pub name: &'a str,
    /// Valid inputs to start from (at least one).
    pub corpus: Vec<Vec<u8>>,
    /// Offsets of binary header fields worth rewriting (sizes, counts,
    /// dims); for a gzip file, offsets in its decompressed content.
    pub fields: Vec<usize>,
    /// The most bytes one execution may allocate at its peak, beyond what was
    /// live before it (checked when [`CountingAlloc`] is the global allocator).
    pub max_alloc: usize,
    /// Text every error message must contain (the file's name).
    pub must_name: String,
    /// The mutator families to use.
    pub mutators: Mutators,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Inputs tried.
    pub executions: u64,
    /// Inputs the parser accepted.
    pub loaded: u64,
    /// Inputs it refused with an error naming the file.
    pub rejected: u64,
    /// The largest peak allocation of one execution, in bytes.
    pub peak_alloc: usize,
    /// Inputs that were well-formed containers ([`crate::formats::container_ok`]):
    /// they got past the checksums and framing into the decoder proper.
    pub past_container: u64,
    /// Errors that reported a panic inside a decoder, contained.
    pub contained_panics: u64,
    /// Each distinct error the parser answered with (the text after the
    /// file's name, numbers as `#`), with its count.
    pub error_classes: BTreeMap<String, u64>,
}

/// The class of an error message: the text after the file's name, with
/// every word holding a digit (numbers, hex checksums, offsets) as `#`, at
/// most 100 characters.
pub fn error_class(msg: &str, file: &str) -> String {
    let tail = msg.rsplit_once(file).map_or(msg, |(_, t)| t);
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.chars().any(|c| c.is_ascii_digit()) {
            out.push('#');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in tail.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.chars().take(100).collect()
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} executions: {} loaded, {} rejected ({} error classes), {} past the container checks, {} decoder panics contained, peak allocation {:.1} KiB",
            self.executions,
            self.loaded,
            self.rejected,
            self.error_classes.len(),
            self.past_container,
            self.contained_panics,
            self.peak_alloc as f64 / 1024.0
        )
    }
}

/// Runs `parse` on mutated inputs until the budget is spent.
///
/// `parse` gets the bytes of one input (it writes them where its parser
/// reads) and returns `Ok(())` or the parser's error as text.
///
/// # Panics
/// On a panic inside `parse`, an error that does not name the file, or an
/// allocation over `max_alloc`: the message gives the seed and execution
/// that reproduce it and the input's first bytes.
pub fn run<F>(target: &Target<'_>, seed: u64, budget: Budget, mut parse: F) -> Report
where
    F: FnMut(&[u8]) -> Result<(), String>,
{
    assert!(!target.corpus.is_empty(), "{}: an empty corpus", target.name);
    let mut rng = SplitMix(seed);
    let mut report = Report::default();
    let start = Instant::now();
    while report.executions < budget.executions && start.elapsed() < budget.time {
        let input = mutate(target, &mut rng);
        report.past_container += u64::from(crate::formats::container_ok(&input));
        let before = reset_peak();
        let outcome = catch_unwind(AssertUnwindSafe(|| parse(&input)));
        let used = peak().saturating_sub(before);
        let at = format!(
            "{}: execution {} of seed {seed} ({} bytes, starting {:02x?})",
            target.name,
            report.executions,
            input.len(),
            &input[..input.len().min(48)]
        );
        report.executions += 1;
        report.peak_alloc = report.peak_alloc.max(used);
        match outcome {
            Err(_) => panic!("{at}: the parser panicked"),
            Ok(Ok(())) => report.loaded += 1,
            Ok(Err(msg)) => {
                assert!(
                    msg.contains(&target.must_name),
                    "{at}: the error does not name {:?}: {msg}",
                    target.must_name
                );
                report.rejected += 1;
                report.contained_panics += u64::from(msg.contains("(it panicked: "));
                *report.error_classes.entry(error_class(&msg, &target.must_name)).or_default() += 1;
            }
        }
        assert!(
            used <= target.max_alloc,
            "{at}: allocated {used} bytes at its peak, over the bound of {}",
            target.max_alloc
        );
    }
    report
}

/// [`run`] for a test: one target at a time in the process (the allocation
/// counter is global, so targets in one test binary must not overlap),
/// the report printed to stderr (`--nocapture` shows it) and returned.
pub fn run_one<F>(target: &Target<'_>, seed: u64, budget: Budget, parse: F) -> Report
where
    F: FnMut(&[u8]) -> Result<(), String>,
{
    let _one_at_a_time = exclusive();
    let report = run(target, seed, budget, parse);
    eprintln!("fuzz {}: {report}", target.name);
    report
}

/// Checks that a structure-aware run reached further than a byte-level run
/// of the same target, seed and count: error classes the byte mutators never
/// produced, and more inputs past the container's checks. Prints both.
///
/// # Panics
/// When it did not.
pub fn assert_structure_reaches_further(family: &str, bytes: &Report, structure: &Report) {
    let new: Vec<&String> =
        structure.error_classes.keys().filter(|c| !bytes.error_classes.contains_key(*c)).collect();
    eprintln!(
        "{family}: bytes {} classes, {} past the container; structure {} classes ({} new), {} past the container",
        bytes.error_classes.len(),
        bytes.past_container,
        structure.error_classes.len(),
        new.len(),
        structure.past_container
    );
    assert!(
        !new.is_empty(),
        "{family}: no error class beyond the byte mutators': {:?}",
        structure.error_classes
    );
    assert!(
        structure.past_container > bytes.past_container,
        "{family}: {} vs {} past the container",
        structure.past_container,
        bytes.past_container
    );
}

/// Holds off every other [`run_one`] in the process while the guard lives:
/// for a test whose allocations must not land in a fuzz target's peak.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One input: a corpus file with one to four byte-level mutations, or one
/// or two structure-aware ones (as [`Target::mutators`] says).
pub fn mutate(target: &Target<'_>, rng: &mut SplitMix) -> Vec<u8> {
    let mut data = target.corpus[rng.below(target.corpus.len())].clone();
    let structured = match target.mutators {
        Mutators::Bytes => false,
        Mutators::Structure => true,
        Mutators::Both => rng.below(2) == 0,
    };
    if structured {
        for _ in 0..1 + rng.below(2) {
            let done = crate::formats::mutate(&mut data, &target.fields, rng);
            // Under `Both`, an input the structure mutators cannot parse any
            // more gets a byte mutation instead.
            if !done && target.mutators == Mutators::Both {
                mutate_once(&mut data, target, rng);
            }
        }
        return data;
    }
    for _ in 0..1 + rng.below(4) {
        mutate_once(&mut data, target, rng);
    }
    data
}

/// Boundary values a lying header field takes, given the file's length.
fn lies(len: usize, rng: &mut SplitMix) -> u64 {
    let len = len as u64;
    match rng.below(10) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => u64::from(u32::MAX),
        4 => i32::MAX as u64,
        5 => len + 1 + rng.below(16) as u64,
        6 => len.saturating_sub(1 + rng.below(8) as u64),
        7 => 1 << (16 + rng.below(32)),
        8 => rng.next_u64() >> rng.below(64),
        _ => 0x8000_0000,
    }
}

fn mutate_once(data: &mut Vec<u8>, target: &Target<'_>, rng: &mut SplitMix) {
    let len = data.len();
    match rng.below(11) {
        // Flip one to eight bits.
        0 if len > 0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
        }
        // A byte set to a boundary value.
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = [0, 1, 0x7f, 0x80, 0xff, b'9', b'-', b'.'][rng.below(8)];
        }
        // Truncate.
        2 if len > 0 => data.truncate(rng.below(len)),
        // Splice: this file's head, another corpus file's tail.
        3 => {
            let other = &target.corpus[rng.below(target.corpus.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        // Insert random bytes, or repeat a run (lengths that disagree with the data).
        4 => {
            let at = rng.below(len + 1);
            let run: Vec<u8> = if len > 0 && rng.below(2) == 0 {
                let s = rng.below(len);
                data[s..(s + 1 + rng.below(64)).min(len)].to_vec()
            } else {
                (0..1 + rng.below(16)).map(|_| rng.next_u64() as u8).collect()
            };
            data.splice(at..at, run);
        }
        // A header field the target named, rewritten (a gzip file's fields
        // are offsets in its content: the structure mutators reach those).
        5 | 6
            if !target.fields.is_empty()
                && crate::formats::Format::detect(data) != crate::formats::Format::Gzip =>
        {
            let at = target.fields[rng.below(target.fields.len())];
            let value = lies(len, rng);
            write_int(data, at, value, rng);
        }
        // An integer anywhere, rewritten.
        7 if len > 0 => {
            let value = lies(len, rng);
            let at = rng.below(len);
            write_int(data, at, value, rng);
        }
        // A decimal number in a text header rewritten (JSON offsets and shapes, CSV fields).
        8 | 9 => rewrite_number(data, rng),
        _ => {
            if len > 0 {
                let i = rng.below(len);
                data[i] = rng.next_u64() as u8;
            }
        }
    }
}

/// Writes the low 2, 4 or 8 bytes of `value` at `at`, big- or little-endian, as far as the data goes.
fn write_int(data: &mut [u8], at: usize, value: u64, rng: &mut SplitMix) {
    let width = [2, 4, 8][rng.below(3)];
    let bytes: Vec<u8> = if rng.below(2) == 0 {
        value.to_be_bytes()[8 - width..].to_vec()
    } else {
        value.to_le_bytes()[..width].to_vec()
    };
    for (k, b) in bytes.into_iter().enumerate() {
        if let Some(d) = data.get_mut(at + k) {
            *d = b;
        }
    }
}

/// Replaces one run of ASCII digits with a lying number.
fn rewrite_number(data: &mut Vec<u8>, rng: &mut SplitMix) {
    let starts: Vec<usize> = (0..data.len())
        .filter(|&i| data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_digit()))
        .take(4096)
        .collect();
    if starts.is_empty() {
        return;
    }
    let s = starts[rng.below(starts.len())];
    let e = (s..data.len()).find(|&i| !data[i].is_ascii_digit()).unwrap_or(data.len());
    let text = match rng.below(6) {
        0 => "0".to_string(),
        1 => "-1".to_string(),
        2 => "99999999999999999999999".to_string(),
        3 => "1e308".to_string(),
        4 => "NaN".to_string(),
        _ => lies(data.len(), rng).to_string(),
    };
    data.splice(s..e, text.into_bytes());
}

/// The fuzzer's random numbers: SplitMix64, so a seed reproduces a run on any machine.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: CountingAlloc = CountingAlloc;

    fn target() -> Target<'static> {
        Target {
            name: "toy",
            corpus: vec![b"len=0004;abcd".to_vec()],
            fields: vec![4],
            max_alloc: 1 << 20,
            must_name: "toy.bin".into(),
            mutators: Mutators::Both,
        }
    }

    #[test]
    fn a_careful_parser_survives_and_runs_are_repeatable() {
        // The allocation counter is global: no other test's allocations in this one's peak.
        let _serial = exclusive();
        let parse = |b: &[u8]| -> Result<(), String> {
            let text = std::str::from_utf8(b).map_err(|e| format!("toy.bin: {e}"))?;
            let n: usize = text
                .get(4..8)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| "toy.bin: bad length".to_string())?;
            (text.len() == 9 + n).then_some(()).ok_or_else(|| "toy.bin: wrong length".into())
        };
        let a = run(&target(), 1, Budget::count(2000), parse);
        let b = run(&target(), 1, Budget::count(2000), parse);
        assert_eq!(a.executions, 2000);
        // The same inputs and outcomes (the peak allocation can differ: the
        // first run grows the report's map).
        assert_eq!(Report { peak_alloc: 0, ..a.clone() }, Report { peak_alloc: 0, ..b });
        assert!(a.rejected > 0 && a.loaded > 0, "{a}");
        assert!(a.error_classes.contains_key(": wrong length"), "{:?}", a.error_classes);
        assert_eq!(a.past_container, 0, "a toy format has no container");
    }

    #[test]
    #[should_panic(expected = "the parser panicked")]
    fn a_panicking_parser_fails_the_run() {
        // The allocation counter is global: no other test's allocations in this one's peak.
        let _serial = exclusive();
        let parse = |b: &[u8]| -> Result<(), String> {
            let n = usize::from(b[4] - b'0');
            assert!(n == 0, "boom");
            Ok(())
        };
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = catch_unwind(AssertUnwindSafe(|| run(&target(), 3, Budget::count(500), parse)));
        std::panic::set_hook(prev);
        if let Err(e) = r {
            std::panic::resume_unwind(e);
        }
    }

    #[test]
    #[should_panic(expected = "over the bound")]
    fn an_allocation_over_the_bound_fails_the_run() {
        // The allocation counter is global: no other test's allocations in this one's peak.
        let _serial = exclusive();
        run(&target(), 4, Budget::count(10), |b| {
            let big = vec![1u8; 4 << 20];
            std::hint::black_box(&big);
            Err(format!("toy.bin: {} bytes", b.len()))
        });
    }

    #[test]
    #[should_panic(expected = "does not name")]
    fn an_error_without_the_file_name_fails_the_run() {
        // The allocation counter is global: no other test's allocations in this one's peak.
        let _serial = exclusive();
        run(&target(), 5, Budget::count(100), |_| Err("something went wrong".into()));
    }
}
