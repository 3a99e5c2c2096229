//! A network driver's receive path on the simulated kernel: RSS steering with
//! per-CPU inboxes, rebalanced onto hot-added processors without reordering a
//! flow.
//!
//! The NIC spreads flows over 4 hardware receive queues whose interrupts (and
//! receive DPCs) run on the boot processors 0..3. Each receive DPC takes a
//! packet buffer from a `PerCpuPool` on its own processor, hashes the flow,
//! looks the hash up in the driver's 128-entry **indirection table**, and
//! steers the packet to that processor's `PerCpuInbox` (`push_to`). Every
//! processor's DPC consumes its own inbox: it checks the packet (contents and
//! the flow's sequence number), counts it in per-CPU counters (packets, bytes,
//! drops by reason, steered in/out) and frees the buffer there (a remote free
//! when another processor allocated it). All of it is safe code, reached as a
//! dispatch routine would (`DRIVER.with`, rundown-protected against Unload).
//!
//! Meanwhile processors are hot-added up to `--max` (64 by default, two groups
//! of 32); one add is vetoed by an injected allocation failure of its last
//! part (the statistics), so the pool and inbox it had prepared are aborted.
//! After each add the table is **rebalanced** onto the new processor.
//!
//! # The hand-over: moving an entry without reordering a flow
//!
//! All packets of a flow arrive on one hardware queue, so one receive DPC
//! pushes them all, in sequence order. That DPC keeps, per table entry, the
//! processor it steers the entry to now (`current`) and the [`Ticket`] of the
//! last packet it pushed there. The rebalancer only writes the table's
//! *desired* processor. When the DPC sees `desired != current`, it keeps
//! steering the entry to `current` until `rx.is_delivered(last ticket)`, and
//! only then switches to `desired`. Why that keeps every flow in order:
//!
//! 1. one inbox is FIFO, and the one DPC of its processor processes what it
//!    pops before it ends the batch (drops the `InboxConsumer`);
//! 2. `is_delivered(t)` means the old processor popped the ticket's packet and
//!    everything pushed to it before, and ended that batch: every packet of the
//!    entry it was given has been processed (release when the batch ends,
//!    acquire in `is_delivered`, so the processing happened-before);
//! 3. the first packet steered to the new processor is pushed after that
//!    check, so the new processor processes it after all earlier packets of
//!    the flow; later ones follow it through the new processor's FIFO.
//!
//! An entry moved again before the DPC switched simply switches once, to the
//! latest desired processor, after the same check. Rebalance latency is the
//! time from the table update until every receive DPC has switched every moved
//! entry.
//!
//! Prints a per-processor table, the rebalance latency (min/median/max) and
//! packets/s, and exits non-zero on any lost, duplicated, corrupted or
//! reordered packet, any buffer still outstanding, any pool tag holding memory
//! after unload, or any kernel misuse the simulator recorded.
//!
//! `cargo run --release --example network_driver -- [--boot N] [--max N]
//!  [--seconds S] [--veto INDEX|none] [--flows N] [--quiet] [--quick]`
//!
//! `--naive-switch` switches a moved entry at once, without the hand-over: the
//! run then reports reordered packets and fails (the check is not vacuous).
//!
//! `--max` above 64 uses groups of 64 (up to 1024 processors), for the
//! rebalance latency against processor count in BENCHMARKS.md.
//!
//! [`Ticket`]: perproc::Ticket

// On every host, Windows included: the workspace's dev-dependency turns the
// shim's `sim` feature on.
fn main() -> std::process::ExitCode {
    sim::main()
}

mod sim {
    use std::io::Write;
    use std::process::ExitCode;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};
    use std::thread::Thread;
    use std::time::{Duration, Instant};

    use perproc::{
        Error, Limits, PerCpuCounters, PerCpuInbox, PerCpuPool, PinError, PinGuard, Platform,
        PoolBox, ProcessorIndex, Ticket,
    };
    use perproc_wdk::sim::{AddResult, Fault, Kernel};
    use perproc_wdk::{pool_tag, DriverSlot, KernelPlatform, PoolAlloc, Registration};

    /// Pool tags: one per part, so the unload check names the culprit.
    const TAG_DRIVER: u32 = pool_tag(*b"Nicd");
    const TAG_BUFFERS: u32 = pool_tag(*b"Nicb");
    const TAG_INBOX: u32 = pool_tag(*b"Nicq");
    const TAG_STATS: u32 = pool_tag(*b"Nics");
    const TAGS: [(u32, &str); 4] = [
        (TAG_DRIVER, "Nicd"),
        (TAG_BUFFERS, "Nicb"),
        (TAG_INBOX, "Nicq"),
        (TAG_STATS, "Nics"),
    ];

    /// RSS indirection table entries.
    const ENTRIES: usize = 128;
    /// Hardware receive queues (their DPCs run on processors 0..RX_QUEUES).
    const RX_QUEUES: u32 = 4;
    /// Packets a receive DPC takes off its hardware queue per round.
    const RX_BATCH: usize = 32;
    /// Packets a consume DPC processes per round (its budget).
    const DPC_BUDGET: usize = 256;
    const INBOX_DEPTH: usize = 256;
    /// Packet buffers per processor in the pool's limit.
    const BUFFERS_PER_CPU: usize = 256;

    perproc::counters! {
        /// The driver's statistics, per processor.
        struct Stats {
            /// Packets taken off a hardware queue (on the receiving processor).
            received,
            /// Packets processed (on the processor they were steered to).
            packets,
            bytes,
            /// Dropped: the target's inbox was full.
            drop_full,
            /// Dropped: no packet buffer left in the pool.
            drop_no_buffer,
            /// Dropped: the target had no inbox (never happens here).
            drop_no_inbox,
            /// Pushed by this processor to another one's inbox.
            steered_out,
            /// Processed here after arriving on another processor.
            steered_in,
        }
    }

    /// A packet buffer, as the pool holds it.
    struct Packet {
        flow: u32,
        seq: u64,
        /// The processor whose hardware queue received it.
        arrival: u32,
        len: u32,
        payload: [u64; 4],
        /// A function of the rest: a DPC that reads a torn or reused buffer
        /// fails the check.
        check: u64,
    }

    fn mix(x: u64) -> u64 {
        let x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    impl Packet {
        fn new(flow: u32, seq: u64, arrival: u32) -> Self {
            let base = mix((u64::from(flow) << 40) ^ seq);
            let payload = [base, mix(base), mix(base ^ 1), mix(base ^ 2)];
            let len = 64 + (base % 1437) as u32;
            let mut packet = Self {
                flow,
                seq,
                arrival,
                len,
                payload,
                check: 0,
            };
            packet.check = packet.checksum();
            packet
        }

        fn checksum(&self) -> u64 {
            let mut h = mix(u64::from(self.flow) ^ self.seq.rotate_left(20))
                ^ u64::from(self.arrival).rotate_left(50)
                ^ u64::from(self.len);
            for word in self.payload {
                h = mix(h ^ word);
            }
            h
        }

        fn intact(&self) -> bool {
            let base = mix((u64::from(self.flow) << 40) ^ self.seq);
            self.check == self.checksum() && self.payload[0] == base
        }
    }

    /// A flow's hash: its table entry and its hardware queue.
    fn flow_hash(flow: u32) -> u64 {
        mix(u64::from(flow).wrapping_add(0x5EED))
    }

    fn entry_of(flow: u32) -> usize {
        (flow_hash(flow) % ENTRIES as u64) as usize
    }

    /// The driver's indirection table: the processor each entry should go to.
    /// Written by the rebalancer; each receive DPC follows it with the
    /// hand-over of the module docs.
    struct Indirection {
        desired: Vec<AtomicU32>,
        /// Bumped (release) after each rebalance's writes.
        generation: AtomicU64,
        /// Per receive queue: the last generation it has fully switched to.
        caught_up: Vec<AtomicU64>,
    }

    /// The driver's state: per-CPU parts (made a component by
    /// `perproc::components!`) and the indirection table.
    struct Nic {
        platform: KernelPlatform,
        buffers: PerCpuPool<Packet, KernelPlatform>,
        rx: PerCpuInbox<PoolBox<Packet>, KernelPlatform>,
        stats: PerCpuCounters<Stats, KernelPlatform>,
        table: Indirection,
    }

    // AddStart prepares the buffers, the inbox, then the statistics (rolling
    // back the earlier ones if a later one fails); AddComplete commits all
    // three; AddFailure aborts them.
    perproc::components!(Nic => buffers, rx, stats);

    /// The driver's state from DriverEntry to Unload.
    static DRIVER: DriverSlot<Registration<Nic>> = DriverSlot::new();

    impl Nic {
        fn new(platform: &KernelPlatform, boot: u32, queues: u32) -> Result<Self, Error> {
            let n = platform.max_processors() as usize;
            Ok(Self {
                platform: *platform,
                buffers: PerCpuPool::new(
                    platform,
                    Limits {
                        total: BUFFERS_PER_CPU * n,
                        per_cpu: 64,
                    },
                )?,
                rx: PerCpuInbox::new_in(platform, PoolAlloc::new(TAG_INBOX), INBOX_DEPTH)?,
                stats: PerCpuCounters::new_in(platform, PoolAlloc::new(TAG_STATS))?,
                table: Indirection {
                    desired: (0..ENTRIES as u32)
                        .map(|e| AtomicU32::new(e % boot))
                        .collect(),
                    generation: AtomicU64::new(0),
                    caught_up: (0..queues).map(|_| AtomicU64::new(0)).collect(),
                },
            })
        }

        /// The consume DPC of the processor `pin` holds: up to a budget of
        /// packets, each processed before the batch ends (which is what makes
        /// `is_delivered` mean "processed"). Returns how many.
        fn consume(&self, pin: &PinGuard<'_, KernelPlatform>, ledger: &Ledger) -> usize {
            let Some(consumer) = self.rx.consumer(pin) else {
                return 0;
            };
            let me = pin.processor().get();
            let stats = self.stats.local(pin);
            let mut n = 0;
            for packet in consumer {
                ledger.delivered(&packet, me);
                stats.add(Stats::packets, 1);
                stats.add(Stats::bytes, u64::from(packet.len));
                if packet.arrival != me {
                    stats.add(Stats::steered_in, 1);
                }
                self.buffers.free(pin, packet);
                n += 1;
                if n == DPC_BUDGET {
                    break;
                }
            }
            // The consumer drops here: the batch ends, delivery is published.
            n
        }
    }

    /// One receive DPC's steering state: where it sends each entry now and
    /// the ticket of the last packet it sent there.
    struct Steering {
        current: Vec<u32>,
        last: Vec<Option<Ticket>>,
        /// `--naive-switch`: switch at once, without the hand-over (to show
        /// that the ledger catches the reordering that causes).
        naive: bool,
    }

    impl Steering {
        fn new(table: &Indirection, naive: bool) -> Self {
            Self {
                current: table
                    .desired
                    .iter()
                    .map(|d| d.load(Ordering::Acquire))
                    .collect(),
                last: vec![None; ENTRIES],
                naive,
            }
        }

        /// The processor to steer entry `e` to now: the old one until it has
        /// delivered the last packet this DPC sent it, then the desired one.
        fn target(&mut self, nic: &Nic, e: usize) -> u32 {
            let want = nic.table.desired[e].load(Ordering::Acquire);
            let handed_over = self.naive || self.last[e].is_none_or(|t| nic.rx.is_delivered(t));
            if want != self.current[e] && handed_over {
                self.current[e] = want;
                self.last[e] = None;
            }
            self.current[e]
        }

        /// Switches every entry that can switch; publishes the generation it
        /// has fully caught up with.
        fn settle(&mut self, nic: &Nic, queue: usize) {
            let generation = nic.table.generation.load(Ordering::Acquire);
            let mut pending = 0;
            for e in 0..ENTRIES {
                let now = self.target(nic, e);
                pending += usize::from(now != nic.table.desired[e].load(Ordering::Acquire));
            }
            if pending == 0 {
                nic.table.caught_up[queue].store(generation, Ordering::Release);
            }
        }
    }

    /// One hardware receive queue's flows and what it sent of each.
    struct RxQueue {
        queue: usize,
        flows: Vec<u32>,
        next: usize,
        steering: Steering,
    }

    /// The harness's own bookkeeping (not the driver's): per flow, what was
    /// sent, dropped and delivered, and the last sequence number delivered.
    /// Interlocked, since it is the referee, not the hot path.
    struct Ledger {
        sent: Vec<AtomicU64>,
        dropped: Vec<AtomicU64>,
        dropped_seqs: Vec<AtomicU64>,
        delivered: Vec<AtomicU64>,
        delivered_seqs: Vec<AtomicU64>,
        /// Last delivered sequence number + 1 (0: none yet).
        last: Vec<AtomicU64>,
        reordered: AtomicU64,
        corrupt: AtomicU64,
        /// Packets steered to an entry's old processor while its move waited
        /// for the hand-over.
        held_back: AtomicU64,
        /// Each processor's DPC thread, for the receive DPC to wake (the
        /// simulator's stand-in for `KeInsertQueueDpc` on that processor): an
        /// idle DPC thread parks instead of polling, so hundreds of idle
        /// simulated processors do not starve the busy ones.
        dpcs: Vec<OnceLock<Thread>>,
        first_problem: Mutex<Option<String>>,
    }

    impl Ledger {
        fn new(flows: usize, processors: usize) -> Self {
            let zeros = || (0..flows).map(|_| AtomicU64::new(0)).collect();
            Self {
                sent: zeros(),
                dropped: zeros(),
                dropped_seqs: zeros(),
                delivered: zeros(),
                delivered_seqs: zeros(),
                last: zeros(),
                reordered: AtomicU64::new(0),
                corrupt: AtomicU64::new(0),
                held_back: AtomicU64::new(0),
                dpcs: (0..processors).map(|_| OnceLock::new()).collect(),
                first_problem: Mutex::new(None),
            }
        }

        fn note(&self, problem: impl FnOnce() -> String) {
            if let Ok(mut first) = self.first_problem.lock() {
                if first.is_none() {
                    *first = Some(problem());
                }
            }
        }

        fn delivered(&self, packet: &Packet, on: u32) {
            if !packet.intact() {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                self.note(|| format!("corrupt packet on processor {on}"));
                return;
            }
            let f = packet.flow as usize;
            let (Some(n), Some(seqs), Some(last)) = (
                self.delivered.get(f),
                self.delivered_seqs.get(f),
                self.last.get(f),
            ) else {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                return;
            };
            n.fetch_add(1, Ordering::Relaxed);
            seqs.fetch_add(packet.seq, Ordering::Relaxed);
            let before = last.fetch_max(packet.seq + 1, Ordering::AcqRel);
            if before > packet.seq {
                self.reordered.fetch_add(1, Ordering::Relaxed);
                self.note(|| {
                    format!(
                        "flow {} packet {} processed on {on} after packet {}",
                        packet.flow,
                        packet.seq,
                        before - 1
                    )
                });
            }
        }
    }

    struct Options {
        boot: u32,
        max: u32,
        run: Duration,
        veto: Option<u32>,
        flows: u32,
        naive: bool,
        quiet: bool,
    }

    fn options() -> Result<Options, String> {
        let mut o = Options {
            boot: 4,
            max: 64,
            run: Duration::from_secs(3),
            veto: Some(40),
            flows: 1024,
            naive: false,
            quiet: false,
        };
        let mut veto_given = false;
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            let number = |v: String| v.parse::<u32>().map_err(|e| format!("{v}: {e}"));
            match flag.as_str() {
                "--boot" => o.boot = number(value("--boot")?)?,
                "--max" => o.max = number(value("--max")?)?,
                "--flows" => o.flows = number(value("--flows")?)?,
                "--seconds" => {
                    let v = value("--seconds")?;
                    let s: f64 = v.parse().map_err(|e| format!("{v}: {e}"))?;
                    o.run = Duration::try_from_secs_f64(s).map_err(|e| e.to_string())?;
                }
                "--veto" => {
                    let v = value("--veto")?;
                    o.veto = if v == "none" { None } else { Some(number(v)?) };
                    veto_given = true;
                }
                "--quiet" => o.quiet = true,
                "--naive-switch" => o.naive = true,
                "--quick" => {
                    o.run = Duration::from_millis(800);
                    o.quiet = true;
                }
                "-h" | "--help" => {
                    return Err("usage: network_driver [--boot N] [--max N (<= 1024; two \
                                groups of 32 up to 64, else groups of 64)] [--seconds S] \
                                [--veto INDEX|none] [--flows N] [--naive-switch] [--quiet] \
                                [--quick]"
                        .into())
                }
                other => return Err(format!("unknown flag {other}; try --help")),
            }
        }
        if o.boot == 0 || o.boot > o.max || o.max > 1024 || o.flows == 0 {
            return Err("need 1 <= --boot <= --max <= 1024 and --flows >= 1".into());
        }
        if !veto_given && !(o.boot..o.max).contains(&40) {
            o.veto = (o.boot < o.max).then(|| o.boot + (o.max - o.boot) / 2);
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

    fn groups(max: u32) -> Vec<u8> {
        if max <= 64 {
            vec![32, 32]
        } else {
            vec![64; max.div_ceil(64) as usize]
        }
    }

    fn run(o: &Options) -> Result<(), Vec<String>> {
        let fail = |e: &dyn std::fmt::Display| vec![e.to_string()];
        let kernel = Kernel::new(&groups(o.max), o.boot).map_err(|e| fail(&e))?;
        let _on = kernel.enter().map_err(|e| fail(&e))?; // DriverEntry runs on processor 0
        let epoch = Instant::now();
        let queues = RX_QUEUES.min(o.boot);

        // DriverEntry: build the parts, register (the replay adds the boot
        // processors), keep the registration in the driver's slot.
        let platform = KernelPlatform::new(TAG_BUFFERS).map_err(|e| fail(&e))?;
        let nic = Nic::new(&platform, o.boot, queues).map_err(|e| fail(&e))?;
        let registration = Registration::register(nic, PoolAlloc::new(TAG_DRIVER))
            .map_err(|e| vec![format!("registration failed: status {:#010x}", e.status)])?;
        DRIVER
            .install(registration, PoolAlloc::new(TAG_DRIVER))
            .map_err(|(_, status)| vec![format!("driver slot: status {status:#010x}")])?;
        let run = DRIVER.with(|registration| drive(o, &kernel, registration.parts(), epoch));
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
            println!(
                "no packet lost, duplicated, corrupted or reordered; no buffer leaked; \
                 every pool tag empty after unload; no kernel misuse"
            );
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// What the run measured, for the report.
    struct Measured {
        arrived: Vec<AtomicU64>,
        vetoed_at: Vec<AtomicBool>,
        adds: Vec<Duration>,
        rebalances: Vec<(u32, usize, Duration)>,
        elapsed: Duration,
    }

    /// The run, with the driver loaded: DPC threads, hot-adds and rebalances,
    /// the shutdown, the table and the checks. Returns the problems found.
    fn drive(o: &Options, kernel: &Kernel, nic: &Nic, epoch: Instant) -> Vec<String> {
        let max = kernel.max_processors().min(o.max);
        let n = max as usize;
        let queues = RX_QUEUES.min(o.boot);
        let ledger = Ledger::new(o.flows as usize, n);
        let mut measured = Measured {
            arrived: (0..n).map(|_| AtomicU64::new(u64::MAX)).collect(),
            vetoed_at: (0..n).map(|_| AtomicBool::new(false)).collect(),
            adds: Vec::new(),
            rebalances: Vec::new(),
            elapsed: Duration::ZERO,
        };
        for a in measured.arrived.iter().take(o.boot as usize) {
            a.store(0, Ordering::Relaxed);
        }
        // Flows per hardware queue (the NIC's own hash).
        let mut flows: Vec<Vec<u32>> = vec![Vec::new(); queues as usize];
        for f in 0..o.flows {
            let q = ((flow_hash(f) >> 32) % u64::from(queues)) as usize;
            flows[q].push(f);
        }
        let mut owners: Vec<u32> = (0..o.boot).collect();
        let receiving = AtomicBool::new(true);
        let stop = AtomicBool::new(false);
        let mut problems = Vec::new();

        std::thread::scope(|s| {
            let dpc = |rx: Option<RxQueue>| {
                let (ledger, receiving, stop) = (&ledger, &receiving, &stop);
                move || dpc_thread(ledger, receiving, stop, rx)
            };
            let mut threads = Vec::new();
            for p in 0..o.boot {
                let rx = (p < queues).then(|| RxQueue {
                    queue: p as usize,
                    flows: std::mem::take(&mut flows[p as usize]),
                    next: 0,
                    steering: Steering::new(&nic.table, o.naive),
                });
                threads.push(kernel.spawn_on(s, p, dpc(rx)));
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
                    // The statistics are the last part: the buffers and the
                    // inbox were prepared for the processor and are aborted.
                    kernel.pool().fail_tag(Fault::Nth(0), TAG_STATS);
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
                            measured.vetoed_at[outcome.index.as_usize()]
                                .store(true, Ordering::Relaxed);
                            check_vetoed(nic, outcome.index, &mut problems);
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
                measured.adds.push(took);
                let at = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                measured.arrived[outcome.index.as_usize()].store(at, Ordering::Relaxed);
                let new = outcome.index.get();
                threads.push(kernel.spawn_on(s, outcome.index, dpc(None)));
                owners.push(new);
                match rebalance(nic, &owners, new) {
                    Ok(done) => measured.rebalances.push(done),
                    Err(e) => {
                        problems.push(e);
                        break;
                    }
                }
                progress(o, epoch, kernel.active_processors(), max, nic);
            }
            while epoch.elapsed() < o.run {
                std::thread::sleep(Duration::from_millis(100).min(o.run));
                progress(o, epoch, kernel.active_processors(), max, nic);
            }
            // Shutdown: the NIC stops receiving, the DPCs empty their inboxes.
            receiving.store(false, Ordering::Release);
            let deadline = Instant::now() + Duration::from_secs(20);
            while (0..max).any(|i| !nic.rx.is_empty(cpu(i))) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            stop.store(true, Ordering::Release);
            for dpc in ledger.dpcs.iter().filter_map(OnceLock::get) {
                dpc.unpark();
            }
            for t in threads {
                match t.join() {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => problems.push(format!("DPC thread could not pin: {e}")),
                    Ok(Err(e)) => problems.push(format!("DPC thread could not enter: {e}")),
                    Err(_) => problems.push("a DPC thread panicked".into()),
                }
            }
        });
        measured.elapsed = epoch.elapsed();
        if !o.quiet {
            eprintln!();
        }

        // Anything still queued (there should be nothing): processed on
        // processor 0, in each inbox's order.
        let late = nic.platform.pinned(|pin| {
            let mut late = 0;
            for (_, packet) in nic.rx.drain_all() {
                ledger.delivered(&packet, 0);
                nic.buffers.free(pin, packet);
                late += 1;
            }
            late
        });
        match late {
            Ok(0) => {}
            Ok(k) => problems.push(format!("{k} packets were still queued after shutdown")),
            Err(e) => problems.push(format!("could not pin for the final drain: {e}")),
        }

        report(o, kernel, nic, &ledger, &measured, &owners);
        verify(nic, &ledger, &mut problems);
        problems
    }

    /// After a veto: the processor has no inbox, a push to it is refused with
    /// the reason, and its aborted inbox holds nothing.
    fn check_vetoed(nic: &Nic, index: ProcessorIndex, problems: &mut Vec<String>) {
        if nic.rx.state(index).is_published() {
            problems.push(format!("vetoed processor {index} has a published inbox"));
        }
        let refused = nic.platform.pinned(|pin| {
            let Ok(packet) = nic.buffers.alloc(pin, Packet::new(0, 0, 0)) else {
                return Ok(()); // no buffer to try with: nothing to check
            };
            match nic.rx.push_to(pin, index, packet) {
                Ok(_) => Err("a push to the vetoed processor was accepted".to_string()),
                Err(back) => {
                    nic.buffers.free(pin, back.item);
                    if back.error == Error::NotPrepared {
                        Ok(())
                    } else {
                        Err(format!("push to the vetoed processor: {:?}", back.error))
                    }
                }
            }
        });
        match refused {
            Ok(Ok(())) => {}
            Ok(Err(e)) => problems.push(e),
            Err(e) => problems.push(format!("could not pin: {e}")),
        }
        if nic.rx.leftovers().count() != 0 {
            problems.push("the vetoed processor's inbox held packets".into());
        }
    }

    /// Moves table entries onto the new processor (an even share, taken from
    /// the processors holding the most) and waits until every receive DPC has
    /// switched them. Returns (processor, entries moved, latency).
    fn rebalance(nic: &Nic, owners: &[u32], new: u32) -> Result<(u32, usize, Duration), String> {
        let table = &nic.table;
        let share = (ENTRIES / owners.len()).max(1);
        let t0 = Instant::now();
        for _ in 0..share {
            let mut held: Vec<(usize, u32)> = Vec::new(); // (count, processor)
            for &p in owners.iter().filter(|&&p| p != new) {
                let count = table
                    .desired
                    .iter()
                    .filter(|d| d.load(Ordering::Relaxed) == p)
                    .count();
                held.push((count, p));
            }
            let Some(&(_, from)) = held.iter().max() else {
                break;
            };
            if let Some(entry) = table
                .desired
                .iter()
                .rev()
                .find(|d| d.load(Ordering::Relaxed) == from)
            {
                entry.store(new, Ordering::Release);
            }
        }
        let generation = table.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let deadline = t0 + Duration::from_secs(30);
        while table
            .caught_up
            .iter()
            .any(|c| c.load(Ordering::Acquire) < generation)
        {
            if Instant::now() > deadline {
                return Err(format!("rebalance onto {new} did not finish in 30 s"));
            }
            std::thread::yield_now();
        }
        Ok((new, share, t0.elapsed()))
    }

    /// One processor's DPCs until told to stop (or the driver unloads): the
    /// receive DPC if it has a hardware queue, then the consume DPC. Each round
    /// is a dispatch routine: it reaches the driver through its slot, then
    /// works pinned.
    fn dpc_thread(
        ledger: &Ledger,
        receiving: &AtomicBool,
        stop: &AtomicBool,
        mut rx: Option<RxQueue>,
    ) -> Result<(), PinError> {
        let mut seqs: Vec<u64> = vec![0; ledger.sent.len()];
        let mut idle = 0u32;
        let me = DRIVER.with(|registration| registration.parts().platform.current_processor());
        if let Some(slot) = me.and_then(|me| ledger.dpcs.get(me.as_usize())) {
            let _ = slot.set(std::thread::current());
        }
        while !stop.load(Ordering::Acquire) {
            let receive = receiving.load(Ordering::Acquire);
            let round = DRIVER.with(|registration| {
                let nic = registration.parts();
                nic.platform.pinned(|pin| {
                    let mut work = 0;
                    if let Some(rx) = rx.as_mut() {
                        if receive {
                            work += receive_dpc(nic, pin, ledger, rx, &mut seqs);
                        }
                        rx.steering.settle(nic, rx.queue);
                    }
                    work + nic.consume(pin, ledger)
                })
            });
            match round {
                Some(Ok(0)) => {
                    idle += 1;
                    if idle > 64 {
                        // Idle: wait for a receive DPC to queue work here.
                        std::thread::park_timeout(Duration::from_millis(20));
                    } else {
                        std::thread::yield_now();
                    }
                }
                Some(Ok(_)) => {
                    idle = 0;
                    std::thread::yield_now();
                }
                Some(Err(e)) => return Err(e),
                None => break, // unloaded
            }
        }
        Ok(())
    }

    /// The receive DPC of one hardware queue: a batch of packets, each in a
    /// buffer from this processor's pool, steered through the table.
    fn receive_dpc(
        nic: &Nic,
        pin: &PinGuard<'_, KernelPlatform>,
        ledger: &Ledger,
        rx: &mut RxQueue,
        seqs: &mut [u64],
    ) -> usize {
        let me = pin.processor().get();
        let stats = nic.stats.local(pin);
        let mut work = 0;
        let mut woken: Vec<u32> = Vec::new();
        for _ in 0..RX_BATCH {
            let Some(&flow) = rx.flows.get(rx.next % rx.flows.len().max(1)) else {
                break;
            };
            // Flows take turns unevenly: some send bursts.
            rx.next = rx.next.wrapping_add(1 + (mix(rx.next as u64) % 3) as usize);
            let f = flow as usize;
            let seq = seqs[f];
            seqs[f] += 1;
            ledger.sent[f].fetch_add(1, Ordering::Relaxed);
            stats.add(Stats::received, 1);
            work += 1;
            let drop_as = |reason| {
                stats.add(reason, 1);
                ledger.dropped[f].fetch_add(1, Ordering::Relaxed);
                ledger.dropped_seqs[f].fetch_add(seq, Ordering::Relaxed);
            };
            let Ok(buffer) = nic.buffers.alloc(pin, Packet::new(flow, seq, me)) else {
                drop_as(Stats::drop_no_buffer);
                continue;
            };
            let e = entry_of(flow);
            let target = rx.steering.target(nic, e);
            if target != nic.table.desired[e].load(Ordering::Relaxed) {
                ledger.held_back.fetch_add(1, Ordering::Relaxed);
            }
            match nic.rx.push_to(pin, cpu(target), buffer) {
                Ok(ticket) => {
                    rx.steering.last[e] = Some(ticket);
                    if !woken.contains(&target) {
                        woken.push(target);
                    }
                    if target != me {
                        stats.add(Stats::steered_out, 1);
                    }
                }
                Err(back) => {
                    nic.buffers.free(pin, back.item);
                    drop_as(if back.error == Error::Exhausted {
                        Stats::drop_full
                    } else {
                        Stats::drop_no_inbox
                    });
                }
            }
        }
        // Queue the DPCs of the processors this batch steered to.
        for target in woken {
            if let Some(dpc) = ledger.dpcs.get(target as usize).and_then(OnceLock::get) {
                dpc.unpark();
            }
        }
        work
    }

    fn progress(o: &Options, epoch: Instant, active: u32, max: u32, nic: &Nic) {
        if o.quiet {
            return;
        }
        let Stats {
            received, packets, ..
        } = nic.stats.sums();
        eprint!(
            "\r  t={:>5.2}s  processors {active:>4}/{max}  received {received:>10}  processed {packets:>10}",
            epoch.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }

    fn report(
        o: &Options,
        kernel: &Kernel,
        nic: &Nic,
        ledger: &Ledger,
        m: &Measured,
        owners: &[u32],
    ) {
        let entries = |p: u32| {
            nic.table
                .desired
                .iter()
                .filter(|d| d.load(Ordering::Relaxed) == p)
                .count()
        };
        let rows = if o.max > 64 {
            (o.max as usize).min(16)
        } else {
            m.arrived.len()
        };
        println!(
            "processor  group:num  arrived      received     packets        bytes  drop full  drop buf  steered in  steered out  entries"
        );
        for (i, at) in m.arrived.iter().enumerate().take(rows) {
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
            let vetoed = if m.vetoed_at[i].load(Ordering::Relaxed) {
                " (vetoed once)"
            } else {
                ""
            };
            let s = nic.stats.processor(cpu(index)).unwrap_or_default();
            println!(
                "{index:>9}  {number:>9}  {when:<11} {:>9} {:>11} {:>12} {:>10} {:>9} {:>11} {:>12} {:>8}{vetoed}",
                s.received,
                s.packets,
                s.bytes,
                s.drop_full,
                s.drop_no_buffer,
                s.steered_in,
                s.steered_out,
                entries(index),
            );
        }
        if rows < m.arrived.len() {
            println!("  ... ({} processors in all)", owners.len());
        }
        let mut adds = m.adds.clone();
        adds.sort_unstable();
        if let (Some(min), Some(max)) = (adds.first(), adds.last()) {
            println!(
                "\ngrowth: {} hot-adds (buffers + inbox + statistics, through the callback): min {:?}, median {:?}, max {:?}",
                adds.len(),
                min,
                adds[adds.len() / 2],
                max
            );
        }
        let mut latency: Vec<Duration> = m.rebalances.iter().map(|r| r.2).collect();
        latency.sort_unstable();
        let moved: usize = m.rebalances.iter().map(|r| r.1).sum();
        if let (Some(min), Some(max)) = (latency.first(), latency.last()) {
            println!(
                "rebalance: {} rebalances ({moved} entries moved; {} packets sent to an old processor \
                 while its entry's hand-over was pending): latency min {:?}, median {:?}, max {:?}",
                latency.len(),
                ledger.held_back.load(Ordering::Relaxed),
                min,
                latency[latency.len() / 2],
                max
            );
        }
        let s = nic.stats.sums();
        let secs = m.elapsed.as_secs_f64();
        println!(
            "totals: {} received, {} processed ({} bytes), drops: {} inbox full, {} no buffer, {} no inbox; \
             {} steered across processors; {} corrupt, {} reordered; {:.0} packets/s over {:.2} s",
            s.received,
            s.packets,
            s.bytes,
            s.drop_full,
            s.drop_no_buffer,
            s.drop_no_inbox,
            s.steered_out,
            ledger.corrupt.load(Ordering::Relaxed),
            ledger.reordered.load(Ordering::Relaxed),
            s.packets as f64 / secs,
            secs
        );
        let pool = nic.buffers.stats();
        println!(
            "buffers: {} carved (limit {}), {} outstanding, {} in the depot, {} cached, {} stranded; {} slabs",
            pool.objects, pool.limit, pool.outstanding, pool.in_depot, pool.cached, pool.stranded, pool.slabs
        );
    }

    fn verify(nic: &Nic, ledger: &Ledger, problems: &mut Vec<String>) {
        let corrupt = ledger.corrupt.load(Ordering::Relaxed);
        if corrupt > 0 {
            problems.push(format!("{corrupt} packets were corrupt"));
        }
        let reordered = ledger.reordered.load(Ordering::Relaxed);
        if reordered > 0 {
            problems.push(format!("{reordered} packets were processed out of order"));
        }
        if let Ok(first) = ledger.first_problem.lock() {
            if let Some(first) = first.as_ref() {
                problems.push(format!("first: {first}"));
            }
        }
        let mut bad_flows = 0;
        for f in 0..ledger.sent.len() {
            let sent = ledger.sent[f].load(Ordering::Relaxed);
            let dropped = ledger.dropped[f].load(Ordering::Relaxed);
            let delivered = ledger.delivered[f].load(Ordering::Relaxed);
            let seqs = ledger.dropped_seqs[f].load(Ordering::Relaxed)
                + ledger.delivered_seqs[f].load(Ordering::Relaxed);
            let want = sent * sent.saturating_sub(1) / 2;
            if sent != dropped + delivered || seqs != want {
                bad_flows += 1;
                if bad_flows <= 3 {
                    problems.push(format!(
                        "flow {f}: {sent} sent, {dropped} dropped, {delivered} delivered \
                         (sequence sums {seqs} vs {want}): packets lost or duplicated"
                    ));
                }
            }
        }
        let s = nic.stats.sums();
        let dropped = s.drop_full + s.drop_no_buffer + s.drop_no_inbox;
        if s.received != s.packets + dropped {
            problems.push(format!(
                "statistics: {} received but {} processed and {dropped} dropped",
                s.received, s.packets
            ));
        }
        if s.drop_no_inbox != 0 {
            problems.push(format!(
                "{} packets steered to a processor with no inbox",
                s.drop_no_inbox
            ));
        }
        let outstanding = nic.buffers.stats().outstanding;
        if outstanding != 0 {
            problems.push(format!("{outstanding} packet buffers still outstanding"));
        }
    }
}
