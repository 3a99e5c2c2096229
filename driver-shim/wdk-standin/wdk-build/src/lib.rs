//! A stand-in for `wdk-build` 0.6.0, used only by `scripts/windows-driver` to
//! type-check and link perproc's Windows path without the WDK. It offers the
//! three entry points build scripts call, with the same signatures:
//!
//! - [`configure_wdk_library_build`]: emits the cfg wdk-build emits for a WDM
//!   build graph (`driver_model__driver_type="WDM"`) and its check-cfg;
//! - [`configure_wdk_binary_build`]: the same, plus wdk-build 0.6's WDM
//!   linker arguments (from its `Config::configure_binary_build`) and, in
//!   place of the WDK's library folder, the folder named by
//!   `PERPROC_STANDIN_LIB_DIR` (import libraries made from `.def` files).
//!
//! It reads no `metadata.wdk`: the real crate derives the driver model from
//! it, the stand-in assumes WDM.

use std::fmt;

/// Errors a build script can return (the real crate's has many variants).
#[derive(Debug)]
pub enum ConfigError {
    /// The C runtime is not statically linked (`+crt-static`), which
    /// wdk-build requires of a driver binary.
    StaticCrtNotEnabled,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::StaticCrtNotEnabled => f.write_str("crt-static is not enabled"),
        }
    }
}

impl std::error::Error for ConfigError {}

const DRIVER_TYPES: &str = r#""WDM","KMDF","UMDF""#;

fn emit_cfg() {
    println!("cargo::rustc-check-cfg=cfg(driver_model__driver_type, values({DRIVER_TYPES}))");
    println!(r#"cargo::rustc-cfg=driver_model__driver_type="WDM""#);
    println!("cargo::rerun-if-env-changed=PERPROC_STANDIN_LIB_DIR");
}

/// What the real function does for a library in a WDM build graph.
///
/// # Errors
/// Never (the signature is the real crate's).
pub fn configure_wdk_library_build() -> Result<(), ConfigError> {
    emit_cfg();
    Ok(())
}

/// What the real function does for a WDM driver binary: the cfg, the library
/// search path and wdk-build 0.6's WDM link arguments.
///
/// # Errors
/// When the target does not link the C runtime statically, as the real one.
pub fn configure_wdk_binary_build() -> Result<(), ConfigError> {
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if !features.split(',').any(|f| f == "crt-static") {
        return Err(ConfigError::StaticCrtNotEnabled);
    }
    if let Ok(dir) = std::env::var("PERPROC_STANDIN_LIB_DIR") {
        println!("cargo::rustc-link-search={dir}");
    }
    for arg in [
        "/DRIVER",
        "/NODEFAULTLIB",
        "/SUBSYSTEM:NATIVE",
        "/KERNEL",
        "/ENTRY:DriverEntry",
        "/IGNORE:4257",
        "/IGNORE:4216",
        "/NXCOMPAT",
        "/DYNAMICBASE",
        "/MAP",
        "/MAPINFO:EXPORTS",
        "/OPT:REF,ICF",
        "/INTEGRITYCHECK",
        "/MANIFEST:NO",
    ] {
        println!("cargo::rustc-cdylib-link-arg={arg}");
    }
    emit_cfg();
    Ok(())
}
