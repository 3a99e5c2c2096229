//! `perproc-image-check`: reads WDM driver images (PE files) and checks them.
//!
//! ```text
//! perproc-image-check [--bless] EXPECTED_DIR IMAGE:NAME:ARCH...
//! ```
//!
//! For each image (`ARCH` is `x64` or `arm64`), the checks are:
//! - the machine is AMD64 (0x8664) or ARM64 (0xAA64), as `ARCH` says;
//! - the subsystem is NATIVE (a kernel-mode image);
//! - the entry point is the exported `DriverEntry`;
//! - no section is both writable and executable;
//! - every import comes from `ntoskrnl.exe`;
//! - the imported names are exactly `EXPECTED_DIR/NAME-ARCH.imports` (one a
//!   line, sorted): a new kernel dependency fails until the list is updated
//!   in the same commit (`--bless` rewrites the lists instead of comparing);
//! - `KeBugCheckEx` is not imported: wdk-panic's handler is the only caller
//!   of it in these images, so its import means a panic is reachable.
//!
//! Prints one line per image (image, arch, size, imports) and exits non-zero
//! if any check failed.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use object::pe::{
    IMAGE_FILE_MACHINE_AMD64, IMAGE_FILE_MACHINE_ARM64, IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_WRITE,
    IMAGE_SUBSYSTEM_NATIVE,
};
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile64};
use object::{LittleEndian as LE, Object};

/// The architectures the drivers are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    X64,
    Arm64,
}

impl Arch {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "x64" => Some(Arch::X64),
            "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }
    fn machine(self) -> u16 {
        match self {
            Arch::X64 => IMAGE_FILE_MACHINE_AMD64,
            Arch::Arm64 => IMAGE_FILE_MACHINE_ARM64,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X64 => "x64",
            Arch::Arm64 => "arm64",
        })
    }
}

/// What the checks look at, read from one image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Facts {
    size: usize,
    machine: u16,
    subsystem: u16,
    entry_rva: u32,
    /// RVA of the `DriverEntry` export, if exported.
    driver_entry_rva: Option<u32>,
    /// Names of sections both writable and executable.
    wx_sections: Vec<String>,
    /// (library, name) of every import.
    imports: Vec<(String, String)>,
}

fn read_facts(data: &[u8]) -> Result<Facts, String> {
    let file = PeFile64::parse(data).map_err(|e| format!("not a PE32+ image: {e}"))?;
    let nt = file.nt_headers();
    let machine = nt.file_header().machine.get(LE);
    let optional = nt.optional_header();
    let base = file.relative_address_base();
    let driver_entry_rva = file
        .exports()
        .map_err(|e| format!("export table: {e}"))?
        .iter()
        .find(|e| e.name() == b"DriverEntry")
        .and_then(|e| e.address().checked_sub(base))
        .and_then(|rva| u32::try_from(rva).ok());
    let wx_sections = file
        .section_table()
        .iter()
        .filter(|s| {
            let c = s.characteristics.get(LE);
            c & IMAGE_SCN_MEM_WRITE != 0 && c & IMAGE_SCN_MEM_EXECUTE != 0
        })
        .map(|s| String::from_utf8_lossy(s.raw_name()).into_owned())
        .collect();
    let imports = file
        .imports()
        .map_err(|e| format!("import table: {e}"))?
        .iter()
        .map(|i| {
            (
                String::from_utf8_lossy(i.library()).into_owned(),
                String::from_utf8_lossy(i.name()).into_owned(),
            )
        })
        .collect();
    Ok(Facts {
        size: data.len(),
        machine,
        subsystem: optional.subsystem(),
        entry_rva: optional.address_of_entry_point(),
        driver_entry_rva,
        wx_sections,
        imports,
    })
}

/// The sorted, de-duplicated imported names.
fn import_names(facts: &Facts) -> BTreeSet<String> {
    facts.imports.iter().map(|(_, name)| name.clone()).collect()
}

/// Every failed check, as a sentence.
fn check(facts: &Facts, arch: Arch, expected: &BTreeSet<String>) -> Vec<String> {
    let mut failures = Vec::new();
    if facts.machine != arch.machine() {
        failures.push(format!(
            "machine is {:#06x}, not {:#06x} ({arch})",
            facts.machine,
            arch.machine()
        ));
    }
    if facts.subsystem != IMAGE_SUBSYSTEM_NATIVE {
        failures.push(format!("subsystem is {}, not NATIVE", facts.subsystem));
    }
    match facts.driver_entry_rva {
        None => failures.push("DriverEntry is not exported".into()),
        Some(rva) if rva != facts.entry_rva => failures.push(format!(
            "entry point {:#x} is not DriverEntry ({rva:#x})",
            facts.entry_rva
        )),
        Some(_) => {}
    }
    for name in &facts.wx_sections {
        failures.push(format!("section {name} is writable and executable"));
    }
    for (library, name) in &facts.imports {
        if !library.eq_ignore_ascii_case("ntoskrnl.exe") {
            failures.push(format!(
                "{name} is imported from {library}, not ntoskrnl.exe"
            ));
        }
    }
    let names = import_names(facts);
    if names.contains("KeBugCheckEx") {
        failures.push("imports KeBugCheckEx: a panic is reachable".into());
    }
    for extra in names.difference(expected) {
        failures.push(format!("unexpected import {extra}"));
    }
    for missing in expected.difference(&names) {
        failures.push(format!("expected import {missing} is missing"));
    }
    failures
}

fn parse_list(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

struct Target {
    path: PathBuf,
    name: String,
    arch: Arch,
}

fn parse_target(arg: &str) -> Option<Target> {
    let mut parts = arg.rsplitn(3, ':');
    let arch = Arch::parse(parts.next()?)?;
    let name = parts.next()?.to_string();
    let path = PathBuf::from(parts.next()?);
    Some(Target { path, name, arch })
}

fn expected_path(dir: &Path, target: &Target) -> PathBuf {
    dir.join(format!("{}-{}.imports", target.name, target.arch))
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let bless = args.first().is_some_and(|a| a == "--bless");
    if bless {
        args.remove(0);
    }
    let Some((dir, targets)) = args.split_first() else {
        eprintln!("usage: perproc-image-check [--bless] EXPECTED_DIR IMAGE:NAME:ARCH...");
        return ExitCode::from(2);
    };
    let dir = Path::new(dir);
    let mut failed = false;
    println!("{:<44} {:<6} {:>8}  imports", "image", "arch", "bytes");
    for arg in targets {
        let Some(target) = parse_target(arg) else {
            eprintln!("bad target {arg} (IMAGE:NAME:x64|arm64)");
            failed = true;
            continue;
        };
        let shown = target
            .path
            .file_name()
            .map_or_else(|| arg.clone(), |n| n.to_string_lossy().into_owned());
        let facts = match std::fs::read(&target.path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|data| read_facts(&data))
        {
            Ok(facts) => facts,
            Err(e) => {
                println!("{shown:<44} {:<6} FAILED: {e}", target.arch);
                failed = true;
                continue;
            }
        };
        let names = import_names(&facts);
        let list_path = expected_path(dir, &target);
        if bless {
            let text: String = names.iter().map(|n| format!("{n}\n")).collect();
            if let Err(e) = std::fs::write(&list_path, text) {
                eprintln!("cannot write {}: {e}", list_path.display());
                failed = true;
            }
        }
        let expected = match std::fs::read_to_string(&list_path) {
            Ok(text) => parse_list(&text),
            Err(e) => {
                println!(
                    "{shown:<44} {:<6} FAILED: no expected list {}: {e}",
                    target.arch,
                    list_path.display()
                );
                failed = true;
                continue;
            }
        };
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        println!(
            "{shown:<44} {:<6} {:>8}  {} ({})",
            target.arch,
            facts.size,
            all.len(),
            all.join(" ")
        );
        for failure in check(&facts, target.arch, &expected) {
            println!("    FAILED: {failure}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> (Facts, BTreeSet<String>) {
        let facts = Facts {
            size: 4096,
            machine: IMAGE_FILE_MACHINE_AMD64,
            subsystem: IMAGE_SUBSYSTEM_NATIVE,
            entry_rva: 0x1000,
            driver_entry_rva: Some(0x1000),
            wx_sections: Vec::new(),
            imports: vec![
                ("ntoskrnl.exe".into(), "ExAllocatePool2".into()),
                ("NTOSKRNL.EXE".into(), "ExFreePool".into()),
            ],
        };
        let expected = parse_list("# comment\nExAllocatePool2\n\nExFreePool\n");
        (facts, expected)
    }

    #[test]
    fn a_good_image_passes() {
        let (facts, expected) = good();
        assert_eq!(check(&facts, Arch::X64, &expected), Vec::<String>::new());
    }

    #[test]
    fn each_rule_fails_on_its_own() {
        let (facts, expected) = good();
        let fails = |f: &Facts, arch| check(f, arch, &expected).len();

        assert_eq!(fails(&facts, Arch::Arm64), 1, "machine");
        let mut f = facts.clone();
        f.subsystem = 2;
        assert_eq!(fails(&f, Arch::X64), 1, "subsystem");
        let mut f = facts.clone();
        f.entry_rva = 0x2000;
        assert_eq!(fails(&f, Arch::X64), 1, "entry");
        let mut f = facts.clone();
        f.driver_entry_rva = None;
        assert_eq!(fails(&f, Arch::X64), 1, "no DriverEntry");
        let mut f = facts.clone();
        f.wx_sections.push(".text".into());
        assert_eq!(fails(&f, Arch::X64), 1, "W+X");
        let mut f = facts.clone();
        if let Some(first) = f.imports.first_mut() {
            first.0 = "hal.dll".into();
        }
        assert_eq!(fails(&f, Arch::X64), 1, "library");
        let mut f = facts.clone();
        f.imports.pop();
        assert_eq!(fails(&f, Arch::X64), 1, "missing import");
        let mut f = facts.clone();
        f.imports
            .push(("ntoskrnl.exe".into(), "KeBugCheckEx".into()));
        // A reachable panic, and an import the list does not have.
        assert_eq!(fails(&f, Arch::X64), 2, "KeBugCheckEx");
    }

    #[test]
    fn targets_parse_with_colons_in_the_path() {
        let t = parse_target("/a:b/x.sys:seed:arm64");
        assert!(t
            .as_ref()
            .is_some_and(|t| t.arch == Arch::Arm64 && t.name == "seed"));
        assert!(t.is_some_and(|t| t.path == Path::new("/a:b/x.sys")));
        assert!(parse_target("x.sys:seed:mips").is_none());
    }
}
