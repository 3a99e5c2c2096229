//! A storage driver on the simulated kernel: the whole library, used the way a
//! driver would.
//!
//! `DriverEntry` builds the driver's per-CPU parts (a request pool, a
//! submission queue and statistics per processor) and registers them through
//! the shim with `KE_PROCESSOR_CHANGE_ADD_EXISTING` on 4 booted processors. One
//! I/O thread runs on each processor: pinned (DISPATCH_LEVEL), it allocates
//! requests from the per-CPU pool and queues them on its own processor, then
//! plays the completion DPC for another processor's queue, completing and
//! freeing those requests (remote frees). Meanwhile processors are hot-added up
//! to 64 across two groups; one add is vetoed by an injected allocation failure
//! (the queue's memory for the new processor), rolled back, and retried. At the
//! end everything left is completed and the driver unloads.
//!
//! Prints a per-processor table and the growth latency per add, and exits
//! non-zero if any request was lost, duplicated or corrupted, if any object is
//! still outstanding, or if any pool tag still holds memory after unload.
//!
//! `cargo run --release --example storage_driver -- [--boot N] [--max N]
//!  [--seconds S] [--veto INDEX|none] [--quiet] [--quick]`

#[cfg(windows)]
fn main() {
    eprintln!("storage_driver runs on the simulated kernel, which exists off Windows only");
}

#[cfg(not(windows))]
fn main() -> std::process::ExitCode {
    sim::main()
}

#[cfg(not(windows))]
mod sim {
    use std::io::Write;
    use std::process::ExitCode;
    use std::ptr::NonNull;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use perproc::{
        Component, Components, CounterId, Error, Limits, PerCpuCounters, PerCpuPool, PerCpuQueue,
        PinGuard, Platform, ProcessorIndex,
    };
    use perproc_wdk::sim::{AddResult, Fault, Kernel};
    use perproc_wdk::{pool_tag, KernelPlatform, PoolAlloc, Registration};

    /// Pool tags: one per part, so the unload check names the culprit.
    const TAG_DRIVER: u32 = pool_tag(*b"Stdr");
    const TAG_POOL: u32 = pool_tag(*b"Stpl");
    const TAG_QUEUE: u32 = pool_tag(*b"Stq ");
    const TAG_STATS: u32 = pool_tag(*b"Stct");
    const TAGS: [(u32, &str); 4] = [
        (TAG_DRIVER, "Stdr"),
        (TAG_POOL, "Stpl"),
        (TAG_QUEUE, "Stq "),
        (TAG_STATS, "Stct"),
    ];

    const SUBMITTED: CounterId<3> = CounterId::at::<0>();
    const COMPLETED: CounterId<3> = CounterId::at::<1>();
    const BACKPRESSURE: CounterId<3> = CounterId::at::<2>();

    /// Requests each I/O thread submits per pinned batch.
    const BATCH: usize = 16;
    const QUEUE_DEPTH: usize = 64;

    /// An I/O request, as a storage driver would keep it.
    struct Request {
        id: u64,
        submitter: u32,
        sector: u64,
        bytes: u32,
        /// A function of the rest: a completion that reads a torn or reused
        /// request fails the check.
        check: u64,
    }

    fn check_of(id: u64, submitter: u32, sector: u64, bytes: u32) -> u64 {
        (id ^ u64::from(submitter).rotate_left(40) ^ sector.rotate_left(17) ^ u64::from(bytes))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// A queued request: the pool's object, owned by whoever holds this.
    struct Queued(NonNull<Request>);

    // SAFETY: a `Queued` is the only handle to its request (allocated raw from the
    // pool, freed once by the completion that dequeues it), and `Request` is
    // plain data, so moving the handle to another thread moves the request.
    unsafe impl Send for Queued {}

    /// The driver's per-CPU parts.
    struct Storage {
        platform: KernelPlatform,
        requests: PerCpuPool<Request, KernelPlatform>,
        submissions: PerCpuQueue<Queued, PoolAlloc>,
        stats: PerCpuCounters<3, PoolAlloc>,
    }

    impl Storage {
        fn new(max: usize, pool_total: usize) -> Result<Self, Error> {
            let platform = KernelPlatform::new(TAG_POOL);
            Ok(Self {
                platform,
                requests: PerCpuPool::new(
                    platform,
                    Limits {
                        total: pool_total,
                        per_cpu: 64,
                    },
                )?,
                submissions: PerCpuQueue::with_capacity_in(
                    max,
                    QUEUE_DEPTH,
                    PoolAlloc::new(TAG_QUEUE),
                )?,
                stats: PerCpuCounters::with_capacity_in(max, PoolAlloc::new(TAG_STATS))?,
            })
        }

        fn parts(&self) -> Components<'_, 3> {
            Components::new([&self.requests, &self.submissions, &self.stats])
        }

        /// Completes one request on the processor `pin` holds: check it, count
        /// it, free it there (a remote free when another processor allocated it).
        fn complete(&self, pin: &impl PinGuard, queued: Queued, ledger: &Ledger) {
            // SAFETY: the dequeued handle is the only one to a live request.
            let request = unsafe { queued.0.as_ref() };
            let intact = request.check
                == check_of(request.id, request.submitter, request.sector, request.bytes);
            ledger.completed(request.submitter, request.id, intact);
            self.stats.add(pin, COMPLETED, 1);
            // SAFETY: from this pool, freed once (we own the only handle), not
            // used afterwards.
            unsafe { self.requests.free_raw(pin, queued.0) };
        }
    }

    impl Component for Storage {
        fn prepare(&self, index: ProcessorIndex) -> Result<(), Error> {
            self.parts().start(index)
        }
        fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
            self.parts().complete(index)
        }
        fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
            self.parts().fail(index)
        }
    }

    /// The harness's own bookkeeping (not the driver's): per submitter, how many
    /// requests and which ids went in and came out. Interlocked, since it is
    /// the referee, not the hot path.
    struct Ledger {
        submitted: Vec<AtomicU64>,
        submitted_ids: Vec<AtomicU64>,
        completed: Vec<AtomicU64>,
        completed_ids: Vec<AtomicU64>,
        corrupt: AtomicU64,
    }

    impl Ledger {
        fn new(n: usize) -> Self {
            let zeros = || (0..n).map(|_| AtomicU64::new(0)).collect();
            Self {
                submitted: zeros(),
                submitted_ids: zeros(),
                completed: zeros(),
                completed_ids: zeros(),
                corrupt: AtomicU64::new(0),
            }
        }

        fn submitted(&self, submitter: u32, id: u64) {
            let i = submitter as usize;
            self.submitted[i].fetch_add(1, Ordering::Relaxed);
            self.submitted_ids[i].fetch_add(id, Ordering::Relaxed);
        }

        fn completed(&self, submitter: u32, id: u64, intact: bool) {
            if !intact {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
            }
            match (
                self.completed.get(submitter as usize),
                self.completed_ids.get(submitter as usize),
            ) {
                (Some(n), Some(ids)) => {
                    n.fetch_add(1, Ordering::Relaxed);
                    ids.fetch_add(id, Ordering::Relaxed);
                }
                _ => {
                    self.corrupt.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    struct Options {
        boot: u32,
        max: u32,
        run: Duration,
        veto: Option<u32>,
        quiet: bool,
    }

    fn options() -> Result<Options, String> {
        let mut o = Options {
            boot: 4,
            max: 64,
            run: Duration::from_secs(3),
            veto: Some(40),
            quiet: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            let number = |v: String| v.parse::<u32>().map_err(|e| format!("{v}: {e}"));
            match flag.as_str() {
                "--boot" => o.boot = number(value("--boot")?)?,
                "--max" => o.max = number(value("--max")?)?,
                "--seconds" => {
                    let v = value("--seconds")?;
                    let s: f64 = v.parse().map_err(|e| format!("{v}: {e}"))?;
                    o.run = Duration::try_from_secs_f64(s).map_err(|e| e.to_string())?;
                }
                "--veto" => {
                    let v = value("--veto")?;
                    o.veto = if v == "none" { None } else { Some(number(v)?) };
                }
                "--quiet" => o.quiet = true,
                "--quick" => {
                    o.run = Duration::from_millis(600);
                    o.quiet = true;
                }
                "-h" | "--help" => {
                    return Err(
                        "usage: storage_driver [--boot N] [--max N (<= 64, two groups of 32)] \
                                [--seconds S] [--veto INDEX|none] [--quiet] [--quick]"
                            .into(),
                    )
                }
                other => return Err(format!("unknown flag {other}; try --help")),
            }
        }
        if o.boot == 0 || o.boot > o.max || o.max > 64 {
            return Err("need 1 <= --boot <= --max <= 64".into());
        }
        if let Some(v) = o.veto {
            if v < o.boot || v >= o.max {
                return Err(format!(
                    "--veto {v}: must be a hot-added index ({}..{})",
                    o.boot, o.max
                ));
            }
        }
        Ok(o)
    }

    pub fn main() -> ExitCode {
        let o = match options() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        match run(&o) {
            Ok(()) => ExitCode::SUCCESS,
            Err(problems) => {
                for p in problems {
                    eprintln!("FAILED: {p}");
                }
                ExitCode::FAILURE
            }
        }
    }

    fn cpu(i: u32) -> ProcessorIndex {
        ProcessorIndex::new(i).unwrap_or(ProcessorIndex::ZERO)
    }

    fn run(o: &Options) -> Result<(), Vec<String>> {
        let fail = |e: &dyn std::fmt::Display| vec![e.to_string()];
        let kernel = Kernel::new(&[32, 32], o.boot).map_err(|e| fail(&e))?;
        let _on = kernel.enter().map_err(|e| fail(&e))?; // DriverEntry runs on processor 0
        let max = kernel.max_processors().min(o.max);
        let n = max as usize;
        let epoch = Instant::now();

        // DriverEntry: build the parts, register (the replay adds the boot processors).
        let storage =
            Storage::new(kernel.max_processors() as usize, 64 * n).map_err(|e| fail(&e))?;
        let registration = Registration::register(storage, PoolAlloc::new(TAG_DRIVER))
            .map_err(|e| vec![format!("registration failed: status {:#010x}", e.status)])?;
        let driver = registration.parts();

        let ledger = Ledger::new(n);
        let arrived: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(u64::MAX)).collect();
        let vetoed_at: Vec<AtomicBool> = (0..n).map(|_| AtomicBool::new(false)).collect();
        for a in arrived.iter().take(o.boot as usize) {
            a.store(0, Ordering::Relaxed);
        }
        let online = AtomicU32::new(o.boot);
        let stop = AtomicBool::new(false);
        let mut adds: Vec<Duration> = Vec::new();
        let mut problems = Vec::new();

        std::thread::scope(|s| {
            let io = |p: u32| {
                let (driver, ledger, online, stop) = (driver, &ledger, &online, &stop);
                move || io_thread(driver, ledger, online, stop, p)
            };
            let mut threads = Vec::new();
            for p in 0..o.boot {
                threads.push(kernel.spawn_on(s, p, io(p)));
            }

            // Hot-add the rest, spread over the first two thirds of the run.
            let adds_wanted = max - o.boot;
            let spacing = (o.run * 2 / 3) / adds_wanted.max(1);
            let mut vetoes = 0;
            while kernel.active_processors() < max {
                std::thread::sleep(spacing);
                let next = kernel.active_processors();
                let veto = o.veto == Some(next) && vetoes == 0;
                if veto {
                    // The queue is the second part: its allocation for the new
                    // processor fails, the pool's cache is rolled back, and the
                    // kernel vetoes the add.
                    kernel.pool().fail_tag(Fault::Nth(0), TAG_QUEUE);
                }
                let t0 = Instant::now();
                let outcome = match kernel.hot_add_next() {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        problems.push(format!("hot-add: {e}"));
                        break;
                    }
                };
                let took = t0.elapsed();
                if veto {
                    kernel.pool().fail(Fault::Never);
                    vetoes += 1;
                    match outcome.result {
                        AddResult::Vetoed { .. } => {
                            vetoed_at[outcome.index as usize].store(true, Ordering::Relaxed);
                            if driver.submissions.state(cpu(outcome.index)).is_published() {
                                problems.push(format!(
                                    "vetoed processor {} has a published queue",
                                    outcome.index
                                ));
                            }
                        }
                        other => {
                            problems.push(format!("the injected failure did not veto: {other:?}"))
                        }
                    }
                    continue; // the next round adds it again
                }
                if !outcome.added() {
                    problems.push(format!(
                        "add of {} failed: {:?}",
                        outcome.index, outcome.result
                    ));
                    break;
                }
                adds.push(took);
                let at = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                arrived[outcome.index as usize].store(at, Ordering::Relaxed);
                online.store(kernel.active_processors(), Ordering::Release);
                threads.push(kernel.spawn_on(s, outcome.index, io(outcome.index)));
                progress(o, epoch, kernel.active_processors(), max, driver);
            }
            while epoch.elapsed() < o.run {
                std::thread::sleep(Duration::from_millis(100).min(o.run));
                progress(o, epoch, kernel.active_processors(), max, driver);
            }
            stop.store(true, Ordering::Release);
            for t in threads {
                match t.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => problems.push(format!("I/O thread could not enter: {e}")),
                    Err(_) => problems.push("an I/O thread panicked".into()),
                }
            }
        });
        let elapsed = epoch.elapsed();
        if !o.quiet {
            eprintln!();
        }

        // Complete whatever is still queued, on processor 0.
        {
            let pin = driver.platform.pin();
            for (_, queued) in driver.submissions.drain_all() {
                driver.complete(&pin, queued, &ledger);
            }
        }

        report(
            o, &kernel, driver, &ledger, &arrived, &vetoed_at, &adds, elapsed,
        );
        verify(driver, &ledger, n, &mut problems);

        // Unload: deregister first, then the parts are dropped.
        drop(registration);
        for (tag, name) in TAGS {
            let left = kernel.pool().live_bytes(tag);
            if left != 0 {
                problems.push(format!(
                    "pool tag '{name}' still holds {left} bytes after unload"
                ));
            }
        }
        let violations = kernel.violations();
        if !violations.is_empty() {
            problems.push(format!("kernel misuse: {violations:?}"));
        }
        if problems.is_empty() {
            println!("no request lost, duplicated or corrupted; every pool tag empty after unload");
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// One processor's I/O: submit a batch to the local queue, then complete
    /// another processor's queue, until told to stop.
    fn io_thread(driver: &Storage, ledger: &Ledger, online: &AtomicU32, stop: &AtomicBool, p: u32) {
        let mut seq = 0u64;
        let mut turn = 0u32;
        while !stop.load(Ordering::Acquire) {
            let pin = driver.platform.pin(); // DISPATCH_LEVEL
            for _ in 0..BATCH {
                let id = (u64::from(p) << 40) | seq;
                let (sector, bytes) = (seq.wrapping_mul(8), 4096 << (seq % 4));
                let request = Request {
                    id,
                    submitter: p,
                    sector,
                    bytes,
                    check: check_of(id, p, sector, bytes),
                };
                let object = match driver.requests.alloc_raw(&pin, request) {
                    Ok(object) => object,
                    Err(_) => {
                        driver.stats.add(&pin, BACKPRESSURE, 1); // pool exhausted
                        break;
                    }
                };
                match driver.submissions.push(&pin, Queued(object)) {
                    Ok(()) => {
                        seq += 1;
                        ledger.submitted(p, id);
                        driver.stats.add(&pin, SUBMITTED, 1);
                    }
                    Err(full) => {
                        // Backpressure: the queue is full; give the request back.
                        // SAFETY: our own request, never queued, freed once.
                        unsafe { driver.requests.free_raw(&pin, full.into_inner().0) };
                        driver.stats.add(&pin, BACKPRESSURE, 1);
                        break;
                    }
                }
            }
            // The completion DPC for another processor's queue.
            let n = online.load(Ordering::Acquire).max(1);
            turn = turn.wrapping_add(1);
            let victim = (p + 1 + turn % n.saturating_sub(1).max(1)) % n;
            for queued in driver.submissions.drain(cpu(victim)) {
                driver.complete(&pin, queued, ledger);
            }
            drop(pin);
            std::thread::yield_now();
        }
    }

    fn progress(o: &Options, epoch: Instant, active: u32, max: u32, driver: &Storage) {
        if o.quiet {
            return;
        }
        let [submitted, completed, _] = driver.stats.sums();
        eprint!(
            "\r  t={:>5.2}s  processors {active:>2}/{max}  submitted {submitted:>10}  completed {completed:>10}",
            epoch.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        o: &Options,
        kernel: &Kernel,
        driver: &Storage,
        ledger: &Ledger,
        arrived: &[AtomicU64],
        vetoed_at: &[AtomicBool],
        adds: &[Duration],
        elapsed: Duration,
    ) {
        println!(
            "processor  group:num  arrived       submitted   completed  backpressure   pool hits  pool misses"
        );
        for (i, at) in arrived.iter().enumerate() {
            let index = i as u32;
            let number = kernel
                .number_of(index)
                .map(|(g, n)| format!("{g}:{n}"))
                .unwrap_or_default();
            let when = match at.load(Ordering::Relaxed) {
                u64::MAX => "never".to_string(),
                0 if index < o.boot => "boot".to_string(),
                us => format!("{:.1} ms", us as f64 / 1000.0),
            };
            let vetoed = if vetoed_at[i].load(Ordering::Relaxed) {
                " (vetoed once)"
            } else {
                ""
            };
            let [submitted, completed, backpressure] =
                driver.stats.processor(cpu(index)).unwrap_or([0; 3]);
            let (hits, misses) = driver
                .requests
                .processor_stats(cpu(index))
                .map(|s| (s.hits(), s.misses()))
                .unwrap_or((0, 0));
            println!(
                "{index:>9}  {number:>9}  {when:<12} {submitted:>10}  {completed:>10}  {backpressure:>12}  {hits:>10}  {misses:>11}{vetoed}"
            );
        }
        let mut sorted = adds.to_vec();
        sorted.sort_unstable();
        if let (Some(min), Some(max)) = (sorted.first(), sorted.last()) {
            println!(
                "\ngrowth: {} hot-adds (pool + queue + statistics, through the callback): min {:?}, median {:?}, max {:?}",
                sorted.len(),
                min,
                sorted[sorted.len() / 2],
                max
            );
        }
        let [submitted, completed, backpressure] = driver.stats.sums();
        let pool = driver.requests.stats();
        println!(
            "totals: {submitted} submitted, {completed} completed, {backpressure} refused for backpressure, \
             {} corrupt; {:.0} requests/s over {:.2} s",
            ledger.corrupt.load(Ordering::Relaxed),
            completed as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
        println!(
            "pool: {} objects carved (limit {}), {} outstanding, {} in the depot, {} cached, {} stranded; {} slabs",
            pool.objects, pool.limit, pool.outstanding, pool.in_depot, pool.cached, pool.stranded, pool.slabs
        );
    }

    fn verify(driver: &Storage, ledger: &Ledger, n: usize, problems: &mut Vec<String>) {
        let corrupt = ledger.corrupt.load(Ordering::Relaxed);
        if corrupt > 0 {
            problems.push(format!("{corrupt} completions read a corrupt request"));
        }
        for p in 0..n {
            let (s, c) = (
                ledger.submitted[p].load(Ordering::Relaxed),
                ledger.completed[p].load(Ordering::Relaxed),
            );
            let (si, ci) = (
                ledger.submitted_ids[p].load(Ordering::Relaxed),
                ledger.completed_ids[p].load(Ordering::Relaxed),
            );
            if s != c || si != ci {
                problems.push(format!(
                    "processor {p}: {s} submitted, {c} completed (ids {si:#x} vs {ci:#x}): requests lost or duplicated"
                ));
            }
            let counted = driver
                .stats
                .processor(cpu(p as u32))
                .map(|c| c[0])
                .unwrap_or(0);
            if counted != s {
                problems.push(format!(
                    "processor {p}: statistics say {counted} submitted, ledger {s}"
                ));
            }
        }
        let [submitted, completed, _] = driver.stats.sums();
        if submitted != completed {
            problems.push(format!("{submitted} submitted but {completed} completed"));
        }
        let outstanding = driver.requests.stats().outstanding;
        if outstanding != 0 {
            problems.push(format!("{outstanding} pool objects still outstanding"));
        }
        if driver.submissions.total_len() != 0 {
            problems.push("requests still queued".into());
        }
    }
}
