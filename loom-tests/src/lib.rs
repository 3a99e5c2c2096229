//! Loom models of perproc live in `tests/`; run them with `RUSTFLAGS="--cfg loom"`.
//!
//! This crate gives them `LoomPlatform` (under `cfg(loom)`): loom threads
//! standing in for processors, as `HostPlatform` has OS threads stand in for
//! them (whose thread-locals and occupancy words loom cannot see).

#[cfg(loom)]
pub use model::{LoomPlatform, LOOM_MAX_PROCESSORS};

#[cfg(loom)]
mod model {
    use std::cell::Cell;

    use loom::cell::{MutPtr, UnsafeCell};
    use loom::sync::Arc;
    use perproc::host::HostAlloc;
    use perproc::{Error, PinError, PinGuard, Platform, ProcessorIndex};

    /// The most processors a `LoomPlatform` models (the models use two or
    /// three: every claim cell is a location loom tracks).
    pub const LOOM_MAX_PROCESSORS: u32 = 8;

    loom::thread_local! {
        /// The processor the model assigned to this loom thread.
        static BOUND: Cell<Option<ProcessorIndex>> = Cell::new(None);
        /// How many pins this loom thread is inside (pins nest).
        static DEPTH: Cell<u32> = Cell::new(0);
    }

    /// One processor's claim: a cell that only loom's access tracking looks at.
    /// The outermost pin of a processor holds a write access to it until the pin
    /// ends, so loom panics ("Causality violation") if two threads' pins of one
    /// processor ever overlap or are not ordered by happens-before: promises 2
    /// and 4 of [`Platform`] are checked in every execution, not assumed.
    struct Claim(UnsafeCell<()>);

    // SAFETY: the cell holds `()` and nothing ever dereferences it: the only use
    // is `get_mut`, whose returned guard loom tracks (that is the point: loom
    // reports threads whose accesses are not ordered). Sharing it between
    // threads shares no data.
    unsafe impl Sync for Claim {}

    /// A platform for loom models: each loom thread runs on the processor the
    /// model binds it to ([`bind`](Self::bind)), and pins of one processor must
    /// follow one another (loom fails the model otherwise).
    ///
    /// A model makes one platform per execution and shares it (clones share the
    /// claims): containers are built from it, and threads pin with
    /// [`on`](Self::on) or `bind` then `pinned`. A model hands a processor from
    /// one thread to another through `spawn` or `join`, which order them.
    #[derive(Clone)]
    pub struct LoomPlatform {
        claims: Arc<Vec<Claim>>,
    }

    impl LoomPlatform {
        /// A machine of `max` processors (at most [`LOOM_MAX_PROCESSORS`]).
        pub fn new(max: u32) -> Result<Self, Error> {
            if max > LOOM_MAX_PROCESSORS {
                return Err(Error::CapacityOverflow);
            }
            let claims: Vec<Claim> = (0..max).map(|_| Claim(UnsafeCell::new(()))).collect();
            Ok(Self {
                claims: Arc::new(claims),
            })
        }

        /// Makes the calling loom thread run on processor `index` from now on.
        /// Refused while the thread is pinned (it would migrate).
        pub fn bind(&self, index: ProcessorIndex) -> Result<(), Error> {
            if index.as_usize() >= self.claims.len() {
                return Err(Error::IndexOutOfRange {
                    index,
                    capacity: self.claims.len(),
                });
            }
            if DEPTH.with(Cell::get) > 0 {
                return Err(Error::Busy);
            }
            BOUND.with(|bound| bound.set(Some(index)));
            Ok(())
        }

        /// Binds the calling thread to processor `index` and runs `f` pinned
        /// there (the models' shorthand; panics, failing the model, if either
        /// step is refused).
        pub fn on<R>(&self, index: u32, f: impl FnOnce(&PinGuard<'_, Self>) -> R) -> R {
            let index = ProcessorIndex::new(index).expect("a processor index");
            self.bind(index).expect("bind the model thread");
            self.pinned(f).expect("pin the model thread")
        }
    }

    // SAFETY: loom runs one model thread at a time, with no interrupts, and
    // models only reach these functions through `Platform::pinned`.
    // 1. A thread's processor is the one `bind` gave it, and `bind` is refused
    //    while the thread is pinned (DEPTH > 0): it does not migrate.
    // 2. The outermost pin of a thread takes a write access to the processor's
    //    claim cell and the matching exit gives it back; nested pins of the same
    //    thread only count. Two threads whose pins of one index overlapped would
    //    hold two write accesses at once, which loom reports as a causality
    //    violation and fails the model; so in every execution that passes no
    //    other thread is inside a pin of `index`. All `LoomPlatform`s of a
    //    model are clones of one (the models make one per execution), so they
    //    share the claims, as `shares_processors`' default `true` says.
    // 3. There are no interrupts under loom: only code nested in a pin runs on
    //    the pinned thread while it is pinned.
    // 4. Loom also fails the model when one write access to a claim does not
    //    happen-before the next (a cell access must be ordered with the
    //    previous one), so every execution that passes has each pin of an index
    //    happen-before the next; the models order them by `spawn` and `join`.
    // 5. `shares_processors` is the default, constant `true`: an equivalence.
    unsafe impl Platform for LoomPlatform {
        type Alloc = HostAlloc;
        /// The outermost pin's access to its claim, `None` for a nested pin.
        type Token = Option<MutPtr<()>>;

        fn max_processors(&self) -> u32 {
            // At most LOOM_MAX_PROCESSORS, so it fits.
            u32::try_from(self.claims.len()).unwrap_or(LOOM_MAX_PROCESSORS)
        }

        fn current_processor(&self) -> ProcessorIndex {
            BOUND.with(Cell::get).unwrap_or(ProcessorIndex::ZERO)
        }

        fn allocator(&self) -> HostAlloc {
            HostAlloc
        }

        unsafe fn enter_pin(&self) -> Result<(ProcessorIndex, Self::Token), PinError> {
            let index = BOUND.with(Cell::get).ok_or(PinError::Unavailable)?;
            let claim = self
                .claims
                .get(index.as_usize())
                .ok_or(PinError::Unavailable)?;
            let depth = DEPTH.with(Cell::get);
            let token = (depth == 0).then(|| claim.0.get_mut());
            DEPTH.with(|d| d.set(depth + 1));
            Ok((index, token))
        }

        unsafe fn exit_pin(&self, token: Self::Token) {
            DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
            drop(token);
        }
    }
}
