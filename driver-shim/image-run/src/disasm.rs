//! Registers and instructions the images must not use, checked on their
//! disassembly (`llvm-objdump` from rustup's `llvm-tools` component).
//!
//! - ARM64: `x18`/`w18`. Windows reserves x18 (the TEB in user mode, the
//!   KPCR in kernel mode); the forwarders run Linux code, which may clobber
//!   it, so an image that reads x18 after a kernel call would see garbage.
//! - x64: `gs` (the KPCR in kernel mode: a `gs:` access faults or reads
//!   Linux's TLS here), `swapgs`, `rdgsbase`/`wrgsbase` and `cr8` (the IRQL
//!   register; the simulator models IRQL only through the imported calls).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Tokens an ARM64 image must not contain.
pub const ARM64_FORBIDDEN: &[&str] = &["x18", "w18"];
/// Tokens an x64 image must not contain.
pub const X64_FORBIDDEN: &[&str] = &["gs", "swapgs", "rdgsbase", "wrgsbase", "cr8"];

/// The lines of `disassembly` (llvm-objdump's) with an instruction that names
/// one of `forbidden` as a whole token.
pub fn offending_lines(disassembly: &str, forbidden: &[&str]) -> Vec<String> {
    disassembly
        .lines()
        .filter(|line| is_instruction(line))
        .filter(|line| {
            instruction_text(line)
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|token| forbidden.contains(&token))
        })
        .map(str::to_owned)
        .collect()
}

/// How many instructions `disassembly` has (to check the check saw code).
pub fn instruction_count(disassembly: &str) -> usize {
    disassembly.lines().filter(|l| is_instruction(l)).count()
}

/// `   180001000:      stp x19, ...`: an address, a colon, an instruction.
fn is_instruction(line: &str) -> bool {
    let Some((address, rest)) = line.trim_start().split_once(':') else {
        return false;
    };
    !address.is_empty() && address.chars().all(|c| c.is_ascii_hexdigit()) && !rest.trim().is_empty()
}

/// The instruction after the address, without its `<symbol+off>` comments
/// and `//` remarks.
fn instruction_text(line: &str) -> &str {
    let rest = line.split_once(':').map_or("", |(_, r)| r);
    let rest = rest.split("//").next().unwrap_or("");
    rest.split('<').next().unwrap_or("")
}

/// llvm-objdump: `$LLVM_OBJDUMP`, else rustup's llvm-tools copy for the host.
pub fn objdump() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("LLVM_OBJDUMP") {
        return Ok(PathBuf::from(path));
    }
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("rustc --print sysroot: {e}"))?;
    let verbose = Command::new("rustc")
        .arg("-vV")
        .output()
        .map_err(|e| format!("rustc -vV: {e}"))?;
    let host = String::from_utf8_lossy(&verbose.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or("rustc -vV names no host")?;
    let path = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-objdump");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: rustup component add llvm-tools",
            path.display()
        ))
    }
}

/// The disassembly of every executable section of `image`.
pub fn disassemble(image: &Path) -> Result<String, String> {
    let tool = objdump()?;
    let out = Command::new(&tool)
        .args(["-d", "--no-show-raw-insn"])
        .arg(image)
        .output()
        .map_err(|e| format!("{}: {e}", tool.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} -d {} failed: {}",
            tool.display(),
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARM: &str = "
0000000180001000 <DriverEntry>:
180001000:     \tstp\tx19, x20, [sp, #-0x60]!
180001004:     \tmov\tx0, x18
180001008:     \tldr\tw1, [x18, #0x10]
18000100c:     \tbl\t0x180002bb4 <x18_lookalike+0x5c>
180001010:     \tadd\tx28, x8, #0x18 // =x18
";

    #[test]
    fn x18_reads_and_writes_are_found_and_lookalikes_are_not() {
        let bad = offending_lines(ARM, ARM64_FORBIDDEN);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].contains("mov\tx0, x18"));
        assert!(bad[1].contains("[x18, #0x10]"));
        assert_eq!(instruction_count(ARM), 5);
    }

    #[test]
    fn gs_and_cr8_are_found() {
        let x64 = "  140001000:\tmovq\t%gs:0x188, %rax\n  140001008:\tmovq\t%cr8, %rax\n  14000100c:\tmovq\t%rsi, %rax\n";
        assert_eq!(offending_lines(x64, X64_FORBIDDEN).len(), 2);
    }
}
