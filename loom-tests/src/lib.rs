//! Loom models of perproc live in `tests/`; run them with `RUSTFLAGS="--cfg loom"`.
