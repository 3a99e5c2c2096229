//! A reader for the parts of a PE32+ image a loader needs: headers, sections,
//! base relocations, the import table and the export directory. Safe code over
//! byte slices; every read is bounds-checked and unaligned-tolerant (the
//! export directory of an lld-linked driver sits at an RVA that is not
//! 4-aligned, which Windows accepts and the `object` crate refuses).

use std::fmt;

/// `IMAGE_FILE_MACHINE_AMD64`.
pub const MACHINE_AMD64: u16 = 0x8664;
/// `IMAGE_FILE_MACHINE_ARM64`.
pub const MACHINE_ARM64: u16 = 0xAA64;
/// `IMAGE_SCN_MEM_EXECUTE`.
pub const SCN_EXECUTE: u32 = 0x2000_0000;
/// `IMAGE_SCN_MEM_READ`.
pub const SCN_READ: u32 = 0x4000_0000;
/// `IMAGE_SCN_MEM_WRITE`.
pub const SCN_WRITE: u32 = 0x8000_0000;

const DIR_EXPORT: usize = 0;
const DIR_IMPORT: usize = 1;
const DIR_BASERELOC: usize = 5;
const REL_ABSOLUTE: u16 = 0;
const REL_DIR64: u16 = 10;

/// Why an image cannot be loaded. Every variant names what it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// The file could not be read.
    Io(String),
    /// A malformed or unsupported image.
    Format(String),
    /// An import the loader has no binding for (the simulator lacks it).
    Unbound {
        /// The DLL it is imported from.
        dll: String,
        /// The imported name.
        name: String,
    },
    /// The image is for another machine than this loader runs on.
    Machine(u16),
    /// The operating system refused a mapping or a protection change.
    Os(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io(e) => write!(f, "cannot read the image: {e}"),
            LoadError::Format(e) => write!(f, "bad image: {e}"),
            LoadError::Unbound { dll, name } => {
                write!(f, "import {dll}!{name} has no binding to the simulator")
            }
            LoadError::Machine(m) => write!(f, "image machine {m:#06x} is not this host's"),
            LoadError::Os(e) => write!(f, "the OS refused: {e}"),
        }
    }
}

impl std::error::Error for LoadError {}

fn bad(what: impl Into<String>) -> LoadError {
    LoadError::Format(what.into())
}

fn bytes<const N: usize>(data: &[u8], offset: usize) -> Result<[u8; N], LoadError> {
    offset
        .checked_add(N)
        .and_then(|end| data.get(offset..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or_else(|| bad(format!("read of {N} bytes at {offset:#x} is out of bounds")))
}

/// A little-endian `u16` at `offset`.
pub fn u16_at(data: &[u8], offset: usize) -> Result<u16, LoadError> {
    bytes::<2>(data, offset).map(u16::from_le_bytes)
}

/// A little-endian `u32` at `offset`.
pub fn u32_at(data: &[u8], offset: usize) -> Result<u32, LoadError> {
    bytes::<4>(data, offset).map(u32::from_le_bytes)
}

/// A little-endian `u64` at `offset`.
pub fn u64_at(data: &[u8], offset: usize) -> Result<u64, LoadError> {
    bytes::<8>(data, offset).map(u64::from_le_bytes)
}

fn at(base: usize, add: usize) -> Result<usize, LoadError> {
    base.checked_add(add).ok_or_else(|| bad("offset overflow"))
}

fn usize_of(v: u32) -> usize {
    // u32 always fits the 64-bit hosts this crate builds for.
    v as usize
}

/// A NUL-terminated ASCII name at `offset`.
fn c_str(data: &[u8], offset: usize) -> Result<String, LoadError> {
    let tail = data
        .get(offset..)
        .ok_or_else(|| bad(format!("name at {offset:#x} is out of bounds")))?;
    let len = tail
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| bad(format!("name at {offset:#x} is not terminated")))?;
    let name = tail.get(..len).unwrap_or_default();
    String::from_utf8(name.to_vec()).map_err(|_| bad(format!("name at {offset:#x} is not ASCII")))
}

/// One section header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// The name (`.text`, ...).
    pub name: String,
    /// Its RVA.
    pub rva: u32,
    /// Its size in memory.
    pub virtual_size: u32,
    /// Where its bytes are in the file.
    pub raw_offset: u32,
    /// How many bytes the file holds (the rest is zero).
    pub raw_size: u32,
    /// `IMAGE_SCN_*` flags.
    pub characteristics: u32,
}

/// One import: the IAT slot to fill and the name to bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Import {
    /// The DLL (`ntoskrnl.exe`).
    pub dll: String,
    /// The function's name.
    pub name: String,
    /// The RVA of its IAT slot (8 bytes).
    pub iat_rva: u32,
}

/// What the loader needs from the headers.
#[derive(Clone, Debug)]
pub struct Headers {
    /// `IMAGE_FILE_MACHINE_*`.
    pub machine: u16,
    /// The preferred base.
    pub image_base: u64,
    /// The size mapped.
    pub size_of_image: u32,
    /// Bytes of headers to map at the base.
    pub size_of_headers: u32,
    /// `SectionAlignment`.
    pub section_alignment: u32,
    /// The entry point's RVA (`DriverEntry` for a driver).
    pub entry: u32,
    /// The sections.
    pub sections: Vec<Section>,
    /// `(rva, size)` of each data directory.
    pub directories: Vec<(u32, u32)>,
}

impl Headers {
    /// Reads the DOS, NT and section headers of `file`.
    pub fn parse(file: &[u8]) -> Result<Self, LoadError> {
        if file.get(..2) != Some(b"MZ") {
            return Err(bad("no MZ signature"));
        }
        let nt = usize_of(u32_at(file, 0x3c)?);
        if bytes::<4>(file, nt)? != *b"PE\0\0" {
            return Err(bad("no PE signature"));
        }
        let coff = at(nt, 4)?;
        let machine = u16_at(file, coff)?;
        let sections = usize::from(u16_at(file, at(coff, 2)?)?);
        let optional_size = usize::from(u16_at(file, at(coff, 16)?)?);
        let opt = at(coff, 20)?;
        if u16_at(file, opt)? != 0x20b {
            return Err(bad("not a PE32+ image"));
        }
        let entry = u32_at(file, at(opt, 16)?)?;
        let image_base = u64_at(file, at(opt, 24)?)?;
        let section_alignment = u32_at(file, at(opt, 32)?)?;
        let size_of_image = u32_at(file, at(opt, 56)?)?;
        let size_of_headers = u32_at(file, at(opt, 60)?)?;
        let count = usize_of(u32_at(file, at(opt, 108)?)?);
        let mut directories = Vec::new();
        for i in 0..count.min(16) {
            let d = at(opt, 112 + 8 * i)?;
            directories.push((u32_at(file, d)?, u32_at(file, at(d, 4)?)?));
        }
        let table = at(opt, optional_size)?;
        let mut list = Vec::with_capacity(sections);
        for i in 0..sections {
            let s = at(table, 40 * i)?;
            let raw_name = bytes::<8>(file, s)?;
            let len = raw_name.iter().position(|&b| b == 0).unwrap_or(8);
            list.push(Section {
                name: String::from_utf8_lossy(raw_name.get(..len).unwrap_or_default()).into(),
                virtual_size: u32_at(file, at(s, 8)?)?,
                rva: u32_at(file, at(s, 12)?)?,
                raw_size: u32_at(file, at(s, 16)?)?,
                raw_offset: u32_at(file, at(s, 20)?)?,
                characteristics: u32_at(file, at(s, 36)?)?,
            });
        }
        Ok(Self {
            machine,
            image_base,
            size_of_image,
            size_of_headers,
            section_alignment,
            entry,
            sections: list,
            directories,
        })
    }

    fn directory(&self, index: usize) -> Option<(usize, usize)> {
        self.directories
            .get(index)
            .filter(|(rva, size)| *rva != 0 && *size != 0)
            .map(|&(rva, size)| (usize_of(rva), usize_of(size)))
    }

    /// The image as mapped: `size_of_image` bytes, headers and sections
    /// copied to their RVAs, the rest zero.
    pub fn lay_out(&self, file: &[u8]) -> Result<Vec<u8>, LoadError> {
        let mut image = vec![0u8; usize_of(self.size_of_image)];
        let headers = usize_of(self.size_of_headers);
        copy(&mut image, 0, file, 0, headers.min(file.len()))?;
        for s in &self.sections {
            let len = s.raw_size.min(s.virtual_size);
            copy(
                &mut image,
                usize_of(s.rva),
                file,
                usize_of(s.raw_offset),
                usize_of(len),
            )?;
            let end = at(usize_of(s.rva), usize_of(s.virtual_size))?;
            if end > image.len() {
                return Err(bad(format!("section {} ends past SizeOfImage", s.name)));
            }
        }
        Ok(image)
    }

    /// Applies the base relocations to `image` (laid out by
    /// [`lay_out`](Self::lay_out)) for a load at `base`; how many it applied.
    pub fn relocate(&self, image: &mut [u8], base: u64) -> Result<usize, LoadError> {
        let Some((start, size)) = self.directory(DIR_BASERELOC) else {
            return Ok(0);
        };
        let delta = base.wrapping_sub(self.image_base);
        let end = at(start, size)?;
        let mut block = start;
        let mut applied = 0;
        while block < end {
            let page = usize_of(u32_at(image, block)?);
            let block_size = usize_of(u32_at(image, at(block, 4)?)?);
            if block_size < 8 {
                return Err(bad(format!("relocation block of {block_size} bytes")));
            }
            let mut entry = at(block, 8)?;
            while entry < at(block, block_size)? {
                let word = u16_at(image, entry)?;
                let offset = at(page, usize::from(word & 0xfff))?;
                match word >> 12 {
                    REL_ABSOLUTE => {}
                    REL_DIR64 => {
                        let value = u64_at(image, offset)?.wrapping_add(delta);
                        copy(image, offset, &value.to_le_bytes(), 0, 8)?;
                        applied += 1;
                    }
                    other => return Err(bad(format!("relocation type {other} at {offset:#x}"))),
                }
                entry = at(entry, 2)?;
            }
            block = at(block, block_size)?;
        }
        Ok(applied)
    }

    /// The imports of `image`, by name, with their IAT slots.
    pub fn imports(&self, image: &[u8]) -> Result<Vec<Import>, LoadError> {
        let Some((mut desc, _)) = self.directory(DIR_IMPORT) else {
            return Ok(Vec::new());
        };
        let mut imports = Vec::new();
        loop {
            let lookup = u32_at(image, desc)?;
            let name = u32_at(image, at(desc, 12)?)?;
            let iat = u32_at(image, at(desc, 16)?)?;
            if lookup == 0 && name == 0 && iat == 0 {
                return Ok(imports);
            }
            let dll = c_str(image, usize_of(name))?;
            let names = if lookup != 0 { lookup } else { iat };
            for i in 0u32.. {
                let entry = u64_at(image, at(usize_of(names), 8 * usize_of(i))?)?;
                if entry == 0 {
                    break;
                }
                if entry & (1 << 63) != 0 {
                    return Err(bad(format!("{dll} import by ordinal {}", entry & 0xffff)));
                }
                let hint_name = usize::try_from(entry & 0x7fff_ffff).map_err(|_| bad("rva"))?;
                imports.push(Import {
                    dll: dll.clone(),
                    name: c_str(image, at(hint_name, 2)?)?,
                    iat_rva: iat.checked_add(8 * i).ok_or_else(|| bad("IAT overflow"))?,
                });
            }
            desc = at(desc, 20)?;
        }
    }

    /// The named exports of `image`: (name, RVA). A forwarded export (an RVA
    /// inside the export directory) is refused.
    pub fn exports(&self, image: &[u8]) -> Result<Vec<(String, u32)>, LoadError> {
        let Some((dir, size)) = self.directory(DIR_EXPORT) else {
            return Ok(Vec::new());
        };
        let functions = usize_of(u32_at(image, at(dir, 20)?)?);
        let names = usize_of(u32_at(image, at(dir, 24)?)?);
        let address_of_functions = usize_of(u32_at(image, at(dir, 28)?)?);
        let address_of_names = usize_of(u32_at(image, at(dir, 32)?)?);
        let address_of_ordinals = usize_of(u32_at(image, at(dir, 36)?)?);
        let mut exports = Vec::with_capacity(names);
        for i in 0..names {
            let name_rva = u32_at(image, at(address_of_names, 4 * i)?)?;
            let name = c_str(image, usize_of(name_rva))?;
            let ordinal = usize::from(u16_at(image, at(address_of_ordinals, 2 * i)?)?);
            if ordinal >= functions {
                return Err(bad(format!(
                    "export {name}: ordinal {ordinal} out of range"
                )));
            }
            let rva = u32_at(image, at(address_of_functions, 4 * ordinal)?)?;
            if (dir..at(dir, size)?).contains(&usize_of(rva)) {
                return Err(bad(format!("export {name} is forwarded")));
            }
            exports.push((name, rva));
        }
        Ok(exports)
    }
}

fn copy(
    to: &mut [u8],
    to_offset: usize,
    from: &[u8],
    from_offset: usize,
    len: usize,
) -> Result<(), LoadError> {
    let src = from
        .get(from_offset..at(from_offset, len)?)
        .ok_or_else(|| bad(format!("{len} bytes at file offset {from_offset:#x}")))?;
    let dst = to
        .get_mut(to_offset..at(to_offset, len)?)
        .ok_or_else(|| bad(format!("{len} bytes at RVA {to_offset:#x}")))?;
    dst.copy_from_slice(src);
    Ok(())
}

/// Writes `value` at `offset` of `image` (an IAT slot).
pub fn put_u64(image: &mut [u8], offset: usize, value: u64) -> Result<(), LoadError> {
    copy(image, offset, &value.to_le_bytes(), 0, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounds_checked_and_unaligned() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(u32_at(&data, 1), Ok(0x0504_0302));
        assert!(u32_at(&data, 6).is_err());
        assert!(u64_at(&data, usize::MAX - 2).is_err());
        assert_eq!(c_str(b"ab\0c", 0), Ok("ab".into()));
        assert!(c_str(b"abc", 0).is_err());
    }

    #[test]
    fn not_a_pe_is_refused() {
        assert!(matches!(Headers::parse(b"MZ"), Err(LoadError::Format(_))));
        assert!(matches!(
            Headers::parse(&[0; 256]),
            Err(LoadError::Format(_))
        ));
    }
}
