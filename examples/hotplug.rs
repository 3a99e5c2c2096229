//! Processors arriving while readers run, on the host platform.
//!
//! Boots a few simulated processors the way registration with
//! `KE_PROCESSOR_CHANGE_ADD_EXISTING` replays them, starts reader threads that
//! wander over the online processors (pin, read the local slot, count), then
//! hot-adds the rest one by one through the driver's component set, with one
//! add vetoed by an injected allocation failure. Prints a per-processor table and
//! the growth timings, and exits non-zero if a reader ever saw a slot that was not
//! fully built, if the vetoed processor is visible, or if memory is left at the end.
//!
//! `cargo run --release --example hotplug -- [--boot N] [--max N] [--group N]
//!  [--readers N] [--veto INDEX] [--quick]`

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{Component, Error, PerCpu, Platform, ProcessorIndex, SlotPadding, SlotState};

/// What each processor's slot holds in this demo: who it is, and how often the
/// readers found it.
struct Local {
    index: u32,
    check: u64,
    reads: AtomicU64,
}

fn check_word(index: u32) -> u64 {
    u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5
}

struct Options {
    boot: u32,
    max: u32,
    group: u8,
    readers: u32,
    veto: u32,
    pause: Duration,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        boot: 4,
        max: 40,
        group: 16,
        readers: 4,
        veto: 21,
        pause: Duration::from_millis(10),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| -> Result<u32, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--boot" => o.boot = value("--boot")?,
            "--max" => o.max = value("--max")?,
            "--group" => o.group = u8::try_from(value("--group")?).map_err(|e| e.to_string())?,
            "--readers" => o.readers = value("--readers")?,
            "--veto" => o.veto = value("--veto")?,
            "--quick" => o.pause = Duration::from_millis(1),
            "-h" | "--help" => {
                return Err("usage: hotplug [--boot N] [--max N] [--group N] [--readers N] [--veto INDEX] [--quick]".into())
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if o.boot == 0 || o.boot > o.max {
        return Err("need 1 <= --boot <= --max".into());
    }
    Ok(o)
}

fn cpu(i: u32) -> ProcessorIndex {
    ProcessorIndex::new(i).unwrap_or(ProcessorIndex::ZERO)
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(o: &Options) -> Result<(), String> {
    let platform = HostPlatform::with_groups(o.max, o.group).map_err(|e| e.to_string())?;
    let alloc = FailingAlloc::new(CountingAlloc::new(HostAlloc));
    let init = |i: ProcessorIndex| -> Result<Local, Error> {
        Ok(Local {
            index: i.get(),
            check: check_word(i.get()),
            reads: AtomicU64::new(0),
        })
    };
    // Sized from the platform: room for every processor it can ever have.
    let locals = PerCpu::with_padding_in(&platform, &alloc, SlotPadding::default(), init)
        .map_err(|e| e.to_string())?;
    let arrived = PerCpu::with_padding_in(&platform, &alloc, SlotPadding::default(), |_| {
        Ok(AtomicU64::new(0))
    })
    .map_err(|e| e.to_string())?;
    // The driver's components: a tuple is a component set.
    let driver = (&locals, &arrived);
    let epoch = Instant::now();

    // Registration's replay: AddStart (prepare) for every booted processor, then
    // AddComplete (commit).
    for i in 0..o.boot {
        let _ = driver
            .prepare(cpu(i))
            .map_err(|e| format!("boot {i}: {e}"))?;
    }
    for i in 0..o.boot {
        driver
            .commit(cpu(i))
            .map_err(|e| format!("boot {i}: {e}"))?;
    }

    let stop = AtomicBool::new(false);
    let torn = AtomicU64::new(0);
    let mut adds: Vec<(u32, Duration)> = Vec::new();
    let mut vetoed = None;

    std::thread::scope(|s| {
        for r in 0..o.readers {
            let (platform, locals, stop, torn) = (&platform, &locals, &stop, &torn);
            s.spawn(move || {
                let mut i = r;
                while !stop.load(Ordering::Relaxed) {
                    // Run "on" processor i if it is there; skip it if not.
                    if locals.get(cpu(i)).is_none() {
                        i = (i + 1) % o.max;
                        continue;
                    }
                    if platform.bind_current_thread(cpu(i)).is_err() {
                        break;
                    }
                    let pinned = platform.pinned(|pin| {
                        if let Some(local) = locals.current(pin) {
                            if local.index != i || local.check != check_word(i) {
                                torn.fetch_add(1, Ordering::Relaxed);
                            }
                            // Pinned: only this thread writes this processor's count.
                            let n = local.reads.load(Ordering::Relaxed);
                            local.reads.store(n + 1, Ordering::Relaxed);
                        }
                    });
                    if pinned.is_err() {
                        break;
                    }
                    i = (i + 1) % o.max;
                }
            });
        }

        // Hot-add the rest while the readers run.
        for i in o.boot..o.max {
            std::thread::sleep(o.pause);
            if i == o.veto {
                alloc.plan(FailPlan::Once(0)); // this add's first allocation fails
            }
            let t0 = Instant::now();
            let started = driver.prepare(cpu(i));
            match started {
                Ok(_) => {
                    let _ = driver.commit(cpu(i));
                    adds.push((i, t0.elapsed()));
                    if let Some(at) = arrived.get(cpu(i)) {
                        let us = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                        at.store(us, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    // The kernel then sends AddFailure to everyone.
                    let _ = driver.abort(cpu(i));
                    vetoed = Some((i, e));
                }
            }
        }
        std::thread::sleep(o.pause * 5);
        stop.store(true, Ordering::Relaxed);
    });

    // The table.
    println!("processor  group:number  state     reads      arrived");
    let groups = platform.groups();
    for i in 0..o.max {
        let number = groups
            .number_of(cpu(i))
            .map(|n| n.to_string())
            .unwrap_or_default();
        let state = locals.state(cpu(i));
        let reads = locals
            .get(cpu(i))
            .map(|l| l.reads.load(Ordering::Relaxed).to_string())
            .unwrap_or_else(|| "-".into());
        let when = match arrived.get(cpu(i)) {
            Some(_) if i < o.boot => "boot".to_string(),
            Some(at) => format!("{:.1} ms", at.load(Ordering::Relaxed) as f64 / 1000.0),
            None => "vetoed".to_string(),
        };
        println!(
            "{i:>9}  {number:>12}  {:<8}  {reads:>8}  {when:>11}",
            format!("{state:?}")
        );
    }

    let mut times: Vec<Duration> = adds.iter().map(|&(_, t)| t).collect();
    times.sort_unstable();
    if let (Some(min), Some(max)) = (times.first(), times.last()) {
        let median = times[times.len() / 2];
        println!(
            "\n{} hot-adds (prepare + commit of 2 components): min {:?}, median {:?}, max {:?}",
            times.len(),
            min,
            median,
            max
        );
    }
    let table_bytes = 2 * locals.capacity() * std::mem::size_of::<usize>();
    println!(
        "memory: {} bytes live ({} for the two tables, {} bytes per slot), peak {}",
        alloc.inner().live_bytes(),
        table_bytes,
        locals.slot_size(),
        alloc.inner().peak_bytes()
    );

    // Checks.
    let torn = torn.load(Ordering::Relaxed);
    if torn > 0 {
        return Err(format!("{torn} reads saw a slot that was not fully built"));
    }
    match vetoed {
        Some((i, e)) => {
            println!("processor {i}: add vetoed ({e}); rolled back, nothing published");
            if locals.get(cpu(i)).is_some() || arrived.get(cpu(i)).is_some() {
                return Err(format!("vetoed processor {i} is visible"));
            }
            if !matches!(locals.state(cpu(i)), SlotState::Absent | SlotState::Retired) {
                return Err(format!(
                    "vetoed processor {i} is {:?}",
                    locals.state(cpu(i))
                ));
            }
        }
        None if (o.boot..o.max).contains(&o.veto) => {
            return Err(format!("the add of processor {} was not vetoed", o.veto))
        }
        None => {}
    }
    let online = locals.online_count();
    let expect = usize::try_from(o.max).unwrap_or(0) - usize::from(vetoed.is_some());
    if online != expect {
        return Err(format!("{online} processors online, expected {expect}"));
    }
    drop((locals, arrived));
    let left = alloc.inner().live_bytes();
    if left != 0 {
        return Err(format!("{left} bytes leaked"));
    }
    println!("all reads saw fully built slots; nothing leaked");
    Ok(())
}
