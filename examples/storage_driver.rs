//! A storage driver on the simulated kernel: the whole library, used the way a
//! driver would.
//!
//! `DriverEntry` builds the driver's per-CPU parts (a request pool, a
//! submission queue and statistics per processor, in one struct made a
//! component by `perproc::components!`), registers them through the shim with
//! `KE_PROCESSOR_CHANGE_ADD_EXISTING` on 4 booted processors and keeps the
//! registration in a `static DriverSlot`. One I/O thread runs on each
//! processor, reaching the driver as a dispatch routine would
//! (`DRIVER.with`, rundown-protected against Unload): pinned (DISPATCH_LEVEL),
//! it allocates requests from the per-CPU pool (owned `PoolBox`es) and queues
//! them on its own processor, then plays the completion DPC for another
//! processor's queue, completing and freeing those requests (remote frees).
//! All of it is safe code. Meanwhile processors are hot-added up
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

// On every host, Windows included: the workspace's dev-dependency turns the
// shim's `sim` feature on.
fn main() -> std::process::ExitCode {
    sim::main()
}

mod sim {
    use std::io::Write;
    use std::process::ExitCode;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use perproc::{
        Error, Limits, PerCpuCounters, PerCpuPool, PerCpuQueue, PinError, PinGuard, Platform,
        PoolBox, ProcessorIndex,
    };
    use perproc_wdk::sim::{AddResult, Fault, Kernel};
    use perproc_wdk::{pool_tag, DriverSlot, KernelPlatform, PoolAlloc, Registration};

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

    perproc::counters! {
        /// The driver's statistics.
        struct Stats { submitted, completed, backpressure }
    }

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

    /// The driver's per-CPU parts. A request is an owned `PoolBox`: queued on
    /// one processor, completed and freed on another.
    struct Storage {
        platform: KernelPlatform,
        requests: PerCpuPool<Request, KernelPlatform>,
        submissions: PerCpuQueue<PoolBox<Request>, KernelPlatform>,
        stats: PerCpuCounters<Stats, KernelPlatform>,
    }

    // AddStart prepares the pool, the queue, then the statistics (rolling back
    // the earlier ones if a later one fails); AddComplete commits all three;
    // AddFailure aborts them.
    perproc::components!(Storage => requests, submissions, stats);

    /// The driver's state from DriverEntry to Unload.
    static DRIVER: DriverSlot<Registration<Storage>> = DriverSlot::new();

    impl Storage {
        fn new(platform: &KernelPlatform, pool_total: usize) -> Result<Self, Error> {
            Ok(Self {
                platform: *platform,
                requests: PerCpuPool::new(
                    platform,
                    Limits {
                        total: pool_total,
                        per_cpu: 64,
                    },
                )?,
                submissions: PerCpuQueue::new_in(platform, PoolAlloc::new(TAG_QUEUE), QUEUE_DEPTH)?,
                stats: PerCpuCounters::new_in(platform, PoolAlloc::new(TAG_STATS))?,
            })
        }

        /// Completes one request on the processor `pin` holds: check it, count
        /// it, free it there (a remote free when another processor allocated it).
        fn complete(
            &self,
            pin: &PinGuard<'_, KernelPlatform>,
            request: PoolBox<Request>,
            ledger: &Ledger,
        ) {
            let intact = request.check
                == check_of(request.id, request.submitter, request.sector, request.bytes);
            ledger.completed(request.submitter, request.id, intact);
            self.stats.add(pin, Stats::completed, 1);
            self.requests.free(pin, request);
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

        // DriverEntry: build the parts, register (the replay adds the boot
        // processors), keep the registration in the driver's slot.
        let platform = KernelPlatform::new(TAG_POOL).map_err(|e| fail(&e))?;
        let storage = Storage::new(&platform, 64 * n).map_err(|e| fail(&e))?;
        let registration = Registration::register(storage, PoolAlloc::new(TAG_DRIVER))
            .map_err(|e| vec![format!("registration failed: status {:#010x}", e.status)])?;
        DRIVER
            .install(registration, PoolAlloc::new(TAG_DRIVER))
            .map_err(|(_, status)| vec![format!("driver slot: status {status:#010x}")])?;
        let run = DRIVER.with(|registration| drive(o, &kernel, registration.parts(), epoch, n));
        // Unload: waits for users of the slot, deregisters, then drops the parts.
        drop(DRIVER.take());
        let mut problems = run.unwrap_or_else(|| vec!["the driver was not installed".into()]);
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

    /// The run, with the driver loaded: I/O threads, hot-adds, the final
    /// completions, the table and the checks. Returns the problems found.
    fn drive(
        o: &Options,
        kernel: &Kernel,
        driver: &Storage,
        epoch: Instant,
        n: usize,
    ) -> Vec<String> {
        let max = kernel.max_processors().min(o.max);

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
                let (ledger, online, stop) = (&ledger, &online, &stop);
                move || io_thread(ledger, online, stop, p)
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
                            vetoed_at[outcome.index.as_usize()].store(true, Ordering::Relaxed);
                            if driver.submissions.state(outcome.index).is_published() {
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
                arrived[outcome.index.as_usize()].store(at, Ordering::Relaxed);
                online.store(kernel.active_processors(), Ordering::Release);
                threads.push(kernel.spawn_on(s, outcome.index, io(outcome.index.get())));
                progress(o, epoch, kernel.active_processors(), max, driver);
            }
            while epoch.elapsed() < o.run {
                std::thread::sleep(Duration::from_millis(100).min(o.run));
                progress(o, epoch, kernel.active_processors(), max, driver);
            }
            stop.store(true, Ordering::Release);
            for t in threads {
                match t.join() {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => problems.push(format!("I/O thread could not pin: {e}")),
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
        let drained = driver.platform.pinned(|pin| {
            for (_, queued) in driver.submissions.drain_all() {
                driver.complete(pin, queued, &ledger);
            }
        });
        if let Err(e) = drained {
            problems.push(format!("could not pin for the final completions: {e}"));
        }

        report(
            o, kernel, driver, &ledger, &arrived, &vetoed_at, &adds, elapsed,
        );
        verify(driver, &ledger, n, &mut problems);
        problems
    }

    /// One processor's I/O: submit a batch to the local queue, then complete
    /// another processor's queue, until told to stop (or the driver unloads).
    /// Each round is a dispatch routine: it reaches the driver through its
    /// slot, then works pinned.
    fn io_thread(
        ledger: &Ledger,
        online: &AtomicU32,
        stop: &AtomicBool,
        p: u32,
    ) -> Result<(), PinError> {
        let mut seq = 0u64;
        let mut turn = 0u32;
        while !stop.load(Ordering::Acquire) {
            let round = DRIVER.with(|registration| {
                let driver = registration.parts();
                // DISPATCH_LEVEL for the batch and the completion DPC.
                driver
                    .platform
                    .pinned(|pin| io_round(driver, pin, ledger, online, p, &mut seq, &mut turn))
            });
            match round {
                Some(pinned) => pinned?,
                None => break, // unloaded
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    /// One round of [`io_thread`], pinned.
    fn io_round(
        driver: &Storage,
        pin: &PinGuard<'_, KernelPlatform>,
        ledger: &Ledger,
        online: &AtomicU32,
        p: u32,
        seq: &mut u64,
        turn: &mut u32,
    ) {
        {
            for _ in 0..BATCH {
                let id = (u64::from(p) << 40) | *seq;
                let (sector, bytes) = (seq.wrapping_mul(8), 4096 << (*seq % 4));
                let request = Request {
                    id,
                    submitter: p,
                    sector,
                    bytes,
                    check: check_of(id, p, sector, bytes),
                };
                let object = match driver.requests.alloc(pin, request) {
                    Ok(object) => object,
                    Err(_) => {
                        driver.stats.add(pin, Stats::backpressure, 1); // pool exhausted
                        break;
                    }
                };
                match driver.submissions.push(pin, object) {
                    Ok(()) => {
                        *seq += 1;
                        ledger.submitted(p, id);
                        driver.stats.add(pin, Stats::submitted, 1);
                    }
                    Err(full) => {
                        // Backpressure: the queue is full; give the request back.
                        driver.requests.free(pin, full.into_inner());
                        driver.stats.add(pin, Stats::backpressure, 1);
                        break;
                    }
                }
            }
            // The completion DPC for another processor's queue.
            let n = online.load(Ordering::Acquire).max(1);
            *turn = turn.wrapping_add(1);
            let victim = (p + 1 + *turn % n.saturating_sub(1).max(1)) % n;
            for queued in driver.submissions.drain(cpu(victim)) {
                driver.complete(pin, queued, ledger);
            }
        }
    }

    fn progress(o: &Options, epoch: Instant, active: u32, max: u32, driver: &Storage) {
        if o.quiet {
            return;
        }
        let Stats {
            submitted,
            completed,
            ..
        } = driver.stats.sums();
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
            let Stats {
                submitted,
                completed,
                backpressure,
            } = driver.stats.processor(cpu(index)).unwrap_or_default();
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
        let Stats {
            submitted,
            completed,
            backpressure,
        } = driver.stats.sums();
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
                .map(|c| c.submitted)
                .unwrap_or(0);
            if counted != s {
                problems.push(format!(
                    "processor {p}: statistics say {counted} submitted, ledger {s}"
                ));
            }
        }
        let Stats {
            submitted,
            completed,
            ..
        } = driver.stats.sums();
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
