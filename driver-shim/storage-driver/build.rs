//! Links the driver against the WDK (see `wdk_build`).

fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}
